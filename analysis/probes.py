"""Probes on embeddings: models, few-shot and supervised splits (ProteinGym fold rules), evaluation.

- Probes: ``ridge`` (Ridge), ``mlp`` (a small MLPRegressor), ``logistic`` (LogisticRegression on labels
  binarised at the training part's median); features standardised inside the pipeline, so scaling is
  fitted on training rows only.
- Few-shot: k in {5, 20, 50, 100} training rows drawn at random (5 seeded repeats), evaluated on all other
  rows; hyper-parameters fixed by the sweep configuration (no tuning on 5 points).
- Supervised: 5 folds ``random``, ``modulo`` (fold = mutated position mod 5) or ``contiguous`` (the range
  of mutated positions cut into 5 consecutive segments); ``modulo``/``contiguous`` need single mutants
  (multi-mutant assays: random only; the wild type has no position and is left out of them).
  Hyper-parameters are chosen by an inner 3-fold CV on the training part only.
- Given folds (``glmscore probe --folds``): a distributed fold column's values held out in turn, with the
  supervised rule above (``given_folds``, ``run_supervised_given``).
Every fold's model is fitted from scratch; the few-shot metric is Spearman on the held-out rows (AUC for
logistic); the supervised metric is ProteinGym's: one Spearman over the pooled out-of-fold predictions of a
scheme (``fold_metric="mean"``: the mean of the folds' values), with the normalised MSE beside it.
The published NABench rules (``--protocol paper``) are in ``analysis/published_probes.py``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from scipy import stats
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from glmscore.models.errors import GlmscoreError

PROBES = ("ridge", "mlp", "logistic")
SCHEMES = ("random", "modulo", "contiguous")
FEWSHOT_K = (5, 20, 50, 100)
GRIDS = {
    "ridge": {"ridge__alpha": [0.1, 1.0, 10.0, 100.0, 1000.0]},
    "mlp": {"mlpregressor__alpha": [1e-4, 1e-2, 1.0]},
    "logistic": {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]},
}


def make_probe(name: str, seed: int = 0, **params):
    if name == "ridge":
        model = Ridge(alpha=params.get("alpha", 1.0))
    elif name == "mlp":
        model = MLPRegressor(hidden_layer_sizes=(64,), alpha=params.get("alpha", 1e-2), max_iter=300,
                             early_stopping=False, random_state=seed)
    elif name == "logistic":
        model = LogisticRegression(C=params.get("C", 1.0), max_iter=1000)
    else:
        raise GlmscoreError(f"unknown probe {name!r}: choose {', '.join(PROBES)}.")
    return make_pipeline(StandardScaler(), model)


def fewshot_splits(n: int, k: int, repeats: int = 5, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if k >= n:
        return
    for r in range(repeats):
        perm = np.random.default_rng([seed, k, r]).permutation(n)
        yield np.sort(perm[:k]), np.sort(perm[k:])


def supervised_folds(positions: list[list[int]], scheme: str, n_folds: int = 5,
                     seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs; ``positions[i]`` are row i's mutated positions ([] for the wild type)."""
    n = len(positions)
    if scheme == "random":
        return [(tr, te) for tr, te in KFold(n_folds, shuffle=True, random_state=seed).split(np.arange(n))]
    if scheme not in SCHEMES:
        raise GlmscoreError(f"unknown fold scheme {scheme!r}: choose {', '.join(SCHEMES)}.")
    if any(len(p) > 1 for p in positions):
        raise GlmscoreError(f"{scheme} folds need single mutants; multi-mutant assays use random folds.")
    rows = np.array([i for i, p in enumerate(positions) if len(p) == 1])
    pos = np.array([positions[i][0] for i in rows])
    if scheme == "modulo":
        fold = pos % n_folds
    else:
        uniq = np.unique(pos)
        segment = np.array_split(uniq, n_folds)
        where = {int(p): f for f, seg in enumerate(segment) for p in seg}
        fold = np.array([where[int(p)] for p in pos])
    return [(rows[fold != f], rows[fold == f]) for f in range(n_folds) if (fold == f).any() and (fold != f).any()]


def _metric(probe: str, y, pred, y_threshold) -> float:
    """Spearman of predictions (AUC of probabilities for logistic, labels binarised at ``y_threshold``:
    one value, or one per row when out-of-fold predictions from several folds are pooled)."""
    if probe == "logistic":
        yb = (y > y_threshold).astype(int)
        if yb.min() == yb.max():
            return np.nan
        return float(roc_auc_score(yb, pred))
    return float(stats.spearmanr(y, pred).statistic) if len(pred) > 2 and np.ptp(pred) > 0 else np.nan


