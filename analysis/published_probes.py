"""The published NABench probe rules (``glmscore probe --protocol paper``), as the benchmark's scripts run them.

Source: github.com/mrzzmrzz/NABench. Few-shot and supervised random folds follow ``evaluate()`` in
``scripts/Nucleotide_Transformer/compute_fitness.py`` at commit 6002856 ("Unifing code", 2025-07-31; the
same ``evaluate()`` is in ``scripts/{RNA_FM/compute_fitness,Lucamodel/run,genalm/run,dnabert/run,birna/run,
aido/run,enformer/run}.py`` there); contiguous folds follow ``evaluate_contiguous()`` in
``scripts/Nucleotide_Transformer/run_contiguous.py`` at commit 40cf12d (unchanged since).

- Few-shot: ``np.random.seed(42)`` once per assay and k, then for each repeat
  ``np.random.choice(n, size=k, replace=False)`` training rows, ``Ridge(alpha=1.0)`` on the unscaled
  features, ``spearmanr`` on all other rows; the assay's number is ``np.mean`` of the repeats (NaN if any
  repeat is NaN, as in the script) and ``np.std`` (ddof 0) their spread.
- Supervised random: ``KFold(n_splits=5, shuffle=True, random_state=42)`` over the rows,
  ``RidgeCV(alphas=np.logspace(-3, 3, 7))`` fitted per fold on unscaled features, ONE ``spearmanr`` of the
  pooled out-of-fold predictions.
- Supervised contiguous: the sorted set of mutated positions cut by ``np.array_split`` into
  ``min(5, n_positions)`` blocks; a block's candidates are the rows with at least one position in it
  (multi-mutants included; the wild type never); the test part is the candidates, cut at random to
  ``int(0.2 * n)`` rows by ``np.random.RandomState(0).choice(..., replace=False)`` (one generator for all
  folds, drawn only when a fold is too big); training = every row that is not a candidate (the candidates
  cut away are used by neither side); a fold is skipped when its training part has fewer than 0.4 n AND
  fewer than 500 rows; ``RidgeCV(alphas=np.logspace(-3, 3, 7))``; a fold whose fit fails is skipped (the
  script's ``try``/``except``; reported as ``n_skipped``); the number is ``np.nanmean`` of the folds'
  Spearman and ``np.nanstd`` their spread.
- The wild type: ``compute_fitness.py`` drops the rows with an empty mutant (``df[~df[mutant].isna()]``)
  before few-shot and random folds; ``run_contiguous.py`` keeps them (never a candidate, always training).
  ``--wildtype published`` (the default under ``--protocol paper``) takes each rule for its scheme.
- Distributed folds (``--folds``, not a published script: the benchmark ships ``cv_folds.zip`` but no code
  that reads it): each fold value held out in turn, the same RidgeCV, one Spearman of the pooled
  out-of-fold predictions (the rule of the random folds).

There is no published modulo rule; rows with a NaN label are left out before anything is drawn (the
scripts mask them first too).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import KFold

PAPER_SEED = 42
PAPER_FEWSHOT_ALPHA = 1.0
PAPER_N_FOLDS = 5
CONTIGUOUS_SEED = 0
CONTIGUOUS_MAX_TEST_FRAC = 0.2
PAPER_SCHEMES = ("random", "contiguous")
SOURCE = ("mrzzmrzz/NABench scripts/Nucleotide_Transformer/compute_fitness.py@6002856 (few-shot and random folds) and "
          "scripts/Nucleotide_Transformer/run_contiguous.py@40cf12d (contiguous folds)")


def paper_alphas() -> np.ndarray:
    """The scripts' RidgeCV grid: ``np.logspace(-3, 3, 7)``."""
    return np.logspace(-3, 3, 7)


def published_spearman(pred, y) -> float:
    """``scipy.stats.spearmanr(pred, y).correlation`` as the scripts call it (NaN for a constant side)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(pred, y).correlation)


def paper_fewshot_draws(n: int, k: int, repeats: int = 5, seed: int = PAPER_SEED) -> list[np.ndarray]:
    """The k training rows of each repeat, drawn by the scripts' global-RNG sequence.

    The global numpy generator is seeded as the script seeds it and restored afterwards, so nothing
    else in the process sees its state changed.
    """
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return [np.random.choice(n, size=k, replace=False) for _ in range(repeats)]
    finally:
        np.random.set_state(state)


def paper_fewshot(X: np.ndarray, y: np.ndarray, k: int, repeats: int = 5, seed: int = PAPER_SEED) -> dict:
    """Few-shot ridge of the published scripts: mean and SD (ddof 0) of the repeats' Spearman."""
    corrs = []
    for idx in paper_fewshot_draws(len(y), k, repeats, seed):
        model = Ridge(alpha=PAPER_FEWSHOT_ALPHA).fit(X[idx], y[idx])
        corrs.append(published_spearman(model.predict(np.delete(X, idx, axis=0)), np.delete(y, idx)))
    return {"metric": float(np.mean(corrs)), "metric_std": float(np.std(corrs)), "n_splits": len(corrs)}


