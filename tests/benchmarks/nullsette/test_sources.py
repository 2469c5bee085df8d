"""Nullsette build and discovery: byte-exact concatenation, pairing and FASTA validation."""

import csv
import json
import shutil
import subprocess
import sys

import pytest

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.benchmarks.nullsette.demo import write_spec
from glmscore.pipelines.benchmarks.nullsette.source import Nullsette, build, discover
from glmscore.pipelines.fasta import read_all
from tests.conftest import ROOT, shared_data


def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "glmscore", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300)


def _assert_one_line_error(proc, phrase):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("glmscore: error:")]
    assert len(lines) == 1 and phrase in lines[0], proc.stderr


def test_build_is_byte_exact_concatenation(tmp_path):
    spec = write_spec(tmp_path / "spec", 5, seed=1)
    build(spec, tmp_path / "pd")
    order = json.loads((spec / "translocations.json").read_text())["prokaryotic"]
    rows = list(csv.DictReader(open(spec / "synthetic_ecoli.tsv"), delimiter="\t"))
    names, seqs = read_all(tmp_path / "pd" / "synthetic_ecoli" / "nonmutant.txt")
    assert names == [r["cassette_id"] for r in rows]
    assert seqs == ["".join(r[c] for c in order["nonmutant"]) for r in rows]
    _, m7 = read_all(tmp_path / "pd" / "synthetic_ecoli" / "mutant_translocation7.txt")
    assert m7 == ["".join(r[c] for c in order["mutants"][6]) for r in rows]
    groups = discover(tmp_path / "pd")
    assert len(groups) == 20 and {g.n_records for g in groups} == {5}


def test_unpaired_and_malformed_files(small_nullsette, tmp_path):
    data = tmp_path / "pd"
    shutil.copytree(small_nullsette, data)
    folder = data / "synthetic_ecoli"
    # a mutant file with one record fewer
    text = (folder / "mutant_translocation3.txt").read_text().splitlines()
    (folder / "mutant_translocation3.txt").write_text("\n".join(text[:-2]) + "\n")
    with pytest.raises(GlmscoreError, match="has 11 records but nonmutant.txt has 12"):
        discover(data)
    (folder / "mutant_translocation3.txt").write_text("\n".join(text) + "\n")
    # a gap in the mutant numbering
    (folder / "mutant_translocation5.txt").rename(folder / "x.txt")
    with pytest.raises(GlmscoreError, match="without gaps"):
        discover(data)
    (folder / "x.txt").rename(folder / "mutant_translocation5.txt")
    # an empty record and a non-FASTA line
    good = (folder / "nonmutant.txt").read_text()
    (folder / "nonmutant.txt").write_text(">a\n>b\nACGT\n" + good)
    with pytest.raises(GlmscoreError, match="has no sequence"):
        discover(data)
    (folder / "nonmutant.txt").write_text("ACGT\n" + good)
    with pytest.raises(GlmscoreError, match="before the first '>'"):
        discover(data)
    (folder / "nonmutant.txt").write_text(">a\nAC GT1\n" + good)
    with pytest.raises(GlmscoreError, match="not sequence letters"):
        discover(data)
    # blank lines before the first header are not a record (they used to read as "changed while the job ran")
    (folder / "nonmutant.txt").write_text("\n\n" + good)
    bench = Nullsette(str(data))
    unit = next(u for u in bench.units(chunk_rows=1024, limit=None, datasets=None) if u.group == "nonmutant")
    assert bench.read(unit).sequences == read_all(folder / "nonmutant.txt")[1] and unit.n_rows == good.count(">")
    # a UTF-8 byte-order mark before the first header (it used to be "a line before the first '>'")
    (folder / "nonmutant.txt").write_bytes(b"\xef\xbb\xbf" + good.encode())
    unit = next(u for u in bench.units(chunk_rows=1024, limit=None, datasets=None) if u.group == "nonmutant")
    names, seqs = bench.read(unit).names, bench.read(unit).sequences
    (folder / "nonmutant.txt").write_text(good)
    assert (names, seqs) == read_all(folder / "nonmutant.txt")


