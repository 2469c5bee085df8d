"""`glmscore sweep`: models x benchmarks in one Ray job, failures kept to their own runs, resume, the
combined report equal to `glmscore analyze`, and a sweep file checked whole before Ray starts."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import yaml

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.cli import main
from glmscore.pipelines.shards import read_manifest
from glmscore.pipelines.sweep import EXIT_RUNS_FAILED, SweepFileError, load_sweep, main_sweep
from tests.conftest import ROOT, shared_data
from tests.core.test_object_store import BUCKET, s3  # noqa: F401  (the moto S3 server fixture)

N_PERM = 2000


def _write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def kosuri(tmp_path_factory) -> Path:
    """The real kosuri cassettes (../shared/data/nullsette) in the released layout."""
    from glmscore.pipelines.benchmarks.nullsette.source import build

    out = tmp_path_factory.mktemp("nullsette") / "processed_data"
    build(shared_data("nullsette"), out, tables=["kosuri"])
    return out


@pytest.fixture(scope="module")
def swept(tmp_path_factory, kosuri):
    """One sweep through the CLI: kmer:3 and a tiny Llama score, a folder that is no model fails."""
    import ray

    from tests.tiny_models import make_tiny_llama

    base = tmp_path_factory.mktemp("sweep")
    llama = make_tiny_llama(base / "tiny-llama", hidden=64, layers=1, heads=1)
    (base / "not-a-model").mkdir()
    (base / "not-a-model" / "notes.txt").write_text("no weights here\n")
    path = _write(base / "sweep.yaml", {
        "out": "out",  # relative: from the sweep file's folder
        "local_cpus": 4,  # logical CPUs, so both runs' actors and their tasks fit at once on 2 cores
        "defaults": {"threads_per_actor": 1},
        "models": ["kmer:3", {"model": str(llama), "backend": "hf_causal"}, {"model": "not-a-model", "name": "broken"}],
        "benchmarks": [{"name": "nullsette", "data": str(kosuri), "limit": 6, "datasets": "kosuri",
                        "analyze": {"n_perm": N_PERM}}],
    })
    assert not ray.is_initialized()
    start = time.monotonic()
    code = main(["sweep", str(path)])
    wall = time.monotonic() - start
    root = base / "out"
    manifests = {m: read_manifest(root / "scores" / m / "nullsette") for m in ("kmer3", "tiny-llama")}
    print(f"sweep of 3 models x Nullsette (kosuri, limit 6): {wall:.1f} s")
    return {"path": path, "root": root, "code": code, "manifests": manifests, "wall": wall}


@pytest.mark.ray
@pytest.mark.realdata
def test_failing_model_fails_its_run_only(swept):
    import ray

    root = swept["root"]
    assert swept["code"] == EXIT_RUNS_FAILED
    assert not ray.is_initialized()  # the sweep shut down the cluster it started
    summary = pd.read_csv(root / "sweep_summary.csv").set_index("model")
    assert summary["status"].to_dict() == {"kmer3": "ok", "tiny-llama": "ok", "broken": "failed"}
    assert "has no config.json" in summary.loc["broken", "error"]
    assert summary.loc["kmer3", "rows"] == 6 * 20 and summary.loc["tiny-llama", "shards_computed"] == 20
    assert "has no config.json" in (root / "sweep_summary.md").read_text()
    assert not (root / "scores" / "broken" / "nullsette" / "_manifest.json").exists()
    # the two good runs ran at the same time, each with its own actor pool
    starts = [m["started"] for m in swept["manifests"].values()]
    ends = [m["finished"] for m in swept["manifests"].values()]
    assert max(starts) < min(ends)


@pytest.mark.ray
@pytest.mark.realdata
def test_combined_report(swept):
    report = swept["root"] / "report"
    grid = pd.read_csv(report / "nullsette_success_rate.csv")
    assert grid["model"].tolist() == ["kmer3", "tiny-llama"] and grid.columns.tolist() == ["model", "kosuri"]
    assert (report / "nullsette_success_heatmap.png").stat().st_size > 1000
    assert (report / "nullsette" / "report.md").exists()  # Nullsette's own analysis of both runs
    prov = pd.read_csv(report / "provenance.csv").set_index("model")
    for model, manifest in swept["manifests"].items():
        assert prov.loc[model, "fingerprint"] == manifest["config"]["fingerprint"]
        assert prov.loc[model, "card"] == manifest["model_card"]["id"]
    assert prov.loc["tiny-llama", "weights_digest"].startswith("sha256:")
    assert "torch" in prov.loc["tiny-llama", "packages"]
    text = (report / "report.md").read_text()
    assert "## Failed runs" in text and "broken" in text and "Provenance" in text
    page = (report / "report.html").read_text()  # the same report, one file: plots inlined, links to the HTML reports
    assert page.count('src="data:image/png;base64,') == text.count(".png)") > 0 and '.png"' not in page
    assert 'href="nullsette/report.html"' in page and (report / "nullsette" / "report.html").is_file()


@pytest.mark.ray
@pytest.mark.realdata
def test_combined_numbers_equal_single_run_analyze(swept, tmp_path):
    root = swept["root"]
    combined = pd.read_csv(root / "report" / "nullsette_success_rate.csv").set_index("model")
    tests = pd.read_csv(root / "report" / "nullsette" / "nullsette_tests.csv")
    for model in ("kmer3", "tiny-llama"):
        out = tmp_path / model
        assert main(["analyze", "nullsette", "--scores", str(root / "scores" / model / "nullsette"), "--out", str(out),
                     "--n-perm", str(N_PERM)]) == 0
        single = pd.read_csv(out / "nullsette_success.csv").set_index("dataset")
        assert combined.loc[model, "kosuri"] == single.loc["kosuri", "success_rate"]
        mine = tests[tests["model"] == model].reset_index(drop=True)
        alone = pd.read_csv(out / "nullsette_tests.csv")
        pd.testing.assert_frame_equal(mine, alone)


@pytest.mark.ray
@pytest.mark.realdata
def test_rerun_reuses_every_shard(swept):
    root = swept["root"]
    assert main_sweep(str(swept["path"])) == EXIT_RUNS_FAILED  # the broken model still fails
    for model, first in swept["manifests"].items():
        again = read_manifest(root / "scores" / model / "nullsette")
        assert again["shards_computed"] == 0 and again["shards_reused"] == first["shards_computed"] == 20
        assert again["config"]["fingerprint"] == first["config"]["fingerprint"]
    summary = pd.read_csv(root / "sweep_summary.csv").set_index("model")
    assert summary.loc["kmer3", "shards_reused"] == 20


def test_invalid_file_one_sentence_per_problem_before_ray(tmp_path, capsys):
    import ray

    (tmp_path / "data").mkdir()
    path = _write(tmp_path / "sweep.yaml", {
        "out": "out", "max_paralel": 2,
        "models": ["kmer:3", {"model": "kmer:4", "dtpye": "float32"}, {"model": "kmer:5", "limit": 0}],
        "benchmarks": [{"name": "nullsete", "data": "data"},
                       {"name": "nullsette", "data": "missing", "analyze": {"n_perm": 10, "colour": "red"}}],
    })
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("glmscore: error: sweep.yaml: ") and line.endswith((".", "?", ")")) for line in err), err
    text = "\n".join(err)
    for expected in ("unknown key 'max_paralel' (did you mean 'max_parallel'?)",
                     "model 2 (kmer:4): 'dtpye' is not a model option (did you mean 'dtype'?)",
                     "model 3 (kmer:5): limit must be at least 1, not 0.",
                     "benchmark 1 (nullsete): unknown benchmark 'nullsete' (did you mean 'nullsette'?)",
                     "data folder " + str(tmp_path / "missing") + " does not exist.",
                     "analyze: 'colour' is not an option of `glmscore analyze nullsette`"):
        assert expected in text
    assert len(err) == 6
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text("out: x\nmodels: [kmer:3\nbenchmarks: []\n")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep.yaml is not valid YAML at line" in err[0]


def test_options_merge_and_paths(tmp_path):
    (tmp_path / "nab").mkdir()
    (tmp_path / "models" / "my-llama").mkdir(parents=True)
    path = _write(tmp_path / "s.yaml", {
        "out": "results", "max_parallel": 3,
        "defaults": {"threads_per_actor": 2, "dtype": "float32"},
        "models": ["nt-v1-500m-human-ref", "org/some-model", {"model": "models/my-llama", "threads_per_actor": 1,
                                                                "long": "window", "gpus_per_actor": 0.5}],
        "benchmarks": [{"name": "nabench", "data": "nab", "families": "Aptamer, Binding Site", "limit": 5,
                        "threads_per_actor": 3, "analyze": {"n_boot": 10}}],
    })
    sweep = load_sweep(path)
    assert sweep.out == tmp_path / "results" and sweep.max_parallel == 3
    assert [m.name for m in sweep.models] == ["nt-v1-500m-human-ref", "org__some-model", "my-llama"]
    assert sweep.models[2].spec == str(tmp_path / "models" / "my-llama")
    runs = sweep.runs()
    assert [r.cfg.out for r in runs] == [str(tmp_path / "results" / "scores" / m / "nabench")
                                         for m in ("nt-v1-500m-human-ref", "org__some-model", "my-llama")]
    first, last = runs[0].cfg, runs[2].cfg
    assert first.threads_per_actor == 3 and last.threads_per_actor == 1  # defaults < benchmark < model
    assert last.options == {"dtype": "float32", "long": "window"} and last.gpus_per_actor == 0.5
    assert first.benchmark_options == {"families": ["aptamer", "binding_site"]} and first.limit == 5
    assert runs[0].bench.analyze == {"n_boot": 10} and first.data == str(tmp_path / "nab")


def test_benchmark_level_job_options_beat_defaults(tmp_path):
    (tmp_path / "d").mkdir()
    path = _write(tmp_path / "s.yaml", {"out": "o", "defaults": {"chunk_rows": 7}, "models": ["kmer:3"],
                                        "benchmarks": [{"name": "nullsette", "data": "d", "chunk_rows": 9}]})
    assert load_sweep(path).runs()[0].cfg.chunk_rows == 9


def test_options_of_two_backends_and_duplicate_names(tmp_path):
    (tmp_path / "d").mkdir()
    path = _write(tmp_path / "s.yaml", {"out": "o", "models": [{"model": "kmer:3", "kmer_folds": 3, "long": "window"},
                                                                "kmer:3"],
                                        "benchmarks": [{"name": "nullsette", "data": "d"}, {"name": "nullsette", "data": "d"}]})
    with pytest.raises(SweepFileError) as err:
        load_sweep(path)
    problems = err.value.problems
    assert any("kmer_folds, long belong to no single backend" in p for p in problems)
    assert any("both named 'kmer3'" in p for p in problems)
    assert any("2 benchmarks have the id 'nullsette'" in p for p in problems)
    assert isinstance(err.value, GlmscoreError)


def test_check_lists_the_runs_and_starts_nothing(tmp_path, capsys, small_nullsette, tiny_llama):
    path = _write(tmp_path / "s.yaml", {"out": "o", "models": ["kmer:3", "kmer:4"],
                                        "benchmarks": [{"name": "nullsette", "data": str(small_nullsette)}]})
    assert main(["sweep", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "kmer3 x nullsette" in out and "kmer4 x nullsette" in out and "is valid: 2 model(s) x 1 benchmark(s)" in out
    assert not (tmp_path / "o").exists()
    # --dry-run: each run's own dry run too (units, rows, shards), still nothing started or written
    assert main(["sweep", str(path), "--dry-run"]) == 0
    said = capsys.readouterr()
    assert "  dry run: score nullsette with kmer4 (backend kmer)" in said.out and "240 rows, 20 unit(s)" in said.out
    assert "The sweep would compute 40 of 40 units; nothing was started or written." in said.out
    assert "glmscore: score on" not in said.err and not (tmp_path / "o").exists()  # no run started
    # --check makes each run's own preflight: an unknown model, a folder without tokenizer, bad data
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_llama, no_tok)
    for f in no_tok.glob("tokenizer*"):
        f.unlink()
    (tmp_path / "empty").mkdir()
    path = _write(tmp_path / "s.yaml", {"out": "o", "models": ["kmer:3", "no-such-model", str(no_tok)],
                                        "benchmarks": [{"name": "nullsette", "data": str(small_nullsette)},
                                                       {"name": "nullsette", "id": "empty", "data": str(tmp_path / "empty")}]})
    assert main(["sweep", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "could not load the tokenizer" in err and "empty" in err
    assert "5 of 6 run(s) in s.yaml would fail; nothing was started" in err
    assert "the folder has no tokenizer files" in err and "from one of: (1)" in err  # the whole sentence, not cut
    assert not (tmp_path / "o").exists()


def test_example_sweep_is_valid_but_for_its_cluster_paths():
    with pytest.raises(SweepFileError) as err:
        load_sweep(ROOT / "cluster" / "sweep-example.yaml")
    assert err.value.problems and all(p.endswith("does not exist.") and "/data/" in p for p in err.value.problems)


def test_a_bug_fails_its_run_and_is_raised_after_the_others(tmp_path, monkeypatch):
    """Without Ray: run_score replaced by a stand-in that succeeds, fails with a user error, or has a bug."""
    import ray

    from glmscore.pipelines import sweep

    (tmp_path / "d").mkdir()
    path = _write(tmp_path / "s.yaml", {"out": "o", "address": "auto", "max_parallel": 1,
                                        "models": ["kmer:3", "kmer:4", "kmer:5"],
                                        "benchmarks": [{"name": "nullsette", "data": "d"}]})
    done = []

    def fake_run_score(cfg):
        if cfg.model == "kmer:4":
            raise ZeroDivisionError("a bug in a run")
        if cfg.model == "kmer:5":
            raise GlmscoreError("a user mistake.")
        done.append(cfg.model)
        return {"rows_total": 1, "shards_computed": 1, "shards_reused": 0, "model_card": {"id": "kmer3"}}

    monkeypatch.setattr(sweep, "resolve_job", lambda cfg: None)
    monkeypatch.setattr(sweep, "start_ray", lambda *a, **k: None)
    monkeypatch.setattr(sweep, "run_score", fake_run_score)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(sweep, "write_sweep_report", lambda s, runs, out: [])
    with pytest.raises(ZeroDivisionError, match="a bug in a run"):
        main_sweep(str(path))
    assert done == ["kmer:3"]
    summary = pd.read_csv(tmp_path / "o" / "sweep_summary.csv").set_index("model")
    assert summary["status"].to_dict() == {"kmer3": "ok", "kmer4": "failed", "kmer5": "failed"}
    assert summary.loc["kmer4", "error"] == "bug: ZeroDivisionError: a bug in a run"
    assert summary.loc["kmer5", "error"] == "a user mistake."


@pytest.mark.usefixtures("s3")
def test_output_root_in_object_storage(tmp_path, monkeypatch):
    """out: s3://...: every run writes there, and the sweep's summary and report are uploaded (without Ray:
    run_score and the report replaced by stand-ins; the score job on S3 is tested in test_object_store)."""
    import ray

    from glmscore.pipelines import store, sweep

    (tmp_path / "d").mkdir()
    path = _write(tmp_path / "s.yaml", {"out": f"s3://{BUCKET}/sweeps/one/", "address": "auto",
                                        "models": ["kmer:3", "kmer:4"], "benchmarks": [{"name": "nullsette", "data": "d"}]})
    outs, staged = [], []

    def fake_run_score(cfg):
        outs.append(cfg.out)
        return {"rows_total": 1, "shards_computed": 1, "shards_reused": 0, "model_card": {"id": cfg.model}}

    def fake_report(s, runs, out):
        staged.append(out)
        out.mkdir(parents=True)
        (out / "report.md").write_text("# Sweep report\n")
        return []

    monkeypatch.setattr(sweep, "resolve_job", lambda cfg: None)
    monkeypatch.setattr(sweep, "start_ray", lambda *a, **k: None)
    monkeypatch.setattr(sweep, "run_score", fake_run_score)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(sweep, "write_sweep_report", fake_report)
    assert main_sweep(str(path)) == 0
    root = f"s3://{BUCKET}/sweeps/one"
    assert sorted(outs) == [f"{root}/scores/kmer3/nullsette", f"{root}/scores/kmer4/nullsette"]
    summary = pd.read_csv(pa.BufferReader(store.read_bytes(f"{root}/sweep_summary.csv")))
    assert summary["status"].tolist() == ["ok", "ok"]
    assert store.read_bytes(f"{root}/report/report.md").startswith(b"# Sweep report")
    assert b"kmer:4" in store.read_bytes(f"{root}/_sweep.json")
    assert not staged[0].exists()  # the local staging folder is gone


def test_combined_tables_rename_card_ids_and_keep_the_sweep_order(tmp_path):
    """The combiners set each analysis's own tables side by side (analysis parts as pipelines/sweep.py makes them)."""
    from glmscore.pipelines.benchmarks.nabench.source import NABench
    from glmscore.pipelines.benchmarks.nullsette.source import Nullsette
    from glmscore.pipelines.benchmarks.variants.source import Variants

    order = ["k3", "llama-mean", "llama-sum"]
    success = pd.DataFrame({"model": ["llama-mean", "k3", "llama-sum", "k3"], "dataset": ["kosuri", "kosuri", "kosuri", "zahm"],
                            "success_rate": [0.25, 0.5, 0.75, 1.0]})
    [(_, grid, files)] = Nullsette.combined_tables([{"result": {"table": success}, "names": {m: m for m in order}}], order, tmp_path, "ns")
    assert grid["model"].tolist() == order and grid.loc[0, "zahm"] == 1.0 and pd.isna(grid.loc[1, "zahm"])
    assert [f.name for f in files] == ["ns_success_rate.csv", "ns_success_heatmap.png"]

    parts = []  # two runs of card "tiny" (mean and sum) go to two analyses
    for k, rows in enumerate([[("kmer3", "k3", 0.1), ("tiny", "llama-mean", 0.2)], [("tiny", "llama-sum", 0.3)]]):
        folder = tmp_path / f"part{k}"
        folder.mkdir()
        pd.DataFrame([{"model": card, "assay": "A1", "family": "f", "spearman": rho} for card, _, rho in rows]) \
            .to_csv(folder / "nabench_assays.csv", index=False)
        summary = pd.DataFrame([{"model": card, "spearman": rho} for card, _, rho in rows])
        parts.append({"result": {"table": summary}, "dir": folder, "names": {card: name for card, name, _ in rows}})
    (_, summary, _), (_, grid, _) = NABench.combined_tables(parts, order, tmp_path, "nb")
    assert summary["model"].tolist() == order and summary["spearman"].tolist() == [0.1, 0.2, 0.3]
    assert grid.set_index("model")["A1"].to_dict() == {"k3": 0.1, "llama-mean": 0.2, "llama-sum": 0.3}

    table = pd.DataFrame({"method": ["tiny zero-shot -LLR", "tiny zero-shot |LLR|", "tiny probe ridge"],
                          "kind": ["zero-shot", "zero-shot", "probe"], "subset": "all", "n": 10, "n_pos": 5,
                          "auroc": [0.6, 0.55, 0.9], "ci_low": 0.5, "ci_high": 0.7})
    [(_, aurocs, _)] = Variants.combined_tables([{"result": {"table": table}, "names": {"tiny": "llama-mean"}}], order, tmp_path, "v")
    assert aurocs[["model", "statistic", "auroc"]].values.tolist() == [["llama-mean", "-LLR", 0.6], ["llama-mean", "|LLR|", 0.55]]


