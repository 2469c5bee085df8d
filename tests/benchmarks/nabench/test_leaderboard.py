"""NABench as a leaderboard reports it: ProteinGym's reference definitions (a copy written here from their
published formulas, not imported) on every real assay, order-free tie-aware metrics, missing scores,
duplicate and unlisted assays, depth breakdowns and model-vs-model significance at the CLI."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import matthews_corrcoef, roc_auc_score

from glmscore.analysis.fitness import assay_metrics, ndcg_top, top_recall
from tests.conftest import ROOT, shared_data

# ---------------------------------------------------------------- the reference, as ProteinGym publishes it


def ref_ndcg(y_true, y_score, top=10):
    k = int(np.floor(y_true.shape[0] * (top / 100)))
    gains = (y_true - np.min(y_true)) / (np.max(y_true) - np.min(y_true))
    ranks = np.argsort(np.argsort(-y_score)) + 1
    ranks_k, gains_k = ranks[ranks <= k], gains[ranks <= k]
    ranks_fil, gains_fil = ranks_k[gains_k != 0], gains_k[gains_k != 0]
    if len(ranks_fil) == 0:
        return 0
    dcg = np.sum([g / np.log2(r + 1) for r, g in zip(ranks_fil, gains_fil)])
    ideal_ranks = np.argsort(np.argsort(-gains)) + 1
    ideal_ranks_k, ideal_gains_k = ideal_ranks[ideal_ranks <= k], gains[ideal_ranks <= k]
    keep = ideal_gains_k != 0
    idcg = np.sum([g / np.log2(r + 1) for r, g in zip(ideal_ranks_k[keep], ideal_gains_k[keep])])
    return dcg / idcg


def ref_recall(true_scores, model_scores, top_true=10, top_model=10):
    top_t = true_scores > np.percentile(true_scores, 100 - top_true)
    top_m = model_scores > np.percentile(model_scores, 100 - top_model)
    return (top_t & top_m).sum() / top_t.sum() if top_t.sum() > 0 else 0


def ref_mcc(y_bin, score):
    return matthews_corrcoef(y_bin, [1 if x >= np.median(score) else 0 for x in score])


def real_assays():
    data = shared_data("nabench")
    for path in sorted(data.glob("*.csv")):
        if path.stem.startswith("metadata"):
            continue
        frame = pd.read_csv(path, usecols=["DMS_score", "sequence"], dtype={"sequence": str})
        frame = frame[np.isfinite(pd.to_numeric(frame["DMS_score"], errors="coerce"))]
        y = frame["DMS_score"].astype(float).to_numpy()
        seqs = frame["sequence"].fillna("").str.upper()
        gc = (seqs.str.count("G") + seqs.str.count("C")).to_numpy(float)  # a coarse score: many ties
        yield path.stem, y, gc


def test_paper_protocol_is_the_reference_code_on_every_real_assay():
    rng = np.random.default_rng(0)
    n = 0
    for name, y, gc in real_assays():
        continuous = gc + rng.normal(scale=1e-3, size=len(gc))
        for score in (gc, continuous):
            got = assay_metrics(y, score, protocol="paper")
            y_bin = (y > np.median(y)).astype(int)
            want = {"spearman": spearmanr(y, score)[0], "auc": roc_auc_score(y_bin, score), "mcc": ref_mcc(y_bin, score),
                    "ndcg": ref_ndcg(y, score), "recall": ref_recall(y, score)}
            for metric, value in want.items():
                assert got[metric] == pytest.approx(value, rel=1e-12, abs=1e-12, nan_ok=True), (name, metric)
        n += 1
    assert n == 43


def test_tie_aware_metrics_ignore_row_order_and_give_a_constant_the_random_expectation():
    rng = np.random.default_rng(1)
    order_mattered = 0
    for name, y, gc in real_assays():
        perm = rng.permutation(len(y))
        base = assay_metrics(y, gc)
        shuffled = assay_metrics(y[perm], gc[perm])
        for metric in ("spearman", "auc", "mcc", "ndcg", "recall"):
            assert shuffled[metric] == pytest.approx(base[metric], rel=1e-9, abs=1e-12, nan_ok=True), (name, metric)
        order_mattered += ndcg_top(y, gc, protocol="paper") != pytest.approx(ndcg_top(y[perm], gc[perm], protocol="paper"))
        # a constant score: the expectation over random orders, analytically
        constant = assay_metrics(y, np.zeros_like(y))
        n, k = len(y), int(np.floor(0.1 * len(y)))
        gains = (y - y.min()) / (y.max() - y.min())
        discounts = 1 / np.log2(np.arange(2, k + 2))
        assert constant["ndcg"] == pytest.approx(gains.mean() * discounts.sum() / np.sum(np.sort(gains)[::-1][:k] * discounts))
        k_model = int((np.arange(n) > np.percentile(np.arange(n), 90)).sum())
        assert constant["recall"] == pytest.approx(k_model / n)
        assert constant["auc"] == 0.5 and constant["mcc"] == 0.0 and np.isnan(constant["spearman"])
        # the reference rewards the same constant with the file's row order (NDCG) or gives recall 0
        assert assay_metrics(y, np.zeros_like(y), protocol="paper")["recall"] == 0
    assert order_mattered > 10  # the paper protocol really depends on row order on real assays


def test_tie_aware_values_are_exact_expectations_over_every_order_of_the_ties():
    rng = np.random.default_rng(2)
    y = rng.normal(size=40)
    score = np.round(rng.normal(size=40), 0)  # few distinct values: large tie groups
    score[:5] = 9.0  # one tie group of 5 straddles the top 4
    tied = np.flatnonzero(score == 9.0)
    ndcgs, recalls = [], []
    for order in itertools.permutations(range(len(tied))):
        # a stable sort by (score, then the given order of the tied rows) is one ordering of the ties
        tiebreak = np.zeros(len(y))
        tiebreak[tied] = np.array(order) * 1e-9
        ndcgs.append(ndcg_top(y, score + tiebreak, protocol="paper"))
        recalls.append(top_recall(y, score + tiebreak, protocol="paper"))
    # other tie groups sit below the cut (ranks > 4), so only the straddling group's order matters
    assert ndcg_top(y, score) == pytest.approx(np.mean(ndcgs), rel=1e-12)
    assert top_recall(y, score) == pytest.approx(np.mean(recalls), rel=1e-12)
    # without ties the two protocols agree
    s = rng.normal(size=40)
    assert ndcg_top(y, s) == pytest.approx(ndcg_top(y, s, protocol="paper"))
    assert top_recall(y, s) == pytest.approx(top_recall(y, s, protocol="paper"))


# ---------------------------------------------------------------- the command


def _glmscore(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "glmscore", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _assay(rng, wt: str, n: int, depth_max: int = 3) -> list[str]:
    rows = ["mutant,DMS_score,sequence", f",0.0,{wt}"]
    for i in range(n):
        where = sorted(rng.choice(len(wt), size=int(rng.integers(1, depth_max + 1)), replace=False))
        seq, names = list(wt), []
        for p in where:
            alt = rng.choice([b for b in "ACGU" if b != wt[p]])
            names.append(f"{wt[p]}{p + 1}{alt}")
            seq[p] = alt
        rows.append(f"{','.join(names) if len(names) == 1 else chr(34) + ','.join(names) + chr(34)},"
                    f"{round(float(rng.normal()), 4)},{''.join(seq)}")
    return rows


@pytest.fixture(scope="module")
def toy_release(tmp_path_factory, ray_cluster):
    """Four assays (two families, one a byte copy of another, one with no metadata row) scored by two
    k-mer baselines through the score command's code path."""
    from glmscore.pipelines.cli import main

    rng = np.random.default_rng(3)
    data = tmp_path_factory.mktemp("toy") / "nabench"
    data.mkdir()
    wts = {name: "".join(rng.choice(list("ACGU"), 40)) for name in ("Apt_2020_a", "Apt_2021_b", "Rib_2019_c", "Rib_2022_d")}
    for name, wt in wts.items():
        (data / f"{name}.csv").write_text("\n".join(_assay(rng, wt, 120)) + "\n")
    (data / "Copy_2020_a.csv").write_bytes((data / "Apt_2020_a.csv").read_bytes())
    (data / "Loose_2023_x.csv").write_text("\n".join(_assay(rng, wts["Rib_2019_c"], 60)) + "\n")
    meta = pd.DataFrame({"DMS_ID": ["Apt_2020_a", "Apt_2021_b", "Rib_2019_c", "Rib_2022_d", "Copy_2020_a"],
                         "RNA_TYPE": ["Aptamer", "aptamer", "Ribozyme", "Ribozyme", "Aptamer"],
                         "RNA_TYPE_GRANULAR": ["GFP aptamer", "GFP aptamer", "HDV", "Pistol", "GFP aptamer"],
                         "RAW_CONSTRUCT_SEQ": [wts["Apt_2020_a"], wts["Apt_2021_b"], "X", "X", wts["Apt_2020_a"]],
                         "DMS_binarization_cutoff": ["", "", "0.5", "", ""]})
    meta.to_csv(data / "metadata.csv", index=False)
    out = data.parent / "scores"
    for k in (2, 3):
        assert main(["score", "--benchmark", "nabench", "--data", str(data), "--model", f"kmer:{k}",
                     "--out", str(out / f"k{k}")]) == 0
    return data, out


