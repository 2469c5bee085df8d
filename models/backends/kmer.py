"""Order-k Markov chain baseline (not a gLM).

P(x_i | x_{i-k..i-1}) from (k+1)-mer counts with add-alpha smoothing; a sequence's score is the mean
(or sum) log-probability of every base that has a full k-base context free of N. Fitted either on a
background FASTA (``kmer:K@background.fasta``) or, by default (``crossfit``), on held-out folds of a
benchmark's own reference sequences (Nullsette: the nonmutants; NABench: the assay's variants, labels
never read) -- an in-distribution baseline that shows how much of a benchmark a model could solve from
local sequence statistics alone. A row's fold is a hash of its pair_index, so a Nullsette cassette's
nonmutant and mutants share a fold and a row is never scored by a table that saw it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from glmscore.models.alphabet import BaseEncoder, codes, normalise
from glmscore.models.base import Backend, Context, Encoded, LoglikResult, register_backend
from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import Options, option

MAX_ORDER = 12  # 4**12 contexts x 4 float64 = 537 MB per table: the largest that fits a worker
SMOOTHING = 1.0  # add-one (Laplace) smoothing of the (k+1)-mer counts
CROSSFIT = "crossfit"
# Bases counted in one vectorised pass: ~60 bytes of int64 temporaries per base, so a block of 2M bases stays
# near 130 MB however large the reference is (blocks of 50,000 sequences were 1 GB for Nullsette's cassettes).
FIT_BASES = 1 << 21


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
    ends = np.cumsum(np.fromiter((len(s) + 1 for s in seqs), dtype=np.int64, count=len(seqs)))
    if len(seqs) > 1 and ends[-1] > FIT_BASES:
        # counts add up over sequences: blocks of about FIT_BASES bases bound the int64 temporaries (~8 arrays
        # of 8 bytes a base); by bases, not by sequences: 50,000 Nullsette cassettes are 19M bases, 1 GB
        edges = np.unique(np.concatenate([[0], np.searchsorted(ends, np.arange(FIT_BASES, ends[-1], FIT_BASES)), [len(seqs)]]))
        return sum(fit_counts(seqs[a:b], order, None if groups is None else groups[a:b], n_groups)
                   for a, b in zip(edges[:-1], edges[1:]) if b > a)
    joined = codes(normalise("N".join(seqs) + "N", "DNA")[0])  # N separators: no window spans two sequences
    ctx, nxt, at = _windows(joined, order)
    cells = 4**order * 4
    if groups is None:
        return np.bincount(ctx * 4 + nxt, minlength=cells).reshape(4**order, 4).astype(np.int64)
    lengths = np.fromiter((len(x) + 1 for x in seqs), dtype=np.int64, count=len(seqs))
    g = np.repeat(np.asarray(groups, dtype=np.int64), lengths)[at]
    flat = np.bincount(g * cells + ctx * 4 + nxt, minlength=n_groups * cells)
    return flat.reshape(n_groups, 4**order, 4).astype(np.int64)


def logprob_table(counts: np.ndarray, alpha: float = SMOOTHING) -> np.ndarray:
    """log P(next | context) with add-alpha smoothing."""
    c = counts.astype(np.float64) + alpha
    return np.log(c / c.sum(axis=1, keepdims=True))


def fold_of(pair_index: np.ndarray, n_folds: int) -> np.ndarray:
    """Crossfit fold of a row: a hash of its pair_index (stable across runs and machines)."""
    return np.array([zlib.crc32(str(int(i)).encode()) % n_folds for i in pair_index], dtype=np.int64)


@dataclass(frozen=True)
class KmerOptions(Options):
    """k-mer baseline (backend kmer)"""
    kmer_folds: int = option(5, minimum=2, help="k-mer crossfit: folds of the benchmark's reference sequences")


@register_backend("kmer")
class Kmer(Backend):
    """Scores with one log-probability table per key: (dataset, fold) for crossfit, None for a background."""
    Options = KmerOptions
    objectives = ("markov",)
    fits_on_reference = True

    @classmethod
    def card_for(cls, spec: str) -> ModelCard | None:
        if not spec.startswith("kmer"):
            return None
        order_text = spec.partition(":")[2] or "5"
        fit = CROSSFIT
        if "@" in order_text:
            order_text, fit = order_text.split("@", 1)
        if not order_text.isdigit() or not 1 <= int(order_text) <= MAX_ORDER:
            raise GlmscoreError(f"bad k-mer model {spec!r}: write kmer:K with 1 <= K <= {MAX_ORDER}, optionally kmer:K@background.fasta.")
        return ModelCard(
            id=f"kmer{order_text}" if fit == CROSSFIT else f"kmer{order_text}-bg", backend=cls.name, objective="markov",
            order=int(order_text), fit=fit,
            notes="order-K Markov chain baseline; crossfit = fitted on held-out folds of the benchmark's own reference sequences (in-distribution, not a gLM)",
        )

    @classmethod
    def reference_file(cls, card: ModelCard) -> str | None:
        return None if card.fit == CROSSFIT else card.fit

    @classmethod
    def provenance(cls, card):
        return None, cls.reference_file(card)

    @classmethod
    def fit(cls, card: ModelCard, options: KmerOptions, references: Mapping[str | None, Iterable[list[str]]]) -> dict:
        """Background: {None: table}. Crossfit: {(dataset, fold): table fitted on the other folds}.
        Counts add up block by block, so the sequences stream through (a row's fold: its pair_index)."""
        if None in references:
            return {None: logprob_table(sum((fit_counts(b, card.order) for b in references[None]),
                                            np.zeros((4**card.order, 4), np.int64)))}
        tables = {}
        n = options.kmer_folds
        for dataset, blocks in references.items():
            folds, start = np.zeros((n, 4**card.order, 4), np.int64), 0
            for block in blocks:
                folds += fit_counts(block, card.order, groups=fold_of(np.arange(start, start + len(block)), n), n_groups=n)
                start += len(block)
            total = folds.sum(axis=0)
            for f in range(n):
                tables[(dataset, f)] = logprob_table(total - folds[f])
        return tables

    @classmethod
    def make_encoder(cls, card, options, runtime) -> BaseEncoder:
        return BaseEncoder()

    def loglik(self, encoded: Sequence[Encoded], context: Context | None = None, keep_positions: bool = False) -> LoglikResult:
        tables = self.fitted or {}
        if None in tables:
            keys = [None] * len(encoded)
        else:
            if context is None or context.pair_index is None:
                raise GlmscoreError("a crossfit k-mer model scores benchmark rows only (it needs their dataset and pair index).")
            keys = [(context.dataset, int(f)) for f in fold_of(context.pair_index, self.options.kmer_folds)]
        missing = set(keys) - set(tables)
        if missing:
            raise GlmscoreError(f"the k-mer model has no table for {sorted(map(str, missing))[0]}.")
        order = self.card.order
        joined, starts = _joined([e.ids for e in encoded])
        ctx, nxt, at = _windows(joined, order)
        row = np.repeat(np.arange(len(encoded)), np.diff(np.append(starts, len(joined))))[at]
        # one stacked table, rows offset per key, so every window is looked up in one gather
        key_ids = {k: i for i, k in enumerate(tables)}
        stacked = np.concatenate(list(tables.values()))
        key_of_row = np.array([key_ids[k] for k in keys], dtype=np.int64)
        lp = stacked[key_of_row[row] * 4**order + ctx, nxt]
        n = len(encoded)
        sums = np.bincount(row, weights=lp, minlength=n)
        counts = np.bincount(row, minlength=n).astype(np.int32)
        per = np.split(lp, np.cumsum(counts)[:-1]) if keep_positions else None
        return LoglikResult(loglik_sum=sums.astype(np.float64), n_scored=counts, per_position=per)
