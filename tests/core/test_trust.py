"""Code runs only when the person at the command line asked for it: a sweep file cannot turn remote code on,
and a card never loads a folder of the working directory that happens to carry its hub id. Each case is the
``glmscore`` command as a user runs it, with a model folder whose code, if ever imported, leaves a file."""

import json
import os
import subprocess
import sys
from pathlib import Path


def _glmscore(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "glmscore", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _hostile_model(folder: Path, marker: Path) -> Path:
    """A model folder whose config names code of its own (``auto_map``): importing that code touches ``marker``."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "hostile", "architectures": ["HostileForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_hostile.HostileConfig",
                     "AutoModelForCausalLM": "modeling_hostile.HostileForCausalLM"}}))
    code = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    (folder / "configuration_hostile.py").write_text(code + "from transformers import PretrainedConfig\n"
                                                     "class HostileConfig(PretrainedConfig):\n    model_type = 'hostile'\n")
    (folder / "modeling_hostile.py").write_text(code)
    return folder


def test_a_sweep_file_cannot_turn_on_remote_code(tmp_path, small_nullsette):
    marker = tmp_path / "code-ran"
    model = _hostile_model(tmp_path / "downloaded" / "model", marker)
    sweep = tmp_path / "colleague.yaml"
    sweep.write_text(f"out: {tmp_path / 'out'}\nmodels:\n  - model: {model}\n    trust_remote_code: true\n"
                     f"benchmarks:\n  - {{name: nullsette, data: {small_nullsette}}}\n")
    for flags in (["--check"], ["--dry-run"], []):
        ran = _glmscore("sweep", str(sweep), *flags, cwd=tmp_path)
        assert ran.returncode == 2, ran.stderr
        assert "trust_remote_code cannot be set in a sweep file" in ran.stderr and "Traceback" not in ran.stderr
        assert not marker.exists(), "the model folder's code ran"
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(f"out: {tmp_path / 'out'}\ndefaults: {{trust_remote_code: true}}\nmodels: [kmer:3]\n"
                        f"benchmarks:\n  - {{name: nullsette, data: {small_nullsette}}}\n")
    ran = _glmscore("sweep", str(defaults), "--check", cwd=tmp_path)
    assert ran.returncode == 2 and "defaults: trust_remote_code cannot be set in a sweep file" in ran.stderr


def test_a_card_never_loads_a_working_directory_folder_of_its_hub_id(tmp_path, small_nullsette):
    """``--model hyenadna-small-32k`` (a card that allows remote code) from a directory holding
    ``LongSafari/hyenadna-small-32k-seqlen-hf/``: transformers would load that folder, with the card's permission."""
    marker = tmp_path / "code-ran"
    _hostile_model(tmp_path / "LongSafari" / "hyenadna-small-32k-seqlen-hf", marker)
    for model in ("hyenadna-small-32k", "LongSafari/hyenadna-small-32k-seqlen-hf"):
        ran = _glmscore("score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", model,
                        "--out", str(tmp_path / "out"), "--dry-run", cwd=tmp_path)
        assert ran.returncode == 2, ran.stderr
        assert "means the hub repository LongSafari/hyenadna-small-32k-seqlen-hf, but the working directory holds" in ran.stderr
        assert not marker.exists() and not (tmp_path / "out").exists()


def test_credentials_in_a_uri_are_refused_and_never_echoed(tmp_path, small_nullsette):
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    for args in (["score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", "kmer:3",
                  "--out", f"s3://AKIAEXAMPLE:{secret}@bucket/runs/k3"],
                 ["analyze", "nullsette", "--scores", f"s3://AKIAEXAMPLE:{secret}@bucket/runs/k3", "--out", "report"]):
        ran = _glmscore(*args, cwd=tmp_path)
        assert ran.returncode == 2, ran.stderr
        assert "carries credentials in the URI" in ran.stderr and "s3://***@bucket" in ran.stderr
        assert secret not in ran.stderr + ran.stdout and "AKIAEXAMPLE" not in ran.stderr and "Traceback" not in ran.stderr
    assert not list(tmp_path.iterdir())  # nothing written, no local folder named "s3:"


def test_a_name_from_the_data_never_becomes_a_path_outside_out(tmp_path):
    """NABench's RNA_TYPE names the shards' group folder: ``../../../../outside/pwned`` is refused in one sentence
    before anything is written (it wrote a shard outside --out, and listed it in the manifest)."""
    data = tmp_path / "assays"
    data.mkdir()
    rows = ["DMS_ID,RNA_TYPE,RAW_CONSTRUCT_SEQ", "tiny,../../../../outside/pwned,ACGTACGTAC"]
    (data / "metadata.csv").write_text("\n".join(rows) + "\n")
    (data / "tiny.csv").write_text("mutant,DMS_score,sequence\nA1C,0.5,CCGTACGTAC\nC2A,0.1,AAGTACGTAC\n"
                                   "G3T,0.9,ACTTACGTAC\nT4G,0.3,ACGGACGTAC\n")
    for dry in (["--dry-run"], []):
        ran = _glmscore("embed", "--benchmark", "nabench", "--data", str(data), "--model", "onehot", "--out",
                        str(tmp_path / "deep" / "er" / "out"), *dry, cwd=tmp_path)
        assert ran.returncode == 2, ran.stderr
        assert "the group name '../../../../outside/pwned' (from the input) cannot name a folder" in ran.stderr
        assert "Traceback" not in ran.stderr
    assert not (tmp_path / "outside").exists() and not list(tmp_path.rglob("*.parquet"))


def test_links_in_an_output_folder_are_never_followed(tmp_path, small_nullsette):
    """A lock file, a dataset folder or a shard that is a symbolic link (a shared folder someone prepared) would
    make glmscore write, or --overwrite delete, outside --out: refused in one sentence, the targets untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.txt"
    precious.write_text("keep me")
    (outside / "part-00000.parquet").write_bytes(b"someone else's file")
    cases = {".glmscore.lock": precious, "dataset=synthetic_ecoli": outside, "dataset=x": outside}
    for i, (name, target) in enumerate(cases.items()):
        out = tmp_path / f"out{i}"
        out.mkdir()
        (out / name).symlink_to(target)
        flags = ["--overwrite"] if name == "dataset=x" else []
        ran = _glmscore("score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", "kmer:3",
                        "--out", str(out), "--limit", "2", *flags, cwd=tmp_path)
        assert ran.returncode == 2, ran.stderr
        assert f"holds a symbolic link ({name} -> {target})" in ran.stderr or "is a symbolic link" in ran.stderr, ran.stderr
        assert "Traceback" not in ran.stderr
    assert precious.read_text() == "keep me" and (outside / "part-00000.parquet").read_bytes() == b"someone else's file"
    assert sorted(p.name for p in outside.iterdir()) == ["part-00000.parquet", "precious.txt"]


def test_reports_are_safe_to_open_whatever_the_inputs_are_named(tmp_path):
    """An assay file named like a Markdown link scored and analysed by the commands a user runs: report.md shows the
    name as text (no live link, no remote image, no split row) and report.html carries no link or image that leaves
    the report, under a Content-Security-Policy that allows only inline images."""
    data = tmp_path / "assays"
    data.mkdir()
    evil = "[x](javascript:alert(1))|![p](http:evil)"
    rows = "mutant,DMS_score,sequence\n" + "".join(f"M{i},{i * 0.37 % 1:.3f},{'ACGT'[i % 4]}CGTACGTACGGT{'ACGT'[i // 4 % 4]}\n"
                                                   for i in range(16))
    (data / f"{evil}.csv").write_text(rows)
    scored = _glmscore("score", "--benchmark", "nabench", "--data", str(data), "--model", "kmer:2", "--out",
                       str(tmp_path / "k2"), cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    analyzed = _glmscore("analyze", "nabench", "--scores", str(tmp_path / "k2"), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "](javascript:" not in text.replace("\\](", "") and "\\[x\\](javascript:alert(1))\\|\\!\\[p\\](http:evil)" in text
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'; img-src data:" in page
    assert 'href="javascript' not in page and 'src="http' not in page
    assert "[x](javascript:alert(1))|![p](http:evil)" in page  # shown as text, whole, in one cell


def test_no_trust_remote_code_withdraws_a_cards_permission():
    """A card shipped with glmscore may allow its repository's code; the person at the command line can refuse it."""
    from glmscore.models.base import resolve_card
    from glmscore.pipelines.cli import build_parser, score_config_from_args

    common = ["score", "--benchmark", "nullsette", "--data", "d", "--model", "hyenadna-small-32k", "--out", "o"]
    assert score_config_from_args(build_parser().parse_args(common)).trust_remote_code is None
    assert score_config_from_args(build_parser().parse_args(common + ["--trust-remote-code"])).trust_remote_code is True
    refused = score_config_from_args(build_parser().parse_args(common + ["--no-trust-remote-code"]))
    assert refused.trust_remote_code is False
    assert resolve_card("hyenadna-small-32k").trust_remote_code
    assert not resolve_card("hyenadna-small-32k", trust_remote_code=refused.trust_remote_code).trust_remote_code


def test_a_remote_code_card_without_a_commit_runs_only_when_asked(tmp_path, small_nullsette):
    """``hyenadna-small-32k`` allows its repository's code at ``main``: whatever the repository holds that day. The
    command refuses it in one sentence unless the user names a commit (--revision) or accepts today's code
    (--trust-remote-code); nothing is loaded before that sentence."""
    ran = _glmscore("score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", "hyenadna-small-32k",
                    "--out", str(tmp_path / "o"), "--dry-run", cwd=tmp_path)
    assert ran.returncode == 2, ran.stderr
    assert "runs code from LongSafari/hyenadna-small-32k-seqlen-hf at revision main" in ran.stderr
    assert "pass --revision <commit>" in ran.stderr and "Traceback" not in ran.stderr
    from glmscore.models.cards import pin_revision, shipped_cards

    card = shipped_cards()["hyenadna-small-32k"]
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert pin_revision(card, commit, None).revision == commit
    assert pin_revision(card, None, True) is card  # the person at the command line accepted today's code
    assert pin_revision(card.with_(revision=commit), None, None).revision == commit


def test_what_one_untrusted_input_may_cost_is_bounded(tmp_path, small_nullsette):
    """A line, a CSV header's field count and a decompression each have a bound; past it, one sentence naming the
    file (and line), read no further. The bounds are set low here through their environment variables, as a user
    with an unusual real input would raise them."""
    import gzip
    import shutil

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    data = tmp_path / "nullsette"
    shutil.copytree(small_nullsette, data)
    group = next((data / "synthetic_ecoli").glob("mutant_translocation1.txt"))
    text = group.read_text()
    group.unlink()
    with gzip.open(group.with_suffix(".txt.gz"), "wt") as fh:  # a valid-looking FASTA that unpacks 1000-fold
        fh.write(text + ">padding\n" + "A" * 3_000_000 + "\n")
    args = ["score", "--benchmark", "nullsette", "--data", str(data), "--model", "kmer:3", "--out", str(tmp_path / "o"),
            "--dry-run"]
    bomb = subprocess.run([sys.executable, "-m", "glmscore", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**env, "GLMSCORE_GUNZIP_CHECK_AFTER": "1000000", "GLMSCORE_MAX_GUNZIP_RATIO": "100"})
    assert bomb.returncode == 2 and "unpacks to more than 100 times its" in bomb.stderr and "mutant_translocation1.txt.gz" in bomb.stderr, bomb.stderr
    assert not list(data.rglob(".glmscore-gunzip/*.txt"))  # no half-unpacked copy left that looks complete

    group.with_suffix(".txt.gz").unlink()
    group.write_text(text.replace(text.splitlines()[1], text.splitlines()[1] * 20, 1))  # one 20-fold line
    long_line = subprocess.run([sys.executable, "-m", "glmscore", *args], cwd=tmp_path, capture_output=True, text=True,
                               timeout=600, env={**env, "GLMSCORE_MAX_LINE_BYTES": "2000"})
    assert long_line.returncode == 2, long_line.stderr
    assert "mutant_translocation1.txt: line 2 is longer than 2,000 bytes" in long_line.stderr

    assays = tmp_path / "assays"
    assays.mkdir()
    header = "mutant,DMS_score,sequence," + ",".join(f"c{i}" for i in range(1500))
    (assays / "wide.csv").write_text(header + "\n" + "A1C,0.5,CCGT" + "," * 1500 + "\n")
    wide = _glmscore("embed", "--benchmark", "nabench", "--data", str(assays), "--model", "onehot", "--out",
                     str(tmp_path / "w"), "--dry-run", cwd=tmp_path)
    assert wide.returncode == 2 and "wide.csv: line 1 has 1,503 fields, more than 1,000" in wide.stderr, wide.stderr
    for proc in (bomb, long_line, wide):
        assert "Traceback" not in proc.stderr
