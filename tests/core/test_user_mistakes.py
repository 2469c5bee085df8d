"""What a new user meets, at the level they meet it (the ``glmscore`` command, its exit code, its words, the files
it leaves): mistakes are one sentence that says what is wrong, and a run ends with its command."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _glmscore(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = env if env is not None else {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "glmscore", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_sentence(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("glmscore: error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_the_jobs_address_in_ray_address_is_named_as_such(tmp_path, small_nullsette):
    env = {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:8265"}
    ran = _glmscore("score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", "kmer:3",
                    "--out", str(tmp_path / "out"), env=env)
    _one_sentence(ran, "RAY_ADDRESS http://127.0.0.1:8265 is a Ray dashboard (Jobs API) address", "127.0.0.1:6379")
    assert not (tmp_path / "out").exists()  # no lock, no _logs left behind


def test_a_model_path_that_is_wrong_says_what_the_path_is(tmp_path, small_nullsette):
    common = ["score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--out", str(tmp_path / "o"), "--dry-run"]
    missing = _glmscore(*common, "--model", str(tmp_path / "models" / "mine"))
    _one_sentence(missing, f"no such folder ({tmp_path / 'models' / 'mine'}", f"{tmp_path} exists, the rest of the path does not")
    relative = _glmscore(*common, "--model", "./checkpoints/final", cwd=tmp_path)
    _one_sentence(relative, "--model ./checkpoints/final: no such folder")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 16)
    _one_sentence(_glmscore(*common, "--model", str(weights)), "is a file", "give the folder save_pretrained wrote")


def test_a_relative_out_inside_rays_copy_of_the_working_dir_is_refused(tmp_path, small_nullsette):
    """``ray job submit --working-dir .`` runs the job in ``.../working_dir_files/_ray_pkg_<hash>``, which the cluster
    deletes: a relative --out would be written there."""
    job_copy = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0a1b2c3d"
    job_copy.mkdir(parents=True)
    for command in (["score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", "kmer:3"],
                    ["analyze", "nullsette", "--scores", str(tmp_path / "x")]):
        ran = _glmscore(*command, "--out", "scores/k3", cwd=job_copy)
        _one_sentence(ran, "--out scores/k3 is relative", f"it would have become {job_copy / 'scores' / 'k3'}")
    assert list(job_copy.iterdir()) == []


def _k3(small_nullsette, out: Path) -> tuple[str, ...]:
    return ("score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", "kmer:3", "--out", str(out),
            "--limit", "2")


@pytest.fixture(scope="module")
def finished_k3(tmp_path_factory, small_nullsette) -> Path:
    """A finished k-mer run in a folder of output folders (``runs/lab/k3``); tests copy it before changing it."""
    out = tmp_path_factory.mktemp("finished") / "runs" / "lab" / "k3"
    scored = _glmscore(*_k3(small_nullsette, out))
    assert scored.returncode == 0, scored.stderr[-3000:]
    return out


@pytest.mark.ray
def test_runs_looks_inside_a_folder_of_output_folders(finished_k3):
    runs = finished_k3.parents[1]
    (runs / "notes").mkdir(exist_ok=True)
    listed = _glmscore("runs", str(runs))
    assert listed.returncode == 0, listed.stderr
    assert str(finished_k3) in listed.stdout and "nullsette" in listed.stdout and "finished" in listed.stdout
    assert "not a glmscore folder" not in listed.stdout


def _wait(condition, what: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.ray
def test_a_run_ends_with_its_command_when_the_command_is_killed(tmp_path, small_nullsette, tiny_llama):
    """``kill -9`` of the ``glmscore`` process (a scheduler, a closed terminal, a CI time-out) ends the job too:
    the driver it supervises leaves, the lock is free, and a rerun resumes from the shards that were written."""
    out = tmp_path / "out"
    args = ["score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", str(tiny_llama),
            "--out", str(out), "--limit", "6", "--chunk-rows", "1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = subprocess.Popen([sys.executable, "-m", "glmscore", *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    lock = out / ".glmscore.lock"
    try:
        _wait(lambda: lock.is_file() and lock.read_text().startswith("pid "), "the driver to take the lock")
        driver = int(lock.read_text().split()[1])
        assert driver != command.pid  # the command supervises a driver of its own
        _wait(lambda: any(out.rglob("part-*.parquet")) or command.poll() is not None, "a first shard")
        assert command.poll() is None, "the job ended before it could be interrupted"
        os.kill(command.pid, signal.SIGKILL)  # the command alone, as a scheduler kills it
        command.wait(timeout=60)
        _wait(lambda: not _alive(driver), "the driver to end with its command", timeout=180)
    finally:
        try:
            os.killpg(command.pid, signal.SIGKILL)  # whatever is left of this test's process group
        except ProcessLookupError:
            pass
    again = _glmscore(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reused" in again.stderr and "in use by another glmscore run" not in again.stderr


@pytest.mark.ray
def test_one_model_given_twice_to_analyze_nabench_is_refused_or_kept_apart(tmp_path):
    """A rerun's folder passed beside the first (`--scores A A2`) merged them: every assay counted twice, n_assays
    doubled and the standard errors shrank. Refused in one sentence; with --labels the two runs are compared."""
    data = tmp_path / "assays"
    data.mkdir()
    for name, shift in (("Alpha_2020_ribozyme", 0), ("Beta_2021_aptamer", 5)):
        rows = "".join(f"M{i},{(i * 7 + shift) % 11 / 10:.2f},{'ACGT'[(i + shift) % 4]}CGTACG{'ACGT'[i // 4 % 4]}TACGT\n" for i in range(24))
        (data / f"{name}.csv").write_text("mutant,DMS_score,sequence\n" + rows)
    out = tmp_path / "k2"
    scored = _glmscore("score", "--benchmark", "nabench", "--data", str(data), "--model", "kmer:2", "--out", str(out))
    assert scored.returncode == 0, scored.stderr[-3000:]
    twice = _glmscore("analyze", "nabench", "--scores", str(out), str(out), "--out", str(tmp_path / "r"))
    _one_sentence(twice, "the score folders overlap: model kmer2 scored assay", "twice", "--labels")
    assert not (tmp_path / "r").exists()
    apart = _glmscore("analyze", "nabench", "--scores", str(out), str(out), "--labels", "run1,run2", "--out", str(tmp_path / "r"))
    assert apart.returncode == 0, apart.stderr[-3000:]
    import pandas as pd

    summary = pd.read_csv(tmp_path / "r" / "nabench_summary.csv").set_index("model")
    assert sorted(summary.index) == ["run1", "run2"]
    assays = pd.read_csv(tmp_path / "r" / "nabench_assays.csv")
    assert assays.groupby("model")["assay"].nunique().to_dict() == {"run1": 2, "run2": 2}


def _edited_config(model: Path, to: Path, **changes) -> Path:
    """A copy of ``model`` whose config.json says ``changes`` (the weights stay as they were)."""
    import json
    import shutil

    shutil.copytree(model, to)
    config = json.loads((to / "config.json").read_text())
    (to / "config.json").write_text(json.dumps({**config, **changes}))
    return to


def test_weights_that_do_not_fit_the_config_are_refused_before_ray(tmp_path, small_nullsette, tiny_llama):
    """A config.json that declares more layers than the safetensors hold loaded with random layers in silence; one
    with another hidden size died in every actor (190 lines). Decided from the headers on the driver."""
    common = ["score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--out", str(tmp_path / "out")]
    more = _edited_config(tiny_llama, tmp_path / "more-layers", num_hidden_layers=3)
    _one_sentence(_glmscore(*common, "--model", str(more)), f"the weights in {more} do not fit its config.json",
                  "num_hidden_layers 3", "9 weight(s) the model needs are missing from the files",
                  "model.layers.2.input_layernorm.weight", "and 6 more")
    fewer = _edited_config(tiny_llama, tmp_path / "fewer-layers", num_hidden_layers=1)
    _one_sentence(_glmscore(*common, "--model", str(fewer)), "9 weight(s) in the files belong to layers the config does not "
                  "declare (model.layers.1.input_layernorm.weight")
    wider = _edited_config(tiny_llama, tmp_path / "wider", hidden_size=256, head_dim=128)
    _one_sentence(_glmscore(*common, "--model", str(wider)), "hidden_size 256", "weight(s) have another shape",
                  "model.embed_tokens.weight: 12x128 in the files, 12x256 in the config")
    assert not (tmp_path / "out").exists()


def test_a_base_model_without_a_head_is_not_scored(tmp_path, small_nullsette):
    """A ``LlamaModel`` folder (no lm_head) given to score: one sentence that the weights have no language-model head
    (before: "unknown model" and the list of every card); its hidden states still embed."""
    import json

    from transformers import LlamaConfig, LlamaModel

    from tests.tiny_models import dna_tokenizer

    tok = dna_tokenizer()
    path = tmp_path / "llama-base"
    LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                           num_attention_heads=1, num_key_value_heads=1, head_dim=64, tie_word_embeddings=False)).save_pretrained(path)
    tok.save_pretrained(path)
    assert json.loads((path / "config.json").read_text())["architectures"] == ["LlamaModel"]
    common = ["--benchmark", "nullsette", "--data", str(small_nullsette), "--model", str(path), "--out", str(tmp_path / "out")]
    _one_sentence(_glmscore("score", *common, "--backend", "hf_causal"), f"the weights in {path} have no language-model head "
                  "(lm_head.weight; config.json's architectures: LlamaModel)", "glmscore embed")
    assert not (tmp_path / "out").exists()
    embed = _glmscore("embed", *common, "--dry-run")
    assert embed.returncode == 0, embed.stderr[-3000:]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file")
def test_unreadable_weights_are_named_as_such(tmp_path, small_nullsette, tiny_llama):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    (model / "model.safetensors").chmod(0)
    ran = _glmscore("score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", str(model),
                    "--out", str(tmp_path / "out"))
    _one_sentence(ran, f"the weights {model / 'model.safetensors'} cannot be read: permission denied")
    assert "damaged" not in ran.stderr and not (tmp_path / "out").exists()


def test_a_nullsette_mutant_file_in_another_cassette_order_is_refused(tmp_path, small_nullsette):
    """Record i of a mutant file pairs with record i of nonmutant.txt, and the release's pairing key is the header:
    a mutant file whose records 4 and 5 are swapped was paired anyway (each mutant scored against another cassette's
    nonmutant). Refused on the driver naming the file, the record and both headers; --pair-by order pairs by
    position and warns."""
    import shutil

    from glmscore.pipelines.fasta import read_all

    data = tmp_path / "pd"
    shutil.copytree(small_nullsette, data)
    path = data / "synthetic_ecoli" / "mutant_translocation2.txt"
    names, seqs = read_all(path)
    names[3], names[4], seqs[3], seqs[4] = names[4], names[3], seqs[4], seqs[3]
    path.write_text("".join(f">{n}\n{s}\n" for n, s in zip(names, seqs)))
    common = ["score", "--benchmark", "nullsette", "--data", str(data), "--model", "kmer:3", "--out", str(tmp_path / "out")]
    _one_sentence(_glmscore(*common), f"dataset synthetic_ecoli: {path} does not list the cassettes in nonmutant.txt's order: "
                  f"record 4 is '{names[3]}' where nonmutant.txt's record 4 is '{names[4]}' (2 records differ)", "--pair-by order")
    assert not (tmp_path / "out").exists()
    by_order = _glmscore(*common, "--pair-by", "order", "--dry-run")
    assert by_order.returncode == 0, by_order.stderr[-3000:]
    assert f"{path}: 2 record(s) name another cassette than nonmutant.txt's record at their position" in by_order.stdout + by_order.stderr


def test_the_rerun_of_an_interrupted_overwrite_run_resumes(tmp_path, small_nullsette):
    """An interrupted --overwrite run leaves its run record (with --overwrite) and the shards it wrote, and no
    manifest; rerunning the same command keeps those shards (before: all thrown away again, although the
    interrupt sentence promised to resume)."""
    out = tmp_path / "s"
    command = ("score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", "kmer:3",
               "--out", str(out), "--chunk-rows", "20", "--overwrite")
    first = _glmscore(*command)
    assert first.returncode == 0, first.stderr[-2000:]
    parts = sorted(out.rglob("part-*.parquet"))
    assert len(parts) >= 4
    kept = {p: p.stat().st_mtime_ns for p in parts[2:]}
    # what an interrupt leaves: no manifest, two shards not yet written
    (out / "_manifest.json").unlink()
    for p in parts[:2]:
        p.unlink()
    again = _glmscore(*command)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"the {len(parts) - 2} shard(s) it wrote are kept" in again.stderr
    assert f"2 of {len(parts)} shards to compute" in again.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())


def test_a_log_handler_on_a_full_disk_prints_no_logging_error_tracebacks(tmp_path):
    """Ray's log file on a full disk: each record printed Python's "--- Logging error ---" traceback over the
    one sentence glmscore gives. A glmscore command turns those off (``logging.raiseExceptions``)."""
    script = (
        "import errno, logging, sys\n"
        "from glmscore.pipelines.cli import main\n"
        "class Full:\n"
        "    def write(self, text): raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    def flush(self): pass\n"
        "logging.getLogger('ray').addHandler(logging.StreamHandler(Full()))\n"
        f"main(['runs', {str(tmp_path)!r}])\n"
        "logging.getLogger('ray').error('a record Ray writes to its log file')\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Logging error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def _descendants(root: int) -> dict[int, tuple]:
    """{pid: (starttime, cmdline)} of the live processes below ``root`` (its children, theirs, ...)."""
    from tests.ray_procs import _proc_table

    table = _proc_table()
    found, frontier = {}, {root}
    while frontier:
        frontier = {pid for pid, (ppid, *_rest) in table.items() if ppid in frontier and pid not in found}
        found.update({pid: (table[pid][2], table[pid][3]) for pid in frontier})
    return found


@pytest.mark.ray
def test_ctrl_c_of_a_sweep_ends_quietly_and_starts_no_second_cluster(tmp_path, small_nullsette, tiny_llama):
    """Ctrl-C of a sweep: the runs' threads, still calling Ray after the sweep shut its cluster down, made Ray start a
    new local cluster from a thread (Ray's auto-connect: "SIGTERM handler is not set because current thread is not
    the main thread", tracebacks, and that cluster's processes left running). The command says one sentence, exits
    130, and leaves no process of its session behind."""
    import yaml

    from tests.ray_procs import _proc_table

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "out": "out", "local_cpus": 4, "max_parallel": 2, "defaults": {"threads_per_actor": 1, "chunk_rows": 1},
        "models": [{"model": str(tiny_llama), "name": "a"}, {"model": str(tiny_llama), "name": "b"}],
        "benchmarks": [{"name": "nullsette", "data": str(small_nullsette), "limit": 40}]}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = subprocess.Popen([sys.executable, "-m", "glmscore", "sweep", str(sweep)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait(lambda: any((tmp_path / "out").rglob("part-*.parquet")) or command.poll() is not None, "a first shard")
        assert command.poll() is None, "the sweep ended before it could be interrupted"
        below = _descendants(command.pid)
        os.killpg(command.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
        _, err = command.communicate(timeout=300)
        # once in three clean-clone runs (5d6a03a) the command went on to finish both runs as if no SIGINT had come;
        # the sweep's wait loop now also checks the command's record of the interrupt (test below)
        assert command.returncode == 130, err[-3000:]
        assert "glmscore: interrupted; completed shards are kept and a rerun resumes from them." in err, err[-3000:]
        for noise in ("SIGTERM handler", "Traceback", "Exception in thread", "core_worker.cc"):
            assert noise not in err, err[-3000:]

        def left() -> list[str]:
            table = _proc_table()
            return [cmd for pid, (_, sid, start, cmd) in table.items()
                    if sid == command.pid or (pid in below and below[pid][0] == start)]
        _wait(lambda: not left(), "the sweep's Ray processes to end", timeout=180)
    finally:
        try:
            os.killpg(command.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


SWALLOWED = r"""
import gc, os, signal, sys, time
from glmscore.pipelines.console import check_interrupt, handle_sigint
handle_sigint()

class Finalizer:  # a finalizer on the main thread when the signal is handled: CPython prints and drops it
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)

