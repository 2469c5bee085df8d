"""The synthetic causal-variant generator: formats, the planted motif, labels, tissues, determinism."""

from __future__ import annotations

import csv
from itertools import pairwise
from pathlib import Path

import pysam
import pytest

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.benchmarks.variants.synthetic import SyntheticOptions, make_synthetic, run_synthetic

MOTIF = "TATAAAAGGC"
_COMP = str.maketrans("ACGT", "TGCA")


def revcomp(s: str) -> str:
    return s.translate(_COMP)[::-1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    return out, make_synthetic(out)


def _tss(out: Path) -> dict[str, dict]:
    return {r["gene_name"]: r for r in csv.DictReader(open(out / "tss.tsv"), delimiter="\t")}


def _variants(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "variants.csv")))


def _offset(gene: dict, pos: int) -> int:
    """Transcript offset (TSS = 0, negative upstream) of genomic 1-based ``pos``."""
    return (pos - int(gene["start"])) * (1 if gene["strand"] == "+" else -1)


def test_files_and_formats(data):
    out, s = data
    assert {p.name for p in out.iterdir()} == {"genome.fa", "genome.fa.fai", "tss.tsv", "variants.csv", "README.md"}
    lines = (out / "genome.fa").read_text().splitlines()
    assert lines[0] == ">chr1" and all(len(x) == 60 for x in lines[1:100])
    with pysam.FastaFile(str(out / "genome.fa")) as fa:
        assert list(fa.references) == [f"chr{i}" for i in range(1, 13)]
        assert set(fa.lengths) == {200_000}
        assert set(fa.fetch("chr9")) == set("ACGT")
    header = (out / "tss.tsv").read_text().splitlines()[0]
    assert header == "chrom\tstart\tend\tstrand\tgene_name\tgene_type"
    genes = _tss(out)
    assert len(genes) == s["n_genes"] == 480
    assert all(int(g["end"]) == int(g["start"]) + 1 and g["gene_type"] == "protein_coding" for g in genes.values())
    assert {g["strand"] for g in genes.values()} == {"+", "-"}
    assert (out / "variants.csv").read_text().splitlines()[0] == "chrom,pos,ref,alt,label,tissue,gene"
    assert f"{s['n_flipped']} of {s['n_variants']}" in (out / "README.md").read_text()
    assert {"chr9", "chr10"} <= {v["chrom"] for v in _variants(out)}


def test_tss_spacing_and_edges(data):
    out, _ = data
    by_chrom: dict[str, list[int]] = {}
    for g in _tss(out).values():
        by_chrom.setdefault(g["chrom"], []).append(int(g["start"]))
    for starts in by_chrom.values():
        starts.sort()
        assert len(starts) == 40 and starts[0] >= 1001 and starts[-1] <= 200_000 - 1000
        assert min(b - a for a, b in pairwise(starts)) >= 2_000


def test_motif_on_gene_strand(data):
    out, _ = data
    with pysam.FastaFile(str(out / "genome.fa")) as fa:
        for g in _tss(out).values():
            p = int(g["start"])
            if g["strand"] == "+":  # 1-based p-35..p-26 == 0-based [p-36, p-26)
                assert fa.fetch(g["chrom"], p - 36, p - 26) == MOTIF
            else:  # 1-based p+26..p+35, read on the minus strand
                assert revcomp(fa.fetch(g["chrom"], p + 25, p + 35)) == MOTIF


def test_refs_labels_and_positions(data):
    out, s = data
    genes, rows = _tss(out), _variants(out)
    variants = {}
    for r in rows:
        key = (r["chrom"], int(r["pos"]), r["ref"], r["alt"])
        variants.setdefault(key, []).append(r)
    assert len(variants) == s["n_variants"] == 960 and len(rows) == s["n_rows"]
    assert len({(c, p) for c, p, _, _ in variants}) == len(variants)  # no shared positions
    flipped, positives, near = 0, 0, 0
    with pysam.FastaFile(str(out / "genome.fa")) as fa:
        for (chrom, pos, ref, alt), group in variants.items():
            assert fa.fetch(chrom, pos - 1, pos) == ref and alt in "ACGT" and alt != ref
            assert 1 <= len(group) <= 3 and len({r["tissue"] for r in group}) == len(group)
            assert len({(r["label"], r["gene"]) for r in group}) == 1
            gene = genes[group[0]["gene"]]
            assert gene["chrom"] == chrom
            k = _offset(gene, pos)
            in_motif = -35 <= k <= -26
            assert k != 0 and abs(k) <= 600
            near += not in_motif and abs(k) <= 100
            for other in genes.values():  # no variant in another gene's motif
                if other is not gene and other["chrom"] == chrom:
                    assert not -35 <= _offset(other, pos) <= -26
            flipped += int(group[0]["label"]) != int(in_motif)
            positives += int(group[0]["label"])
    per_gene = {}
    for (chrom, pos, _, _), group in variants.items():
        per_gene.setdefault(group[0]["gene"], []).append(-35 <= _offset(genes[group[0]["gene"]], pos) <= -26)
    assert all(sorted(v) == [False, True] for v in per_gene.values())  # one inside, one outside the motif
    assert flipped == s["n_flipped"] == round(0.1 * 960)
    assert positives == s["n_positive"]
    assert near >= 240  # half the negatives are drawn within +-100 bp
    assert {r["tissue"] for r in rows} == {"Liver", "Lung", "Muscle_Skeletal", "Whole_Blood"}


def test_deterministic(tmp_path, data):
    out, _ = data
    make_synthetic(tmp_path / "a")
    for name in ("genome.fa", "genome.fa.fai", "tss.tsv", "variants.csv", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (out / name).read_bytes()
    make_synthetic(tmp_path / "b", seed=1, n_chroms=2, chrom_len=30_000, genes_per_chrom=5)
    make_synthetic(tmp_path / "c", seed=2, n_chroms=2, chrom_len=30_000, genes_per_chrom=5)
    assert (tmp_path / "b" / "variants.csv").read_bytes() != (tmp_path / "c" / "variants.csv").read_bytes()


def test_small_options(tmp_path):
    s = make_synthetic(tmp_path, n_chroms=1, chrom_len=2_001, genes_per_chrom=1, label_noise=0.5,
                       tissues=("Liver",), motif="TTGACA")
    assert (s["n_genes"], s["n_variants"], s["n_rows"], s["n_flipped"]) == (1, 2, 2, 1)
    text = run_synthetic(SyntheticOptions(out=str(tmp_path / "o"), n_chroms=2, chrom_len=20_000, genes_per_chrom=3))
    assert "6 genes" in text and "12 variants" in text


@pytest.mark.parametrize("kwargs", [
    {"chrom_len": 50_000},  # 40 genes 2 kb apart do not fit
    {"n_chroms": 0}, {"genes_per_chrom": 0}, {"motif": "TATAN"}, {"motif": "A" * 36}, {"motif": ""},
    {"label_noise": 0.6}, {"label_noise": -0.1}, {"tissues": ()}, {"tissues": ("Liver", "Liver")},
    {"tissues": ("a,b",)}, {"min_spacing": 1000},
])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(GlmscoreError):
        make_synthetic(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_options_validate():
    with pytest.raises(GlmscoreError):
        SyntheticOptions(out="x", label_noise=0.9)
    with pytest.raises(GlmscoreError):
        SyntheticOptions(out="x", chrom_len=100)