def test_cli_user_errors_are_one_sentence(tmp_path, small_nullsette):
    _assert_one_line_error(_run_cli("score", "--benchmark", "nullsette", "--data", str(small_nullsette),
                                    "--model", "no-such-model", "--out", str(tmp_path / "o")), "unknown model")
    _assert_one_line_error(_run_cli("score", "--benchmark", "nullsette", "--data", str(tmp_path / "missing"),
                                    "--model", "kmer:3", "--out", str(tmp_path / "o")), "does not exist")
    _assert_one_line_error(_run_cli("nullsette", "build", "--spec", str(tmp_path / "nope"), "--out",
                                    str(tmp_path / "pd")), "is not a folder")
    (tmp_path / "spec").mkdir()
    _assert_one_line_error(_run_cli("nullsette", "build", "--spec", str(tmp_path / "spec"), "--out",
                                    str(tmp_path / "pd")), "translocations.json is missing")
    _assert_one_line_error(_run_cli("analyze", "nullsette", "--scores", str(tmp_path / "o"), "--out",
                                    str(tmp_path / "r")), "does not exist")
    (tmp_path / "half").mkdir()
    _assert_one_line_error(_run_cli("analyze", "nullsette", "--scores", str(tmp_path / "half"), "--out",
                                    str(tmp_path / "r")), "not a finished output folder")
    assert not (tmp_path / "o" / "_manifest.json").exists()


def test_an_unwritable_out_is_one_sentence(tmp_path, small_nullsette):
    """/sys refuses new folders even to root (an unwritable location the tests can rely on)."""
    blocked = "/sys/glmscore_test_out"
    spec = write_spec(tmp_path / "spec", 3)
    for args in (("nullsette", "build", "--spec", str(spec), "--out", blocked),
                 ("score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", "kmer:3", "--out", blocked),
                 ("demo", "--out", blocked)):
        proc = _run_cli(*args)
        _assert_one_line_error(proc, blocked)
        assert "Operation not permitted." in proc.stderr and proc.stderr.count(blocked) == 1, proc.stderr


def test_bad_component_table(tmp_path):
    spec = write_spec(tmp_path / "spec", 3)
    table = spec / "synthetic_ecoli.tsv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:2] + [lines[2].replace("\tATG\t", "\t\t")]) + "\n")
    with pytest.raises(GlmscoreError, match="line 3, component start_codon is empty"):
        build(spec, tmp_path / "pd")
    assert not (tmp_path / "pd" / "synthetic_ecoli").exists()
    # a UTF-8 byte-order mark before the header (it used to be "the header must be cassette_id, ...")
    table.write_bytes(b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode())
    build(spec, tmp_path / "bom")
    table.write_text("\n".join(lines) + "\n")
    build(spec, tmp_path / "plain")
    for name in ("nonmutant.txt", "mutant_translocation1.txt"):
        assert (tmp_path / "bom" / "synthetic_ecoli" / name).read_bytes() == (tmp_path / "plain" / "synthetic_ecoli" / name).read_bytes()


def test_repeated_names_and_lowercase_records_are_warnings(small_nullsette, tmp_path):
    data = tmp_path / "pd"
    shutil.copytree(small_nullsette, data)
    path = data / "synthetic_ecoli" / "mutant_translocation2.txt"
    for each in sorted((data / "synthetic_ecoli").glob("*.txt")):  # one name twice, in every file (they pair by name)
        names, seqs = read_all(each)
        names[3] = names[1]
        if each == path:
            seqs[5], seqs[7] = seqs[5].lower(), seqs[7][:4].lower() + seqs[7][4:]
        each.write_text("".join(f">{n}\n{s}\n" for n, s in zip(names, seqs)))
    bench = Nullsette(str(data))
    bench.units(chunk_rows=1024, limit=None, datasets=None)
    repeated = "1 record(s) repeat an earlier record's name (records pair by position; a repeated name does not tell cassettes apart)"
    assert [w for w in bench.warnings if repeated not in w] == [
        f"{path}: 2 record(s) have lowercase letters, read as uppercase (a soft mask is not kept)"]
    assert f"{path}: {repeated}" in bench.warnings and len(bench.warnings) == 21  # 20 files repeat the name
    clean = Nullsette(str(small_nullsette))
    clean.units(chunk_rows=1024, limit=None, datasets=None)
    assert clean.warnings == []


