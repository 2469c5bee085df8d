"""NABench zero-shot metrics (ProteinGym's definitions) and their aggregation into a leaderboard.

Per assay (rows with a non-finite label are left out and counted; rows a model left unscored are an error
unless ``missing="drop"``):

- ``spearman``: Spearman of score vs fitness (average ranks: order-free).
- ``auc``: ROC AUC with fitness binarised as ``label > cutoff`` (the assay's median, a per-assay cutoff from
  the metadata, or a global one); sklearn gives tied scores half credit (order-free).
- ``mcc``: MCC of that binary label against ``score >= median(score)``: the reference's ``>=``.
- ``ndcg``: NDCG over the top k = floor(10% n) ranks by score, gains = min-max fitness.
- ``recall``: the share of the true top 10% (``label > 90th percentile``, the reference's rule) that the
  model's top 10% recovers.

Two protocols differ only where scores tie (a k-mer baseline, a coarse model, a constant):

- ``tie-aware`` (default): NDCG and recall are their exact expectations over every order of the tied rows.
  A tie group that occupies ranks a..a+m-1 gives each member the mean of those ranks' discounts (by
  linearity this is the expected DCG, with no shuffling); the model's top set has the size the
  reference's rule gives untied scores, and a tie group cut by its edge contributes each member's true-top
  share pro rata. Row order then changes no metric, and a constant score gets the random expectation
  (recall = k/n, NDCG = mean gain x the top-k discount sum / IDCG).
- ``paper``: ProteinGym's ``performance_DMS_benchmarks.py`` as written: NDCG ranks by
  ``np.argsort(-score)`` (numpy's default, unstable sort: tied rows take an order that depends on the
  file's row order) and returns 0 when no gain reaches the top k; recall counts ``score > 90th
  percentile`` (a constant score gets 0). Use it to put numbers beside a published leaderboard.

Aggregation (``aggregate``) follows ProteinGym: the mean within each level below the family (assays, or
constructs: ``RAW_CONSTRUCT_SEQ``, NABench's nearest equivalent of ProteinGym's UniProt target), then
within each family, then the unweighted mean over families. Bootstrap resamples draw the same assays for
every model (within each family, so every family stays present), which gives each model's own SE and the
paired SE of its difference from any other model (``paired_differences``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import matthews_corrcoef, roc_auc_score

from glmscore.models.errors import GlmscoreError

METRICS = ["spearman", "auc", "mcc", "ndcg", "recall"]
PROTOCOLS = ("tie-aware", "paper")
TOP = 0.1
DEPTHS = ("1", "2", "3", "4", "5+")
SIZE_BINS = ((0, 1_000, "<1k"), (1_000, 10_000, "1k-10k"), (10_000, 100_000, "10k-100k"), (100_000, np.inf, ">=100k"))


def _gains(y_true: np.ndarray) -> np.ndarray:
    span = y_true.max() - y_true.min()
    return (y_true - y_true.min()) / span if span > 0 else np.zeros_like(y_true)


def _idcg(gains: np.ndarray, k: int) -> float:
    """The ideal DCG: the k largest gains at ranks 1..k (ties among gains do not change it)."""
    top = np.sort(gains)[::-1][:k]
    return float(np.sum(top / np.log2(np.arange(2, len(top) + 2))))


def ndcg_top(y_true, y_score, top: float = TOP, protocol: str = "tie-aware") -> float:
    """NDCG over the top ``floor(top * n)`` ranks by score, gains = min-max fitness (module docstring)."""
    y_true, y_score = np.asarray(y_true, float), np.asarray(y_score, float)
    n = len(y_true)
    k = int(np.floor(n * top))
    gains = _gains(y_true)
    if protocol == "paper":
        if k < 1:
            return 0.0  # the reference: no rank makes the cut -> 0
        ranks = np.argsort(np.argsort(-y_score)) + 1  # numpy's default sort, as the reference calls it
        keep = (ranks <= k) & (gains != 0)
        if not keep.any():
            return 0.0
        return float(np.sum(gains[keep] / np.log2(ranks[keep] + 1)) / _idcg(gains, k))
    if k < 1:
        return np.nan
    # each tie group (ranks a .. a+m-1) spreads evenly over its ranks: a member's expected discount is the
    # mean of those ranks' discounts (0 past k)
    _, inverse, counts = np.unique(-y_score, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts  # 0-based first rank of each group, in descending score order
    discount = np.zeros(n + 1)
    discount[1:k + 1] = 1.0 / np.log2(np.arange(2, k + 2))
    prefix = np.cumsum(discount)  # prefix[r] = sum of the discounts of ranks 1..r
    first, size = start[inverse], counts[inverse]
    expected = (prefix[first + size] - prefix[first]) / size
    idcg = _idcg(gains, k)
    return float(np.sum(gains * expected) / idcg) if idcg > 0 else np.nan


def _top_size(n: int, top: float) -> int:
    """How many rows the reference's ``x > percentile(x, 100 - top%)`` keeps when no two values tie."""
    ranks = np.arange(n, dtype=float)
    return int((ranks > np.percentile(ranks, 100 * (1 - top))).sum())


