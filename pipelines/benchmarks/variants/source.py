"""The causal-variant benchmark: ref/alt genome windows as paired rows, zero-shot LLR and its analysis.

``glmscore variants build`` turns a genome, a variant list and a TSS annotation into a *windows folder*:

- ``sites.parquet``: one row per ref/alt window pair (a *site*: a variant in the variant-centred view,
  a (variant, gene) pair in the gene-centred view) with its chromosome, 1-based ``pos``, ``ref``/``alt``,
  gene, 1-based ``tss``, ``strand``, the 0-based genome coordinate where the window starts, the variant's
  and the TSS's 0-based offsets in the (oriented) window, the N-padding count, and the lists ``tissue``
  and ``label`` (one entry per variant x tissue row of the input);
- ``build.json``: the settings, the genome's path and identity, and counts of what was dropped and why.

Windows are not materialised: the genome index gives them on demand when a unit is read (a 131,072 bp
window pair per row would be 262 kB; 100,000 variants would be 26 GB), so memory stays flat as the
variant list grows. Window rules (``W`` = ``--window``, centre = the variant's base, or the TSS base):

- genome orientation (default, as the paper and Enformer): the window is ``[centre - W//2, centre - W//2 + W)``
  on the + strand, so the centre is at offset ``W//2``;
- ``--orient gene``: minus-strand genes are reverse-complemented (window ``[centre + W//2 + 1 - W,
  centre + W//2 + 1)``), so transcription runs left to right and the TSS is still at offset ``W//2``;
  the alt base is complemented with it;
- positions off a chromosome end are N (counted per row in ``n_padded``);
- gene view: a variant whose base falls outside its gene's window is dropped (for W = 131,072: more
  than 65,536 bp upstream or 65,535 bp downstream in genome orientation) and counted.

Scoring reuses the generic Ray Data job: groups ``ref`` and ``alt``, ``pair_index`` = site index; the
zero-shot score of a site is LLR = score(alt) - score(ref): ``--reduction sum|mean`` over the window
(causal LMs), or ``--reduction focus`` at the variant's base (masked LMs; with ``--mlm-scoring pll``
the base is masked in both windows, which makes alt - ref the masked-marginal log p(alt) - log p(ref)).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import MISSING, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from glmscore.models.alphabet import reverse_complement
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import Options, comma_list, option, out_option, seed_option, test_chroms_option
from glmscore.pipelines.benchmark import REGION_COLUMNS, Benchmark, Rows, Unit, locator, register_benchmark
from glmscore.pipelines.benchmarks.variants.genome import (
    Genome,
    open_genome,
    read_tss,
    read_variants,
)
from glmscore.pipelines.benchmarks.variants.report import analyze_variants

VIEWS = {"variant": 1500, "gene": 131_072}  # default window per view (the paper's)
GROUPS = ("ref", "alt")
SITES, BUILD = "sites.parquet", "build.json"
UNIT_BASES = 1 << 23  # bases per unit and group: long windows get fewer rows per shard


@dataclass(frozen=True)
class BuildOptions(Options):
    genome: str = option(MISSING, help="genome FASTA (plain with .fai, or bgzipped with .fai and .gzi)")
    variants: str = option(MISSING, help="variants: VCF (1-based POS) or CSV/TSV with chrom,pos,ref,alt[,label,tissue,gene]")
    out: str = out_option("windows folder to write")
    view: str = option("variant", choices=tuple(VIEWS), help="variant: windows centred on the variant; gene: on the gene's TSS")
    annotation: str | None = option(None, help="TSS table (chrom,start|tss,strand,gene_name|gene_id) or GTF; needed by --view gene")
    window: int | None = option(None, minimum=2, help="window length in bp (default: 1500 for variant, 131072 for gene)")
    tss_span: int = option(384, minimum=1, help="bp around the TSS that --pooling tss pools")
    orient: str = option("genome", choices=("genome", "gene"), help="gene: reverse-complement windows of minus-strand genes")
    gene_rule: str = option("nearest", choices=("nearest", "all"),
                            help="gene view without a gene column: the nearest TSS, or every TSS whose window holds the variant")
    drop_mismatches: bool = option(False, help="drop (and count) variants whose REF differs from the genome, whose chromosome "
                                               "or gene is unknown, instead of stopping at the first")


def build_windows(o: BuildOptions) -> dict:
    """Write ``sites.parquet`` + ``build.json`` (see the module docstring); returns the build record."""
    window = o.window or VIEWS[o.view]
    if o.view == "gene" and not o.annotation:
        raise GlmscoreError("--view gene needs --annotation (a TSS table or a GTF).")
    if o.view == "gene" and o.tss_span > window:
        raise GlmscoreError(f"--tss-span {o.tss_span} does not fit in a window of {window} bp.")
    genome = Genome(o.genome)
    table = read_variants(o.variants)
    frame, dropped = table.frame, dict(table.dropped)

    def drop(frame: pd.DataFrame, mask: np.ndarray, reason: str, example: str) -> pd.DataFrame:
        """Rows failing a check: an error naming the first, or (``--drop-mismatches``) dropped and counted."""
        if not mask.any():
            return frame
        if not o.drop_mismatches:
            raise GlmscoreError(f"{example} (pass --drop-mismatches to drop and count such variants).")
        dropped[reason] = dropped.get(reason, 0) + int(mask.sum())
        return frame[~mask].reset_index(drop=True)

    frame["chrom"] = [genome.resolve(c) or f"?{c}" for c in frame["chrom"]]
    unknown = frame["chrom"].str.startswith("?").to_numpy()
    if unknown.any():
        c = frame["chrom"][unknown].iloc[0][1:]
        frame = drop(frame, unknown, "chromosome not in the genome", f"chromosome {c} is not in {o.genome} (it has {', '.join(list(genome.lengths)[:5])}...)")
    genome_ref = np.array([genome.base(c, p) for c, p in zip(frame["chrom"], frame["pos"])])
    bad = genome_ref != frame["ref"].to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        r = frame.iloc[i]
        frame = drop(frame, bad, "REF differs from the genome",
             f"variant {r.chrom}:{r.pos} {r.ref}>{r.alt} has REF {r.ref} but the genome has {genome_ref[i] or 'no base'} there "
             "(VCF positions are 1-based; is this the right genome build?)")
    if frame.empty:
        raise GlmscoreError("no variant is left to build windows for.")
    frame["variant_id"] = frame["chrom"] + ":" + frame["pos"].astype(str) + ":" + frame["ref"] + ">" + frame["alt"]
    for c, default in (("gene", ""), ("tissue", None), ("label", None)):
        if c not in frame:
            frame[c] = default
    if frame["label"].notna().any() and frame["tissue"].isna().all():
        frame["tissue"] = "all"

    if o.view == "gene":
        frame, far = _attach_genes(frame, read_tss(o.annotation), genome, window, o, drop)
        dropped.update({k: v for k, v in far.items() if v})
        centre = frame["tss"].to_numpy() - 1
    else:
        frame = frame.assign(tss=-1, strand="+")
        centre = frame["pos"].to_numpy() - 1
    minus = (frame["strand"].to_numpy() == "-") & (o.orient == "gene")
    start = np.where(minus, centre + window // 2 + 1 - window, centre - window // 2)
    pos0 = frame["pos"].to_numpy() - 1
    frame["window_start"] = start
    frame["variant_offset"] = np.where(minus, start + window - 1 - pos0, pos0 - start)
    frame["tss_offset"] = window // 2 if o.view == "gene" else -1
    frame["reverse"] = minus
    lengths = np.array([genome.lengths[c] for c in frame["chrom"]])
    frame["n_padded"] = np.maximum(0, -start) + np.maximum(0, start + window - lengths)
    if o.view == "gene":
        outside = (frame["variant_offset"] < 0) | (frame["variant_offset"] >= window)
        dropped["variant outside its gene's window"] = dropped.get("variant outside its gene's window", 0) + int(outside.sum())
        frame = frame[~outside]
    if frame.empty:
        raise GlmscoreError("no variant lies within a window of its gene's TSS.")
    sites = _sites(frame, genome)
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / BUILD).unlink(missing_ok=True)  # the folder is incomplete until build.json is written again
    tmp = out / f".{SITES}.tmp"
    pq.write_table(pa.Table.from_pandas(sites, preserve_index=False), tmp)
    os.replace(tmp, out / SITES)
    record = {
        "view": o.view, "window": window, "tss_span": o.tss_span, "orient": o.orient, "gene_rule": o.gene_rule,
        "genome": str(Path(o.genome).resolve()), "genome_identity": genome.identity(),
        "variants": str(Path(o.variants).resolve()), "annotation": str(Path(o.annotation).resolve()) if o.annotation else None,
        "sites": len(sites), "rows": int(sites["tissue"].map(len).sum()),
        "labelled_rows": int(sites["label"].map(lambda v: sum(x is not None for x in v)).sum()),
        "sites_with_padding": int((sites["n_padded"] > 0).sum()), "dropped": dropped,
        "coordinates": "pos and tss 1-based; window_start 0-based genome coordinate; offsets 0-based in the oriented window",
    }
    (out / BUILD).write_text(json.dumps(record, indent=2))
    return record


def _attach_genes(frame: pd.DataFrame, tss: pd.DataFrame, genome: Genome, window: int, o: BuildOptions, drop):
    """Each variant with its gene's TSS: the ``gene`` column (name or unversioned id), else by ``gene_rule``."""
    tss = tss.assign(chrom=[genome.resolve(c) or "" for c in tss["chrom"]])
    tss = tss[tss["chrom"] != ""]
    counts = {}
    if (frame["gene"] != "").any():
        lookup: dict[str, tuple] = {}
        for r in tss.itertuples():
            for key in (r.gene_id, r.gene_name):
                lookup.setdefault(key, (r.chrom, r.tss, r.strand))
        found = [lookup.get(k) for k in frame["gene"].str.replace(r"\.\d+$", "", regex=True)]
        missing = np.array([f is None for f in found])
        if missing.any():
            gene = frame["gene"][missing].iloc[0]
            frame = drop(frame, missing, "gene not in the annotation", f"gene {gene} is not in the annotation {o.annotation}")
            found = [f for f in found if f is not None]
        frame = frame.assign(tss_chrom=[f[0] for f in found], tss=[f[1] for f in found], strand=[f[2] for f in found])
        other = (frame["tss_chrom"] != frame["chrom"]).to_numpy()
        counts["gene on another chromosome"] = int(other.sum())
        return frame[~other].drop(columns="tss_chrom").reset_index(drop=True), counts
    merged = frame.reset_index(names="_row").merge(tss.rename(columns={"gene_name": "tss_gene"}), on="chrom")
    merged["distance"] = (merged["pos"] - merged["tss"]).abs()
    merged = merged[merged["distance"] <= window // 2]
    if o.gene_rule == "nearest":
        merged = merged.sort_values(["_row", "distance", "tss_gene"]).drop_duplicates("_row")
    counts["no TSS within half a window"] = len(frame) - merged["_row"].nunique()
    merged["gene"] = np.where(merged["tss_gene"] != "", merged["tss_gene"], merged["gene_id"])
    return merged.drop(columns=["_row", "distance", "tss_gene", "gene_id"]).reset_index(drop=True), counts


def _sites(frame: pd.DataFrame, genome: Genome) -> pd.DataFrame:
    """One row per window pair, in genome order, with the tissue/label rows as lists."""
    order = {c: i for i, c in enumerate(genome.lengths)}
    keys = ["chrom", "pos", "ref", "alt", "gene"]
    frame = frame.assign(_c=frame["chrom"].map(order)).sort_values(["_c", "pos", "alt", "gene"], kind="stable")
    if frame["label"].notna().any():  # one row per (site, tissue); a repeated row keeps its highest label
        frame = frame.sort_values("label", ascending=False, kind="stable").drop_duplicates(keys + ["tissue"])
        frame = frame.assign(_c=frame["chrom"].map(order)).sort_values(["_c", "pos", "alt", "gene", "tissue"], kind="stable")
    first = frame.drop_duplicates(keys).reset_index(drop=True)
    tissues, labels = [], []
    for _, g in frame.groupby(keys, sort=False):  # groups in order of first appearance = the order of `first`
        rows = [(t, v) for t, v in zip(g["tissue"], g["label"]) if isinstance(t, str)]
        tissues.append([t for t, _ in rows])
        labels.append([None if pd.isna(v) else int(v) for _, v in rows])
    first = first.assign(tissue=tissues, label=labels)
    first.insert(0, "site_index", np.arange(len(first), dtype=np.int32))
    cols = ["site_index", "variant_id", "chrom", "pos", "ref", "alt", "gene", "tss", "strand", "reverse", "window_start",
            "variant_offset", "tss_offset", "n_padded", "tissue", "label"]
    return first[cols].astype({"pos": np.int64, "tss": np.int64, "window_start": np.int64, "variant_offset": np.int32,
                               "tss_offset": np.int32, "n_padded": np.int32})


def read_build(folder: Path) -> tuple[dict, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise GlmscoreError(f"windows folder {folder} does not exist (run `glmscore variants build`).")
    try:
        record = json.loads((folder / BUILD).read_text())
    except FileNotFoundError:
        raise GlmscoreError(f"{folder} has no {BUILD}: it is not a finished `glmscore variants build` folder.") from None
    return record, folder / SITES


def window_pair(genome: Genome, site: dict, window: int) -> tuple[str, str, int]:
    """(ref window, alt window, padded positions) of one site, oriented as built."""
    seq, padded = genome.fetch(site["chrom"], site["window_start"], site["window_start"] + window)
    alt = site["alt"]
    if site["reverse"]:
        seq, alt = reverse_complement(seq), reverse_complement(alt)
    k = site["variant_offset"]
    return seq, seq[:k] + alt + seq[k + 1:], padded


# ---------------------------------------------------------------- the registered benchmark


@dataclass(frozen=True)
class VariantsAnalyzeOptions(Options):
    probes: list[str] | None = option(None, parse=comma_list, help="comma-separated folders written by `glmscore probe --setting variants`")
    cnn: list[str] | None = option(None, parse=comma_list, help="comma-separated folders written by `glmscore baseline cnn`")
    test_chroms: list[str] = test_chroms_option()
    n_boot: int = option(1000, minimum=1, help="bootstrap resamples (of sites) for the AUROC CIs")
    seed: int = seed_option("bootstrap seed")


def variants_tables(parts: list[dict], order: list[str], out: Path, bid: str) -> list[tuple[str, pd.DataFrame, list[Path]]]:
    """Zero-shot AUROCs (the analysis's ``method`` is '<card> zero-shot <statistic>')."""
    rows = []
    for p in parts:
        table = p["result"]["table"]
        if "method" not in table.columns:
            continue  # unlabelled variants: an effect summary, no AUROC to combine
        for card, name in p["names"].items():
            prefix = f"{card} zero-shot "
            mine = table[table["method"].astype(str).str.startswith(prefix)]
            rows.append(mine.assign(model=name, statistic=mine["method"].str[len(prefix):]).drop(columns=["method", "kind"]))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["model", "statistic", "subset"])
    table["_o"] = table["model"].map({m: i for i, m in enumerate(order)})
    cols = ["model", "statistic", "subset", "n", "n_pos", "auroc", "ci_low", "ci_high"]
    table = table.sort_values(["_o", "statistic", "subset"], kind="stable").reindex(columns=cols)
    csv = out / f"{bid}_auroc.csv"
    table.to_csv(csv, index=False)
    return [(f"{bid}: causal-variant zero-shot AUROC (95% CI: cluster bootstrap)", table, [csv])]


@dataclass(frozen=True)
class VariantsOptions(Options):
    """Causal variants (score, embed)"""
    track_region: str = option("all", choices=("all", "centre"),
                               help="variants, sequence-to-function models: the bins a track effect reads: all (the whole "
                                    "output, SAD-style) or centre (the build's --tss-span bp around the window's centre: "
                                    "the TSS in the gene view, Enformer's 3 bins of 128 bp at 384; the variant otherwise)")


SITE_COLUMNS = {"variant_id": pa.string(), "chrom": pa.string(), "pos": pa.int64(), "gene": pa.string(),
                "variant_offset": pa.int32(), "tissue": pa.list_(pa.string()), "label": pa.list_(pa.int8())}


@register_benchmark("variants")
class Variants(Benchmark):
    """Rows are windows read from the genome on demand; ``pair_index`` = site index (ref and alt)."""
    data_help = "variants: a windows folder written by `glmscore variants build`"
    Options = VariantsOptions
    AnalyzeOptions = VariantsAnalyzeOptions
    focus_column = "variant_offset"  # --reduction focus: masked LMs score the variant's base only

    @property
    def has_regions(self) -> bool:
        return self.options.track_region == "centre"

    @property
    def extra_columns(self) -> dict[str, pa.DataType]:
        return {**SITE_COLUMNS, **({c: pa.int64() for c in REGION_COLUMNS} if self.has_regions else {})}

    def units(self, *, chunk_rows, limit, datasets) -> list[Unit]:
        record, sites_path = read_build(Path(self.data))
        view = record["view"]
        if datasets and datasets != [view]:
            raise GlmscoreError(f"{self.data} holds the {view} view only (dataset {view}).")
        sites = pq.read_table(sites_path, columns=["chrom", "window_start", "variant_offset", "alt", "reverse"]).to_pandas()
        n = min(len(sites), limit or len(sites))
        rows = max(1, min(chunk_rows, UNIT_BASES // record["window"]))
        identity = f"{record['genome_identity']}|{record['window']}|{record['orient']}".encode()
        units = []
        for chunk, first in enumerate(range(0, n, rows)):
            part = sites.iloc[first:min(first + rows, n)]
            crc = zlib.crc32(part.to_csv(index=False).encode(), zlib.crc32(identity))
            for g in GROUPS:
                units.append(Unit(view, g, chunk, len(part), first, crc, record["window"],
                                  locator(sites=str(sites_path.resolve()), genome=record["genome"],
                                          identity=record["genome_identity"], window=record["window"])))
        return units

    def read(self, unit: Unit) -> Rows:
        where = unit.where()
        genome = open_genome(where["genome"])
        if genome.identity() != where["identity"]:
            raise GlmscoreError(f"the genome {where['genome']} changed since `glmscore variants build`; rebuild the windows.")
        table = pq.read_table(where["sites"]).slice(unit.first_row, unit.n_rows)
        sites = table.to_pylist()
        seqs = [window_pair(genome, s, where["window"])[GROUPS.index(unit.group)] for s in sites]
        pair_index = np.array([s["site_index"] for s in sites], dtype=np.int32)
        extra = {c: table.column(c).to_pylist() for c in SITE_COLUMNS}
        if self.has_regions:  # the --tss-span bases around the window's centre (the TSS, or the variant's base)
            span = read_build(Path(where["sites"]).parent)[0]["tss_span"]
            start = where["window"] // 2 - span // 2
            extra.update(dict(zip(REGION_COLUMNS, ([start] * len(sites), [start + span] * len(sites)))))
        return Rows([f"{unit.dataset}/{unit.group}/{i}" for i in pair_index], extra["variant_id"], seqs, pair_index, extra)

    def resolve_pooling(self, pooling: str) -> str:
        """``tss``: the ``--tss-span`` bp around the TSS; ``window:START-END`` relative to the window's
        centre (the TSS, or the variant), e.g. ``window:-192-192``. Both become absolute windows."""

        record, _ = read_build(Path(self.data))
        centre = record["window"] // 2
        if pooling == "tss":
            if record["view"] != "gene":
                raise GlmscoreError("--pooling tss needs a gene-view windows folder (variants build --view gene).")
            half = record["tss_span"] // 2
            return f"window:{centre - half}-{centre - half + record['tss_span']}"
        m = re.fullmatch(r"window:(-?\d+)-(-?\d+)", pooling)
        if m:
            a, b = centre + int(m.group(1)), centre + int(m.group(2))
            if not 0 <= a < b <= record["window"]:
                raise GlmscoreError(f"--pooling {pooling} (relative to the window centre) leaves the {record['window']} bp window.")
            return f"window:{a}-{b}"
        return pooling

    @classmethod
    def analyze(cls, score_dirs: list[str], out: str, options: VariantsAnalyzeOptions) -> dict:
        return analyze_variants(score_dirs, options.probes or [], options.cnn or [], Path(out), options)

    @classmethod
    def combined_tables(cls, parts: list[dict], order: list[str], out: Path, bid: str) -> list:
        return variants_tables(parts, order, out, bid)