def test_gzipped_fasta_is_read_through_a_copy_decompressed_once(small_nullsette, tmp_path):
    """Gzipped group files (.txt.gz) give the plain files' units, rows and reference sequences; the copies
    made beside them are never found as a dataset of their own; a plain file wins over its .gz."""
    import gzip

    data = tmp_path / "gz" / "synthetic_ecoli"
    data.mkdir(parents=True)
    for path in (small_nullsette / "synthetic_ecoli").iterdir():
        (data / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    plain, packed = Nullsette(str(small_nullsette)), Nullsette(str(tmp_path / "gz"))
    for _ in range(2):  # the second scan finds the copies made by the first, and only as copies
        want = plain.units(chunk_rows=5, limit=None, datasets=None)
        got = packed.units(chunk_rows=5, limit=None, datasets=None)
        key = [(u.dataset, u.group, u.n_rows, u.first_row, u.crc) for u in want]
        assert [(u.dataset, u.group, u.n_rows, u.first_row, u.crc) for u in got] == key
    assert all(json.loads(u.locator)["gz"].endswith(".txt.gz") for u in got)
    assert [packed.read(u).sequences for u in got] == [plain.read(u).sequences for u in want]
    assert sum(packed.reference_sequences(got, "synthetic_ecoli"), []) == \
        read_all(small_nullsette / "synthetic_ecoli" / "nonmutant.txt")[1]
    (data / "nonmutant.txt.gz").unlink()
    shutil.copy(small_nullsette / "synthetic_ecoli" / "nonmutant.txt", data / "nonmutant.txt")
    mixed = Nullsette(str(tmp_path / "gz")).units(chunk_rows=5, limit=None, datasets=None)
    assert [(u.dataset, u.group, u.n_rows, u.crc) for u in mixed] == [(u.dataset, u.group, u.n_rows, u.crc) for u in want]
    assert "gz" not in json.loads(mixed[0].locator)


@pytest.mark.realdata
def test_build_all_five_real_datasets_byte_exact(tmp_path):
    spec = shared_data("nullsette")
    built = build(spec, tmp_path / "pd")
    assert built == {"deboer_Abf1TATA": 1500, "deboer_pTpA": 1500, "kosuri": 1500, "lagator": 1500, "zahm": 1500}
    kingdoms = json.loads((spec / "translocations.json").read_text())
    for table, folder, kingdom, n_types, (lo, hi) in [
        ("kosuri", "kosuri", "prokaryotic", 19, (887, 928)), ("lagator", "lagator", "prokaryotic", 19, (970, 974)),
        ("deboer_Abf1TATA", "deboer/Abf1TATA", "eukaryotic", 11, (1161, 1186)),
        ("deboer_pTpA", "deboer/pTpA", "eukaryotic", 11, (1143, 1161)), ("zahm", "zahm", "eukaryotic", 11, (2326, 2542)),
    ]:
        rows = list(csv.DictReader(open(spec / f"{table}.tsv"), delimiter="\t"))
        order = kingdoms[kingdom]
        names, seqs = read_all(tmp_path / "pd" / folder / "nonmutant.txt")
        assert seqs == ["".join(r[c] for c in order["nonmutant"]) for r in rows]
        assert lo <= min(map(len, seqs)) and max(map(len, seqs)) <= hi
        k = n_types
        _, last = read_all(tmp_path / "pd" / folder / f"mutant_translocation{k}.txt")
        assert last == ["".join(r[c] for c in order["mutants"][k - 1]) for r in rows]
        assert not (tmp_path / "pd" / folder / f"mutant_translocation{k + 1}.txt").exists()
    groups = discover(tmp_path / "pd")
    assert sum(g.group != "nonmutant" for g in groups) == 71


def test_model_problems_fail_before_ray_starts(tmp_path, small_nullsette, tiny_llama):
    """A model folder without tokenizer or weights, or a --layer the model lacks: one sentence from the
    driver's preflight, before any Ray process exists (no "Started a local Ray instance" line)."""
    no_tok, no_weights = tmp_path / "no-tokenizer", tmp_path / "no-weights"
    shutil.copytree(tiny_llama, no_tok)
    shutil.copytree(tiny_llama, no_weights)
    for f in no_tok.glob("tokenizer*"):
        f.unlink()
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    cut = tmp_path / "truncated"
    shutil.copytree(tiny_llama, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    from tests.tiny_models import make_tiny_llama

    short = make_tiny_llama(tmp_path / "short-context", max_positions=64)  # the cassettes are 300-450 nt
    base = ("--benchmark", "nullsette", "--data", str(small_nullsette), "--out", str(tmp_path / "o"))
    for args, phrase in ((("score", "--model", str(short)), "1 dataset(s) hold sequences longer than the model's "
                                                            "context of 64 tokens (synthetic_ecoli: 4"),
                         (("score", "--model", str(no_tok)), "could not load the tokenizer"),
                         (("score", "--model", str(no_weights)), "has no weights"),
                         (("score", "--model", str(cut)), f"the weights {weights} are damaged or incomplete"),
                         (("embed", "--model", str(tiny_llama), "--layer", "7"), "--layer 7 does not exist: model tiny-llama has 3")):
        proc = _run_cli(*args, *base)
        _assert_one_line_error(proc, phrase)
        assert "Started a local Ray instance" not in proc.stderr + proc.stdout


def test_actor_pools_a_local_cluster_can_never_place_are_refused(tmp_path, small_nullsette):
    base = ("score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", "kmer:3", "--limit", "2",
            "--out", str(tmp_path / "o"))
    _assert_one_line_error(_run_cli(*base, "--gpus-per-actor", "1"), "each actor asks for 1 GPU(s) but this local cluster has 0")
    _assert_one_line_error(_run_cli(*base, "--min-actors", "50"), "--min-actors 50 cannot start: this local cluster fits")


def test_sigterm_ends_a_run_with_one_sentence(tmp_path, small_nullsette, tiny_llama):
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data",
                             str(small_nullsette), "--model", str(tiny_llama), "--chunk-rows", "1", "--out", str(tmp_path / "o")],
                            cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    first = proc.stderr.readline()  # our first line names the cluster and the output folder
    assert first.startswith("glmscore: score on a new local Ray cluster") and str(tmp_path / "o") in first, first
    for line in proc.stderr:  # scoring under way (a SIGTERM inside ray.init itself: see the README)
        if " rows (" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "glmscore: terminated; completed shards are kept" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "_manifest.json").exists()


