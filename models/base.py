"""The backend interface and what every backend shares.

One small interface, in the spirit of lm-evaluation-harness's ``LM``: a scorer is built from a
``ModelCard``, turns sequences into token ids with ``encode`` (the project's own tokenization policy,
so every backend of one card sees the same tokens) and turns token ids into log-likelihoods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from models.cards import ModelCard

LONG_MODES = ("error", "truncate", "window")
REDUCTIONS = ("mean", "sum")


@dataclass
class Encoded:
    """One sequence as the model sees it.

    ``ids``: token ids, special tokens included. ``real``: True where the token is a real nucleotide
    token (scored), False for BOS/CLS/SEP/pad-like special tokens. ``truncated``: the sequence was cut
    to the context. ``n_ambiguous``: input letters that were mapped to N.
    """

    ids: np.ndarray
    real: np.ndarray
    n_ambiguous: int = 0
    truncated: bool = False


@dataclass
class LoglikResult:
    """Per-sequence log-likelihoods: the sum over scored tokens and their count."""

    loglik_sum: np.ndarray  # float64
    n_scored: np.ndarray  # int32
    per_position: list[np.ndarray] | None = None

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_scored > 0, self.loglik_sum / np.maximum(self.n_scored, 1), np.nan)

    def score(self, reduction: str = "mean") -> np.ndarray:
        return self.mean if reduction == "mean" else self.loglik_sum


class Scorer(Protocol):
    card: ModelCard

    def encode(self, seqs: Sequence[str]) -> list[Encoded]: ...

    def loglik_encoded(self, encoded: Sequence[Encoded]) -> LoglikResult: ...

    def loglik(self, seqs: Sequence[str]) -> LoglikResult: ...


def token_budget_batches(lengths: Sequence[int], budget: int) -> list[np.ndarray]:
    """Group row indices into batches whose padded size (rows x longest row) stays within ``budget``.

    Rows are sorted by length (longest first, so the first batch shows the worst-case memory at once);
    a row longer than the budget gets a batch of its own.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        n = max(1, budget // longest)
        batches.append(order[start : start + n])
        start += n
    return batches