def fit_predict(probe: str, X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, *,
                inner_cv: bool, params: dict | None = None, seed: int = 0) -> tuple[np.ndarray | None, float]:
    """Fit a fresh probe on ``train`` (inner-CV hyper-parameters if ``inner_cv``) and predict ``test``:
    (predictions or, for logistic, probabilities; the training part's median). None when a logistic
    probe's training part has one class."""
    assert not set(train.tolist()) & set(test.tolist()), "a test row is in the training part"
    Xtr, ytr = X[train], y[train]
    threshold = float(np.median(ytr))
    target = (ytr > threshold).astype(int) if probe == "logistic" else ytr
    if probe == "logistic" and target.min() == target.max():
        return None, threshold
    model = make_probe(probe, seed, **(params or {}))
    if inner_cv and len(train) >= 15:
        model = GridSearchCV(model, GRIDS[probe], cv=KFold(3, shuffle=True, random_state=seed),
                             scoring="roc_auc" if probe == "logistic" else "r2")
    model.fit(Xtr, target)
    return (model.predict_proba(X[test])[:, 1] if probe == "logistic" else model.predict(X[test])), threshold


def fit_eval(probe: str, X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, *,
             inner_cv: bool, params: dict | None = None, seed: int = 0) -> float:
    """Fit a fresh probe on ``train`` and score ``test`` (one fold's metric)."""
    pred, threshold = fit_predict(probe, X, y, train, test, inner_cv=inner_cv, params=params, seed=seed)
    return np.nan if pred is None else _metric(probe, y[test], pred, threshold)


FOLD_METRICS = ("pooled", "mean")


def cross_validate(probe: str, X, y, folds: list[tuple[np.ndarray, np.ndarray]], *, seed: int = 0,
                   fold_metric: str = "pooled") -> dict:
    """Every fold's probe fitted from scratch (inner-CV hyper-parameters). ``metric``: with ``pooled``
    (ProteinGym's rule) one Spearman over the out-of-fold predictions of all folds, with ``mean`` the mean
    of the folds' own values; both are returned (``pooled``, ``fold_mean``), with ``mse``: the pooled
    predictions' mean squared error on targets standardised by the assay's mean and SD (ProteinGym's
    normalised MSE; NaN for logistic)."""
    pred, thresholds = np.full(len(y), np.nan), np.full(len(y), np.nan)
    per_fold = []
    for train, test in folds:
        p, threshold = fit_predict(probe, X, y, train, test, inner_cv=True, seed=seed)
        if p is None:
            per_fold.append(np.nan)
            continue
        per_fold.append(_metric(probe, y[test], p, threshold))
        pred[test], thresholds[test] = p, threshold
    ok = ~np.isnan(pred)
    pooled = _metric(probe, y[ok], pred[ok], thresholds[ok]) if ok.sum() > 2 else np.nan
    fold_mean = float(np.nanmean(per_fold)) if np.isfinite(per_fold).any() else np.nan
    sd = float(np.std(y[ok])) if ok.any() else 0.0
    mse = float(np.mean((pred[ok] - y[ok]) ** 2) / sd**2) if probe != "logistic" and sd > 0 else np.nan
    return {"metric": pooled if fold_metric == "pooled" else fold_mean, "pooled": pooled, "fold_mean": fold_mean,
            "mse": mse, "n_splits": len(folds)}


def run_fewshot(probe: str, X, y, k: int, repeats: int = 5, seed: int = 0, params: dict | None = None) -> dict:
    vals = [fit_eval(probe, X, y, tr, te, inner_cv=False, params=params, seed=seed)
            for tr, te in fewshot_splits(len(y), k, repeats, seed)]
    return {"metric": float(np.nanmean(vals)) if vals else np.nan, "n_splits": len(vals)}


def run_supervised(probe: str, X, y, positions, scheme: str, seed: int = 0, fold_metric: str = "pooled") -> dict:
    return cross_validate(probe, X, y, supervised_folds(positions, scheme, seed=seed), seed=seed, fold_metric=fold_metric)


def given_folds(fold: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) pairs from a per-row fold label (a distributed fold column; NaN = the row is in no fold):
    each fold value held out in turn, in sorted order; a fold with no training row is left out."""
    fold = np.asarray(fold, dtype=float)
    rows = np.flatnonzero(~np.isnan(fold))
    out = []
    for f in np.unique(fold[rows]):
        test, train = rows[fold[rows] == f], rows[fold[rows] != f]
        if len(train):
            out.append((train, test))
    return out


def run_supervised_given(probe: str, X, y, folds: list[tuple[np.ndarray, np.ndarray]], seed: int = 0,
                         fold_metric: str = "pooled") -> dict:
    """``run_supervised``'s rule on given folds."""
    return cross_validate(probe, X, y, folds, seed=seed, fold_metric=fold_metric)
