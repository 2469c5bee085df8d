"""Probe sweeps: embedding shards with labels -> Ray Tune trials (``analysis/sweep.py``) -> report."""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from models.errors import GlmscoreError
from models.options import Options, comma_list, option
from pipelines.benchmarks.nabench import family_list, positions
from pipelines.shards import PARTITIONING, read_manifest

SETTINGS = ("fewshot", "supervised", "transfer", "variants")


def _probe_names() -> list[str]:
    from analysis.probes import PROBES

    return list(PROBES)


@dataclass(frozen=True)
class ProbeConfig(Options):
    embeddings: str = option(MISSING, help="an embedding folder written by `glmscore embed`")
    setting: str = option(MISSING, choices=SETTINGS,
                          help="NABench: few-shot k in {5, 20, 50, 100}, supervised 5-fold CV, or transfer "
                               "(leave one assay out within a family); variants: chromosome-held-out AUROC")
    out: str = option(MISSING, help="report folder")
    probes: list[str] | None = option(None, parse=comma_list, choices=_probe_names,
                                      help="comma-separated: ridge, mlp, logistic (default: ridge,mlp; variants: mlp,logistic)")
    repeats: int = option(5, minimum=1, help="few-shot repeats per k")
    seed: int = option(0, help="seed of splits and fits")
    test_chroms: list[str] = option(["chr9", "chr10"], parse=comma_list, help="variants: test chromosomes")
    folds: int = option(5, minimum=2, help="variants: CV folds grouped by chromosome on the other chromosomes")
    transfer_from: list[str] | None = option(None, parse=family_list, help="transfer: train on these families ...")
    transfer_to: list[str] | None = option(None, parse=family_list, help="transfer: ... and predict each assay of these")
    shuffle_labels: bool = option(False, help="variants: the control, labels permuted across rows (expect AUROC near 0.5)")
    address: str | None = option(None, help="Ray address")


def load_embeddings(emb_dir: Path) -> tuple[str, dict]:
    """Per-assay arrays from an embedding folder (each assay read on its own: one-hot widths differ)."""
    from analysis.sweep import AssayArrays

    emb_dir = Path(emb_dir)
    read_manifest(emb_dir)
    data, model = {}, None
    for folder in sorted(emb_dir.glob("dataset=*")):
        t = pads.dataset(folder, format="parquet", partitioning=PARTITIONING, ignore_prefixes=[".", "_"]).to_table()
        if "embedding" not in t.column_names or "label" not in t.column_names:
            raise GlmscoreError(f"{folder} holds no NABench embeddings with labels.")
        frame = t.select(["pair_index", "label", "mutant", "model", "group"]).to_pandas()
        X = np.asarray(t.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(t.num_rows, -1)
        order = np.argsort(frame["pair_index"].to_numpy())
        frame, X = frame.iloc[order].reset_index(drop=True), X[order]
        keep = ~frame["label"].isna().to_numpy()
        model = frame["model"].iloc[0]
        data[folder.name.split("=", 1)[1]] = AssayArrays(
            X=X[keep], y=frame["label"].to_numpy()[keep],
            positions=[positions(m) for m in frame["mutant"][keep]], family=frame["group"].iloc[0])
    if not data:
        raise GlmscoreError(f"{emb_dir} has no dataset=<assay> folders.")
    return model, data


def run_probes(cfg: ProbeConfig) -> dict:

    from analysis.fitness import aggregate
    from analysis.report import write_table_report
    from analysis.sweep import run_sweep, trial_grid

    if cfg.setting == "variants":
        from pipelines.variant_learning import run_variant_probes

        return run_variant_probes(cfg)
    setting, probes, seed, repeats, out = cfg.setting, cfg.probes or ["ridge", "mlp"], cfg.seed, cfg.repeats, cfg.out
    model, data = load_embeddings(Path(cfg.embeddings))
    grid = trial_grid(data, setting, probes, seed=seed, repeats=repeats, transfer_from=cfg.transfer_from,
                      transfer_to=cfg.transfer_to)
    from pipelines.score import ray_address, start_ray

    start_ray(ray_address(cfg.address), Path(cfg.out))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from pipelines.console import trial_progress

    trials = run_sweep(data, grid, out_dir / "tune", name=f"{setting}", callbacks=[trial_progress(len(grid))])
    trials.insert(0, "model", model)
    per = trials.assign(split=trials["split"].astype(str))
    families, summary = aggregate(per, metrics=["metric"], by=("model", "setting", "probe", "split"), seed=seed)
    natural = lambda s: s.map(lambda v: (0, int(v), "") if str(v).isdigit() else (1, 0, str(v)))  # noqa: E731
    families = families.sort_values(["probe", "split", "family"], key=natural).reset_index(drop=True)
    summary = summary.sort_values(["probe", "split"], key=natural).reset_index(drop=True)
    tables = []
    for table in (summary, families, trials):
        # say which metric each number is, and call the few-shot split what it is: the k training rows
        table.insert(table.columns.get_loc("probe") + 1, "metric_name",
                     np.where(table["probe"] == "logistic", "auc", "spearman"))
        tables.append(table.rename(columns={"split": "k"}) if setting == "fewshot" else table)
    summary, families, trials = tables
    trials.to_csv(out_dir / "probe_trials.csv", index=False)
    families.to_csv(out_dir / "probe_families.csv", index=False)
    summary.to_csv(out_dir / "probe_summary.csv", index=False)
    manifest = read_manifest(Path(cfg.embeddings))
    provenance = pd.DataFrame([{"model": model, "embeddings": str(Path(cfg.embeddings).resolve()),
                                "card": manifest["model_card"].get("hf_id") or manifest["model_card"]["id"],
                                "revision": manifest.get("resolved_revision"),
                                "pooling": manifest.get("config", {}).get("resolved_pooling") or manifest.get("config", {}).get("pooling"),
                                "layer": manifest.get("config", {}).get("layer"), "finished": manifest.get("finished")}])
    report = write_table_report(f"NABench {setting} probes", {"Summary": summary, "Families": families,
                                                              "Trials": trials, "Provenance": provenance}, [], out_dir,
                                {"setting": setting, "probes": ",".join(probes), "seed": seed, "repeats": repeats,
                                 "metric": "Spearman (AUC for logistic)"})
    return {"report": str(report), "summary": summary}