def test_analyze_writes_a_leaderboard_with_depths_significance_and_leaves_copies_out(toy_release, tmp_path):
    data, scores = toy_release
    _glmscore("analyze", "nabench", "--scores", str(scores / "k2"), str(scores / "k3"), "--out", str(tmp_path / "r"),
              "--n-boot", "200")
    assays = pd.read_csv(tmp_path / "r" / "nabench_assays.csv")
    left_out = set(assays.loc[~assays["in_headline"], "assay"])
    assert left_out == {"Copy_2020_a", "Loose_2023_x"}
    summary = pd.read_csv(tmp_path / "r" / "nabench_summary.csv").set_index("model")
    assert summary["n_assays"].tolist() == [4, 4] and summary["n_families"].tolist() == [2, 2]
    # the headline is the unweighted mean over families of the within-family means, by hand
    counted = assays[assays["in_headline"]]
    by_hand = counted.groupby(["model", "family"])["spearman"].mean().groupby("model").mean()
    assert summary["spearman"].to_dict() == pytest.approx(by_hand.to_dict())
    board = pd.read_csv(tmp_path / "r" / "nabench_leaderboard_Spearman.csv")
    assert list(board.columns[:4]) == ["Model_rank", "Model_name", "Average_Spearman", "Bootstrap_standard_error_Spearman"]
    assert {"Family_aptamer", "Family_ribozyme", "Depth_1", "Depth_2", "Depth_3"} <= set(board.columns)
    assert board["Model_rank"].tolist() == [1, 2] and board["Bootstrap_standard_error_Spearman"].iloc[0] == 0
    assert board["Average_Spearman"].is_monotonic_decreasing
    pairs = pd.read_csv(tmp_path / "r" / "nabench_pairwise.csv")
    a = pairs.iloc[0]
    assert a["difference"] == pytest.approx(summary.loc[a["model"], "spearman"] - summary.loc[a["versus"], "spearman"])
    assert a["significant"] == (a["ci_low"] > 0 or a["ci_high"] < 0) and a["se"] > 0
    # depth: each assay's metric on its rows of that depth, then the mean over assays
    depth = pd.read_csv(tmp_path / "r" / "nabench_by_depth.csv").set_index("model")
    per = pd.read_csv(tmp_path / "r" / "nabench_depth_assays.csv", dtype={"depth": str})
    per = per[per["assay"].isin(counted["assay"])]
    for model in depth.index:
        for d in ("1", "2", "3"):
            rows = per[(per["model"] == model) & (per["depth"] == d)]
            assert len(rows) == 4 and depth.loc[model, d] == pytest.approx(rows["spearman"].mean())
    report = (tmp_path / "r" / "report.md").read_text()
    assert "identical variants and labels" in report and "Loose_2023_x has no metadata.csv row" in report
    assert "protocol=tie-aware" in report and "Leaderboard" in (tmp_path / "r" / "report.html").read_text()
    # the cutoff column: Rib_2019_c binarises at 0.5, the others at their median
    _glmscore("analyze", "nabench", "--scores", str(scores / "k2"), "--out", str(tmp_path / "c"), "--n-boot", "20",
              "--include", "Copy_2020_a,Loose_2023_x", "--level", "construct")
    kept = pd.read_csv(tmp_path / "c" / "nabench_assays.csv")
    assert kept["in_headline"].all()
    assert "constructs (RAW_CONSTRUCT_SEQ)" in (tmp_path / "c" / "report.md").read_text()


