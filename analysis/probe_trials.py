"""Probe trials: one per (assay, probe, split), each fits its folds from scratch (pure functions: the
NABench probe command runs them as Ray Tune trials, ``pipelines/benchmarks/nabench/probe.py``).

``probe_trial(config, data)`` is one trial; ``trial_grid`` lists them.
Trials are an explicit grid of valid combinations (multi-mutant assays get random folds only); no
configuration is ever chosen by its test score: every trial's result is reported. A trial runs under the
``glmscore`` protocol (``analysis/probes.py``) or the published ``paper`` rules
(``analysis/published_probes.py``); an assay with distributed folds (``AssayArrays.folds``) gets one
supervised trial per fold column instead of the generated schemes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.linalg import LinAlgWarning
from sklearn.exceptions import ConvergenceWarning

from glmscore.analysis.fitness import spearman
from glmscore.analysis.probes import FEWSHOT_K, given_folds, run_fewshot, run_supervised, run_supervised_given
from glmscore.analysis.published_probes import PAPER_SCHEMES, paper_fewshot, paper_supervised
from glmscore.analysis.transfer import TransferTask, transfer_predict, transfer_tasks


@dataclass
class AssayArrays:
    X: np.ndarray
    y: np.ndarray
    positions: list[list[int]]
    family: str
    # distributed fold columns (``--folds``): column name -> per-row fold label (NaN: in no fold)
    folds: dict[str, np.ndarray] = field(default_factory=dict)
    fold_source: str = "generated"
    wildtype: np.ndarray | None = None  # rows that are the wild type (an empty mutant)
    # with ``X`` in Ray's object store (a reference: the probe driver keeps no embeddings; a trial fetches
    # it), a digest of its content, so that a sweep's grid stamp still follows the data
    x_digest: str = ""

    def without_wildtype(self) -> "AssayArrays":
        """The same assay without its wild-type rows (fold columns too)."""
        if self.wildtype is None or not self.wildtype.any():
            return self
        keep = ~self.wildtype
        return replace(self, X=self.X[keep], y=self.y[keep], positions=[p for p, k in zip(self.positions, keep) if k],
                       folds={name: col[keep] for name, col in self.folds.items()}, wildtype=self.wildtype[keep])


def probe_trial(config: dict, data: dict) -> dict:

    # small-data MLP fits stop at max_iter by design, and constant one-hot columns make ridge
    # ill-conditioned; both are expected and would flood the driver's log
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    warnings.filterwarnings("ignore", category=LinAlgWarning)
    c = config["trial"]
    a: AssayArrays = data[c["assay"]]
    if c.get("drop_wildtype"):  # --wildtype published: the rule of the script this trial follows
        a = a.without_wildtype()
    if c["setting"] == "transfer":
        pred = transfer_predict(c["probe"], data, TransferTask(c["assay"], tuple(c["train_assays"]), c["split"]), c["seed"])
        # the held-out assay's labels are read here, after its predictions exist: to score them
        metric = spearman(a.y, pred)
        return {**{k: c[k] for k in ("assay", "setting", "probe", "split")}, "family": a.family, "metric": metric,
                "n_splits": 1, "train_assays": ",".join(c["train_assays"])}
    paper = c.get("protocol", "glmscore") == "paper"
    given = given_folds(a.folds[c["split"]]) if c["setting"] == "supervised" and c["split"] in a.folds else None
    if paper:
        if c["setting"] == "fewshot":
            res = paper_fewshot(a.X, a.y, int(c["split"]), repeats=c["repeats"])
        else:
            res = paper_supervised(a.X, a.y, a.positions, c["split"], given)
    elif c["setting"] == "fewshot":
        res = run_fewshot(c["probe"], a.X, a.y, int(c["split"]), repeats=c["repeats"], seed=c["seed"], params=c["params"])
    elif given is not None:
        res = run_supervised_given(c["probe"], a.X, a.y, given, seed=c["seed"], fold_metric=c.get("fold_metric", "pooled"))
    else:
        res = run_supervised(c["probe"], a.X, a.y, a.positions, c["split"], seed=c["seed"],
                             fold_metric=c.get("fold_metric", "pooled"))
    return {**{k: c[k] for k in ("assay", "setting", "probe", "split")}, "family": a.family, **res}


def trial_grid(data: dict[str, AssayArrays], setting: str, probes: list[str], seed: int = 0,
               ks=FEWSHOT_K, repeats: int = 5, schemes=("random", "modulo", "contiguous"),
               fixed_params: dict | None = None, transfer_from=None, transfer_to=None,
               protocol: str = "glmscore", fold_metric: str = "pooled") -> list[dict]:
    """One config per trial. ``protocol="paper"``: the published schemes (random and contiguous, multi-mutant
    assays included); an assay with distributed folds gets its fold columns as supervised splits."""
    grid = []
    if setting == "transfer":
        for task in transfer_tasks({a: d.family for a, d in data.items()}, transfer_from, transfer_to):
            grid += [{"assay": task.test, "setting": setting, "probe": probe, "split": task.split, "seed": seed,
                      "train_assays": list(task.train)} for probe in probes]
        return grid
    for assay, a in sorted(data.items()):
        multi = any(len(p) > 1 for p in a.positions)
        if setting == "fewshot":
            splits = [k for k in ks if k < len(a.y)]
        elif a.folds:
            splits = list(a.folds)
        elif protocol == "paper":
            splits = [s for s in schemes if s in PAPER_SCHEMES]
        else:
            splits = [s for s in schemes if s == "random" or not multi]
        for probe in probes:
            for split in splits:
                grid.append({"assay": assay, "setting": setting, "probe": probe, "split": split, "seed": seed,
                             "repeats": repeats, "params": (fixed_params or {}).get(probe, {}),
                             **({"protocol": protocol} if protocol != "glmscore" else {}),
                             # the per-fold mean is a choice; the default (pooled) keeps earlier trials' names
                             **({"fold_metric": fold_metric} if fold_metric != "pooled" and setting == "supervised" else {})})
    return grid
