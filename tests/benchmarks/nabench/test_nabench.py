"""NABench: metrics vs scipy/scikit-learn, fold rules, no leakage, real assays, Tune sweep on Ray."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import matthews_corrcoef, ndcg_score, roc_auc_score

from glmscore.analysis.fitness import aggregate, assay_metrics, ndcg_top, top_recall, zero_shot_table
from glmscore.analysis.probes import fewshot_splits, fit_eval, supervised_folds
from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import shards
from glmscore.pipelines.benchmarks.nabench.source import discover, family_of, positions, read_assay, read_metadata
from glmscore.pipelines.shards import readers
from tests.conftest import shared_data

RNG = np.random.default_rng(0)
Y = RNG.normal(size=200)
S = 0.5 * Y + RNG.normal(size=200)


def test_metrics_match_scipy_and_sklearn():
    m = assay_metrics(Y, S)
    assert m["spearman"] == pytest.approx(stats.spearmanr(Y, S).statistic)
    yb = (Y > np.median(Y)).astype(int)
    assert m["auc"] == pytest.approx(roc_auc_score(yb, S))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(yb, (S > np.median(S)).astype(int)))
    gains = (Y - Y.min()) / (Y.max() - Y.min())
    assert m["ndcg"] == pytest.approx(ndcg_score(gains[None], S[None], k=20))
    assert ndcg_top(Y, Y) == pytest.approx(1.0)
    # top-10% recall by an explicit loop
    true_top = set(np.argsort(-Y)[:20])
    model_top = set(np.argsort(-S)[:20])
    assert m["recall"] == pytest.approx(len(true_top & model_top) / 20)
    assert top_recall(Y, Y) == 1.0
    # a given cutoff replaces the median
    assert assay_metrics(Y, S, cutoff=1.0)["auc"] == pytest.approx(roc_auc_score((Y > 1.0).astype(int), S))
    # NaN labels are dropped
    y = Y.copy()
    y[:10] = np.nan
    assert assay_metrics(y, S)["n"] == 190


def test_aggregation_and_bootstrap():
    per = pd.DataFrame({"model": "m", "family": ["a", "a", "a", "b"], "spearman": [0.1, 0.2, 0.3, 0.9]})
    fams, summary = aggregate(per, metrics=["spearman"], n_boot=2000)
    assert fams.set_index("family")["spearman"].to_dict() == pytest.approx({"a": 0.2, "b": 0.9})
    assert summary["spearman"].iloc[0] == pytest.approx((0.2 + 0.9) / 2)  # unweighted over families
    # SE of a 3-assay mean by bootstrap ~ population sd / sqrt(3)
    assert fams.set_index("family")["spearman_se"]["a"] == pytest.approx(np.std([0.1, 0.2, 0.3]) / np.sqrt(3), rel=0.1)
    assert fams.set_index("family")["spearman_se"]["b"] == 0.0  # one assay: no spread, and no float noise (2.8e-17)


def test_family_mapping_and_mutant_positions():
    assert family_of("Aptamer") == family_of("aptamer") == "aptamer"
    assert family_of("Binding Site") == "binding_site"
    assert family_of(None) == family_of(float("nan")) == "unknown"
    assert positions("A1T,G10C") == [1, 10] and positions("") == [] and positions("N13G") == [13]
    with pytest.raises(GlmscoreError):
        positions("A1")


def test_fold_rules_on_hand_made_assay():
    pos = [[p] for p in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)] + [[]]
    mod = supervised_folds(pos, "modulo")
    for train, test in mod:
        fold_pos = {pos[i][0] % 5 for i in test}
        assert len(fold_pos) == 1 and not fold_pos & {pos[i][0] % 5 for i in train}
        assert 15 not in train and 15 not in test  # the wild type has no position
    contig = supervised_folds(pos, "contiguous")
    assert [sorted(pos[i][0] for i in te) for _, te in contig] == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12], [13, 14, 15]]
    rand = supervised_folds(pos, "random")
    assert sorted(np.concatenate([te for _, te in rand]).tolist()) == list(range(16))
    for train, test in mod + contig + rand:
        assert not set(train) & set(test)
    with pytest.raises(GlmscoreError, match="single mutants"):
        supervised_folds([[1, 2], [3]], "modulo")
    splits = list(fewshot_splits(50, 5, repeats=5))
    assert len(splits) == 5 and all(len(tr) == 5 and len(te) == 45 and not set(tr) & set(te) for tr, te in splits)
    assert len({tuple(tr) for tr, _ in splits}) == 5


def test_probe_fits_only_on_training_rows():
    X = RNG.normal(size=(80, 6))
    y = X[:, 0] + 0.1 * RNG.normal(size=80)
    train, test = np.arange(60), np.arange(60, 80)
    good = fit_eval("ridge", X, y, train, test, inner_cv=True)
    assert good > 0.9
    # scrambling the held-out labels destroys the score, so nothing of them reached the fit
    y2 = y.copy()
    y2[test] = RNG.permutation(y2[test])
    assert fit_eval("ridge", X, y2, train, test, inner_cv=True) < 0.6
    with pytest.raises(AssertionError):
        fit_eval("ridge", X, y, train, np.arange(50, 80), inner_cv=False)


@pytest.mark.realdata
def test_real_assays_quirks():
    data = shared_data("nabench")
    meta = read_metadata(data)
    assert meta["Shai_2015_promoter"] == "promoter" and "Rachapun_2022_f1u_R1_R2_ribozyme" not in meta
    assays = {a.dms_id: a for a in discover(data, assays=["Gregory_2018_mRNA", "Townshend_2015_4nt_aptamer",
                                                          "Rachapun_2022_f1u_R1_R2_ribozyme", "Shai_2015_promoter"])}
    assert assays["Rachapun_2022_f1u_R1_R2_ribozyme"].family == "unknown"  # no metadata row, still loads
    greg = read_assay(assays["Gregory_2018_mRNA"].path)
    assert greg["sequence"].str.contains("X").any()
    town = read_assay(assays["Townshend_2015_4nt_aptamer"].path)
    assert town["sequence"].str.contains("U").any()
    shai = read_assay(assays["Shai_2015_promoter"].path)
    assert (shai["mutant"].str.count(",") > 0).any()  # multi-mutant
    rach = read_assay(assays["Rachapun_2022_f1u_R1_R2_ribozyme"].path)
    assert (rach["mutant"] == "").sum() == 1  # the wild type is kept


@pytest.mark.ray
@pytest.mark.realdata
def test_score_embed_analyze_probe_on_real_assays(ray_cluster, tmp_path, tiny_llama, monkeypatch, capsys):
    import pyarrow.dataset as pads

    from glmscore.pipelines.benchmarks.nabench.source import NABench
    from glmscore.pipelines.score import ScoreConfig, run_score

    data = shared_data("nabench")
    assays = ["Gregory_2018_mRNA", "Townshend_2015_4nt_aptamer", "Pitt_2010_ribozyme"]
    common = dict(benchmark="nabench", data=str(data), benchmark_options={"assays": assays})
    run_score(ScoreConfig(model="kmer:3", out=str(tmp_path / "k3"), **common))
    run_score(ScoreConfig(model=str(tiny_llama), out=str(tmp_path / "llama"), limit=40, **common))
    df = pads.dataset(tmp_path / "k3", partitioning="hive").to_table().to_pandas()
    assert {"label", "mutant", "is_wildtype"} <= set(df.columns)
    llama = pads.dataset(tmp_path / "llama", partitioning="hive").to_table().to_pandas()
    greg = llama[llama["dataset"] == "Gregory_2018_mRNA"]
    assert (greg["n_ambiguous"] >= 1).all()  # the X
    town = llama[llama["dataset"] == "Townshend_2015_4nt_aptamer"]
    assert (town["n_ambiguous"] == 0).all()  # U mapped to T for a DNA model, not counted
    result = NABench.analyze([str(tmp_path / "k3"), str(tmp_path / "llama")], str(tmp_path / "rep"),
                             NABench.AnalyzeOptions(n_boot=200))
    for name in ("nabench_assays.csv", "nabench_families.csv", "nabench_summary.csv", "report.md", "families_spearman.png"):
        assert (tmp_path / "rep" / name).exists()
    assert set(result["table"]["model"]) == {"kmer3", "tiny-llama"}
    # independent check of one assay's Spearman from the shards
    k3 = df[df["dataset"] == "Pitt_2010_ribozyme"]
    ok = ~k3["label"].isna()
    rows = pd.read_csv(tmp_path / "rep" / "nabench_assays.csv")
    got = rows[(rows["model"] == "kmer3") & (rows["assay"] == "Pitt_2010_ribozyme")]["spearman"].iloc[0]
    assert got == pytest.approx(stats.spearmanr(k3["label"][ok], k3["score"][ok]).statistic)
    # analyze holds one assay at a time; its table equals the metrics of both folders read whole at once
    whole = pd.concat([df, llama], ignore_index=True)[["model", "dataset", "group", "label", "score"]]
    key = ["model", "assay", "family"]
    direct = zero_shot_table(whole).drop(columns=["too_small"]).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(rows[direct.columns].sort_values(key).reset_index(drop=True), direct, check_dtype=False)
    assert len(list((tmp_path / "rep").glob("scatter_*.png"))) == 2
    # read_datasets: each dataset once, the columns asked for, and only the shards of the datasets asked for
    columns = ["model", "dataset", "label", "score"]
    parts = dict(shards.read_datasets(tmp_path / "k3", columns))
    assert sorted(parts) == sorted(assays) and all(list(f.columns) == columns for f in parts.values())
    pd.testing.assert_frame_equal(pd.concat(parts.values(), ignore_index=True),
                                  shards.read_scores(tmp_path / "k3", columns=columns))
    read = []
    real_read_shard = shards.read_shard
    monkeypatch.setattr(readers, "read_shard", lambda path: read.append(str(path)) or real_read_shard(path))
    assert [d for d, _ in shards.read_datasets(tmp_path / "k3", columns, datasets=["Pitt_2010_ribozyme"])] == ["Pitt_2010_ribozyme"]
    assert read and all("dataset=Pitt_2010_ribozyme" in p for p in read)
    # embeddings: one-hot and a tiny model's cls+mean, then a Tune sweep
    run_score(ScoreConfig(model="onehot", task="embed", out=str(tmp_path / "oh"), **common))
    run_score(ScoreConfig(model=str(tiny_llama), task="embed", pooling="mean", out=str(tmp_path / "emb"),
                          limit=30, **common))
    emb = pads.dataset(tmp_path / "emb" / "dataset=Pitt_2010_ribozyme", format="parquet").to_table()
    assert set(emb.column("embedding").combine_chunks().value_lengths().to_pylist()) == {128}
    # one-hot widths differ per assay; the folder still reads as one table
    onehot = pd.read_parquet(tmp_path / "oh")
    assert onehot["dataset"].nunique() == 3 and onehot.groupby("dataset")["embedding"].apply(lambda e: e.map(len).nunique()).eq(1).all()
    # --dry-run: what the sweep would run, with nothing started or written (no Ray line, no --out)
    from glmscore.pipelines.cli import main
    capsys.readouterr()
    assert main(["probe", "--embeddings", str(tmp_path / "oh"), "--setting", "supervised", "--probes", "ridge",
                 "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    said = capsys.readouterr()
    assert "dry run: probe supervised (glmscore protocol) on onehot embeddings" in said.out and "assays: 3 (" in said.out
    assert "no earlier trials: every trial runs" in said.out and "Ray Tune trials, 1 CPU each" in said.out
    assert "glmscore: probe on" not in said.err and not (tmp_path / "dry").exists()  # Ray never started for it
    # Ctrl-C inside the Tune sweep (run_trials raises TrialsInterrupted there, tests/core/test_trials.py): one
    # sentence and exit 130, not a traceback (before: KeyError: nan in the summary of stopped trials)
    from glmscore.pipelines.benchmarks.nabench import probe as probe_module
    from glmscore.pipelines.trials import TrialsInterrupted

    def interrupted(*args, **kwargs):
        raise TrialsInterrupted()

    monkeypatch.setattr(probe_module, "run_probe_trials", interrupted)
    assert main(["probe", "--embeddings", str(tmp_path / "oh"), "--setting", "supervised", "--probes", "ridge",
                 "--out", str(tmp_path / "stopped")]) == 130
    err = capsys.readouterr().err
    assert "glmscore: interrupted; finished trials are kept and a rerun of the same command reuses them." in err
    assert "Traceback" not in err and not (tmp_path / "stopped" / "probe_summary.csv").exists()
    monkeypatch.undo()
    # the probe sweep as a user starts it (its own local Ray cluster; a relative --out): the first line names
    # the cluster and the output, the log path is printed whole
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "glmscore", "probe", "--embeddings", str(tmp_path / "oh"),
                           "--setting", "supervised", "--probes", "ridge", "--out", "probes"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert lines[0] == f"glmscore: probe on a new local Ray cluster; output {(tmp_path / 'probes').resolve()}", lines[:3]
    assert f"glmscore: Ray's logs: {(tmp_path / 'probes' / '_logs' / 'ray.log').resolve()} (-v shows them here)" in lines
    trials = pd.read_csv(tmp_path / "probes" / "probe_trials.csv")
    multi = {"Townshend_2015_4nt_aptamer"}  # randomised positions: multi-mutant, random folds only
    assert set(trials[trials["assay"].isin(multi)]["split"]) == {"random"}
    assert set(trials["metric_name"]) == {"spearman"}
    assert "## Provenance" in (tmp_path / "probes" / "report.md").read_text()
    # random folds always give a metric; a position-held-out fold can leave one-hot ridge with constant
    # predictions (the held-out positions never vary in training), where Spearman is undefined (NaN)
    assert len(pd.read_csv(tmp_path / "probes" / "probe_summary.csv")) >= 1
    assert trials.loc[trials["split"] == "random", "metric"].notna().all()


@pytest.mark.ray
def test_non_numeric_scores_and_missing_metadata_are_counted_and_reported(ray_cluster, tmp_path, capsys):
    from glmscore.pipelines.cli import main

    rng = np.random.default_rng(1)
    wt = "".join(rng.choice(list("ACGU"), 30))
    rows = ["mutant,DMS_score,sequence", f",1.0,{wt}"]
    for i in range(1, 30):
        seq = wt[: i - 1] + ("A" if wt[i - 1] != "A" else "C") + wt[i:]
        label = {10: "n/a", 20: "n/a", 5: "inf", 7: ""}.get(i, round(float(rng.normal()), 3))  # one rule for all four
        rows.append(f"{wt[i - 1]}{i}{seq[i - 1]},{label},{seq}")
    data = tmp_path / "nab"
    data.mkdir()
    (data / "Toy_2024_assay.csv").write_text("\n".join(rows) + "\n")
    assert main(["score", "--benchmark", "nabench", "--data", str(data), "--model", "kmer:2", "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "glmscore: warning: " in err and "metadata.csv is missing" in err
    assert "Toy_2024_assay.csv: 4 DMS_score value(s) are not finite numbers" in err
    # --data names the folder whose metadata.csv annotates the assays (here there is none)
    assert main(["analyze", "nabench", "--scores", str(tmp_path / "s"), "--out", str(tmp_path / "r"), "--n-boot", "50",
                 "--data", str(data)]) == 0
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Data notes" in report and "4 DMS_score value(s) are not finite numbers" in report
    (data / "Toy_2024_assay.csv").write_text("mutant,DMS_score,sequence\n,x,ACGT\nA1C,y,CCGT\n")
    with pytest.raises(GlmscoreError, match="no DMS_score is a number"):
        discover(data)
