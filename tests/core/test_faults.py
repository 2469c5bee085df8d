"""Faults on real local Ray clusters and real files: a killed model actor, a killed driver, damaged
shards and records, stale and stray files, a second run into the same --out, a full disk.

Recovery times are printed (``pytest -s``); docs/clusters.md's fault table comes from these runs.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import shards
from glmscore.pipelines.score import ScoreConfig, run_score
from tests.conftest import ROOT

pytestmark = pytest.mark.ray


def _cfg(data, model, out, **kw):
    return ScoreConfig(benchmark="nullsette", data=str(data), model=str(model), out=str(out), **kw)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("part-*.parquet"))}


def _damage(path: Path) -> None:
    """Flip one bit in the shard's data (the first position, from 10 % in, where the flip changes what is
    read: some bytes, statistics say, change nothing)."""
    original = path.read_bytes()
    for at in range(len(original) // 10, len(original)):
        data = bytearray(original)
        data[at] ^= 0x10
        path.write_bytes(bytes(data))
        try:
            shards.read_shard(path)
        except shards.CorruptShard:
            return
    raise AssertionError("no flip damaged the shard")


# ---------------------------------------------------------------- shard checksums (no Ray)

def test_every_one_bit_flip_in_a_shard_is_detected_or_harmless(tmp_path):
    """(h) the Parquet footer alone let most flips in the data read as other numbers: with the content
    checksum each flip is refused or leaves the content unchanged (a flip in statistics, say)."""
    rng = np.random.default_rng(0)
    n = 150
    table = pa.table({"seq_id": [f"s{i}" for i in range(n)], "score": rng.normal(size=n),
                      "n_scored": pa.array(rng.integers(0, 900, n), pa.int32()), "truncated": pa.array(rng.random(n) > 0.9),
                      # built as write_unit builds embeddings; Parquet reads its list field back as
                      # "element", not "item": the checksum must not depend on the name
                      "embedding": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * 3),
                                                            pa.array(rng.normal(size=3 * n).astype(np.float32)))})
    path = tmp_path / "part-00000.parquet"
    shards.write_shard(path, table, {"fingerprint": "f", "crc": 1, "rows": n})
    assert shards.read_shard(path).replace_schema_metadata(None).equals(table)
    data = path.read_bytes()
    probe = tmp_path / "flipped.parquet"
    outcomes = {"refused": 0, "unchanged": 0}
    for byte in range(len(data)):
        flipped = bytearray(data)
        flipped[byte] ^= 1 << (byte % 8)
        probe.write_bytes(bytes(flipped))
        try:
            got = shards.read_shard(probe)
        except shards.CorruptShard as exc:
            assert "rerun the same" in str(exc)
            outcomes["refused"] += 1
            continue
        assert got.replace_schema_metadata(None).equals(table), f"a flip at byte {byte} changed the content unnoticed"
        outcomes["unchanged"] += 1
    assert outcomes["refused"] > len(data) // 2
    print(f"\none-bit flips in a {len(data)}-byte shard: {outcomes}")


def test_write_errors_are_one_sentence(tmp_path, monkeypatch):
    """(i) a full disk while writing a shard: one sentence naming the file, no temporary file left."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)  # the disk cannot be filled safely on a shared machine
    path = tmp_path / "dataset=d" / "group=g" / "part-00000.parquet"
    with pytest.raises(GlmscoreError, match=r"^cannot write .*part-00000.parquet: No space left on device\.$"):
        shards.write_shard(path, pa.table({"x": [1]}), {})
    assert not list(tmp_path.rglob("*.tmp")) and not path.exists()


def test_a_second_run_into_a_locked_out_is_refused(tmp_path, small_nullsette):
    """(g) a second run into a folder another process is writing stops with one sentence, before it
    touches anything; the lock goes with its process."""
    out = tmp_path / "scores"
    out.mkdir()
    tmp = out / "dataset=x" / "group=y" / ".part-00000.parquet.host.123.tmp"
    tmp.parent.mkdir(parents=True)
    tmp.write_bytes(b"in flight")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from glmscore.pipelines import shards\n"
                               "with shards.locked(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GlmscoreError, match=r"is in use by another glmscore run \(pid \d+ on .*\); wait for it"):
            run_score(_cfg(small_nullsette, "kmer:3", out, limit=2))
        assert tmp.exists()  # the other run's temporary file is untouched
    finally:
        holder.kill()
        holder.wait()
    with shards.locked(out):  # released when its process died
        pass


