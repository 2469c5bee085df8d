"""Nullsette results from score tables: paired tests per mutant type, corrections, success rates."""

from __future__ import annotations

import numpy as np
import pandas as pd

from glmscore.analysis.paired import adjust, signflip_pvalues
from glmscore.models.errors import GlmscoreError

NONMUTANT = "nonmutant"
TEST_COLUMNS = ["model", "dataset", "group", "n_pairs", "mean_diff", "p_value", "p_adjusted", "significant"]
SUCCESS_COLUMNS = ["model", "dataset", "n_pairs", "n_types", "n_significant", "success_rate"]
NOISE_COLUMNS = ["noise_floor", "verdict"]  # added by ``mark_within_noise``
WITHIN_NOISE = "within backend noise: not a result"


def _type_key(group: str) -> int:
    digits = "".join(ch for ch in group if ch.isdigit())
    return int(digits) if digits else 0


def paired_differences(scores: pd.DataFrame) -> dict[tuple[str, str, str], np.ndarray]:
    """mutant - nonmutant score per pair, for every (model, dataset, mutant group)."""
    need = {"model", "dataset", "group", "pair_index", "score"}
    if missing := need - set(scores.columns):
        raise GlmscoreError(f"score table lacks column(s) {', '.join(sorted(missing))}.")
    out = {}
    for (model, dataset), frame in scores.groupby(["model", "dataset"], sort=True):
        base = frame[frame["group"] == NONMUTANT].set_index("pair_index")["score"]
        if base.empty:
            raise GlmscoreError(f"model {model}, dataset {dataset}: no nonmutant scores to pair with.")
        if base.index.duplicated().any():
            raise GlmscoreError(f"model {model}, dataset {dataset}: nonmutant pair_index values repeat.")
        groups = sorted((g for g in frame["group"].unique() if g != NONMUTANT), key=_type_key)
        for group in groups:
            mut = frame[frame["group"] == group].set_index("pair_index")["score"]
            joined = mut.to_frame("m").join(base.to_frame("n"), how="inner")
            out[(model, dataset, group)] = (joined["m"] - joined["n"]).to_numpy()
    return out


def nullsette_tests(scores: pd.DataFrame | dict, *, n_perm: int = 10_000, seed: int = 0, correction: str = "bh",
                    estimator: str = "plus_one", alpha: float = 0.05) -> pd.DataFrame:
    """The test table: one row per (model, dataset, mutant type); corrected within (model, dataset).
    ``scores``: a score table, or its ``paired_differences`` (what an analysis reading one dataset at a
    time keeps: a float per pair instead of the rows)."""
    diffs = scores if isinstance(scores, dict) else paired_differences(scores)
    rows = []
    families: dict[tuple[str, str], list[tuple[str, np.ndarray]]] = {}
    for (model, dataset, group), d in diffs.items():
        families.setdefault((model, dataset), []).append((group, d))
    for (model, dataset), tests in families.items():
        p = signflip_pvalues([d for _, d in tests], n_perm=n_perm, seed=seed, estimator=estimator)
        q = adjust(p, correction)
        for (group, d), pv, qv in zip(tests, p, q):
            rows.append({"model": model, "dataset": dataset, "group": group, "n_pairs": int(np.sum(~np.isnan(d))),
                         "mean_diff": float(np.nanmean(d)) if len(d) else np.nan, "p_value": pv,
                         "p_adjusted": qv, "significant": bool(qv < alpha)})
    return pd.DataFrame(rows, columns=TEST_COLUMNS)


def mark_within_noise(tests: pd.DataFrame, floors: dict[str, float | None]) -> pd.DataFrame:
    """The test table with each model's run-to-run noise floor (``floors``: model -> the backend's largest
    |score difference| per row between two runs of the same rows, None where it was not measured) and a verdict.
    A test whose mean paired difference is at most the floor, in size, is ``within backend noise: not a result``
    and not significant, whatever its p-value: the backend alone can move a score that far. Otherwise the verdict
    is ``significant`` or ``not significant`` (``noise not measured`` appended where the floor is unknown)."""
    out = tests.copy()
    out["noise_floor"] = [np.nan if floors.get(m) is None else float(floors[m]) for m in out["model"]]
    within = np.abs(out["mean_diff"].to_numpy(dtype=float)) <= out["noise_floor"].to_numpy(dtype=float)
    out["significant"] = out["significant"].astype(bool) & ~within
    words = np.where(out["significant"], "significant", "not significant").astype(object)
    words[np.isnan(out["noise_floor"].to_numpy(dtype=float))] += " (noise not measured)"
    words[within] = WITHIN_NOISE
    out["verdict"] = words
    return out


def success_rates(tests: pd.DataFrame) -> pd.DataFrame:
    """Fraction of mutant types detected per (model, dataset). A test table marked by ``mark_within_noise`` adds
    the model's noise floor and the number of types within it (counted as not detected)."""
    g = tests.groupby(["model", "dataset"], sort=True)
    out = g.agg(n_pairs=("n_pairs", "max"), n_types=("group", "size"), n_significant=("significant", "sum")).reset_index()
    out["n_significant"] = out["n_significant"].astype(int)
    out["success_rate"] = out["n_significant"] / out["n_types"]
    if "verdict" not in tests.columns:
        return out[SUCCESS_COLUMNS]
    marked = tests.assign(within=tests["verdict"] == WITHIN_NOISE).groupby(["model", "dataset"], sort=True)
    extra = marked.agg(n_within_noise=("within", "sum"), noise_floor=("noise_floor", "first")).reset_index()
    out = out.merge(extra, on=["model", "dataset"], how="left")
    out["n_within_noise"] = out["n_within_noise"].astype(int)
    return out[SUCCESS_COLUMNS + ["n_within_noise", "noise_floor"]]
