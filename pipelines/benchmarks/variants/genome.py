"""Sources of the causal-variant benchmark: a genome FASTA, a variant list, a TSS annotation.

Coordinate conventions (every function here says which one it takes):

- VCF ``POS``, CSV/TSV ``pos``, TSS tables and GTF are **1-based** (a base's position as printed).
- Genome slices (``Genome.fetch``) are **0-based half-open** ``[start, end)``, as pysam/faidx: the
  base at 1-based ``pos`` is ``fetch(chrom, pos - 1, pos)``.

The genome is read by random access through pysam (htslib): a plain FASTA with its ``.fai`` or a
bgzipped one with ``.fai`` and ``.gzi``; it is never loaded whole. Chromosome names are reconciled
(``1`` vs ``chr1``, ``MT``/``M`` vs ``chrM``). Variants are SNVs: multi-allelic VCF records are split
into one row per ALT allele; indels and alleles other than A/C/G/T are dropped and counted.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pysam

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.textfiles import open_text

BASES = "ACGT"
class Genome:
    """Random access to a FASTA by pysam; ``fetch`` pads what runs off a chromosome end with N."""
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise GlmscoreError(f"genome FASTA {self.path} does not exist.")
        try:
            self._fasta = pysam.FastaFile(str(self.path))
        except (OSError, ValueError) as exc:
            hint = " (a gzipped FASTA must be bgzipped, with .fai and .gzi beside it: `bgzip` + `samtools faidx`)" \
                if self.path.suffix == ".gz" else " (it needs a .fai index beside it: `samtools faidx`)"
            raise GlmscoreError(f"cannot read genome {self.path}: {str(exc).splitlines()[0]}{hint}.") from None
        self.lengths = dict(zip(self._fasta.references, self._fasta.lengths))

    def identity(self) -> str:
        """Cheap identity of the genome file (size, mtime, index): a changed genome invalidates windows."""
        st = self.path.stat()
        fai = Path(str(self.path) + ".fai")
        return f"{st.st_size}:{st.st_mtime_ns}:{fai.read_text() if fai.is_file() else ''}"

    def resolve(self, chrom: str) -> str | None:
        """The genome's name for ``chrom`` (``1`` -> ``chr1`` and back, ``MT`` <-> ``chrM``), or None."""
        bare = chrom.removeprefix("chr")
        bare = {"M": "MT", "MT": "MT"}.get(bare, bare)
        for candidate in (chrom, "chr" + bare, bare, "chrM" if bare == "MT" else None, "M" if bare == "MT" else None):
            if candidate in self.lengths:
                return candidate
        return None

    def fetch(self, chrom: str, start: int, end: int) -> tuple[str, int]:
        """Uppercase bases of 0-based half-open ``[start, end)``; positions off the chromosome are N.
        Returns (sequence, number of padded positions)."""
        length = self.lengths[chrom]
        lo, hi = max(0, start), min(length, end)
        core = self._fasta.fetch(chrom, lo, hi).upper() if hi > lo else ""
        left, right = lo - start, end - max(hi, lo)
        return "N" * left + core + "N" * right, left + right

    def base(self, chrom: str, pos1: int) -> str:
        """The base at 1-based ``pos1`` ('' off the chromosome)."""
        if not 1 <= pos1 <= self.lengths[chrom]:
            return ""
        return self._fasta.fetch(chrom, pos1 - 1, pos1).upper()


@lru_cache(maxsize=2)
def open_genome(path: str) -> Genome:
    """One open genome per process (Ray workers read many units from it)."""
    return Genome(path)


# ---------------------------------------------------------------- variants


@dataclass
class VariantTable:
    """SNV rows (1-based ``pos``) with optional ``label``/``tissue``/``gene``; ``dropped`` counts rows
    left out while reading, by reason."""

    frame: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)


def read_variants(path: str | Path) -> VariantTable:
    """A VCF (with or without its ``#CHROM`` line) or a CSV/TSV with ``chrom, pos, ref, alt`` and
    optional ``label, tissue, gene`` columns. Keeps SNVs of A/C/G/T; splits multi-allelic ALTs."""
    path = Path(path)
    if not path.is_file():
        raise GlmscoreError(f"variant file {path} does not exist.")
    with open_text(path) as fh:
        first = fh.readline()
        fh.seek(0)
        if first.startswith("##fileformat=VCF") or re.search(r"\.vcf(\.gz)?$", path.name):
            frame = _read_vcf(fh, path)
        else:
            frame = _read_table(fh, path, "\t" if "\t" in first else ",")
    frame["ref"] = frame["ref"].str.upper()
    frame["alt"] = frame["alt"].str.upper()
    multi = frame["alt"].str.contains(",")
    if multi.any():  # one row per ALT allele
        frame = frame.assign(alt=frame["alt"].str.split(",")).explode("alt", ignore_index=True)
    snv = frame["ref"].str.fullmatch("[ACGT]") & frame["alt"].str.fullmatch("[ACGT]") & (frame["ref"] != frame["alt"])
    dropped = {"not an SNV (indel, symbolic or non-ACGT allele)": int((~snv).sum())}
    frame = frame[snv].reset_index(drop=True)
    if frame.empty:
        raise GlmscoreError(f"{path} has no SNVs (indels and other alleles are not supported).")
    return VariantTable(frame, {k: v for k, v in dropped.items() if v})