@pytest.mark.parametrize("address, says", [
    ("127.0.0.1:1", "cannot reach a Ray cluster at 127.0.0.1:1 (nothing listens there)"),
    ("no-such-host.invalid:6379", "the host no-such-host.invalid does not resolve"),
])
def test_an_unreachable_address_is_one_sentence_within_seconds(tmp_path, small_nullsette, address, says):
    """Ray itself would retry the GCS for minutes, printing C++ errors; the address is checked first.
    (The bound is for a busy machine: the check itself takes milliseconds; Python and Ray's import most
    of the time.)"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data",
                           str(small_nullsette), "--model", "kmer:2", "--out", str(tmp_path / "s"), "--address", address],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"glmscore: error: --address {address}: {says}" in proc.stderr
    assert "Traceback" not in proc.stderr and "Failed to connect to GCS" not in proc.stderr
    assert not (tmp_path / "s" / shards.MANIFEST).exists()


# ---------------------------------------------------------------- on a local Ray cluster

def test_damaged_shards_and_records_are_found_and_recomputed(ray_cluster, small_nullsette, tmp_path):
    """(d) a shard damaged after a run: `analyze` refuses it with one sentence, a rerun recomputes just it
    and gives identical files; (i) a truncated _run.json or _manifest.json is not a traceback;
    (f, j) stale shards and stray files are never read."""
    from glmscore.pipelines.cli import main

    out = tmp_path / "scores"
    run_score(_cfg(small_nullsette, "kmer:3", out, limit=8, chunk_rows=4))
    clean = _files(out)
    victim = out / "dataset=synthetic_ecoli" / "group=mutant_translocation7" / "part-00001.parquet"
    _damage(victim)
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "glmscore", "analyze", "nullsette", "--scores", str(out),
                           "--out", str(report), "--n-perm", "10"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"glmscore: error: shard {victim} is damaged (its content does not match the checksum written with it); "
        "rerun the same `glmscore score`/`embed` command to recompute it."]
    t0 = time.monotonic()
    manifest = run_score(_cfg(small_nullsette, "kmer:3", out, limit=8, chunk_rows=4))
    print(f"\nrecovery from a damaged shard: {time.monotonic() - t0:.1f} s ({manifest['shards_computed']} recomputed)")
    assert manifest["shards_computed"] == 1 and manifest["shards_reused"] == 39
    assert _files(out) == clean

    # a run record cut short (a run killed while writing it) is not a JSONDecodeError: shards are reused
    (out / shards.RUN_FILE).write_text('{"fingerprint": "ab')
    manifest = run_score(_cfg(small_nullsette, "kmer:3", out, limit=8, chunk_rows=4))
    assert manifest["shards_reused"] == 40
    json.loads((out / shards.RUN_FILE).read_text())
    # ... and when it is cut short beside shards of another model, the folder is still refused
    (out / shards.RUN_FILE).write_text('{"finger')
    with pytest.raises(GlmscoreError, match="different model"):
        run_score(_cfg(small_nullsette, "kmer:4", out, limit=8, chunk_rows=4))

    # a damaged manifest: one sentence
    manifest_text = (out / shards.MANIFEST).read_text()
    (out / shards.MANIFEST).write_text(manifest_text[:50])
    assert main(["analyze", "nullsette", "--scores", str(out), "--out", str(report), "--n-perm", "10"]) == 2
    (out / shards.MANIFEST).write_text(manifest_text)

    # readers read the manifest's shards only: a stray copy, a stale shard and a stray .tmp change nothing
    before = shards.read_scores(out)
    stray_dir = out / "dataset=synthetic_ecoli" / "group=nonmutant"
    shutil.copy(victim, stray_dir / "part-00009.parquet")
    (stray_dir / "part-00003.parquet.tmp").write_bytes(b"half a file")
    after = shards.read_scores(out)
    assert len(after) == len(before) == 20 * 8 and after.equals(before)
    assert main(["analyze", "nullsette", "--scores", str(out), "--out", str(report), "--n-perm", "10"]) == 0
    # a rerun removes the stray temporary file and refuses the shard it would not write
    with pytest.raises(GlmscoreError, match="holds 1 shard\\(s\\) that this run would not write"):
        run_score(_cfg(small_nullsette, "kmer:3", out, limit=8, chunk_rows=4))
    (stray_dir / "part-00009.parquet").unlink()
    run_score(_cfg(small_nullsette, "kmer:3", out, limit=8, chunk_rows=4))
    assert not list(out.rglob("*.tmp"))


def test_kmer_crossfit_shards_follow_their_reference(ray_cluster, small_nullsette, tmp_path):
    """(e) a k-mer crossfit table is fitted on every nonmutant of its dataset: editing one nonmutant that
    no scored chunk contains (outside --limit) makes every shard of that dataset stale, and only those."""
    data = tmp_path / "data"
    shutil.copytree(small_nullsette, data)
    out = tmp_path / "scores"
    first = run_score(_cfg(data, "kmer:3", out, limit=4, chunk_rows=4))
    per_dataset = {d: sum(1 for p in first["rows_per_partition"] if p.startswith(f"dataset={d}/"))
                   for d in ("synthetic_ecoli",)}
    nonmutant = data / "synthetic_ecoli" / "nonmutant.txt"
    lines = nonmutant.read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if line and not line.startswith(">"))  # the last cassette
    lines[last] = lines[last][:20] + ("A" if lines[last][20] != "A" else "C") + lines[last][21:]
    nonmutant.write_text("\n".join(lines) + "\n")
    again = run_score(_cfg(data, "kmer:3", out, limit=4, chunk_rows=4))
    assert again["shards_computed"] == per_dataset["synthetic_ecoli"] == 20
    assert again["shards_reused"] == first["shards_computed"] - 20
    fresh = run_score(_cfg(data, "kmer:3", tmp_path / "fresh", limit=4, chunk_rows=4))
    assert _files(out) == _files(tmp_path / "fresh") and fresh["rows_total"] == again["rows_total"]


# ---------------------------------------------------------------- killed processes (a, c)

# The killed processes run a k-mer model: what is under test is Ray's restart of a pool actor and glmscore's
# resume, which are the same for every backend, and a k-mer run spends its time in the pipeline rather than
# in loading torch (a tiny Llama made each of the three runs ~50 s longer).
KILL_MODEL = "kmer:3"
KILL_SHARDS = 20 * 3  # --limit 3 --chunk-rows 1: one shard per row, so the kills land mid-run


def _score_cmd(data, model, out, *extra) -> list[str]:
    return [sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data", str(data), "--model",
            str(model), "--out", str(out), "--limit", "3", "--chunk-rows", "1", "--datasets", "synthetic_ecoli", *extra]


def _tail(log: Path) -> str:
    """The end of a run's log, without the list of extension modules that a fatal error prints last."""
    lines = [line for line in log.read_text().splitlines() if not line.startswith("Extension modules:")]
    return "\n".join(lines)[-4000:]