try:
    Finalizer()
    print("went on", flush=True)
    for _ in range(10):
        check_interrupt()
        time.sleep(0.1)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_swallowed_ctrl_c_still_stops_the_commands_wait_loops():
    """A KeyboardInterrupt that CPython drops (raised in a finalizer) is kept in the command's record of the
    interrupt, which the sweep's wait loop checks: the Ctrl-C still stops the command."""
    done = subprocess.run([sys.executable, "-c", SWALLOWED], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["went", "on", "interrupted"], done.stdout + done.stderr
    assert "Exception ignored" in done.stderr and "KeyboardInterrupt" in done.stderr  # CPython did drop it


def _read_only(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """``glmscore args`` with ``folder`` read-only for that command alone: as root (who writes through permission
    bits), a read-only bind mount in a mount namespace of its own, so nothing outlives the command; else without
    write permission."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "glmscore", *args]
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        try:
            for p in modes:
                p.chmod(modes[p] & ~0o222)
            return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(folder), "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no read-only bind mount here (root without the capability): {probe.stderr.strip()[:200]}")
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(folder), *command],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.ray
def test_a_finished_read_only_folder_is_rerun_without_writing(tmp_path, small_nullsette, finished_k3):
    """A finished run's folder made read-only (an archive, a shared results folder): its rerun would reuse every shard,
    but the lock could not be written and the command failed. Now it verifies the shards and writes nothing; a
    read-only folder with anything left to compute is one sentence."""
    import shutil

    out = shutil.copytree(finished_k3, tmp_path / "k3")
    command = _k3(small_nullsette, out)
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    again = _read_only(out, *command)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "the folder is read-only, so its manifest is kept as it is and nothing was written" in again.stderr
    assert "Traceback" not in again.stderr and "reused)" in again.stdout, again.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == files
    # a shard missing: something to compute, which a read-only folder cannot take
    next(iter(sorted(out.rglob("part-*.parquet")))).unlink()
    refused = _read_only(out, *command)
    _one_sentence(refused, f"{out} is read-only", "make it writable or choose another --out")