def top_recall(y_true, y_score, top: float = TOP, protocol: str = "tie-aware") -> float:
    """Share of the true top ``top`` (``label > percentile``) in the model's top ``top``."""
    y_true, y_score = np.asarray(y_true, float), np.asarray(y_score, float)
    true_top = y_true > np.percentile(y_true, 100 * (1 - top))
    if protocol == "paper":
        model_top = y_score > np.percentile(y_score, 100 * (1 - top))
        return float((true_top & model_top).sum() / true_top.sum()) if true_top.sum() else 0.0
    k = _top_size(len(y_score), top)
    if k < 1 or not true_top.any():
        return np.nan
    edge = np.sort(y_score)[::-1][k - 1]  # the k-th largest score: its tie group may straddle the cut
    above, at = y_score > edge, y_score == edge
    slots = k - int(above.sum())
    hits = (true_top & above).sum() + (true_top & at).sum() * slots / at.sum()
    return float(hits / true_top.sum())


def spearman(y_true, y_score) -> float:
    """Spearman of the rows where both are present; NaN when either side is constant or fewer than 3 rows."""
    y_true, y_score = np.asarray(y_true, float), np.asarray(y_score, float)
    ok = ~(np.isnan(y_true) | np.isnan(y_score))
    if ok.sum() < 3 or np.ptp(y_true[ok]) == 0 or np.ptp(y_score[ok]) == 0:
        return np.nan
    return float(stats.spearmanr(y_true[ok], y_score[ok]).statistic)


def too_small(n: int, y_true: np.ndarray) -> str | None:
    """Why an assay (or a depth subset) gets no metric, or None."""
    if n < 3:
        return f"{n} labelled row(s): every metric needs 3 or more"
    if np.ptp(y_true) == 0:
        return "every label is equal"
    return None


def assay_metrics(y_true, y_score, cutoff: float | None = None, protocol: str = "tie-aware") -> dict[str, float]:
    """All zero-shot metrics for one assay. Rows with a non-finite label or a NaN score are left out
    (``zero_shot_table`` counts and refuses those before they reach here)."""
    if protocol not in PROTOCOLS:
        raise GlmscoreError(f"unknown protocol {protocol!r}: choose {', '.join(PROTOCOLS)}.")
    y_true, y_score = np.asarray(y_true, float), np.asarray(y_score, float)
    ok = np.isfinite(y_true) & ~np.isnan(y_score)
    y_true, y_score = y_true[ok], y_score[ok]
    out = {"n": int(len(y_true))}
    if too_small(len(y_true), y_true):
        return {**out, **{m: np.nan for m in METRICS}}
    constant = np.ptp(y_score) == 0
    out["spearman"] = np.nan if constant else float(stats.spearmanr(y_true, y_score).statistic)
    threshold = np.median(y_true) if cutoff is None or np.isnan(cutoff) else cutoff
    y_bin = (y_true > threshold).astype(int)
    both = 0 < y_bin.sum() < len(y_bin)
    out["auc"] = float(roc_auc_score(y_bin, y_score)) if both else np.nan
    out["mcc"] = float(matthews_corrcoef(y_bin, (y_score >= np.median(y_score)).astype(int))) if both else np.nan
    out["ndcg"] = ndcg_top(y_true, y_score, protocol=protocol)
    out["recall"] = top_recall(y_true, y_score, protocol=protocol)
    return out