def _start(cmd, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_for_shards(out: Path, n: int, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(list(out.rglob("part-*.parquet"))) < n:
        assert proc.poll() is None, _tail(log)
        assert time.monotonic() < deadline, _tail(log)
        time.sleep(0.2)


def _session_pids(sid: int, needle: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z" and needle in cmd:
            found.append(int(d.name))
    return found


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the run and every process of its session, and return once none is left: Ray's workers sit in
    process groups of their own, and one that outlived the driver could still rename a shard into place
    after the test has counted them."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + 30
    while left := _session_pids(proc.pid, ""):
        assert time.monotonic() < deadline, f"processes of the killed run still alive: {left}"
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, small_nullsette):
    """The reference: an undisturbed run of the same job, and its wall time."""
    out = tmp_path_factory.mktemp("clean") / "scores"
    log = out.parent / "log"
    t0 = time.monotonic()
    proc = _start(_score_cmd(small_nullsette, KILL_MODEL, out), log)
    assert proc.wait(timeout=600) == 0, _tail(log)
    return _files(out), time.monotonic() - t0


def test_a_killed_model_actor_is_restarted_and_nothing_is_lost(small_nullsette, clean_run, tmp_path):
    """(a) SIGKILL the model actor mid-run: Ray restarts it and retries its unit; every shard is written
    once and is byte-identical to an undisturbed run."""
    files, clean_s = clean_run
    out, log = tmp_path / "scores", tmp_path / "log"
    t0 = time.monotonic()
    proc = _start(_score_cmd(small_nullsette, KILL_MODEL, out), log)
    try:
        _wait_for_shards(out, 4, proc, log)
        actors = []
        while not actors and proc.poll() is None:
            actors = _session_pids(proc.pid, "ScoreActor")
            time.sleep(0.1)
        assert actors, "no ScoreActor process found in the job's session"
        killed_at = time.monotonic()
        for pid in actors:
            os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=600) == 0, _tail(log)
    finally:
        _kill_session(proc)
    print(f"\nkilled actor: job {time.monotonic() - t0:.1f} s vs clean {clean_s:.1f} s "
          f"({time.monotonic() - killed_at:.1f} s from the kill to the end)")
    assert _files(out) == files
    manifest = json.loads((out / shards.MANIFEST).read_text())
    assert manifest["rows_total"] == KILL_SHARDS and len(manifest["shards"]) == len(files) == KILL_SHARDS


def test_a_killed_driver_resumes_with_only_the_missing_shards(small_nullsette, clean_run, tmp_path):
    """(c) SIGKILL the driver (and the local cluster it started) mid-run and run again: the finished shards
    are reused, only the missing ones are computed, and the result is byte-identical to a clean run."""
    files, clean_s = clean_run
    out, log = tmp_path / "scores", tmp_path / "log"
    proc = _start(_score_cmd(small_nullsette, KILL_MODEL, out), log)
    try:
        _wait_for_shards(out, 6, proc, log)
    finally:
        _kill_session(proc)
    assert not (out / shards.MANIFEST).exists()  # an interrupted run never looks finished
    done = len(list(out.rglob("part-*.parquet")))
    t0 = time.monotonic()
    again = _start(_score_cmd(small_nullsette, KILL_MODEL, out), log)
    assert again.wait(timeout=600) == 0, _tail(log)
    rerun_s = time.monotonic() - t0
    manifest = json.loads((out / shards.MANIFEST).read_text())
    print(f"\nkilled driver: {done} of {len(files)} shards kept; rerun {rerun_s:.1f} s vs clean {clean_s:.1f} s")
    assert manifest["shards_reused"] == done and manifest["shards_computed"] == len(files) - done
    assert _files(out) == files


TEARDOWN_CHILD = """
import os, sys
from glmscore.pipelines.supervise import CHANNEL
CHANNEL.attach()  # the child of glmscore's supervising parent
CHANNEL.cluster("local", sys.argv[1])
print("scored 120 rows", flush=True)
if sys.argv[2] == "finished":
    CHANNEL.finished(0)
print("ASSERTION FAILED: grpc_cq_begin_op", file=sys.stderr, flush=True)
os.abort()  # what Ray's teardown once did to a driver whose job was complete
"""
# the parent as the glmscore command runs it, with the child above instead of the CLI
TEARDOWN = "import sys; from glmscore.pipelines.supervise import supervise; sys.exit(supervise(['-c', sys.argv[1], *sys.argv[2:]]))"


@pytest.mark.parametrize("said", ["finished", "nothing"])
def test_a_crash_in_rays_teardown_after_the_job_keeps_the_jobs_status(tmp_path, said):
    """A driver that aborts after the command finished (Ray's shutdown, seen once in CI as a gRPC
    assertion and SIGABRT) exits with the command's status, its teardown noise in Ray's log; one that
    aborts before it said anything is a killed driver, in one sentence."""
    log = tmp_path / "ray.log"
    proc = subprocess.run([sys.executable, "-c", TEARDOWN, TEARDOWN_CHILD, str(log), said], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert "scored 120 rows" in proc.stdout
    if said == "finished":
        assert proc.returncode == 0, proc.stderr
        assert "grpc_cq_begin_op" in log.read_text() and "grpc_cq_begin_op" not in proc.stderr
        assert "after the job had finished; the job's status is kept" in proc.stderr
    else:
        assert proc.returncode == 128 + signal.SIGABRT, proc.stderr
        assert "the job's driver process was killed (SIGABRT)" in proc.stderr
