"""Nullsette statistics against independent references (scipy.stats, explicit loops)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from glmscore.analysis.nullsette import nullsette_tests, success_rates
from glmscore.analysis.paired import adjust, signflip_pvalues
from glmscore.models.errors import GlmscoreError


def test_exact_signflip_matches_scipy_permutation_test():
    rng = np.random.default_rng(1)
    for n in (5, 8, 11):
        d = rng.normal(-0.3, 1, n)
        ref = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="less",
                                     n_resamples=np.inf).pvalue
        ours = signflip_pvalues([d], n_perm=10_000)[0]
        assert ours == pytest.approx(ref, rel=1e-12)


def test_exact_signflip_matches_explicit_enumeration_loop():
    d = np.array([-1.0, 0.5, -2.0, -0.25, 0.75, -0.5])
    obs = d.mean()
    count = 0
    for mask in range(2 ** len(d)):
        signs = np.array([-1.0 if mask >> i & 1 else 1.0 for i in range(len(d))])
        count += (signs * d).mean() <= obs + 1e-12
    assert signflip_pvalues([d])[0] == pytest.approx(count / 2 ** len(d))


def test_monte_carlo_close_to_scipy_and_estimators():
    rng = np.random.default_rng(2)
    d = rng.normal(-0.05, 1, 200)
    ref = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="less",
                                 n_resamples=200_000, random_state=0).pvalue
    p = signflip_pvalues([d], n_perm=20_000, seed=5)[0]
    assert abs(p - ref) < 0.01
    # the seed estimator b/n versus (1+b)/(1+n) on the same draw
    seed_p = signflip_pvalues([d], n_perm=20_000, seed=5, estimator="seed")[0]
    b = round(seed_p * 20_000)
    assert p == pytest.approx((1 + b) / 20_001)


def test_strong_effect_plus_one_never_zero_but_seed_can_be():
    d = -np.ones(300) - np.random.default_rng(0).random(300)
    assert signflip_pvalues([d], n_perm=1000)[0] == pytest.approx(1 / 1001)
    assert signflip_pvalues([d], n_perm=1000, estimator="seed")[0] == 0.0


def test_vectorised_equals_one_at_a_time_and_is_seeded():
    rng = np.random.default_rng(3)
    tests = [rng.normal(m, 1, 50) for m in (-0.5, 0.0, 0.2, -0.1)]
    together = signflip_pvalues(tests, n_perm=5000, seed=7)
    assert np.array_equal(together, signflip_pvalues(tests, n_perm=5000, seed=7))
    # tests of equal n share the draw, so each equals its own run with the same seed
    for t, p in zip(tests, together):
        assert signflip_pvalues([t], n_perm=5000, seed=7)[0] == p
    assert together[0] < 0.01 and together[2] > 0.5


def test_nan_pairs_dropped_and_empty_test_is_nan():
    d = np.array([-1.0, np.nan, -2.0, -0.5, -1.5])
    assert signflip_pvalues([d])[0] == pytest.approx(signflip_pvalues([d[~np.isnan(d)]])[0])
    assert np.isnan(signflip_pvalues([np.array([np.nan])])[0])


def test_bh_matches_scipy_and_holm_bonferroni_match_loops():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.001, 0.5, np.nan])
    ok = p[~np.isnan(p)]
    m = len(ok)
    assert np.allclose(adjust(p, "bh")[:-1], stats.false_discovery_control(ok, method="bh"))
    assert np.isnan(adjust(p, "bh")[-1])
    assert np.allclose(adjust(p, "bonferroni")[:-1], np.minimum(ok * m, 1))
    # Holm by the textbook step-down loop
    order = np.argsort(ok)
    holm = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ok[i]))
        holm[i] = running
    assert np.allclose(adjust(p, "holm")[:-1], holm)
    with pytest.raises(GlmscoreError):
        adjust(p, "fdr_xyz")


def _scores(effects: dict[str, float], n=40, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(-1.3, 0.05, n)
    rows = [{"model": "m", "dataset": "d", "group": "nonmutant", "pair_index": i, "score": s} for i, s in enumerate(base)]
    for group, eff in effects.items():
        for i, s in enumerate(base + eff + rng.normal(0, 0.02, n)):
            rows.append({"model": "m", "dataset": "d", "group": group, "pair_index": i, "score": s})
    return pd.DataFrame(rows)


def test_test_table_and_success_rate():
    scores = _scores({"mutant_translocation1": -0.05, "mutant_translocation2": 0.0, "mutant_translocation10": 0.05})
    tests = nullsette_tests(scores, n_perm=2000)
    assert list(tests["group"]) == ["mutant_translocation1", "mutant_translocation2", "mutant_translocation10"]
    assert list(tests["significant"]) == [True, False, False]
    assert (tests["n_pairs"] == 40).all()
    # p_adjusted is BH across the three types of this (model, dataset)
    assert np.allclose(tests["p_adjusted"], stats.false_discovery_control(tests["p_value"], method="bh"))
    succ = success_rates(tests)
    assert succ.iloc[0][["n_types", "n_significant"]].tolist() == [3, 1]
    assert succ.iloc[0]["success_rate"] == pytest.approx(1 / 3)


def test_pairs_join_on_pair_index_not_row_order():
    scores = _scores({"mutant_translocation1": -0.05})
    shuffled = scores.sample(frac=1.0, random_state=0)
    a = nullsette_tests(scores, n_perm=500)
    b = nullsette_tests(shuffled, n_perm=500)
    assert a["mean_diff"].iloc[0] == pytest.approx(b["mean_diff"].iloc[0])
    assert a["p_value"].iloc[0] == b["p_value"].iloc[0]


def test_significant_mutant_types_are_starred_in_the_box_plots():
    from glmscore.analysis.report import type_labels

    assert type_labels(["mutant_translocation1", "mutant_translocation2"], {"mutant_translocation2"}) == ["1", "2*"]


# ---------------------------------------------------------------- the published estimator (--estimator paper)


def _published_loop(original, mutant, num_permutations=10_000, seed=0):
    """The published GLM-Nullsette-Benchmark test as its script runs it: a Python loop, a fresh
    default_rng(seed), rng.choice signs per permutation, p = mean(perm <= observed)."""
    original, mutant = np.array(original), np.array(mutant)
    rng = np.random.default_rng(seed)
    diffs = mutant - original
    observed = np.mean(diffs)
    means = []
    for _ in range(num_permutations):
        signs = rng.choice([-1, 1], size=len(diffs))
        means.append(np.mean(diffs * signs))
    means = np.array(means)
    return np.mean(means <= observed), means


@pytest.fixture(scope="module")
def real_kmer_scores(tmp_path_factory):
    """k-mer (order 3) scores of the real kosuri cassettes, all 1,500 pairs and 19 mutant types."""
    from glmscore.models.backends.kmer import fit_counts, logprob_table
    from glmscore.models.base import resolve_card
    from glmscore.models.loader import load_backend
    from glmscore.pipelines.benchmarks.nullsette.source import build
    from glmscore.pipelines.fasta import read_all
    from tests.conftest import shared_data

    data = tmp_path_factory.mktemp("real") / "pd"
    build(shared_data("nullsette"), data, tables=["kosuri"])
    files = sorted((data / "kosuri").glob("*.txt"))
    seqs = {f.stem: read_all(f)[1] for f in files}
    scorer = load_backend(resolve_card("kmer:3"), fitted={None: logprob_table(fit_counts(seqs["nonmutant"], 3))})
    rows = []
    for group, s in seqs.items():
        score = scorer.loglik_sequences(s).mean
        rows.append(pd.DataFrame({"model": "kmer3", "dataset": "kosuri", "group": group,
                                  "pair_index": np.arange(len(s)), "score": score}))
    return pd.concat(rows, ignore_index=True)


def test_paper_estimator_equals_the_published_loop_bit_for_bit_on_real_scores(real_kmer_scores):
    from glmscore.analysis.paired import published_permutation_means

    frame = real_kmer_scores
    base = frame[frame["group"] == "nonmutant"].sort_values("pair_index")["score"].to_numpy()
    table = nullsette_tests(frame, n_perm=2000, seed=0, estimator="paper", correction="bonferroni")
    assert len(table) == 19 and (table["n_pairs"] == 1500).all()
    p_values = []
    for group in table["group"]:
        mut = frame[frame["group"] == group].sort_values("pair_index")["score"].to_numpy()
        p, means = _published_loop(base, mut, num_permutations=2000, seed=0)
        # every permuted mean, in order, equals the loop's: same RNG stream, same summation
        assert np.array_equal(published_permutation_means(mut - base, n_perm=2000, seed=0), means)
        p_values.append(p)
    assert np.array_equal(table["p_value"].to_numpy(), np.array(p_values))
    # a test where the mutants are not lower has a large p; the published estimator can return exactly 0
    assert (table["p_value"] == 0).any() and (table["p_value"] > 0.05).any()
    # the other estimators draw differently: plus_one is never 0
    assert (nullsette_tests(frame, n_perm=2000, seed=0)["p_value"] > 0).all()


def test_paper_estimator_one_sided_only_and_keeps_each_test_seeded_alike():
    rng = np.random.default_rng(4)
    d = rng.normal(-0.01, 1, 300)
    # a fresh default_rng(seed) per test: the same vector twice gives the same p, wherever it sits
    p = signflip_pvalues([d, rng.normal(size=40), d], n_perm=3000, seed=9, estimator="paper")
    assert p[0] == p[2] == _published_loop(np.zeros(300), d, 3000, seed=9)[0]
    greater = signflip_pvalues([d], n_perm=3000, seed=9, estimator="paper", alternative="greater")[0]
    means = _published_loop(np.zeros(300), d, 3000, seed=9)[1]
    assert greater == np.mean(means >= np.mean(d))
    with pytest.raises(GlmscoreError, match="one-sided"):
        signflip_pvalues([d], estimator="paper", alternative="two-sided")