def ridgecv_predict(X, y, train, test) -> np.ndarray:
    return RidgeCV(alphas=paper_alphas()).fit(X[train], y[train]).predict(X[test])


def paper_random_folds(n: int, seed: int = PAPER_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(KFold(n_splits=PAPER_N_FOLDS, shuffle=True, random_state=seed).split(np.arange(n)))


def pooled_oof(X: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """RidgeCV per fold, one Spearman over the pooled out-of-fold predictions (rows never held out and
    folds without training rows stay out)."""
    pred = np.full(len(y), np.nan)
    used = 0
    for train, test in folds:
        if len(train) == 0 or len(test) == 0:
            continue
        pred[test] = ridgecv_predict(X, y, train, test)
        used += 1
    ok = ~np.isnan(pred)
    metric = published_spearman(pred[ok], y[ok]) if ok.sum() >= 2 else np.nan
    return {"metric": metric, "metric_std": np.nan, "n_splits": used}


def paper_random(X: np.ndarray, y: np.ndarray, seed: int = PAPER_SEED) -> dict:
    """Supervised random 5-fold CV of the published scripts (pooled out-of-fold Spearman)."""
    return pooled_oof(X, y, paper_random_folds(len(y), seed))


def paper_contiguous_folds(positions: list[list[int]], n_folds: int = PAPER_N_FOLDS,
                           max_frac: float = CONTIGUOUS_MAX_TEST_FRAC,
                           seed: int = CONTIGUOUS_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) of the published contiguous scheme, skipped folds left out (see the module docstring)."""
    n = len(positions)
    all_pos = sorted({p for pl in positions for p in pl})
    if not all_pos:
        return []
    rng = np.random.RandomState(seed)
    blocks = np.array_split(np.array(all_pos), min(n_folds, len(all_pos)))
    folds = []
    for lo, hi in [(b[0], b[-1]) for b in blocks if len(b)]:
        candidate = [i for i, pl in enumerate(positions) if any(lo <= p <= hi for p in pl)]
        if not candidate:
            continue
        max_size = int(max_frac * n)
        test = rng.choice(candidate, size=max_size, replace=False).tolist() if len(candidate) > max_size else candidate
        held = set(candidate)
        train = [i for i in range(n) if i not in held]
        if len(train) < 0.4 * n and len(train) < 500:
            continue
        folds.append((np.asarray(train, dtype=int), np.asarray(test, dtype=int)))
    return folds


def paper_contiguous(X: np.ndarray, y: np.ndarray, positions: list[list[int]]) -> dict:
    """Supervised contiguous folds of the published scripts: nanmean and nanstd of the folds' Spearman. A
    fold whose fit fails is skipped and counted (``n_skipped``), as ``run_contiguous.py`` does with its
    ``try``/``except``; here only the fit's own errors (sklearn's ValueError, a singular system) are."""
    corrs, skipped = [], 0
    for tr, te in paper_contiguous_folds(positions):
        try:
            pred = ridgecv_predict(X, y, tr, te)
        except (ValueError, np.linalg.LinAlgError):
            skipped += 1
            continue
        corrs.append(published_spearman(pred, y[te]))
    if not corrs or np.all(np.isnan(corrs)):
        return {"metric": np.nan, "metric_std": np.nan, "n_splits": len(corrs), "n_skipped": skipped}
    return {"metric": float(np.nanmean(corrs)), "metric_std": float(np.nanstd(corrs)), "n_splits": len(corrs),
            "n_skipped": skipped}


def paper_supervised(X: np.ndarray, y: np.ndarray, positions: list[list[int]], scheme: str,
                     given: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """One supervised trial under the published rules: ``given`` folds (from a fold file) or the scheme's."""
    if given is not None:
        return pooled_oof(X, y, given)
    if scheme == "random":
        return paper_random(X, y)
    if scheme == "contiguous":
        return paper_contiguous(X, y, positions)
    raise ValueError(f"no published rule for {scheme!r} folds")
