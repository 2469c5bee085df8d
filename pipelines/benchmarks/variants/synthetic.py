"""A seeded synthetic genome, gene TSS table and labelled variants with a planted causal mechanism.

Real causal-variant labels are not available offline; this stands in for them in tests and the demo of
the causal-variant benchmark. One ``np.random.default_rng(seed)`` drives everything, so the same
arguments give byte-identical files. Mechanism, exactly as implemented (positions 1-based):

* Genome: ``n_chroms`` records ``chr1``..``chrN`` of ``chrom_len`` i.i.d. bases with GC content 0.42
  (P(A)=P(T)=0.29, P(C)=P(G)=0.21). Motif copies may occur by chance elsewhere; nothing else is planted.
* Genes: ``genes_per_chrom`` TSSs per chromosome at p in [1001, chrom_len - 1000] (>= 1000 bp from either
  end), consecutive TSSs >= ``min_spacing`` apart (sorted uniform draws plus i * min_spacing), strand
  + or - with probability 1/2, named ``SYN{c}_{i}`` (i = 1.. in position order).
* Transcript offset k (TSS = 0, k < 0 upstream) of a gene with TSS p and strand s (+1 / -1) is the genomic
  position p + s*k; the base read there on the gene's strand is the genome base (s=+1) or its complement.
* Promoter element: for k in -35 .. -35+len(motif)-1 (-35..-26 for the 10 bp default) the gene-strand
  base is motif[k+35]. So on the plus strand genome[p-35 .. p-26] = motif; on the minus strand
  genome[p+26 .. p+35] = reverse_complement(motif).
* Positive (true label 1): one SNV per gene at an offset uniform inside the motif (it breaks the element).
* Negative (true label 0): one SNV per gene at an offset uniform over 0 < |k| <= R outside the motif, with
  R = 100 for a random ceil(n_genes/2) of the genes and R = 600 for the others, so the distance-to-TSS
  distributions of positives (26..35) and negatives overlap.
* Every SNV's alt is uniform among the three other bases.
* Label noise: round(label_noise * n_variants) variants (Python ``round``), chosen uniformly without
  replacement, have their label flipped; label_noise is limited to [0, 0.5].
* Tissues: each variant gets c ~ U{1..min(3, len(tissues))} distinct tissues, one CSV row each (tissues in
  the given order), all with the same label and gene, like GTEx's variant x tissue rows.
* min_spacing >= 1201 keeps the +-600 bp windows of different genes disjoint, so no two variants share a
  position and none lands in another gene's motif (both are checked before writing).

n_chroms < 10 is allowed, but the default test split of the causal-variant benchmark (chr9, chr10) then
has no data. Files: genome.fa (+ .fai), tss.tsv, variants.csv, README.md; each is written to a hidden
temporary name and renamed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pysam

from glmscore.models.errors import GlmscoreError
from glmscore.models.options import Options, option, out_option, seed_option

BASES = np.frombuffer(b"ACGT", dtype=np.uint8)  # index 3 - i is the complement of index i
GC = 0.42
EDGE = 1000  # a TSS is at least this far from either chromosome end
MOTIF_START = -35  # transcript offset of the motif's first base
NEAR, FAR = 100, 600  # negative radii around the TSS
LINE = 60
DEFAULT_TISSUES = ("Liver", "Lung", "Muscle_Skeletal", "Whole_Blood")


@dataclass(frozen=True)
class SyntheticOptions(Options):
    out: str = out_option("output folder for genome.fa, tss.tsv, variants.csv and README.md")
    n_chroms: int = option(12, minimum=1, help="chromosomes chr1..chrN (the default test split needs chr9 and chr10)")
    chrom_len: int = option(200_000, minimum=2 * EDGE + 1, help="bases per chromosome")
    genes_per_chrom: int = option(40, minimum=1, help="gene TSSs per chromosome")
    label_noise: float = option(0.1, minimum=0.0, maximum=0.5, help="fraction of variants whose label is flipped")
    seed: int = seed_option("random seed (same seed, same bytes)")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check(n_chroms: int, chrom_len: int, genes_per_chrom: int, min_spacing: int, motif: str,
           label_noise: float, tissues: tuple[str, ...]) -> None:
    if n_chroms < 1 or genes_per_chrom < 1:
        raise GlmscoreError("n_chroms and genes_per_chrom must be at least 1.")
    if not motif or set(motif) - set("ACGT") or len(motif) > -MOTIF_START:
        raise GlmscoreError(f"motif must be 1 to {-MOTIF_START} uppercase A/C/G/T bases, not {motif!r}.")
    if min_spacing < 2 * FAR + 1:
        raise GlmscoreError(f"min_spacing must be at least {2 * FAR + 1} so gene windows of +-{FAR} bp never overlap.")
    need = 2 * EDGE + 1 + (genes_per_chrom - 1) * min_spacing
    if chrom_len < need:
        raise GlmscoreError(f"{genes_per_chrom} genes {min_spacing} bp apart and {EDGE} bp from the ends need "
                            f"chromosomes of at least {need} bp, not {chrom_len}.")
    if not 0.0 <= label_noise <= 0.5:
        raise GlmscoreError(f"label_noise must be between 0 and 0.5, not {label_noise}.")
    if not tissues or len(set(tissues)) != len(tissues) or any(not t or set(t) & set(",\n\r\t") for t in tissues):
        raise GlmscoreError("tissues must be one or more distinct names without commas, tabs or newlines.")


def make_synthetic(out: str | Path, *, n_chroms: int = 12, chrom_len: int = 200_000, genes_per_chrom: int = 40,
                   min_spacing: int = 2_000, motif: str = "TATAAAAGGC", label_noise: float = 0.1,
                   tissues: tuple[str, ...] = DEFAULT_TISSUES, seed: int = 0) -> dict:
    """Write the synthetic data set into ``out`` (see the module docstring); return a summary dict."""
    tissues = tuple(tissues)
    _check(n_chroms, chrom_len, genes_per_chrom, min_spacing, motif, label_noise, tissues)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    L, n = len(motif), n_chroms * genes_per_chrom
    genome = rng.choice(4, size=(n_chroms, chrom_len), p=[(1 - GC) / 2, GC / 2, GC / 2, (1 - GC) / 2]).astype(np.uint8)

    # Genes: sorted draws in [0, free] plus i*min_spacing keep consecutive TSSs >= min_spacing apart.
    free = chrom_len - 2 * EDGE - 1 - (genes_per_chrom - 1) * min_spacing
    u = np.sort(rng.integers(0, free + 1, size=(n_chroms, genes_per_chrom)), axis=1)
    tss = (EDGE + 1 + u + np.arange(genes_per_chrom) * min_spacing).ravel()
    chrom = np.repeat(np.arange(n_chroms), genes_per_chrom)
    strand = np.where(rng.random(n) < 0.5, 1, -1)
    names = [f"SYN{c + 1}_{i + 1}" for c in range(n_chroms) for i in range(genes_per_chrom)]

    # Motif: gene-strand base at offset k = motif[k - MOTIF_START], genomic position tss + strand*k.
    k_motif = MOTIF_START + np.arange(L)
    motif_idx = np.searchsorted(BASES, np.frombuffer(motif.encode(), dtype=np.uint8))
    mpos = tss[:, None] + strand[:, None] * k_motif[None, :]
    genome[chrom[:, None], mpos - 1] = np.where(strand[:, None] == 1, motif_idx, 3 - motif_idx)
    owner = np.full(genome.shape, -1, dtype=np.int32)
    owner[chrom[:, None], mpos - 1] = np.arange(n)[:, None]

    # Variants: one positive inside the motif, one negative outside it, per gene.
    k_pos = MOTIF_START + rng.integers(0, L, n)
    radius = np.where(rng.permutation(n) < (n + 1) // 2, NEAR, FAR)
    k_neg = np.zeros(n, dtype=np.int64)
    bad = np.ones(n, dtype=bool)
    while bad.any():  # rejection: redraw offsets on the TSS or inside the motif
        k_neg[bad] = rng.integers(-radius[bad], radius[bad] + 1)
        bad = (k_neg == 0) | ((k_neg >= MOTIF_START) & (k_neg < MOTIF_START + L))
    v_gene = np.concatenate([np.arange(n), np.arange(n)])
    v_true = np.repeat([1, 0], n)
    v_pos = tss[v_gene] + strand[v_gene] * np.concatenate([k_pos, k_neg])
    order = np.lexsort((v_pos, chrom[v_gene]))
    v_gene, v_true, v_pos = v_gene[order], v_true[order], v_pos[order]
    v_chrom = chrom[v_gene]
    nv = 2 * n
    ref = genome[v_chrom, v_pos - 1]
    alt = (ref + rng.integers(1, 4, nv)) % 4
    if len(np.unique(v_chrom * chrom_len + v_pos)) != nv:
        raise RuntimeError("two synthetic variants share a position")
    if not np.array_equal(owner[v_chrom, v_pos - 1], np.where(v_true == 1, v_gene, -1)):
        raise RuntimeError("a synthetic variant lies in the wrong motif")

    n_flipped = round(label_noise * nv)
    label = v_true.copy()
    label[rng.choice(nv, n_flipped, replace=False)] ^= 1
    n_tis = rng.integers(1, min(3, len(tissues)) + 1, nv)
    chosen = rng.random((nv, len(tissues))).argsort(axis=1).argsort(axis=1) < n_tis[:, None]

    fa = out / "genome.fa"
    tmp = fa.with_name(f".{fa.name}.tmp")
    with open(tmp, "wb") as fh:
        for c in range(n_chroms):
            seq = BASES[genome[c]].tobytes()
            fh.write(f">chr{c + 1}\n".encode() + b"\n".join(seq[i:i + LINE] for i in range(0, chrom_len, LINE)) + b"\n")
    pysam.faidx(str(tmp))
    os.replace(tmp, fa)
    os.replace(f"{tmp}.fai", f"{fa}.fai")
    with pysam.FastaFile(str(fa)) as fasta:  # REF must be the base the file holds at pos
        for c, p, r in zip(v_chrom, v_pos, ref):
            if fasta.fetch(f"chr{c + 1}", int(p) - 1, int(p)) != chr(BASES[r]):
                raise RuntimeError(f"REF mismatch at chr{c + 1}:{p}")

    tss_lines = ["chrom\tstart\tend\tstrand\tgene_name\tgene_type"] + [
        f"chr{c + 1}\t{p}\t{p + 1}\t{'+' if s == 1 else '-'}\t{g}\tprotein_coding"
        for c, p, s, g in zip(chrom, tss, strand, names)]
    _write(out / "tss.tsv", "\n".join(tss_lines) + "\n")
    rows, tis = np.nonzero(chosen)  # variant-major, tissues in the given order
    var_lines = ["chrom,pos,ref,alt,label,tissue,gene"] + [
        f"chr{v_chrom[i] + 1},{v_pos[i]},{chr(BASES[ref[i]])},{chr(BASES[alt[i]])},{label[i]},{tissues[t]},{names[v_gene[i]]}"
        for i, t in zip(rows, tis)]
    _write(out / "variants.csv", "\n".join(var_lines) + "\n")
    n_positive = int(label.sum())
    _write(out / "README.md", f"""# Synthetic causal variants (seed {seed})

