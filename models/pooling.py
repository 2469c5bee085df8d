"""Embedding pooling over a model's hidden states.

Poolings: ``mean`` (real tokens), ``cls`` (first token: CLS for masked LMs), ``last`` (last real token,
for causal LMs), ``cls+mean`` (concatenation, as NABench), ``window:START-END`` (mean over the real
tokens covering nucleotides START..END-1, 0-based; for character or fixed k-mer tokenizers, used for
TSS-centred gene embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glmscore.models.errors import GlmscoreError


@dataclass(frozen=True)
class Pooling:
    kind: str
    start: int = 0
    end: int = 0

    @classmethod
    def parse(cls, text: str) -> "Pooling":
        if text in ("mean", "cls", "last", "cls+mean"):
            return cls(text)
        if text.startswith("window:"):
            try:
                a, b = text[7:].split("-")
                start, end = int(a), int(b)
            except ValueError:
                raise GlmscoreError(f"bad pooling {text!r}: write window:START-END with 0-based nucleotide coordinates.") from None
            if not 0 <= start < end:
                raise GlmscoreError(f"bad pooling {text!r}: START must be >= 0 and below END.")
            return cls("window", start, end)
        raise GlmscoreError(f"unknown pooling {text!r}: choose mean, cls, last, cls+mean or window:START-END.")


def pool(hidden: np.ndarray, real: np.ndarray, pooling: Pooling, nt_per_token: int = 1, nt_offset: int = 0) -> np.ndarray:
    """Pool one sequence's hidden states (tokens x dim) by ``pooling``; ``real`` marks real tokens."""
    idx = np.flatnonzero(real)
    if pooling.kind == "mean":
        return hidden[idx].mean(axis=0)
    if pooling.kind == "cls":
        return hidden[0]
    if pooling.kind == "last":
        return hidden[idx[-1]]
    if pooling.kind == "cls+mean":
        return np.concatenate([hidden[0], hidden[idx].mean(axis=0)])
    # window: real token j covers nucleotides [offset + j*k, offset + (j+1)*k)
    first = max(0, (pooling.start - nt_offset) // nt_per_token)
    last = min(len(idx), -(-(pooling.end - nt_offset) // nt_per_token))
    if first >= last:
        raise GlmscoreError(f"window {pooling.start}-{pooling.end} lies outside a sequence of {len(idx) * nt_per_token} nucleotides.")
    return hidden[idx[first:last]].mean(axis=0)
