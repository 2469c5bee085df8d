"""`glmscore probe --protocol paper`, `--folds`, `--wildtype` against hand computations written the way the
published NABench scripts write them (mrzzmrzz/NABench scripts/Nucleotide_Transformer/compute_fitness.py
@6002856, run_contiguous.py @40cf12d), on real assays.

The hand computations below are deliberately written out again here (explicit loops, sklearn/scipy called
as the scripts call them) rather than calling analysis/published_probes.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import KFold
from threadpoolctl import threadpool_limits

from glmscore.models.errors import GlmscoreError
from tests.conftest import shared_data

pytestmark = pytest.mark.realdata


def real_assay(name: str) -> pd.DataFrame:
    frame = pd.read_csv(shared_data("nabench") / f"{name}.csv", dtype={"mutant": str}, keep_default_na=False,
                        na_values={"DMS_score": [""]})
    return frame[frame["DMS_score"].notna()].reset_index(drop=True)


def onehot(seqs) -> np.ndarray:
    """Position x base one-hot (U read as T, padded with zeros to the longest sequence)."""
    seqs = [s.upper().replace("U", "T") for s in seqs]
    width = max(map(len, seqs))
    X = np.zeros((len(seqs), width, 4))
    for r, s in enumerate(seqs):
        for j, c in enumerate(s):
            if c in "ACGT":
                X[r, j, "ACGT".index(c)] = 1.0
    return X.reshape(len(seqs), -1)


def kmer_counts(seqs, k: int = 3) -> np.ndarray:
    """Counts of the 4**k DNA k-mers of each sequence (U read as T)."""
    from itertools import product

    index = {"".join(p): i for i, p in enumerate(product("ACGT", repeat=k))}
    X = np.zeros((len(seqs), len(index)))
    for r, s in enumerate(seqs):
        s = s.upper().replace("U", "T")
        for j in range(len(s) - k + 1):
            if s[j:j + k] in index:
                X[r, index[s[j:j + k]]] += 1
    return X


def parse_mutation(mut_str):
    """The scripts' position parser: every number in the mutant string."""
    import re

    if pd.isna(mut_str) or not mut_str.strip():
        return []
    return [int(m.group()) for m in re.finditer(r"\d+", mut_str)]


# ---------------------------------------------------------------- hand computations, as the scripts do them


def hand_fewshot(emb, sc, few_shot_k, few_shot_repeat=5, seed=42):
    with threadpool_limits(1):  # as in a Tune trial (1 CPU): one-hot ridge predictions tie, and BLAS's
        return _hand_fewshot(emb, sc, few_shot_k, few_shot_repeat, seed)  # summation order breaks the ties


def _hand_fewshot(emb, sc, few_shot_k, few_shot_repeat, seed):
    np.random.seed(seed)
    corrs = []
    for r in range(few_shot_repeat):
        indices = np.random.choice(len(sc), size=few_shot_k, replace=False)
        emb_train, sc_train = emb[indices], sc[indices]
        emb_test, sc_test = np.delete(emb, indices, axis=0), np.delete(sc, indices)
        model = Ridge(alpha=1.0)
        model.fit(emb_train, sc_train)
        preds = model.predict(emb_test)
        corr, pval = spearmanr(preds, sc_test)
        corrs.append(corr)
    return np.mean(corrs), np.std(corrs)


def hand_cv(emb, sc, seed=42):
    kf = KFold(n_splits=5, shuffle=True, random_state=seed)
    preds = np.zeros(len(sc))
    for train_index, test_index in kf.split(emb):
        model = RidgeCV(alphas=np.logspace(-3, 3, 7))
        model.fit(emb[train_index], sc[train_index])
        preds[test_index] = model.predict(emb[test_index])
    corr, pval = spearmanr(preds, sc)
    return corr


