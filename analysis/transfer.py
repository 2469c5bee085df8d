"""Transfer learning across NABench assays: which assays train a model that predicts a held-out assay
with no labels from it, and labels made comparable across assays.

- ``within`` (default): leave one assay out within its family. Every assay of a family with at least two
  assays is held out once; the model trains on the family's other assays.
- cross-family: train on every assay of the ``from`` families and predict each assay of the ``to``
  families (an assay in both is never in its own training set).
- Labels of different assays have different scales (enrichment, log ratios, ...), so each training
  assay's labels are rank-normalised on their own (ranks / (n + 1), ties averaged) before they are pooled.
  The held-out assay is predicted from its inputs only and scored by Spearman, which needs no scale.
- Features must mean the same thing in every assay: pooled model embeddings do, a one-hot of each
  assay's own positions does not (its width differs per assay and a column means another base).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut

from glmscore.analysis.probes import GRIDS, make_probe
from glmscore.models.errors import GlmscoreError


@dataclass(frozen=True)
class TransferTask:
    test: str  # the held-out assay
    train: tuple[str, ...]  # the assays whose labels are used
    split: str  # "within" or "<from families>-><to families>"


def rank_normalise(y: np.ndarray) -> np.ndarray:
    """Ranks scaled into (0, 1), ties averaged: one assay's labels on a scale every assay shares."""
    y = np.asarray(y, dtype=float)
    return stats.rankdata(y) / (len(y) + 1)


def transfer_tasks(families: dict[str, str], from_families: list[str] | None = None,
                   to_families: list[str] | None = None) -> list[TransferTask]:
    """Tasks over ``families`` (assay -> family): leave-one-assay-out within each family, or, when
    ``from_families``/``to_families`` are given, every ``to`` assay predicted from every ``from`` assay."""
    if bool(from_families) != bool(to_families):
        raise GlmscoreError("cross-family transfer needs both --transfer-from and --transfer-to.")
    present = set(families.values())
    tasks = []
    if from_families:
        for name in (*from_families, *to_families):
            if name not in present:
                raise GlmscoreError(f"family {name!r} has no assay here (present: {', '.join(sorted(present))}).")
        split = f"{'+'.join(from_families)}->{'+'.join(to_families)}"
        sources = sorted(a for a, f in families.items() if f in from_families)
        for test in sorted(a for a, f in families.items() if f in to_families):
            train = tuple(a for a in sources if a != test)
            if train:
                tasks.append(TransferTask(test, train, split))
    else:
        for test, family in sorted(families.items()):
            train = tuple(sorted(a for a, f in families.items() if f == family and a != test))
            if train:
                tasks.append(TransferTask(test, train, "within"))
    if not tasks:
        raise GlmscoreError("no transfer task: leave-one-assay-out needs a family with two or more assays "
                            "(or give --transfer-from and --transfer-to).")
    return tasks


def pooled_training_labels(labels: dict[str, np.ndarray], task: TransferTask) -> np.ndarray:
    """The training assays' labels, each rank-normalised, concatenated in ``task.train`` order. Only the
    training assays are read: the held-out assay's labels are not an argument of the fit."""
    return np.concatenate([rank_normalise(labels[a]) for a in task.train])


def transfer_predict(probe: str, data: dict, task: TransferTask, seed: int = 0) -> np.ndarray:
    """Fit a fresh probe on the training assays' pooled embeddings (labels rank-normalised per assay)
    and predict the held-out assay. Reads ``data[a].y`` for the training assays only; hyper-parameters
    are chosen by leave-one-assay-out CV over the training assays when there are three or more."""


    widths = {a: data[a].X.shape[1] for a in (*task.train, task.test)}
    if len(set(widths.values())) > 1:
        raise GlmscoreError("transfer needs embeddings of one width for every assay (pooled model embeddings); "
                            f"these differ ({', '.join(f'{a}: {w}' for a, w in sorted(widths.items()))}), "
                            "as one-hot features of assays of different lengths do.")
    if probe == "logistic":
        raise GlmscoreError("transfer predicts a fitness ranking: use --probes ridge or mlp.")
    X = np.concatenate([data[a].X for a in task.train])
    y = pooled_training_labels({a: data[a].y for a in task.train}, task)
    groups = np.concatenate([np.full(len(data[a].X), i) for i, a in enumerate(task.train)])
    model = make_probe(probe, seed)
    if len(task.train) >= 3:
        model = GridSearchCV(model, GRIDS[probe], cv=LeaveOneGroupOut(), scoring="r2")
        model.fit(X, y, groups=groups)
    else:
        model.fit(X, y)
    return model.predict(data[task.test].X)