def _read_vcf(fh, path: Path) -> pd.DataFrame:
    rows = []
    for lineno, line in enumerate(fh, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 5:
            raise GlmscoreError(f"{path}: line {lineno} has {len(parts)} tab-separated fields; a VCF record needs at least 5.")
        rows.append(parts[:5])
    if not rows:
        raise GlmscoreError(f"{path} has no variant records.")
    frame = pd.DataFrame(rows, columns=["chrom", "pos", "id", "ref", "alt"])
    return _typed(frame.drop(columns="id"), path)


def _read_table(fh, path: Path, sep: str) -> pd.DataFrame:
    reader = csv.reader(fh, delimiter=sep)
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in ("chrom", "pos", "ref", "alt") if c not in header]
    if missing and "variant_id" in header:  # GTEx: chr1_14677_G_A_b38 = chrom, pos, ref, alt, build
        frame = pd.read_csv(fh, sep=sep, names=header, dtype=str, keep_default_na=False)
        parts = frame["variant_id"].str.split("_")
        bad = parts.map(len) < 4
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise GlmscoreError(f"{path}: variant_id {frame['variant_id'].iloc[i]!r} (row {i + 1}) is not "
                                "chrom_pos_ref_alt[_build], as GTEx writes it (chr1_14677_G_A_b38).")
        frame = frame.assign(chrom=parts.str[0], pos=parts.str[1], ref=parts.str[2], alt=parts.str[3])
        return _typed(frame[["chrom", "pos", "ref", "alt"] + [c for c in ("label", "tissue", "gene") if c in header]], path)
    if missing:
        raise GlmscoreError(f"{path}: missing column(s) {', '.join(missing)}; a variant table needs chrom, pos, ref, alt "
                            "(and optionally label, tissue, gene).")
    frame = pd.read_csv(fh, sep=sep, names=header, dtype=str, keep_default_na=False)
    return _typed(frame[[c for c in ("chrom", "pos", "ref", "alt", "label", "tissue", "gene") if c in header]], path)


def _typed(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    pos = pd.to_numeric(frame["pos"], errors="coerce")
    bad = pos.isna() | (pos < 1)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise GlmscoreError(f"{path}: variant {i + 1} has position {frame['pos'].iloc[i]!r}; positions are 1-based integers.")
    frame = frame.assign(chrom=frame["chrom"].astype(str), pos=pos.astype(np.int64))
    if "label" in frame:
        label = pd.to_numeric(frame["label"].replace({"True": 1, "False": 0, "true": 1, "false": 0}), errors="coerce")
        if (~label.isin([0, 1])).any():
            raise GlmscoreError(f"{path}: labels must be 0 or 1 (or True/False).")
        frame["label"] = label.astype(np.int8)
    return frame


# ---------------------------------------------------------------- TSS annotation


def read_tss(path: str | Path) -> pd.DataFrame:
    """One TSS per gene: ``chrom, tss`` (1-based), ``strand``, ``gene_name``, ``gene_id`` (unversioned).

    Inputs: a GTF (``gene`` features; TSS = start on +, end on -), a TSS table with ``chrom, start,
    strand, gene_name`` (``start`` = the 1-based TSS, as GENCODE gene TSS tables), or a transcript
    table with ``chrom, tss, strand, gene_id/gene_name``, whose genes get their most upstream transcript's
    TSS (the gene's start: smallest on +, largest on -). Rows of GTF genes and TSS tables are genes."""
    path = Path(path)
    if not path.is_file():
        raise GlmscoreError(f"annotation file {path} does not exist.")
    transcripts = False
    if re.search(r"\.gtf(\.gz)?$", path.name):
        frame = _read_gtf(path)
    else:
        with open_text(path) as fh:
            frame = pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False)
        frame.columns = [c.strip().lower() for c in frame.columns]
        column = "tss" if "tss" in frame else "start" if "start" in frame else None
        if column is None or "chrom" not in frame or "strand" not in frame or not ({"gene_name", "gene_id"} & set(frame)):
            raise GlmscoreError(f"{path}: a TSS table needs chrom, tss (or start = the 1-based TSS), strand and gene_name or gene_id "
                                "columns (or pass a .gtf).")
        transcripts = column == "tss"
        frame = frame.rename(columns={column: "tss"})
        frame["tss"] = pd.to_numeric(frame["tss"], errors="coerce")
        if frame["tss"].isna().any():
            raise GlmscoreError(f"{path}: the {column} column has non-integer values.")
    for c in ("gene_name", "gene_id"):
        if c not in frame:
            frame[c] = ""
    frame["gene_id"] = frame["gene_id"].str.replace(r"\.\d+$", "", regex=True)
    bad = ~frame["strand"].isin(["+", "-"])
    if bad.any():
        raise GlmscoreError(f"{path}: strand must be + or -, found {frame['strand'][bad].iloc[0]!r}.")
    frame = frame.assign(tss=frame["tss"].astype(np.int64))
    if transcripts:  # one row per transcript: keep each gene's most upstream TSS
        key = np.where(frame["gene_id"] != "", frame["gene_id"], frame["gene_name"])
        upstream = frame["tss"].where(frame["strand"] == "+", -frame["tss"])  # smallest = most upstream on either strand
        frame = frame.assign(_key=key, _up=upstream).sort_values(["_key", "chrom", "_up"]).drop_duplicates(["_key", "chrom"])
    return frame[["chrom", "tss", "strand", "gene_name", "gene_id"]].reset_index(drop=True)


def _read_gtf(path: Path) -> pd.DataFrame:
    rows = []
    with open_text(path) as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 9 or parts[2] != "gene":
                continue
            attrs = dict(re.findall(r'(\w+) "([^"]*)"', parts[8]))
            start, end = int(parts[3]), int(parts[4])
            rows.append((parts[0], start if parts[6] == "+" else end, parts[6], attrs.get("gene_name", ""), attrs.get("gene_id", "")))
    if not rows:
        raise GlmscoreError(f"{path} has no 'gene' features.")
    return pd.DataFrame(rows, columns=["chrom", "tss", "strand", "gene_name", "gene_id"])