def test_runs_of_one_card_go_to_separate_analyses():
    from types import SimpleNamespace

    from glmscore.pipelines.sweep import analysis_parts

    runs = [SimpleNamespace(name=n, manifest={"model_card": {"id": c}}) for n, c in
            (("k3", "kmer3"), ("mean", "tiny"), ("sum", "tiny"), ("k4", "kmer4"))]
    assert [[r.name for r in p] for p in analysis_parts(runs, takes_labels=False)] == [["k3", "mean", "k4"], ["sum"]]
    assert [[r.name for r in p] for p in analysis_parts(runs, takes_labels=True)] == [["k3", "mean", "sum", "k4"]]


@pytest.mark.usefixtures("s3")
def test_data_in_object_storage_is_checked_in_the_store(tmp_path):
    """data: s3://...: a folder with objects is accepted as given (runs read it from local copies); a
    prefix with nothing under it is one sentence, as a missing local folder is."""
    from glmscore.pipelines import store

    store.write_bytes(f"s3://{BUCKET}/inputs/nab/metadata.csv", b"DMS_id\n")
    path = _write(tmp_path / "s.yaml", {"out": "o", "models": ["kmer:3"],
                                        "benchmarks": [{"name": "nabench", "data": f"s3://{BUCKET}/inputs/nab/"}]})
    assert load_sweep(path).runs()[0].cfg.data == f"s3://{BUCKET}/inputs/nab"
    path = _write(tmp_path / "s.yaml", {"out": "o", "models": ["kmer:3"],
                                        "benchmarks": [{"name": "nabench", "data": f"s3://{BUCKET}/inputs/none"}]})
    with pytest.raises(SweepFileError) as err:
        load_sweep(path)
    assert err.value.problems == [f"s.yaml: benchmark 1 (nabench): data s3://{BUCKET}/inputs/none does not exist."]
