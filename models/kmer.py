"""Order-k Markov chain baseline (not a gLM).

P(x_i | x_{i-k..i-1}) from (k+1)-mer counts with add-alpha smoothing; a sequence's score is the mean
(or sum) log-probability of every base that has a full k-base context free of N. Fitted either on a
background FASTA or, by the pipeline's ``crossfit``, on held-out folds of a benchmark's own
nonmutant sequences -- an in-distribution baseline that shows how much of a benchmark a model could
solve from local sequence statistics alone.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from models.alphabet import normalise
from models.base import Encoded, LoglikResult
from models.cards import ModelCard
from models.errors import GlmscoreError

_CODE = np.full(256, 4, dtype=np.int8)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _i


def codes(seq: str) -> np.ndarray:
    """A normalised DNA string as codes 0..3 (A, C, G, T), 4 for N."""
    return _CODE[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]


def _joined(code_arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All sequences in one array, separated by an N (so no window spans two sequences), and the
    start offset of each sequence in it. Vectorising over the concatenation is ~50x faster than a
    Python loop over short sequences."""
    lengths = np.fromiter((len(c) + 1 for c in code_arrays), dtype=np.int64, count=len(code_arrays))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, dtype=np.int64)
    joined = np.full(int(lengths.sum()), 4, dtype=np.int8)
    for st, c in zip(starts, code_arrays):
        joined[st : st + len(c)] = c
    return joined, starts


def _windows(joined: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(context index, next base, window start) for every N-free (k+1)-window of ``joined``.

    Contexts are built by k shifted passes over contiguous arrays and N-windows dropped with a prefix
    count of N, which is several times faster than fancy-indexing a strided window view.
    """
    m = len(joined) - order
    if m <= 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    is_n = joined >= 4
    c = np.where(is_n, 0, joined).astype(np.int64)
    ctx = np.zeros(m, dtype=np.int64)
    for j in range(order):
        ctx = ctx * 4 + c[j : j + m]
    n_before = np.concatenate([[0], np.cumsum(is_n, dtype=np.int64)])
    ok = np.flatnonzero(n_before[order + 1 : order + 1 + m] == n_before[:m])
    return ctx[ok], c[order:][ok], ok


def fit_counts(seqs: Sequence[str], order: int, groups: np.ndarray | None = None, n_groups: int = 1) -> np.ndarray:
    """(k+1)-mer counts, shape (4**k, 4), from DNA sequences (mapped by the DNA alphabet policy).

    With ``groups`` (one label in 0..n_groups-1 per sequence) the counts are split by group, shape
    (n_groups, 4**k, 4), in the same single pass (the crossfit folds).
    """
    seqs = list(seqs)
    joined = codes(normalise("N".join(seqs) + "N", "DNA")[0])  # N separators: no window spans two sequences
    ctx, nxt, at = _windows(joined, order)
    cells = 4**order * 4
    if groups is None:
        return np.bincount(ctx * 4 + nxt, minlength=cells).reshape(4**order, 4).astype(np.int64)
    lengths = np.fromiter((len(x) + 1 for x in seqs), dtype=np.int64, count=len(seqs))
    g = np.repeat(np.asarray(groups, dtype=np.int64), lengths)[at]
    flat = np.bincount(g * cells + ctx * 4 + nxt, minlength=n_groups * cells)
    return flat.reshape(n_groups, 4**order, 4).astype(np.int64)


def logprob_table(counts: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """log P(next | context) with add-alpha smoothing."""
    c = counts.astype(np.float64) + alpha
    return np.log(c / c.sum(axis=1, keepdims=True))


def read_fasta_sequences(path: str) -> list[str]:
    """Sequences of a background FASTA (minimal reader; the benchmark reader validates strictly)."""
    seqs, cur = [], []
    try:
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if line.startswith(">"):
                    if cur:
                        seqs.append("".join(cur))
                    cur = []
                elif line:
                    cur.append(line)
    except OSError as exc:
        raise GlmscoreError(f"cannot read background FASTA {path}: {exc.strerror}.") from None
    if cur:
        seqs.append("".join(cur))
    if not seqs:
        raise GlmscoreError(f"background FASTA {path} holds no sequences.")
    return seqs


class KmerScorer:
    """Scores with one log-probability table per key (a single key ``None`` when fitted on a background)."""

    def __init__(self, card: ModelCard, tables: Mapping[Hashable, np.ndarray]):
        self.card = card
        self.order = card.order
        self.tables = dict(tables)
        self.resolved_revision = None

    @classmethod
    def from_background(cls, card: ModelCard, alpha: float = 1.0) -> "KmerScorer":
        counts = fit_counts(read_fasta_sequences(card.fit), card.order)
        return cls(card, {None: logprob_table(counts, alpha)})

    def encode(self, seqs: Sequence[str], row_names=None) -> list[Encoded]:
        out = []
        for s in seqs:
            norm, n_amb = normalise(s, "DNA")
            c = codes(norm)
            out.append(Encoded(ids=c, real=c < 4, n_ambiguous=n_amb))
        return out

    def loglik_encoded(self, encoded: Sequence[Encoded], keys: Sequence[Hashable] | None = None,
                       keep_positions: bool = False) -> LoglikResult:
        keys = list(keys) if keys is not None else [None] * len(encoded)
        missing = set(keys) - set(self.tables)
        if missing:
            raise GlmscoreError(f"the k-mer model has no table for {sorted(map(str, missing))[0]}.")
        joined, starts = _joined([e.ids for e in encoded])
        ctx, nxt, at = _windows(joined, self.order)
        row = np.repeat(np.arange(len(encoded)), np.diff(np.append(starts, len(joined))))[at]
        # one stacked table, rows offset per key, so every window is looked up in one gather
        key_ids = {k: i for i, k in enumerate(self.tables)}
        stacked = np.concatenate(list(self.tables.values()))
        key_of_row = np.array([key_ids[k] for k in keys], dtype=np.int64)
        lp = stacked[key_of_row[row] * 4**self.order + ctx, nxt]
        n = len(encoded)
        sums = np.bincount(row, weights=lp, minlength=n)
        counts = np.bincount(row, minlength=n).astype(np.int32)
        per = np.split(lp, np.cumsum(counts)[:-1]) if keep_positions else None
        return LoglikResult(loglik_sum=sums.astype(np.float64), n_scored=counts, per_position=per)

    def loglik(self, seqs: Sequence[str]) -> LoglikResult:
        return self.loglik_encoded(self.encode(seqs))