{n_chroms} chromosomes of {chrom_len} bp, i.i.d. bases with GC content {GC}. {n} genes ({genes_per_chrom} per
chromosome, TSSs >= {min_spacing} bp apart and >= {EDGE} bp from the ends, random strands; `tss.tsv`, 1-based).
Each gene carries the promoter element `{motif}` on its own strand at transcript positions
{MOTIF_START}..{MOTIF_START + L - 1} (TSS = 0): plus strand genome[TSS{MOTIF_START}..TSS{MOTIF_START + L - 1}] = motif,
minus strand genome[TSS+{-(MOTIF_START + L - 1)}..TSS+{-MOTIF_START}] = its reverse complement.
Per gene one SNV inside the element (causal, label 1) and one SNV within +-{FAR} bp of the TSS outside it
(label 0; half of the genes draw it within +-{NEAR} bp). {n_flipped} of {nv} variants ({label_noise:g}) had their
label flipped, leaving {n_positive} labelled 1. Each variant has 1-{min(3, len(tissues))} tissue rows in
`variants.csv` ({', '.join(tissues)}), all with the same label and gene.
""")
    return {"genome": str(fa), "tss": str(out / "tss.tsv"), "variants": str(out / "variants.csv"),
            "readme": str(out / "README.md"), "n_genes": n, "n_variants": nv, "n_rows": len(rows),
            "n_positive": n_positive, "n_flipped": n_flipped}


def run_synthetic(o: SyntheticOptions) -> str:
    """Build the data set from CLI options; return a short summary to print."""
    s = make_synthetic(o.out, n_chroms=o.n_chroms, chrom_len=o.chrom_len, genes_per_chrom=o.genes_per_chrom,
                       label_noise=o.label_noise, seed=o.seed)
    return (f"genome    {s['genome']} ({o.n_chroms} x {o.chrom_len} bp)\n"
            f"tss       {s['tss']} ({s['n_genes']} genes)\n"
            f"variants  {s['variants']} ({s['n_variants']} variants, {s['n_rows']} rows, "
            f"{s['n_positive']} labelled 1, {s['n_flipped']} flipped)")