def hand_contiguous(emb, scores, pos_lists, n_folds=5, max_frac=0.20, seed=0):
    N = len(scores)
    rng = np.random.RandomState(seed)
    arr = np.array(sorted({p for pl in pos_lists for p in pl}))
    blocks = np.array_split(arr, min(n_folds, len(arr)))
    intervals = [(b[0], b[-1]) for b in blocks if len(b)]
    fold_corrs = []
    for k, (lo, hi) in enumerate(intervals):
        candidate = [i for i, pl in enumerate(pos_lists) if any(lo <= p <= hi for p in pl)]
        if not candidate:
            continue
        max_size = int(max_frac * N)
        if len(candidate) > max_size:
            test_idx = rng.choice(candidate, size=max_size, replace=False).tolist()
        else:
            test_idx = candidate
        train_idx = [i for i in range(N) if i not in candidate]
        if len(train_idx) < 0.4 * N and len(train_idx) < 500:
            continue
        mdl = RidgeCV(alphas=np.logspace(-3, 3, 7))
        mdl.fit(emb[train_idx], scores[train_idx])
        y_pred = mdl.predict(emb[test_idx])
        fold_corrs.append(spearmanr(y_pred, scores[test_idx]).correlation)
    return np.nanmean(fold_corrs), np.nanstd(fold_corrs), len(fold_corrs)


def hand_given_folds(emb, sc, fold):
    """Each fold value held out in turn (rows with no fold value in neither part); pooled OOF Spearman."""
    preds = np.full(len(sc), np.nan)
    for f in sorted(set(fold[~np.isnan(fold)].tolist())):
        test_index = np.where(fold == f)[0]
        train_index = np.where((fold != f) & ~np.isnan(fold))[0]
        model = RidgeCV(alphas=np.logspace(-3, 3, 7))
        model.fit(emb[train_index], sc[train_index])
        preds[test_index] = model.predict(emb[test_index])
    ok = ~np.isnan(preds)
    return spearmanr(preds[ok], sc[ok]).correlation


