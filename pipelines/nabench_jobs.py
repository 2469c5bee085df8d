"""NABench glue between shards and analysis: zero-shot report and probe sweeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from models.errors import GlmscoreError
from pipelines.nabench import positions
from pipelines.shards import MANIFEST, PARTITIONING, read_scores


def analyze_nabench(score_dirs: list[str], out: str, *, cutoff: float | None = None, n_boot: int = 1000,
                    seed: int = 0) -> dict:
    from analysis.fitness import aggregate, zero_shot_table
    from analysis.report import plot_best_worst, plot_family_bars, write_table_report

    frames = [read_scores(Path(d), columns=["model", "dataset", "group", "label", "score", "is_wildtype"])
              for d in score_dirs]
    scores = pd.concat(frames, ignore_index=True)
    if scores["label"].isna().all():
        raise GlmscoreError("the score folders hold no NABench labels; score with --benchmark nabench.")
    assays = zero_shot_table(scores, cutoff)
    families, summary = aggregate(assays, n_boot=n_boot, seed=seed)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    assays.to_csv(out_dir / "nabench_assays.csv", index=False)
    families.to_csv(out_dir / "nabench_families.csv", index=False)
    summary.to_csv(out_dir / "nabench_summary.csv", index=False)
    plots = [plot_family_bars(families, out_dir)] + plot_best_worst(scores, assays, out_dir)
    report = write_table_report(
        "NABench zero-shot report", {"Summary (unweighted mean over families)": summary, "Families": families,
                                     "Assays": assays}, plots, out_dir,
        {"cutoff": "median" if cutoff is None else cutoff, "bootstrap": n_boot, "seed": seed})
    return {"report": str(report), "summary": summary}


def load_embeddings(emb_dir: Path) -> tuple[str, dict]:
    """Per-assay arrays from an embedding folder (each assay read on its own: one-hot widths differ)."""
    from analysis.sweep import AssayArrays

    emb_dir = Path(emb_dir)
    if not (emb_dir / MANIFEST).exists():
        raise GlmscoreError(f"{emb_dir} is not a finished embedding folder (no {MANIFEST}); run `glmscore embed` first.")
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


def run_probes(emb_dir: str, setting: str, out: str, *, probes: list[str], seed: int = 0, repeats: int = 5,
               address: str | None = None) -> dict:
    import ray

    from analysis.fitness import aggregate
    from analysis.probes import PROBES
    from analysis.report import write_table_report
    from analysis.sweep import run_sweep, trial_grid

    if setting not in ("fewshot", "supervised"):
        raise GlmscoreError(f"--setting must be fewshot or supervised, not {setting!r}.")
    bad = [p for p in probes if p not in PROBES]
    if bad:
        raise GlmscoreError(f"unknown probe(s) {', '.join(bad)}: choose from {', '.join(PROBES)}.")
    model, data = load_embeddings(Path(emb_dir))
    grid = trial_grid(data, setting, probes, seed=seed, repeats=repeats)
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = run_sweep(data, grid, out_dir / "tune", name=f"{setting}")
    trials.insert(0, "model", model)
    trials.to_csv(out_dir / "probe_trials.csv", index=False)
    per = trials.assign(split=trials["split"].astype(str))
    families, summary = aggregate(per, metrics=["metric"], by=("model", "setting", "probe", "split"), seed=seed)
    natural = lambda s: s.map(lambda v: (0, int(v), "") if str(v).isdigit() else (1, 0, str(v)))  # noqa: E731
    families = families.sort_values(["probe", "split", "family"], key=natural).reset_index(drop=True)
    summary = summary.sort_values(["probe", "split"], key=natural).reset_index(drop=True)
    families.to_csv(out_dir / "probe_families.csv", index=False)
    summary.to_csv(out_dir / "probe_summary.csv", index=False)
    report = write_table_report(f"NABench {setting} probes", {"Summary": summary, "Families": families,
                                                              "Trials": trials}, [], out_dir,
                                {"setting": setting, "probes": ",".join(probes), "seed": seed, "repeats": repeats,
                                 "metric": "Spearman (AUC for logistic)"})
    return {"report": str(report), "summary": summary}
