"""``glmscore analyze variants``: zero-shot LLR AUROCs from score folders, learned predictors' test
AUROCs from probe and CNN folders, ROC curves, per-tissue AUROCs and the paper's numbers side by side
(quoted, not recomputed)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.report import plot_roc_curves, write_table_report
from analysis.variants import (
    PAPER,
    auroc_rows,
    bare_chrom,
    labelled_rows,
    summarise_predictions,
)
from models.errors import GlmscoreError
from pipelines.shards import read_manifest, read_scores

SCORE_COLUMNS = ["model", "group", "pair_index", "score", "variant_id", "chrom", "tissue", "label"]


PREDICTIONS = "predictions.parquet"  # what each learner folder holds (learning.py writes it)

def zero_shot_llr(score_dir: str) -> pd.DataFrame:
    """Per site: LLR = score(alt) - score(ref), with the site's chromosome and tissue/label lists."""
    scores = read_scores(score_dir, columns=SCORE_COLUMNS, what="causal-variant score folder")
    ref = scores[scores["group"] == "ref"].set_index("pair_index")
    alt = scores[scores["group"] == "alt"].set_index("pair_index")
    if not ref.index.equals(alt.index.sort_values()) and set(ref.index) != set(alt.index):
        raise GlmscoreError(f"{score_dir}: ref and alt rows do not pair up; rerun `glmscore score`.")
    alt = alt.loc[ref.index]
    sites = ref.drop(columns=["group", "score"]).reset_index().rename(columns={"pair_index": "site_index"})
    sites["llr"] = alt["score"].to_numpy() - ref["score"].to_numpy()
    return sites


def analyze_variants(score_dirs: list[str], probe_dirs: list[str], cnn_dirs: list[str], out: Path, o) -> dict:
    if not (score_dirs or probe_dirs or cnn_dirs):
        raise GlmscoreError("pass at least one of --scores, --probes or --cnn.")
    out.mkdir(parents=True, exist_ok=True)
    test = {bare_chrom(c) for c in o.test_chroms}
    results, curves, llr_tables, provenance = [], {}, [], []
    for d in score_dirs:
        sites = zero_shot_llr(d)
        model = str(sites["model"].iloc[0])
        manifest = read_manifest(d)
        reduction = manifest.get("config", {}).get("reduction", "mean")
        provenance.append(f"{model}: zero-shot, {d} (LLR of the window {reduction}; revision {manifest.get('resolved_revision')})")
        llr_tables.append(sites.drop(columns=["tissue", "label"]))
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
    table = pd.DataFrame(results)
    if llr_tables:
        pd.concat(llr_tables, ignore_index=True).to_csv(out / "zero_shot_llr.csv", index=False)
    if table.empty:
        raise GlmscoreError("none of the inputs carries labels, so no AUROC can be computed (zero_shot_llr.csv has the LLRs).")
    cols = ["method", "kind", "subset", "tissue", "n", "n_pos", "auroc", "ci_low", "ci_high",
            "fold_auroc_mean", "fold_auroc_sd", "cv_auroc"]
    table = table.reindex(columns=cols)
    table.to_csv(out / "variants_results.csv", index=False)
    overall = table[table["tissue"] == "all"].drop(columns="tissue")
    per_tissue = table[table["tissue"] != "all"]
    plot = plot_roc_curves(curves, out, "causal variants")
    report = write_table_report(
        "Causal-variant benchmark",
        {"AUROC (95% CI: cluster bootstrap over variants; learned methods: ensemble of the fold models, "
         "fold mean +- SD beside it)": overall, "AUROC per tissue": per_tissue,
         "The paper's test AUROCs (quoted from the publication, not recomputed here)": PAPER,
         "Inputs": pd.DataFrame({"input": provenance})},
        [plot] if plot else [], out,
        {"test chromosomes": ",".join(o.test_chroms), "bootstrap": o.n_boot, "seed": o.seed,
         "zero-shot": "-LLR ranks a variant as causal when alt is less likely than ref; |LLR| ignores the sign"})
    return {"report": str(report), "table": overall}
