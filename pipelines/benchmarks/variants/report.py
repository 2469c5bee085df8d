"""``glmscore analyze variants``: the variant-effect table (Parquet, TSV, VCF) and the effect
distributions of score folders; with labels, zero-shot LLR AUROCs, learned predictors' test AUROCs from
probe and CNN folders, ROC curves, per-tissue AUROCs and the paper's numbers side by side (quoted, not
recomputed). Unlabelled variants (a VCF without tissues) get the effect table and distributions only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from glmscore.analysis.report import plot_effect_distributions, plot_roc_curves, write_table_report
from glmscore.analysis.variants import (
    PAPER,
    auroc_rows,
    bare_chrom,
    effect_summary,
    labelled_rows,
    largest_effects,
    summarise_predictions,
)
from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.benchmarks.variants.effects import effect_rows, effect_type, write_effects
from glmscore.pipelines.shards import read_manifest, read_scores

SCORE_COLUMNS = ["model", "group", "pair_index", "score", "variant_id", "chrom", "pos", "gene", "tissue", "label"]
RESULT_COLUMNS = ["method", "kind", "subset", "tissue", "n", "n_pos", "auroc", "ci_low", "ci_high",
                  "fold_auroc_mean", "fold_auroc_sd", "cv_auroc"]


PREDICTIONS = "predictions.parquet"  # what each learner folder holds (learning.py writes it)

def zero_shot_llr(score_dir: str) -> pd.DataFrame:
    """Per site: LLR = score(alt) - score(ref) (and both scores), with the site's chromosome, position,
    gene and tissue/label lists."""
    scores = read_scores(score_dir, columns=SCORE_COLUMNS, what="causal-variant score folder")
    ref = scores[scores["group"] == "ref"].set_index("pair_index")
    alt = scores[scores["group"] == "alt"].set_index("pair_index")
    if not ref.index.equals(alt.index.sort_values()) and set(ref.index) != set(alt.index):
        raise GlmscoreError(f"{score_dir}: ref and alt rows do not pair up; rerun `glmscore score`.")
    alt = alt.loc[ref.index]
    sites = ref.drop(columns=["group", "score"]).reset_index().rename(columns={"pair_index": "site_index"})
    sites["score_ref"] = ref["score"].to_numpy()
    sites["score_alt"] = alt["score"].to_numpy()
    sites["llr"] = sites["score_alt"] - sites["score_ref"]
    return sites


def analyze_variants(score_dirs: list[str], probe_dirs: list[str], cnn_dirs: list[str], out: Path, o) -> dict:
    if not (score_dirs or probe_dirs or cnn_dirs):
        raise GlmscoreError("pass at least one of --scores, --probes or --cnn.")
    out.mkdir(parents=True, exist_ok=True)
    test = {bare_chrom(c) for c in o.test_chroms}
    results, curves, llr_tables, provenance, effects, described = [], {}, [], [], [], {}
    for d in score_dirs:
        sites = zero_shot_llr(d)
        model = str(sites["model"].iloc[0])
        if model in described:  # two folders of one model (other options): keep them apart in the tables
            model = next(f"{model} ({i})" for i in range(2, len(described) + 3) if f"{model} ({i})" not in described)
            sites["model"] = model
        manifest = read_manifest(d)
        reduction = manifest.get("config", {}).get("reduction", "mean")
        described[model] = f"window {reduction}; revision {manifest.get('resolved_revision')}; {d}"
        provenance.append(f"{model}: zero-shot, {d} (LLR of the window {reduction}; revision {manifest.get('resolved_revision')})")
        llr_tables.append(sites.drop(columns=["tissue", "label"]))
        effects.append(effect_rows(sites, model, effect_type(manifest)))
        rows = labelled_rows(sites)
        if rows.empty:
            continue
        rows = rows.assign(neg_llr=-rows["llr"], abs_llr=rows["llr"].abs())
        on_test = rows["chrom"].map(bare_chrom).isin(test)
        for subset, part in (("all", rows), ("test", rows[on_test])):
            if part.empty:
                continue
            for stat, column in (("-LLR", "neg_llr"), ("|LLR|", "abs_llr")):
                keys = {"method": f"{model} zero-shot {stat}", "kind": "zero-shot", "subset": subset}
                results += auroc_rows(part, column, keys, n_boot=o.n_boot, seed=o.seed)
        curves[f"{model} -LLR (all)"] = (rows["label"].to_numpy(), rows["neg_llr"].to_numpy())
    for kind, folders in (("probe", probe_dirs), ("cnn", cnn_dirs)):
        for d in folders:
            path = Path(d) / PREDICTIONS
            if not path.is_file():
                raise GlmscoreError(f"{d} has no {PREDICTIONS}: pass a folder written by "
                                    f"`glmscore {'probe --setting variants' if kind == 'probe' else 'baseline cnn'}`.")
            pred = pd.read_parquet(path)
            pred["method"] = pred["model"] + " " + pred["method"]
            provenance.append(f"{', '.join(pred['method'].unique())}: {kind}, {d}")
            summary, tissues = summarise_predictions(pred, n_boot=o.n_boot, seed=o.seed)
            for r in summary.to_dict("records"):
                results.append({"method": r["method"], "kind": kind, "subset": "test", "tissue": "all", "n": r["n_test"],
                                "n_pos": r["n_test_pos"], "auroc": r["ensemble_auroc"], "ci_low": r["ensemble_ci_low"],
                                "ci_high": r["ensemble_ci_high"], "fold_auroc_mean": r["test_auroc_mean"],
                                "fold_auroc_sd": r["test_auroc_sd"], "cv_auroc": r["cv_auroc"]})
            results += [{**r, "kind": kind, "subset": "test"} for r in tissues.to_dict("records")]
            for method, part in pred[pred["split"] == "test"].groupby("method"):
                ens = part.groupby(["site_index", "tissue"]).agg(label=("label", "first"), prob=("prob", "mean"))
                curves[f"{method} ensemble (test)"] = (ens["label"].to_numpy(), ens["prob"].to_numpy())
    table = pd.DataFrame(results).reindex(columns=RESULT_COLUMNS)
    tables, plots, summary = {}, [], None
    if effects:
        pd.concat(llr_tables, ignore_index=True).to_csv(out / "zero_shot_llr.csv", index=False)
        rows = pd.concat(effects, ignore_index=True)
        files = write_effects(rows, described, out)
        sites = rows.drop_duplicates(["site_index", "model"])
        summary = effect_summary(sites)
        tables["Variant effects per model (effect = score(alt window) - score(ref window); LLR for language models, "
               f"track change for sequence-to-function models; table: {', '.join(f.name for f in files)})"] = summary
        tables["Largest |effect| per model"] = largest_effects(sites)
        plots.append(plot_effect_distributions({m: s["effect"].to_numpy() for m, s in sites.groupby("model", sort=False)}, out))
    labelled = not table.empty
    if labelled:
        table.to_csv(out / "variants_results.csv", index=False)
        tables = {"AUROC (95% CI: cluster bootstrap over variants; learned methods: ensemble of the fold models, "
                  "fold mean +- SD beside it)": table[table["tissue"] == "all"].drop(columns="tissue"),
                  "AUROC per tissue": table[table["tissue"] != "all"], **tables,
                  "The paper's test AUROCs (quoted from the publication, not recomputed here)": PAPER}
        plot = plot_roc_curves(curves, out, "causal variants")
        plots = ([plot] if plot else []) + plots
    elif not effects:
        raise GlmscoreError("the probe and CNN folders hold no test predictions with labels, so there is nothing to report.")
    tables["Inputs"] = pd.DataFrame({"input": provenance})
    settings = {"test chromosomes": ",".join(o.test_chroms), "bootstrap": o.n_boot, "seed": o.seed,
                "zero-shot": "-LLR ranks a variant as causal when alt is less likely than ref; |LLR| ignores the sign"}
    if not labelled:
        settings = {"labels": "none of the inputs carries labels (no tissue/label columns), so no AUROC is computed"}
    report = write_table_report("Causal-variant benchmark" if labelled else "Variant effects", tables, plots, out, settings)
    # what the CLI prints: the AUROCs, or for unlabelled variants the effect summary
    overall = table[table["tissue"] == "all"].drop(columns="tissue") if labelled else summary
    return {"report": str(report), "table": overall, "effects": summary}
