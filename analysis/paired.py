"""Paired sign-flip permutation tests and multiple-testing corrections (Nullsette statistics).

A mutant type is detected when its mutants score lower than their paired nonmutants: the statistic is
the mean of d = mutant - nonmutant, its null distribution comes from flipping the sign of each pair's
difference at random (the pairs are exchangeable under H0: no systematic difference), and the
alternative is ``less``.

p-value estimators:
- ``plus_one`` (default): p = (1 + #{perm <= obs}) / (1 + n_perm); never 0 and valid (Phipson & Smyth 2010).
- ``seed``: p = #{perm <= obs} / n_perm on glmscore's own draw of sign vectors (can return 0).
- ``paper``: the published GLM-Nullsette-Benchmark function (``model/utils/paired_mutation_test.py``) bit
  for bit: a fresh ``np.random.default_rng(seed)`` per test, per permutation
  ``signs = rng.choice([-1, 1], size=n)``, ``mean(diffs * signs)``, p = mean(perm_means <= observed_mean)
  with no tie tolerance, no enumeration, no dropping of NaNs (see ``published_pvalue``).
When 2**n <= n_perm every sign vector is enumerated and the exact p-value returned (as scipy does), except
under ``paper``.

Vectorised: tests with the same number of pairs share one draw of sign vectors, and the statistic of
every permutation for every test is one matrix product (n_perm x n) @ (n x tests), in chunks.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
from scipy import stats

from glmscore.models.errors import GlmscoreError

ESTIMATORS = ("plus_one", "seed", "paper")
CORRECTIONS = ("bh", "bonferroni", "holm", "none")


def _signs_random(rng: np.random.Generator, n_perm: int, n: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(rng.bytes(n_perm * ((n + 7) // 8)), dtype=np.uint8).reshape(n_perm, -1),
                         axis=1, count=n)
    return bits.astype(np.float64) * 2.0 - 1.0


def _signs_exact(n: int) -> np.ndarray:
    return np.array(list(itertools.product((1.0, -1.0), repeat=n)), dtype=np.float64).reshape(-1, n)


def published_pvalue(diffs: np.ndarray, *, n_perm: int = 10_000, seed: int | None = 0, alternative: str = "less",
                     chunk: int = 1000) -> float:
    """The published paired permutation test, vectorised and equal to its loop bit for bit.

    Why the vectorised form is the same computation: ``Generator.choice([-1, 1], size=n)`` draws its
    indices with ``integers(0, 2)``, which takes exactly one 32-bit output of the bit generator per
    index with no rejection (Lemire's method on a range of 2 never rejects) and keeps the bit
    generator's half-used 64-bit word between calls; so one draw of ``(rows, n)`` indices consumes
    the stream exactly as ``rows`` successive draws of ``n``. Each row's mean is a reduction over the
    contiguous last axis, which numpy computes with the same pairwise summation as the 1-D ``np.mean``.
    ``tests/analysis/test_statistics.py`` checks equality against the explicit loop on real score vectors.
    """
    diffs = np.asarray(diffs, dtype=np.float64)
    observed = np.mean(diffs)
    perm = published_permutation_means(diffs, n_perm=n_perm, seed=seed, chunk=chunk)
    return float(np.mean(perm <= observed) if alternative == "less" else np.mean(perm >= observed))


def published_permutation_means(diffs: np.ndarray, *, n_perm: int = 10_000, seed: int | None = 0,
                                chunk: int = 1000) -> np.ndarray:
    """The published function's ``permuted_means``, in its order (see ``published_pvalue``)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    out = np.empty(n_perm)
    for start in range(0, n_perm, chunk):
        rows = min(chunk, n_perm - start)
        out[start : start + rows] = np.mean(diffs * rng.choice([-1, 1], size=(rows, len(diffs))), axis=1)
    return out


def signflip_pvalues(diffs: Sequence[np.ndarray], *, n_perm: int = 10_000, seed: int = 0,
                     alternative: str = "less", estimator: str = "plus_one", chunk: int = 2000) -> np.ndarray:
    """One-sided (or two-sided) paired sign-flip p-values, one per array of paired differences.

    NaN differences are dropped per test. A test with no pairs gets NaN.
    """
    if estimator not in ESTIMATORS:
        raise GlmscoreError(f"unknown p-value estimator {estimator!r}: choose {' or '.join(ESTIMATORS)}.")
    if alternative not in ("less", "greater", "two-sided"):
        raise GlmscoreError(f"unknown alternative {alternative!r}: choose less, greater or two-sided.")
    if n_perm < 1:
        raise GlmscoreError("the number of permutations must be at least 1.")
    if estimator == "paper":
        if alternative not in ("less", "greater"):
            raise GlmscoreError("the published estimator is one-sided: alternative less or greater.")
        return np.array([published_pvalue(d, n_perm=n_perm, seed=seed, alternative=alternative) if len(d) else np.nan
                         for d in diffs])
    clean = [np.asarray(d, dtype=np.float64) for d in diffs]
    clean = [d[~np.isnan(d)] for d in clean]
    out = np.full(len(clean), np.nan)
    rng = np.random.default_rng(seed)
    by_n: dict[int, list[int]] = {}
    for i, d in enumerate(clean):
        if len(d):
            by_n.setdefault(len(d), []).append(i)
    for n, idx in sorted(by_n.items()):
        D = np.stack([clean[i] for i in idx], axis=1)  # (n, tests)
        obs = D.mean(axis=0)
        exact = 2**n <= n_perm if n < 63 else False
        total = 2**n if exact else n_perm
        count = np.zeros(len(idx), dtype=np.int64)
        # a permutation ties the observed value when equal up to rounding (the identity always does)
        tol = 1e-9 * np.maximum(np.abs(D).mean(axis=0), 1e-300)
        for start in range(0, total, chunk):
            m = min(chunk, total - start)
            S = _signs_exact(n)[start : start + m] if exact else _signs_random(rng, m, n)
            perm = S @ D / n
            if alternative == "less":
                count += (perm <= obs + tol).sum(axis=0)
            elif alternative == "greater":
                count += (perm >= obs - tol).sum(axis=0)
            else:
                count += (np.abs(perm) >= np.abs(obs) - tol).sum(axis=0)
        if exact:
            p = count / total
        elif estimator == "plus_one":
            p = (1 + count) / (1 + n_perm)
        else:
            p = count / n_perm
        out[idx] = np.minimum(p, 1.0)
    return out


def adjust(p: np.ndarray, method: str = "bh") -> np.ndarray:
    """Multiple-testing correction across one family of tests (NaNs are left out and kept)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = len(q)
    if m == 0:
        return out
    if method == "bh":
        adj = stats.false_discovery_control(q, method="bh")
    elif method == "bonferroni":
        adj = np.minimum(q * m, 1.0)
    elif method == "holm":
        order = np.argsort(q, kind="stable")
        stepped = np.maximum.accumulate((m - np.arange(m)) * q[order])
        adj = np.empty(m)
        adj[order] = np.minimum(stepped, 1.0)
    elif method == "none":
        adj = q
    else:
        raise GlmscoreError(f"unknown correction {method!r}: choose {', '.join(CORRECTIONS)}.")
    out[ok] = adj
    return out