def test_a_model_that_left_rows_unscored_is_an_error_unless_missing_drop(toy_release, tmp_path):
    from glmscore.pipelines.cli import main

    data, _ = toy_release
    gappy = tmp_path / "gappy"
    gappy.mkdir()
    lines = (data / "Rib_2022_d.csv").read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + "," + "N" * 40  # all-N: a k-mer model has no window to score
    (gappy / "Rib_2022_d.csv").write_text("\n".join(lines) + "\n" + ",inf,ACGUACGUAC\n")
    assert main(["score", "--benchmark", "nabench", "--data", str(gappy), "--model", "kmer:2", "--out", str(tmp_path / "s")]) == 0
    proc = _glmscore("analyze", "nabench", "--scores", str(tmp_path / "s"), "--out", str(tmp_path / "r"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "left 1 labelled row(s) of assay Rib_2022_d unscored (rows 4)" in proc.stderr and "--missing drop" in proc.stderr
    assert not (tmp_path / "r" / "report.md").exists()
    _glmscore("analyze", "nabench", "--scores", str(tmp_path / "s"), "--out", str(tmp_path / "r"), "--missing", "drop",
              "--n-boot", "20")
    row = pd.read_csv(tmp_path / "r" / "nabench_assays.csv").iloc[0]
    assert (row["n_missing"], row["n_unlabelled"], row["n"]) == (1, 1, row["n_rows"] - 2)
    report = (tmp_path / "r" / "report.md").read_text()
    assert "1 row(s) have a DMS_score that is not a finite number" in report and "left 1 labelled row(s) unscored" in report
    json.loads((tmp_path / "s" / "_manifest.json").read_text())  # the score folder itself is untouched and finished
