"""NABench zero-shot metrics (ProteinGym definitions) and their aggregation.

Per assay: Spearman (signed: higher score should mean higher fitness); AUC and MCC with the assay
binarised at its median (or a given cutoff) and, for MCC, the score binarised at its median; NDCG over
the top 10% by score with min-max-normalised fitness as gains; top-10% recall. Then the mean over the
assays of each nucleic-acid family, then the unweighted mean over families; standard errors by a
seeded bootstrap over assays (resampled within each family, so every family stays present).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import matthews_corrcoef, roc_auc_score

METRICS = ["spearman", "auc", "mcc", "ndcg", "recall"]


def ndcg_top(y_true: np.ndarray, y_score: np.ndarray, top: float = 0.1) -> float:
    """ProteinGym's NDCG: gains = min-max fitness, k = floor(top * n), ranks by score."""
    y_true, y_score = np.asarray(y_true, float), np.asarray(y_score, float)
    k = int(np.floor(len(y_true) * top))
    if k < 1:
        return np.nan
    span = y_true.max() - y_true.min()
    gains = (y_true - y_true.min()) / span if span > 0 else np.zeros_like(y_true)
    ranks = np.argsort(np.argsort(-y_score, kind="stable"), kind="stable") + 1
    keep = ranks <= k
    dcg = np.sum(gains[keep] / np.log2(ranks[keep] + 1))
    ideal = np.argsort(np.argsort(-gains, kind="stable"), kind="stable") + 1
    ikeep = ideal <= k
    idcg = np.sum(gains[ikeep] / np.log2(ideal[ikeep] + 1))
    return float(dcg / idcg) if idcg > 0 else 0.0


def top_recall(y_true: np.ndarray, y_score: np.ndarray, top: float = 0.1) -> float:
    """ProteinGym's top-k recall: share of the top ``top`` by fitness also in the top ``top`` by score."""
    true_top = y_true >= np.percentile(y_true, 100 * (1 - top))
    model_top = y_score >= np.percentile(y_score, 100 * (1 - top))
    return float((true_top & model_top).sum() / true_top.sum()) if true_top.sum() else 0.0


def spearman(y_true, y_score) -> float:
    """Spearman of the rows where both are present; NaN when either side is constant or fewer than 3 rows."""
    y_true, y_score = np.asarray(y_true, float), np.asarray(y_score, float)
    ok = ~(np.isnan(y_true) | np.isnan(y_score))
    if ok.sum() < 3 or np.ptp(y_true[ok]) == 0 or np.ptp(y_score[ok]) == 0:
        return np.nan
    return float(stats.spearmanr(y_true[ok], y_score[ok]).statistic)


def assay_metrics(y_true, y_score, cutoff: float | None = None) -> dict[str, float]:
    """All zero-shot metrics for one assay (rows with a missing label or score are dropped)."""
    y_true, y_score = np.asarray(y_true, float), np.asarray(y_score, float)
    ok = ~(np.isnan(y_true) | np.isnan(y_score))
    y_true, y_score = y_true[ok], y_score[ok]
    out = {"n": int(len(y_true))}
    if len(y_true) < 3 or np.ptp(y_true) == 0:
        return {**out, **{m: np.nan for m in METRICS}}
    out["spearman"] = float(stats.spearmanr(y_true, y_score).statistic)
    threshold = np.median(y_true) if cutoff is None else cutoff
    y_bin = (y_true > threshold).astype(int)
    both = 0 < y_bin.sum() < len(y_bin)
    out["auc"] = float(roc_auc_score(y_bin, y_score)) if both else np.nan
    out["mcc"] = float(matthews_corrcoef(y_bin, (y_score > np.median(y_score)).astype(int))) if both else np.nan
    out["ndcg"] = ndcg_top(y_true, y_score)
    out["recall"] = top_recall(y_true, y_score)
    return out


def aggregate(per_assay: pd.DataFrame, metrics=METRICS, n_boot: int = 1000, seed: int = 0,
              by: tuple[str, ...] = ("model",)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-family means and the unweighted mean over families, each with bootstrap standard errors.

    ``per_assay`` has columns ``family``, the ``by`` keys and the metrics. Returns (families, summary).
    """
    rng = np.random.default_rng(seed)
    fam_rows, sum_rows = [], []
    for key, frame in per_assay.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        groups = {f: g[metrics].to_numpy(float) for f, g in frame.groupby("family", sort=True)}
        boot_fam = {f: np.empty((n_boot, len(metrics))) for f in groups}
        for f, values in groups.items():
            idx = rng.integers(0, len(values), size=(n_boot, len(values)))
            boot_fam[f] = np.nanmean(values[idx], axis=1)
        for f, values in groups.items():
            fam_rows.append({**dict(zip(by, key)), "family": f, "n_assays": len(values),
                             **{m: np.nanmean(values[:, j]) for j, m in enumerate(metrics)},
                             **{f"{m}_se": _se(boot_fam[f][:, j]) for j, m in enumerate(metrics)}})
        fam_means = np.stack([np.nanmean(v, axis=0) for v in groups.values()])
        boot_sum = np.nanmean(np.stack(list(boot_fam.values())), axis=0)
        sum_rows.append({**dict(zip(by, key)), "n_families": len(groups), "n_assays": len(frame),
                         **{m: np.nanmean(fam_means[:, j]) for j, m in enumerate(metrics)},
                         **{f"{m}_se": _se(boot_sum[:, j]) for j, m in enumerate(metrics)}})
    return pd.DataFrame(fam_rows), pd.DataFrame(sum_rows)


def _se(boot: np.ndarray) -> float:
    """Bootstrap SE, rounded at 1e-10: the resamples of a one-assay family are identical and their SD
    is float noise (2.8e-17), which a report should show as 0."""
    return float(np.round(np.nanstd(boot, ddof=1), 10))


def zero_shot_table(scores: pd.DataFrame, cutoff: float | None = None) -> pd.DataFrame:
    """Per (model, assay) metrics from a NABench score table (columns model, dataset, group, label, score)."""
    rows = []
    for (model, dataset, family), g in scores.groupby(["model", "dataset", "group"], sort=True):
        rows.append({"model": model, "assay": dataset, "family": family,
                     **assay_metrics(g["label"].to_numpy(), g["score"].to_numpy(), cutoff)})
    return pd.DataFrame(rows)