def test_console_is_quiet_with_real_progress_and_verbose_brings_ray_back(tmp_path, small_nullsette):
    base = ("score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", "kmer:3", "--limit", "4")
    proc = _run_cli(*base, "--out", "q", cwd=tmp_path)  # a relative --out: resolved on the driver
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "q" / "_manifest.json").read_text())["config"]
    assert config["out"] == str(tmp_path / "q") and config["data"] == str(small_nullsette)
    console = (proc.stdout + proc.stderr).splitlines()
    ours = [line for line in console if line.startswith(("glmscore: ", "scored "))]
    others = [line for line in console if line not in ours and "core_worker.cc" not in line]  # C++ log: see README
    assert not others, others
    assert proc.stderr.splitlines()[0].startswith("glmscore: score on a new local Ray cluster")
    assert any(line.startswith("glmscore: 80/80 rows (100%)") for line in ours)
    assert (tmp_path / "q" / "_logs" / "ray.log").stat().st_size > 0
    # a rerun with nothing to compute verifies the shards and rewrites the manifest without starting Ray
    again = _run_cli(*base, "--out", "q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "every shard in" in again.stderr and "Ray not started" in again.stderr
    assert "0 of 20 shards to compute; 20 reused" in again.stderr and "Ray" not in again.stdout
    manifest = json.loads((tmp_path / "q" / "_manifest.json").read_text())
    assert manifest["shards_reused"] == 20 and manifest["rows_total"] == 80
    # --overwrite of that complete folder recomputes every shard on a cluster of its own (it used to skip
    # Ray's start, then find every shard replaced, and Ray Data joined whatever cluster ran on the machine)
    replaced = _run_cli(*base, "--out", "q", "--overwrite", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stderr.splitlines()[0].startswith("glmscore: score on a new local Ray cluster"), replaced.stderr[:2000]
    assert "20 of 20 shards to compute" in replaced.stderr and "Connecting to existing Ray cluster" not in replaced.stderr
    assert json.loads((tmp_path / "q" / "_manifest.json").read_text())["shards_computed"] == 20
    # a rerun whose --limit would cut those shards short is refused before Ray starts (it used to be after)
    short = _run_cli(*base[:-1], "2", "--out", "q", cwd=tmp_path)
    _assert_one_line_error(short, "holds a shard of 4 rows where this run would write 2")
    assert "Ray cluster" not in short.stderr and "Ray's logs" not in short.stderr
    # another configuration: refused before Ray starts too, in a sentence naming what changed
    other = _run_cli(*base, "--reduction", "sum", "--out", "q", cwd=tmp_path)
    _assert_one_line_error(other, "holds scores from another configuration (--reduction mean -> sum); choose a new --out")
    assert "Ray cluster" not in other.stderr and "Ray's logs" not in other.stderr
    loud = _run_cli("-v", *base, "--out", str(tmp_path / "v"))
    assert loud.returncode == 0 and "INFO" in loud.stderr and "execution finished" in loud.stderr


def test_a_hub_model_without_network_is_one_sentence_at_once(tmp_path, small_nullsette):
    import os

    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}  # nothing listens on 9
    for model in ("metagene-1", "some-org/some-model"):  # a card id and a bare hub id, neither cached
        proc = subprocess.run([sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data",
                               str(small_nullsette), "--model", model, "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
        _assert_one_line_error(proc, "is not in the Hugging Face cache and 127.0.0.1 cannot be reached")
        assert len(proc.stderr.splitlines()) <= 3, proc.stderr  # no minute of retry messages


def test_sigterm_ends_the_demo_too(tmp_path):
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "glmscore", "demo", "--out", str(tmp_path / "demo")], cwd=ROOT,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:  # wait until the demo's first scoring job is under way
        if " rows (" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "glmscore: terminated" in err and "Traceback" not in err, err[-2000:]
