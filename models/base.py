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

    @classmethod
    def from_positions(cls, per_position: list[np.ndarray], keep_positions: bool = False) -> "LoglikResult":
        """Sums and counts from each row's scored log-probabilities."""
        return cls(
            loglik_sum=np.array([float(p.sum(dtype=np.float64)) for p in per_position], dtype=np.float64),
            n_scored=np.array([len(p) for p in per_position], dtype=np.int32),
            per_position=per_position if keep_positions else None,
        )


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


def rolling_windows(n_tokens: int, max_context: int) -> list[tuple[int, int, int]]:
    """Windows ``(start, end, score_from)`` over ids[0:n_tokens]: the window ids[start:end] is fed to
    the model and the targets at positions ``score_from .. end-1`` are kept. Targets are positions
    1..n-1; every target is scored exactly once, with up to ``max_context - 1`` tokens of context
    (lm-evaluation-harness's ``loglikelihood_rolling``: disjoint prediction chunks)."""
    if n_tokens <= max_context:
        return [(0, n_tokens, 1)]
    windows = [(0, max_context, 1)]
    scored_to = max_context
    while scored_to < n_tokens:
        end = min(n_tokens, scored_to + max_context - 1)
        windows.append((end - max_context, end, scored_to))
        scored_to = end
    return windows


def causal_pieces(encoded: Sequence[Encoded], max_context: int | None) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Every row cut into its rolling windows (one piece unless it is longer than ``max_context``), with
    (row, first scored position within the piece) for each piece. Shared by the causal backends."""
    pieces, owners = [], []
    for row, e in enumerate(encoded):
        for start, end, score_from in rolling_windows(len(e.ids), max_context) if max_context else [(0, len(e.ids), 1)]:
            pieces.append(e.ids[start:end])
            owners.append((row, score_from - start))
    return pieces, owners


def rows_from_pieces(owners: Sequence[tuple[int, ...]], values: Sequence[np.ndarray], n_rows: int) -> list[np.ndarray]:
    """Concatenate per-piece log-probabilities back into one array per row, in piece order."""
    per_row: list[list[np.ndarray]] = [[] for _ in range(n_rows)]
    for owner, v in zip(owners, values):
        per_row[owner[0]].append(np.atleast_1d(v))
    return [np.concatenate(p) if p else np.zeros(0) for p in per_row]