def fold_table(frame: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    """A ProteinGym-style fold file of a real assay: random, modulo and contiguous columns (the latter two
    only for single mutants, empty otherwise)."""
    rng = np.random.default_rng(seed)
    pos = [parse_mutation(m) for m in frame["mutant"]]
    single = np.array([len(p) == 1 for p in pos])
    first = np.array([p[0] if len(p) == 1 else 0 for p in pos])
    out = pd.DataFrame({"mutant": frame["mutant"], "DMS_score": frame["DMS_score"],
                        "fold_random_5": rng.integers(0, 5, len(frame))})
    out["fold_modulo_5"] = np.where(single, first % 5, np.nan)
    uniq = np.unique(first[single])
    seg = {p: i for i, chunk in enumerate(np.array_split(uniq, 5)) for p in chunk}
    out["fold_contiguous_5"] = [float(seg[p]) if s else np.nan for p, s in zip(first, single)]
    return out


# ---------------------------------------------------------------- pure functions vs hand


def test_fewshot_draws_and_scores_match_the_script_loop():
    from glmscore.analysis.published_probes import paper_fewshot

    frame = real_assay("Kobori_2015_ribozyme_tw")
    X, y = onehot(frame["sequence"]), frame["DMS_score"].to_numpy(float)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    for k in (5, 20, 50, 100):
        mean, std = hand_fewshot(X, y, k)
        np.random.seed(123)
        got = paper_fewshot(X, y, k)
        assert got["metric"] == pytest.approx(mean, abs=1e-12) and got["metric_std"] == pytest.approx(std, abs=1e-12)
        assert got["n_splits"] == 5
        assert (np.random.get_state()[1] == before).all()  # the global generator is left as it was


def test_random_folds_pool_out_of_fold_predictions_like_the_script():
    from glmscore.analysis.published_probes import paper_random

    frame = real_assay("Kobori_2015_ribozyme_tw")
    X, y = onehot(frame["sequence"]), frame["DMS_score"].to_numpy(float)
    got = paper_random(X, y)
    assert got["metric"] == pytest.approx(hand_cv(X, y), abs=1e-12) and got["n_splits"] == 5
    # the pooled Spearman is not the mean of the folds' Spearman (what the glmscore protocol reports)
    per_fold = []
    for tr, te in KFold(5, shuffle=True, random_state=42).split(X):
        per_fold.append(spearmanr(RidgeCV(alphas=np.logspace(-3, 3, 7)).fit(X[tr], y[tr]).predict(X[te]), y[te])[0])
    assert got["metric"] != pytest.approx(np.mean(per_fold), abs=1e-9)


@pytest.mark.parametrize("name", ["Pitt_2010_ribozyme", "Janzen_2022_fam1a1_ribozyme"])
def test_contiguous_folds_follow_the_script(name):
    """Single mutants (Pitt) and multi-mutants with a wild type (Janzen): candidates, the 20% cap, the skip rule.
    (3-mer counts: with a one-hot, held-out positions never vary in training and predictions are constant.)"""
    from glmscore.analysis.published_probes import paper_contiguous, paper_contiguous_folds
    from glmscore.pipelines.benchmarks.nabench.source import positions

    frame = real_assay(name)
    X, y = kmer_counts(frame["sequence"]), frame["DMS_score"].to_numpy(float)
    pos = [positions(m) for m in frame["mutant"]]
    assert pos == [parse_mutation(m) for m in frame["mutant"]]
    mean, std, n = hand_contiguous(X, y, [parse_mutation(m) for m in frame["mutant"]])
    got = paper_contiguous(X, y, pos)
    assert n >= 1 and not np.isnan(mean)
    assert got["n_splits"] == n and got["metric"] == pytest.approx(mean, abs=1e-12)
    assert got["metric_std"] == pytest.approx(std, abs=1e-12)
    for train, test in paper_contiguous_folds(pos):
        assert len(test) <= int(0.2 * len(y)) and not set(train) & set(test)
        assert all(pos[i] for i in test)  # the wild type is never held out


def test_a_contiguous_fold_whose_fit_fails_is_skipped_and_counted(monkeypatch):
    """run_contiguous.py wraps each fold's fit in try/except and goes on; so does the paper rule, and says so."""
    from glmscore.analysis import published_probes
    from glmscore.pipelines.benchmarks.nabench.source import positions

    frame = real_assay("Pitt_2010_ribozyme")
    X, y = kmer_counts(frame["sequence"]), frame["DMS_score"].to_numpy(float)
    pos = [positions(m) for m in frame["mutant"]]
    whole = published_probes.paper_contiguous(X, y, pos)
    folds = published_probes.paper_contiguous_folds(pos)
    real, calls = published_probes.ridgecv_predict, []

    def failing_first(X_, y_, train, test):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("Found array with 0 sample(s)")  # what sklearn says of a degenerate fold
        return real(X_, y_, train, test)

    monkeypatch.setattr(published_probes, "ridgecv_predict", failing_first)
    got = published_probes.paper_contiguous(X, y, pos)
    assert got["n_skipped"] == 1 and got["n_splits"] == whole["n_splits"] - 1 == len(folds) - 1
    rest = [published_probes.published_spearman(real(X, y, tr, te), y[te]) for tr, te in folds[1:]]
    assert got["metric"] == pytest.approx(np.nanmean(rest), abs=1e-12)


def test_fold_file_join_and_pooled_oof_on_given_folds(tmp_path):
    from glmscore.analysis.probes import fit_eval, fit_predict, given_folds, run_supervised_given
    from glmscore.analysis.published_probes import pooled_oof
    from glmscore.pipelines.benchmarks.nabench.folds import join_folds, occurrence

    frame = real_assay("Pitt_2010_ribozyme")  # 24 repeated mutants: matched by occurrence order
    assert frame["mutant"].duplicated().sum() == 24
    table = fold_table(frame)
    # the fold file lists the rows in another order (repeated mutants keep theirs) and one more, unknown,
    # row: the join is by mutant
    shuffled = table.sort_values("mutant", kind="stable")
    assert (shuffled.index != table.index).any()
    extra = pd.DataFrame({"mutant": ["A999G"], "DMS_score": [0.0], "fold_random_5": [1]})
    pd.concat([shuffled, extra]).to_csv(tmp_path / "Pitt_2010_ribozyme.csv", index=False)
    mutants = frame["mutant"].tolist()
    folds = join_folds("Pitt_2010_ribozyme", mutants, occurrence(mutants), tmp_path / "Pitt_2010_ribozyme.csv")
    assert list(folds) == ["fold_random_5", "fold_modulo_5", "fold_contiguous_5"]
    for c in folds:
        np.testing.assert_array_equal(folds[c], table[c].to_numpy(float))
    X, y = onehot(frame["sequence"]), frame["DMS_score"].to_numpy(float)
    for c in folds:
        assert pooled_oof(X, y, given_folds(folds[c]))["metric"] == pytest.approx(hand_given_folds(X, y, folds[c]), abs=1e-12)
    # the glmscore protocol on the same folds: inner CV per fold; ProteinGym's pooled out-of-fold Spearman by
    # default, the folds' mean on request; the normalised MSE of the pooled predictions beside it
    f = folds["fold_random_5"]
    tests = [np.flatnonzero(f == v) for v in range(5)]
    assert [te.tolist() for _, te in given_folds(f)] == [t.tolist() for t in tests]
    trains = [np.flatnonzero((f != v) & ~np.isnan(f)) for v in range(5)]
    expect = np.nanmean([fit_eval("ridge", X, y, tr, t, inner_cv=True) for tr, t in zip(trains, tests)])
    pred = np.full(len(y), np.nan)
    for tr, t in zip(trains, tests):
        pred[t] = fit_predict("ridge", X, y, tr, t, inner_cv=True)[0]
    ok = ~np.isnan(pred)
    got = run_supervised_given("ridge", X, y, given_folds(f))
    assert got["metric"] == got["pooled"] == pytest.approx(spearmanr(y[ok], pred[ok]).statistic, abs=1e-12)
    assert got["fold_mean"] == pytest.approx(expect, abs=1e-12) and got["metric"] != pytest.approx(expect, abs=1e-6)
    z = (y[ok] - y[ok].mean()) / y[ok].std()
    assert got["mse"] == pytest.approx(np.mean((z - (pred[ok] - y[ok].mean()) / y[ok].std()) ** 2))
    assert run_supervised_given("ridge", X, y, given_folds(f), fold_metric="mean")["metric"] == pytest.approx(expect, abs=1e-12)


def test_fold_file_errors_are_one_sentence(tmp_path):
    from glmscore.pipelines.benchmarks.nabench.folds import fold_files_for, join_folds, occurrence, read_fold_file

    frame = real_assay("Ke_2017_mRNA")  # has a wild-type row (empty mutant)
    table = fold_table(frame)
    with pytest.raises(GlmscoreError, match="does not exist"):
        fold_files_for(tmp_path / "nope.csv", ["Ke_2017_mRNA"])
    table[["mutant", "DMS_score"]].to_csv(tmp_path / "nofold.csv", index=False)
    with pytest.raises(GlmscoreError, match="has no fold column"):
        read_fold_file(tmp_path / "nofold.csv")
    table.drop(columns="mutant").to_csv(tmp_path / "nomut.csv", index=False)
    with pytest.raises(GlmscoreError, match="has no mutant column"):
        read_fold_file(tmp_path / "nomut.csv")
    # 10 mutants and the wild type left out of the file
    lacking = table[table["mutant"] != ""].iloc[10:]
    lacking.to_csv(tmp_path / "Ke_2017_mRNA.csv", index=False)
    mutants = frame["mutant"].tolist()
    with pytest.raises(GlmscoreError, match=r"^11 of the 5560 embedded rows of Ke_2017_mRNA .*wild type") as e:
        join_folds("Ke_2017_mRNA", mutants, occurrence(mutants), tmp_path / "Ke_2017_mRNA.csv")
    assert str(e.value).count(".") >= 1 and "\n" not in str(e.value)
    folder = tmp_path / "cv"
    folder.mkdir()
    table.to_csv(folder / "Ke_2017_mRNA.csv", index=False)
    with pytest.raises(GlmscoreError, match="no fold file for 1 embedded assay.*: Pitt_2010_ribozyme"):
        fold_files_for(folder, ["Ke_2017_mRNA", "Pitt_2010_ribozyme"])
    with pytest.raises(GlmscoreError, match="gives folds for Ke_2017_mRNA only"):
        fold_files_for(folder / "Ke_2017_mRNA.csv", ["Ke_2017_mRNA", "Pitt_2010_ribozyme"])
    assert fold_files_for(folder / "Ke_2017_mRNA.csv", ["Other"]) == {"Other": folder / "Ke_2017_mRNA.csv"}


# ---------------------------------------------------------------- the CLI, end to end on Ray


def embedded(emb_dir, assay: str, drop_wildtype: bool):
    """Features and labels straight from the embedding shards, in file order (independent of load_embeddings)."""
    import pyarrow.dataset as pads

    t = pads.dataset(emb_dir / f"dataset={assay}", format="parquet").to_table().to_pandas()
    t = t.sort_values("pair_index").reset_index(drop=True)
    t = t[t["label"].notna()]
    if drop_wildtype:
        t = t[t["mutant"] != ""]
    return np.stack(t["embedding"].to_numpy()).astype(np.float32), t["label"].to_numpy(float), t["mutant"].tolist()


@pytest.mark.ray
def test_cli_protocol_paper_folds_and_wildtype_end_to_end(ray_cluster, tmp_path, capsys):
    from glmscore.pipelines.cli import main
    from glmscore.pipelines.score import ScoreConfig, run_score

    data = shared_data("nabench")
    assays = ["Ke_2017_mRNA", "Pitt_2010_ribozyme"]  # Ke: wild type in row 0; Pitt: repeated mutants
    emb = tmp_path / "emb"
    run_score(ScoreConfig(model="onehot", task="embed", out=str(emb), benchmark="nabench", data=str(data),
                          limit=300, benchmark_options={"assays": assays}))

    def probe(*args) -> int:
        return main(["probe", "--embeddings", str(emb), *args])

    # few-shot, published rules, wild type dropped
    assert probe("--setting", "fewshot", "--protocol", "paper", "--wildtype", "drop", "--out", str(tmp_path / "fs")) == 0
    trials = pd.read_csv(tmp_path / "fs" / "probe_trials.csv")
    assert set(trials["protocol"]) == {"paper"} and set(trials["wildtype"]) == {"drop"}
    assert set(trials["folds"]) == {"generated"} and set(trials["probe"]) == {"ridge"}
    for assay in assays:
        X, y, mutants = embedded(emb, assay, drop_wildtype=True)
        assert "" not in mutants
        got = trials[trials["assay"] == assay].set_index("k")
        assert sorted(got.index) == [k for k in (5, 20, 50, 100) if k < len(y)]
        for k in got.index:
            mean, std = hand_fewshot(X, y, k)
            assert got.loc[k, "metric"] == pytest.approx(mean, abs=1e-9)
            assert got.loc[k, "metric_std"] == pytest.approx(std, abs=1e-9)
    report = (tmp_path / "fs" / "report.md").read_text()
    assert "protocol=paper" in report and "wildtype=drop" in report and "folds=generated" in report
    summary = pd.read_csv(tmp_path / "fs" / "probe_summary.csv")
    assert {"protocol", "folds", "wildtype", "metric_std"} <= set(summary.columns)

    # supervised with distributed folds (a folder of per-assay files written from the real assays)
    cv = tmp_path / "cv"
    cv.mkdir()
    for assay in assays:  # as ProteinGym's, the files list no wild-type row
        table = fold_table(real_assay(assay))
        table[table["mutant"] != ""].to_csv(cv / f"{assay}.csv", index=False)
    assert probe("--setting", "supervised", "--protocol", "paper", "--wildtype", "drop", "--folds", str(cv),
                 "--out", str(tmp_path / "sv")) == 0
    trials = pd.read_csv(tmp_path / "sv" / "probe_trials.csv")
    assert set(trials["split"]) == {"fold_random_5", "fold_modulo_5", "fold_contiguous_5"}
    for assay in assays:
        X, y, mutants = embedded(emb, assay, drop_wildtype=True)
        table = fold_table(real_assay(assay))
        table = table[table["mutant"] != ""]
        key = pd.Series(mutants).groupby(mutants).cumcount()
        tkey = table["mutant"].groupby(table["mutant"]).cumcount()
        lookup = {(m, o): i for i, (m, o) in enumerate(zip(table["mutant"], tkey))}
        rows = [lookup[(m, o)] for m, o in zip(mutants, key)]
        got = trials[trials["assay"] == assay].set_index("split")
        assert set(got["folds"]) == {str((cv / f"{assay}.csv").resolve())}
        for column in ("fold_random_5", "fold_modulo_5", "fold_contiguous_5"):
            fold = table[column].to_numpy(float)[rows]
            assert got.loc[column, "metric"] == pytest.approx(hand_given_folds(X, y, fold), abs=1e-9)

    # supervised, generated folds, each scheme's published wild-type rule (the default under --protocol paper):
    # random = compute_fitness.py's pooled KFold without the wild type, contiguous = run_contiguous.py with it
    assert probe("--setting", "supervised", "--protocol", "paper", "--out", str(tmp_path / "sg")) == 0
    trials = pd.read_csv(tmp_path / "sg" / "probe_trials.csv")
    assert set(trials["split"]) == {"random", "contiguous"}
    got = trials[(trials["assay"] == "Ke_2017_mRNA")].set_index("split")
    assert got.loc["random", "wildtype"] == "drop" and got.loc["contiguous", "wildtype"] == "keep"
    X, y, mutants = embedded(emb, "Ke_2017_mRNA", drop_wildtype=True)
    assert got.loc["random", "metric"] == pytest.approx(hand_cv(X, y), abs=1e-9)
    X, y, mutants = embedded(emb, "Ke_2017_mRNA", drop_wildtype=False)
    assert mutants[0] == ""
    mean, std, n = hand_contiguous(X, y, [parse_mutation(m) for m in mutants])
    assert got.loc["contiguous", "n_splits"] == n and got.loc["contiguous", "n_skipped"] == 0
    assert got.loc["contiguous", "metric"] == pytest.approx(mean, abs=1e-9, nan_ok=True)
    # --wildtype keep still keeps it everywhere
    assert probe("--setting", "supervised", "--protocol", "paper", "--wildtype", "keep", "--out", str(tmp_path / "sk")) == 0
    kept = pd.read_csv(tmp_path / "sk" / "probe_trials.csv").set_index(["assay", "split"])
    assert kept.loc[("Ke_2017_mRNA", "random"), "metric"] == pytest.approx(hand_cv(X, y), abs=1e-9)
    # the published few-shot sizes: --k and --repeats
    assert probe("--setting", "fewshot", "--protocol", "paper", "--k", "50", "--repeats", "10", "--out", str(tmp_path / "k50")) == 0
    k50 = pd.read_csv(tmp_path / "k50" / "probe_trials.csv")
    assert set(k50["k"]) == {50} and set(k50["n_splits"]) == {10} and set(k50["wildtype"]) == {"drop"}
    X, y, _ = embedded(emb, "Ke_2017_mRNA", drop_wildtype=True)
    mean, std = hand_fewshot(X, y, 50, few_shot_repeat=10)
    assert k50.set_index("assay").loc["Ke_2017_mRNA", "metric"] == pytest.approx(mean, abs=1e-9)
    capsys.readouterr()

    # one-sentence refusals: exit status 2, no traceback
    refusals = [
        (("--setting", "transfer", "--protocol", "paper"), "--protocol paper covers --setting fewshot and supervised only"),
        (("--setting", "supervised", "--protocol", "paper", "--probes", "ridge,mlp"), "fits the published ridge only, not mlp"),
        (("--setting", "fewshot", "--folds", str(cv)), "does not apply to --setting fewshot"),
        (("--setting", "supervised", "--folds", str(tmp_path / "missing.csv")), "does not exist"),
        (("--setting", "supervised", "--folds", str(cv / "Ke_2017_mRNA.csv")), "gives folds for Ke_2017_mRNA only"),
    ]
    lone = tmp_path / "lone"
    lone.mkdir()
    fold_table(real_assay("Ke_2017_mRNA")).to_csv(lone / "Ke_2017_mRNA.csv", index=False)
    refusals.append((("--setting", "supervised", "--folds", str(lone)), "no fold file for 1 embedded assay(s): Pitt_2010_ribozyme"))
    nofold = tmp_path / "nofold"
    nofold.mkdir()
    for assay in assays:
        real_assay(assay)[["mutant", "DMS_score"]].to_csv(nofold / f"{assay}.csv", index=False)
    refusals.append((("--setting", "supervised", "--folds", str(nofold)), "has no fold column"))
    # the wild type kept but absent from the fold file: counted
    refusals.append((("--setting", "supervised", "--folds", str(cv)), "1 of the 300 embedded rows of Ke_2017_mRNA"))
    for args, sentence in refusals:
        assert probe(*args, "--out", str(tmp_path / "x")) == 2, args
        err = capsys.readouterr().err
        assert sentence in err and "Traceback" not in err and err.count("\n") == 1, err
