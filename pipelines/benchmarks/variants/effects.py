"""The variant-effect table a geneticist reads: one row per variant (and gene, tissue) and model, with
the ref and alt window scores and their difference, as Parquet, TSV and a VCF whose INFO fields carry
the effects (one field per model and quantity, the way kipoi-veff and gReLU annotate a VCF).

The effect is ``score(alt window) - score(ref window)``: a log-likelihood ratio (LLR) for language models,
and a track effect (the change of the mean predicted coverage of the chosen tracks) for
sequence-to-function models (card objective ``tracks``). The VCF is written by pysam (htslib), so any
VCF reader (bcftools, cyvcf2, pysam) reads it back: one record per variant; in the gene-centred view a
variant near several genes has one value per gene, in the order of its ``GENE`` field. htslib writes
INFO floats with 6 significant digits; the Parquet and TSV tables keep full precision.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pysam

EFFECT_FILES = ("variant_effects.parquet", "variant_effects.tsv", "variant_effects.vcf")
COLUMNS = ["model", "variant_id", "chrom", "pos", "ref", "alt", "gene", "tissue", "label", "score_ref", "score_alt",
           "effect", "effect_type"]


def effect_type(manifest: dict) -> str:
    return "track" if manifest.get("model_card", {}).get("objective") == "tracks" else "LLR"


def effect_rows(sites: pd.DataFrame, model: str, kind: str) -> pd.DataFrame:
    """``zero_shot_llr``'s site rows -> one row per (site, tissue); a site without tissues keeps one row."""
    ref_alt = sites["variant_id"].str.rsplit(":", n=1).str[1].str.split(">", n=1)
    rows = sites.assign(model=model, ref=ref_alt.str[0], alt=ref_alt.str[1], effect=sites["llr"], effect_type=kind,
                        tissue=[t if isinstance(t, (list, np.ndarray)) and len(t) else [""] for t in sites["tissue"]],
                        label=[v if isinstance(v, (list, np.ndarray)) and len(v) else [None] for v in sites["label"]])
    rows = rows.explode(["tissue", "label"], ignore_index=True)
    rows["label"] = pd.array(rows["label"], dtype="Int8")
    rows["gene"] = rows["gene"].fillna("")
    return rows[["site_index", *COLUMNS]]


def write_effects(rows: pd.DataFrame, descriptions: dict[str, str], out: Path) -> list[Path]:
    """Parquet + TSV (every row) and VCF (one record per variant). ``descriptions``: model -> what its
    effect is (model card, reduction, revision), written into the VCF header."""
    rows = rows.sort_values(["site_index", "model", "tissue"], kind="stable")
    table = rows[COLUMNS].reset_index(drop=True)
    parquet, tsv, vcf = (out / name for name in EFFECT_FILES)
    table.to_parquet(parquet, index=False)
    table.to_csv(tsv, sep="\t", index=False, na_rep="NA")
    _write_vcf(rows.drop_duplicates(["site_index", "model"]), descriptions, vcf)
    return [parquet, tsv, vcf]


def info_key(model: str, used: set[str]) -> str:
    """A VCF INFO key from a model name: letters, digits and ``_`` (the VCF 4.3 rule), unique."""
    key = "GLM_" + (re.sub(r"[^0-9A-Za-z_]+", "_", model).strip("_") or "model")
    k, i = key, 2
    while k in used:
        k, i = f"{key}_{i}", i + 1
    used.add(k)
    return k


def _value(text: str) -> str:
    return re.sub(r"[\s,;=]+", "_", text) or "."  # INFO string values hold no separators


def _write_vcf(sites: pd.DataFrame, descriptions: dict[str, str], path: Path) -> None:
    header = pysam.VariantHeader()
    header.add_line("##source=glmscore analyze variants")
    for chrom in dict.fromkeys(sites["chrom"]):
        header.contigs.add(chrom)
    header.info.add("GENE", ".", "String", "Gene of each value of the GLM_ fields (gene-centred view); '.' in the variant view")
    keys, used = {}, set()
    for model, desc in descriptions.items():
        keys[model] = key = info_key(model, used)
        kind = sites.loc[sites["model"] == model, "effect_type"].iloc[0]
        what = "LLR = log P(alt window) - log P(ref window)" if kind == "LLR" else "track effect = alt - ref mean predicted coverage"
        desc = desc.replace('"', "'")
        header.info.add(f"{key}_REF", ".", "Float", f"{model}: score of the ref window ({desc}), one per GENE")
        header.info.add(f"{key}_ALT", ".", "Float", f"{model}: score of the alt window ({desc}), one per GENE")
        header.info.add(f"{key}_EFFECT", ".", "Float", f"{model}: {what} ({desc}), one per GENE")
    variant = ["chrom", "pos", "ref", "alt"]
    with pysam.VariantFile(str(path), "w", header=header) as vcf:
        # sites are in genome order (variants build sorts them); a variant's gene rows are consecutive
        for (chrom, pos, ref, alt), part in sites.groupby(variant, sort=False):
            genes = list(dict.fromkeys(part["gene"]))
            info = {"GENE": tuple(_value(g) if g else "." for g in genes)}
            for model, mine in part.groupby("model", sort=False):
                mine = mine.set_index("gene")
                if set(mine.index) != set(genes):
                    continue  # this model did not score every gene of the variant (a --limit): no partial list
                for field, column in (("REF", "score_ref"), ("ALT", "score_alt"), ("EFFECT", "effect")):
                    info[f"{keys[model]}_{field}"] = tuple(float(mine.loc[g, column]) for g in genes)
            record = vcf.new_record(contig=chrom, start=int(pos) - 1, alleles=(ref, alt),
                                    id=str(part["variant_id"].iloc[0]), info=info)
            vcf.write(record)
