"""Alphabet policy: what a model sees of a nucleotide sequence.

Rules (DESIGN.md): uppercase; U->T for DNA models, T->U for RNA models; every other letter becomes N
and is counted per row as ``n_ambiguous`` (an N in the input counts too: it carries no base).
Implemented with ``bytes.translate`` on a 256-entry table, so a 1 kb sequence costs ~1 us.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from glmscore.models.base import Encoded
from glmscore.models.errors import GlmscoreError

Alphabet = Literal["DNA", "RNA"]


def _table(alphabet: Alphabet) -> bytes:
    table = bytearray(b"N" * 256)
    bases = "ACGT" if alphabet == "DNA" else "ACGU"
    for b in bases:
        table[ord(b)] = ord(b)
        table[ord(b.lower())] = ord(b)
    if alphabet == "DNA":
        table[ord("U")] = table[ord("u")] = ord("T")
    else:
        table[ord("T")] = table[ord("t")] = ord("U")
    return bytes(table)


_TABLES = {"DNA": _table("DNA"), "RNA": _table("RNA")}
_COMPLEMENT_DNA = str.maketrans("ACGTUNacgtun", "TGCAANtgcaan")
_COMPLEMENT_RNA = str.maketrans("ACGUTNacgutn", "UGCAANugcaan")


def reverse_complement(seq: str) -> str:
    """The other strand, read 5'->3'. An RNA sequence (U and no T) stays RNA; other letters are kept (the
    alphabet mapping makes them N, as on the forward strand)."""
    rna = ("U" in seq or "u" in seq) and not ("T" in seq or "t" in seq)
    return seq.translate(_COMPLEMENT_RNA if rna else _COMPLEMENT_DNA)[::-1]


def normalise(seq: str, alphabet: Alphabet = "DNA") -> tuple[str, int]:
    """Map ``seq`` onto the model's alphabet; return (sequence, number of ambiguous positions)."""
    if alphabet not in _TABLES:
        raise GlmscoreError(f"unknown alphabet {alphabet!r}: expected DNA or RNA.")
    raw = seq.encode("ascii", errors="replace")  # non-ASCII letters become '?' and then N
    out = raw.translate(_TABLES[alphabet])
    return out.decode("ascii"), out.count(b"N")


_CODE = np.full(256, 4, dtype=np.int8)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _i


def codes(seq: str) -> np.ndarray:
    """A normalised DNA string as codes 0..3 (A, C, G, T), 4 for N."""
    return _CODE[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]


class BaseEncoder:
    """The encoder of the no-tokenizer baselines (k-mer, one-hot): DNA alphabet policy, then one code per
    base (``real`` = not N). Has no context limit."""

    def encode(self, seqs, row_names=None) -> list:
        out = []
        for s in seqs:
            norm, n_amb = normalise(s, "DNA")
            c = codes(norm)
            out.append(Encoded(ids=c, real=c < 4, n_ambiguous=n_amb))
        return out