def mutation_depth(mutants: pd.Series) -> pd.Series:
    """'1'..'4' or '5+' changes from the comma-separated ``mutant`` column; '0' for the wild type."""
    n = mutants.fillna("").astype(str).map(lambda m: 0 if not m.strip() else m.count(",") + 1)
    return n.map(lambda d: "5+" if d >= 5 else str(d))


def size_bin(n_rows: int) -> str:
    return next(label for lo, hi, label in SIZE_BINS if lo <= n_rows < hi)


def zero_shot_table(scores: pd.DataFrame, cutoff=None, protocol: str = "tie-aware", missing: str = "error",
                    by_depth: bool = False) -> pd.DataFrame:
    """Per (model, assay) metrics from a NABench score table (columns model, dataset, group, label, score;
    ``pair_index`` names rows in errors; ``mutant`` gives ``by_depth`` rows with a ``depth`` column).

    ``cutoff``: None (each assay's median), a number, or {assay: cutoff} (NaN = median). ``n_unlabelled``
    counts rows whose label is not a finite number (left out); ``n_missing`` rows the model did not score
    (an error naming them unless ``missing == "drop"``).
    """
    rows = []
    for (model, dataset, family), g in scores.groupby(["model", "dataset", "group"], sort=True):
        y, s = g["label"].to_numpy(float), g["score"].to_numpy(float)
        labelled = np.isfinite(y)
        unscored = labelled & np.isnan(s)
        if unscored.any() and missing != "drop":
            where = g["pair_index"].to_numpy()[unscored] if "pair_index" in g else np.flatnonzero(unscored)
            shown = ", ".join(str(int(i)) for i in where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
            raise GlmscoreError(f"model {model} left {int(unscored.sum())} labelled row(s) of assay {dataset} unscored "
                                f"(rows {shown}); rescore them, or pass --missing drop to compute the metrics on "
                                "the rows it scored.")
        c = cutoff.get(dataset) if isinstance(cutoff, dict) else cutoff
        keep = labelled & ~unscored
        base = {"model": model, "assay": dataset, "family": family, "n_rows": len(g),
                "n_unlabelled": int((~labelled).sum()), "n_missing": int(unscored.sum())}
        rows.append({**base, **assay_metrics(y[keep], s[keep], c, protocol),
                     "too_small": too_small(int(keep.sum()), y[keep])})
        if by_depth:
            depth = mutation_depth(g["mutant"]).to_numpy()
            for d in DEPTHS:
                sel = keep & (depth == d)
                if sel.any():
                    rows.append({**base, "depth": d, **assay_metrics(y[sel], s[sel], c, protocol)})
    table = pd.DataFrame(rows)
    if by_depth and "depth" not in table:
        table["depth"] = np.nan
    return table


# ---------------------------------------------------------------- aggregation


def _se(boot: np.ndarray) -> float:
    """Bootstrap SE, rounded at 1e-10: the resamples of a one-assay family are identical and their SD
    is float noise (2.8e-17), which a report should show as 0."""
    if np.isfinite(boot).sum() < 2:
        return np.nan
    return float(np.round(np.nanstd(boot, ddof=1), 10))


def _level_means(frame: pd.DataFrame, metrics: list[str], level: str | None) -> pd.DataFrame:
    """Per family: one row per ``level`` value (construct), the mean of its assays; or the assays as they are."""
    if level is None:
        return frame
    return frame.groupby(["family", level], sort=True, dropna=False)[metrics].mean().reset_index()


def _nanmean(a: np.ndarray, axis) -> np.ndarray:
    with np.errstate(all="ignore"):
        count = np.sum(~np.isnan(a), axis=axis)
        total = np.nansum(a, axis=axis)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def bootstrap(per_assay: pd.DataFrame, metrics=METRICS, n_boot: int = 1000, seed: int = 0,
              by: tuple[str, ...] = ("model",), level: str | None = None):
    """The headline (unweighted mean over families of the mean within each family, after averaging
    within ``level`` if given) for every ``by`` key, on the data and on ``n_boot`` resamples that draw
    the same units (assays or constructs) within each family for every key.

    Returns (keys, families, point, boot, family point, family boot): ``point`` is keys x metrics, ``boot``
    n_boot x keys x metrics, ``families`` maps family -> (units x keys x metrics, its resample indices),
    and the family arrays add a leading family axis.
    """
    rng = np.random.default_rng(seed)
    keys = sorted(set(per_assay[list(by)].itertuples(index=False, name=None)))
    families = {}
    for family in sorted(per_assay["family"].unique()):
        cube = []
        for key in keys:
            mask = np.logical_and.reduce([per_assay[b] == v for b, v in zip(by, key)]) & (per_assay["family"] == family)
            sub = per_assay[mask]
            if level:
                sub = _level_means(sub, metrics, level).set_index(level)
            elif "assay" in sub:
                sub = sub.set_index("assay")
            else:  # rows without names (a caller's own table): aligned by position
                sub = sub.reset_index(drop=True)
            cube.append(sub[metrics])
        index = sorted(set().union(*[c.index for c in cube]), key=str)
        values = np.stack([c.reindex(index).to_numpy(float) for c in cube], axis=1)  # units x keys x metrics
        draws = rng.integers(0, len(index), size=(n_boot, len(index)))
        families[family] = (values, draws)
    fam_point = np.stack([_nanmean(v, 0) for v, _ in families.values()])  # families x keys x metrics
    fam_boot = np.stack([_nanmean(v[d], 1) for v, d in families.values()])  # families x n_boot x keys x metrics
    return keys, families, _nanmean(fam_point, 0), _nanmean(fam_boot, 0), fam_point, fam_boot


def aggregate(per_assay: pd.DataFrame, metrics=METRICS, n_boot: int = 1000, seed: int = 0,
              by: tuple[str, ...] = ("model",), level: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-family means and the unweighted mean over families, each with its bootstrap standard error.

    ``per_assay`` has columns ``family``, ``assay``, the ``by`` keys, the metrics (and ``level`` when
    given). Returns (families, summary).
    """
    metrics = list(metrics)
    keys, families, point, boot, fam_point, fam_boot = bootstrap(per_assay, metrics, n_boot, seed, by, level)
    fam_rows, sum_rows = [], []
    for j, key in enumerate(keys):
        kd = dict(zip(by, key))
        for f, family in enumerate(families):
            values = families[family][0][:, j, :]
            present = ~np.all(np.isnan(values), axis=1)
            if not present.any():
                continue
            fam_rows.append({**kd, "family": family, "n_assays": int(((per_assay["family"] == family) & np.logical_and.reduce(
                             [per_assay[b] == v for b, v in zip(by, key)])).sum()),
                             **{m: fam_point[f, j, i] for i, m in enumerate(metrics)},
                             **{f"{m}_se": _se(fam_boot[f, :, j, i]) for i, m in enumerate(metrics)}})
        mask = np.logical_and.reduce([per_assay[b] == v for b, v in zip(by, key)])
        sum_rows.append({**kd, "n_families": int(per_assay.loc[mask, "family"].nunique()), "n_assays": int(mask.sum()),
                         **{m: point[j, i] for i, m in enumerate(metrics)},
                         **{f"{m}_se": _se(boot[:, j, i]) for i, m in enumerate(metrics)}})
    return pd.DataFrame(fam_rows), pd.DataFrame(sum_rows)


def paired_differences(per_assay: pd.DataFrame, metric: str = "spearman", n_boot: int = 1000, seed: int = 0,
                       level: str | None = None) -> pd.DataFrame:
    """Every ordered pair of models (A, B): the headline difference A - B, its paired bootstrap SE (the same
    resampled assays for both, as ProteinGym's standard error against the best model) and a 95% percentile
    interval; ``significant`` when that interval excludes 0. Only the assays both models scored count."""
    models = sorted(per_assay["model"].unique())
    rows = []
    for a in models:
        for b in models:
            if a == b:
                continue
            pair = per_assay[per_assay["model"].isin([a, b])]
            shared = pair.groupby("assay")["model"].nunique()
            pair = pair[pair["assay"].isin(shared[shared == 2].index)]
            if pair.empty:
                continue
            keys, _, point, boot, _, _ = bootstrap(pair, [metric], n_boot, seed, ("model",), level)
            ia, ib = keys.index((a,)), keys.index((b,))
            diff = boot[:, ia, 0] - boot[:, ib, 0]
            lo, hi = np.nanpercentile(diff, [2.5, 97.5]) if np.isfinite(diff).any() else (np.nan, np.nan)
            rows.append({"model": a, "versus": b, "difference": point[ia, 0] - point[ib, 0], "se": _se(diff),
                         "ci_low": lo, "ci_high": hi, "significant": bool(lo > 0 or hi < 0),
                         "n_assays": int(pair["assay"].nunique())})
    return pd.DataFrame(rows, columns=["model", "versus", "difference", "se", "ci_low", "ci_high", "significant", "n_assays"])


def breakdown(per_assay: pd.DataFrame, column: str, metric: str = "spearman") -> pd.DataFrame:
    """Models x values of ``column``: the mean of ``metric`` over the assays in each (one table per model row)."""
    table = per_assay.dropna(subset=[column]).pivot_table(index="model", columns=column, values=metric, aggfunc="mean")
    order = {label: i for i, label in enumerate([*DEPTHS, *(b[2] for b in SIZE_BINS)])}
    table = table[sorted(table.columns, key=lambda c: (order.get(str(c), len(order)), str(c)))]
    table.columns = [str(c) for c in table.columns]
    return table.reset_index()


def leaderboard(summary: pd.DataFrame, families: pd.DataFrame, pairs: pd.DataFrame, depth: pd.DataFrame | None,
                metric: str = "spearman") -> pd.DataFrame:
    """ProteinGym's summary layout for one metric: ``Model_rank`` (index), ``Model_name``, ``Average_<M>``,
    ``Bootstrap_standard_error_<M>`` (paired SE of the difference from the top model, as ProteinGym
    computes it; 0 for the top model), one ``Family_<family>`` column per family and ``Depth_<d>``."""
    name = {"spearman": "Spearman", "auc": "AUC", "mcc": "MCC", "ndcg": "NDCG", "recall": "Top_recall"}[metric]
    board = summary[["model", metric]].rename(columns={"model": "Model_name", metric: f"Average_{name}"})
    board = board.sort_values(f"Average_{name}", ascending=False, kind="stable", na_position="last").reset_index(drop=True)
    best = board["Model_name"].iloc[0]
    se = {best: 0.0}
    if not pairs.empty:
        se.update(pairs[pairs["versus"] == best].set_index("model")["se"].to_dict())
    board[f"Bootstrap_standard_error_{name}"] = board["Model_name"].map(se)
    fam = families.pivot(index="model", columns="family", values=metric)
    fam.columns = [f"Family_{c}" for c in fam.columns]
    board = board.merge(fam, left_on="Model_name", right_index=True, how="left")
    if depth is not None and not depth.empty:
        dep = depth.set_index("model")
        dep.columns = [f"Depth_{c}" for c in dep.columns]
        board = board.merge(dep, left_on="Model_name", right_index=True, how="left")
    board.index = pd.RangeIndex(1, len(board) + 1, name="Model_rank")
    return board
