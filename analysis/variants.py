"""Statistics of the causal-variant benchmark: labelled rows, chromosome-held-out splits, features,
probes, AUROC with bootstrap confidence intervals, and the paper's numbers (quoted, not recomputed).

Rows are (variant x tissue), or (variant x gene x tissue) in the gene-centred view: one variant can be
causal for several genes and tissues. A *site* is one ref/alt window pair (``site_index``); every row of
a site lies on one chromosome, so splitting by chromosome never puts a variant, or another tissue row of
it, on both sides of a split (``check_no_leak`` asserts it anyway).

- Splits: test = chr9 + chr10 (configurable); the other chromosomes go into 5 folds grouped by
  chromosome (scikit-learn's GroupKFold, which balances rows per fold). Fold model f trains on the
  other four folds and stops early on fold f (a validation split drawn from training chromosomes only);
  every fold model predicts the test chromosomes, and the ensemble is the mean of their probabilities.
- Features (probes): log(|ref - alt| + 1e-6) of the ref and alt embeddings, then the tissue one-hot.
  The epsilon keeps identical coordinates finite (log 1e-6 = -13.8) without dominating real differences.
- AUROC: scikit-learn's ``roc_auc_score``; 95% CIs by a cluster bootstrap over sites (rows of the same
  variant are resampled together, because they share one prediction input).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from glmscore.models.errors import GlmscoreError

TEST_CHROMS = ("chr9", "chr10")
EPSILON = 1e-6
VARIANT_PROBES = ("mlp", "logistic")
MIN_PER_CLASS = 5  # an AUROC per tissue needs at least this many positives and negatives

# Quoted from the gene-centric causal-variant paper (test chromosomes 9 and 10); not recomputed here.
PAPER = pd.DataFrame([
    ("variant-centred", "one-hot CNN", 0.695), ("variant-centred", "HyenaDNA", 0.706),
    ("variant-centred", "Nucleotide Transformer", "0.722-0.749"), ("variant-centred", "Enformer (Kao et al.)", 0.755),
    ("gene-centred", "HyenaDNA", 0.670), ("gene-centred", "Caduceus", 0.703), ("gene-centred", "Enformer", 0.764),
], columns=["view", "model", "test AUROC (quoted)"])


def bare_chrom(chrom: str) -> str:
    return chrom.removeprefix("chr")


def labelled_rows(sites: pd.DataFrame) -> pd.DataFrame:
    """Site rows with ``tissue``/``label`` lists -> one row per (site, tissue) with a label."""
    rows = sites.explode(["tissue", "label"], ignore_index=True)
    rows = rows[rows["label"].notna()].copy()
    rows["label"] = rows["label"].astype(np.int8)
    return rows.reset_index(drop=True)


def chromosome_folds(chroms: np.ndarray, test_chroms=TEST_CHROMS, n_folds: int = 5) -> np.ndarray:
    """Per row: -1 for the test chromosomes, else its CV fold 0..n_folds-1 (grouped by chromosome)."""
    chroms = np.asarray(chroms, dtype=object)
    test = np.isin([bare_chrom(c) for c in chroms], [bare_chrom(c) for c in test_chroms])
    if not test.any():
        raise GlmscoreError(f"no row lies on the test chromosomes {', '.join(test_chroms)}.")
    train = np.flatnonzero(~test)
    n_train_chroms = len(set(chroms[train]))
    if n_train_chroms < n_folds:
        raise GlmscoreError(f"{n_folds}-fold CV grouped by chromosome needs {n_folds} training chromosomes, found {n_train_chroms}.")
    fold = np.full(len(chroms), -1, dtype=np.int64)
    for f, (_, held) in enumerate(GroupKFold(n_splits=n_folds).split(train, groups=chroms[train])):
        fold[train[held]] = f
    return fold


def check_no_leak(site: np.ndarray, chroms: np.ndarray, fold: np.ndarray) -> None:
    """Raise if a site (variant) or a chromosome appears in more than one split."""
    for key, what in ((site, "variant"), (chroms, "chromosome")):
        frame = pd.DataFrame({"key": key, "fold": fold})
        spread = frame.groupby("key")["fold"].nunique()
        if (spread > 1).any():
            raise AssertionError(f"{what} {spread.index[spread > 1][0]} lies on both sides of a split.")


def variant_features(ref: np.ndarray, alt: np.ndarray, eps: float = EPSILON) -> np.ndarray:
    return np.log(np.abs(ref.astype(np.float64) - alt.astype(np.float64)) + eps).astype(np.float32)


def tissue_onehot(tissues, vocabulary: list[str]) -> np.ndarray:
    index = {t: i for i, t in enumerate(vocabulary)}
    out = np.zeros((len(tissues), len(vocabulary)), dtype=np.float32)
    out[np.arange(len(tissues)), [index[t] for t in tissues]] = 1.0
    return out


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    y = np.asarray(y)
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def weighted_auroc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (ties count one half) for each row of ``weights`` (resamples x rows): the Mann-Whitney
    statistic with row multiplicities, all resamples at once."""
    order = np.argsort(score, kind="stable")
    s, y, w = score[order], y[order].astype(bool), weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores
    pos = np.add.reduceat(w * y, starts, axis=1)
    neg = np.add.reduceat(w * ~y, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def bootstrap_ci(y, score, groups, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the AUROC, resampling whole groups (sites) with replacement."""
    y, score = np.asarray(y), np.asarray(score, dtype=np.float64)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = inverse.max() + 1
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, n_boot, 100):  # 100 resamples at a time keeps memory at 100 x rows
        draws = rng.integers(0, n_groups, (min(100, n_boot - start), n_groups))
        counts = np.stack([np.bincount(d, minlength=n_groups) for d in draws])
        values.append(weighted_auroc(y, score, counts[:, inverse].astype(np.float64)))
    values = np.concatenate(values)
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


def auroc_rows(frame: pd.DataFrame, score: str, keys: dict, *, n_boot: int, seed: int,
               per_tissue: bool = True) -> list[dict]:
    """AUROC (+ CI) of ``score`` against ``label`` over all rows of ``frame`` and per tissue where n allows."""
    out = []
    parts = [("all", frame)] + (sorted(frame.groupby("tissue")) if per_tissue else [])
    for tissue, part in parts:
        n_pos = int(part["label"].sum())
        if tissue != "all" and min(n_pos, len(part) - n_pos) < MIN_PER_CLASS:
            continue
        lo, hi = bootstrap_ci(part["label"], part[score], part["site_index"], n_boot, seed)
        out.append({**keys, "tissue": tissue, "n": len(part), "n_pos": n_pos,
                    "auroc": auroc(part["label"].to_numpy(), part[score].to_numpy()), "ci_low": lo, "ci_high": hi})
    return out


def summarise_predictions(pred: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From a predictions table (``method, fold, split, site_index, tissue, label, prob``; split
    ``val`` = the fold's held-out training chromosomes, ``test`` = the test chromosomes):
    (summary: test AUROC per method as mean +- SD over fold models and the ensemble's AUROC with CI,
    per-tissue: the ensemble's test AUROC per tissue)."""
    summary, tissues = [], []
    for method, part in pred.groupby("method", sort=True):
        test = part[part["split"] == "test"]
        per_fold = [auroc(g["label"].to_numpy(), g["prob"].to_numpy()) for _, g in test.groupby("fold")]
        val = part[part["split"] == "val"]
        ens = test.groupby(["site_index", "tissue"], as_index=False).agg(label=("label", "first"), prob=("prob", "mean"))
        rows = auroc_rows(ens, "prob", {"method": method}, n_boot=n_boot, seed=seed)
        overall = rows[0]
        summary.append({"method": method, "n_test": overall["n"], "n_test_pos": overall["n_pos"],
                        "test_auroc_mean": float(np.nanmean(per_fold)), "test_auroc_sd": float(np.nanstd(per_fold, ddof=1)),
                        "n_folds": len(per_fold), "ensemble_auroc": overall["auroc"],
                        "ensemble_ci_low": overall["ci_low"], "ensemble_ci_high": overall["ci_high"],
                        "cv_auroc": auroc(val["label"].to_numpy(), val["prob"].to_numpy())})
        tissues += rows[1:]
    return pd.DataFrame(summary), pd.DataFrame(tissues)


# ---------------------------------------------------------------- probes (scikit-learn)


def fit_variant_probe(probe: str, X: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray, *,
                      seed: int = 0, max_epochs: int = 200, patience: int = 10):
    """A fresh probe fitted on ``train`` with model selection on ``val`` only; returns a function
    rows -> probabilities. ``logistic``: C from a grid by validation AUROC. ``mlp``: MLPClassifier
    (256, 64), one epoch per ``partial_fit``, early stopping on validation AUROC (best epoch kept)."""
    if set(train.tolist()) & set(val.tolist()):
        raise AssertionError("a validation row is in the training part")
    scaler = StandardScaler().fit(X[train])
    Xtr, Xva = scaler.transform(X[train]), scaler.transform(X[val])
    best, best_auc = None, -np.inf
    if probe == "logistic":
        for C in (0.001, 0.01, 0.1, 1.0):
            model = LogisticRegression(C=C, max_iter=2000).fit(Xtr, y[train])
            a = auroc(y[val], model.predict_proba(Xva)[:, 1])
            if best is None or a > best_auc:
                best, best_auc = model, a
    elif probe == "mlp":
        model = MLPClassifier(hidden_layer_sizes=(256, 64), alpha=1e-3, learning_rate_init=1e-3,
                              batch_size=min(128, len(train)), random_state=seed)
        stale = 0
        for _ in range(max_epochs):
            model.partial_fit(Xtr, y[train], classes=np.array([0, 1]))
            a = auroc(y[val], model.predict_proba(Xva)[:, 1])
            if best is None or a > best_auc + 1e-4:
                best, best_auc, stale = copy.deepcopy(model), a, 0
            else:
                stale += 1
                if stale >= patience:
                    break
    else:
        raise GlmscoreError(f"unknown variant probe {probe!r}: choose {', '.join(VARIANT_PROBES)}.")
    return lambda rows: best.predict_proba(scaler.transform(X[rows]))[:, 1]


def effect_summary(sites: pd.DataFrame) -> pd.DataFrame:
    """Per model: how many sites and variants, and the distribution of ``effect`` (alt - ref) over sites."""
    def one(part: pd.DataFrame) -> pd.Series:
        e = part["effect"].to_numpy(dtype=float)
        q05, q50, q95 = np.quantile(e, [0.05, 0.5, 0.95])
        return pd.Series({"effect": part["effect_type"].iloc[0], "sites": len(e), "variants": part["variant_id"].nunique(),
                          "mean": e.mean(), "sd": e.std(ddof=1) if len(e) > 1 else np.nan, "q05": q05, "median": q50,
                          "q95": q95, "fraction < 0": float(np.mean(e < 0))})
    return pd.DataFrame([{"model": m, **one(p)} for m, p in sites.groupby("model", sort=False)])


def largest_effects(sites: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The ``n`` sites with the largest |effect| per model (ties broken by genome order)."""
    ranked = sites.assign(_abs=sites["effect"].abs()).sort_values(["model", "_abs", "site_index"], ascending=[True, False, True],
                                                                  kind="stable")
    cols = ["model", "variant_id", "gene", "score_ref", "score_alt", "effect"]
    return ranked.groupby("model", sort=False).head(n)[cols].reset_index(drop=True)
