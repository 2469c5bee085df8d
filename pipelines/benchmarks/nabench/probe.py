"""Probe sweeps: embedding shards with labels -> Ray Tune trials (``analysis/probe_trials.py``) -> report."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import MISSING, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ray
from ray import tune

from glmscore.analysis.fitness import aggregate
from glmscore.analysis.probe_trials import AssayArrays, probe_trial, trial_grid
from glmscore.analysis.probes import FEWSHOT_K, FOLD_METRICS, PROBES
from glmscore.analysis.published_probes import PAPER_SEED, SOURCE
from glmscore.analysis.report import write_table_report
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import Options, address_option, comma_list, option, out_option, seed_option
from glmscore.pipelines import store
from glmscore.pipelines.benchmarks.nabench.folds import fold_files_for, join_folds, occurrence
from glmscore.pipelines.benchmarks.nabench.source import family_list, positions
from glmscore.pipelines.ray_session import ray_address, start_ray
from glmscore.pipelines.shards import datasets_of, read_manifest, read_table
from glmscore.pipelines.trials import fetch, run_trials

SETTINGS = ("fewshot", "supervised", "transfer")
PROTOCOLS = ("glmscore", "paper")
WILDTYPE = ("keep", "drop", "published")


def _probe_names() -> list[str]:
    return list(PROBES)


@dataclass(frozen=True)
class ProbeConfig(Options):
    embeddings: str = option(MISSING, help="an embedding folder written by `glmscore embed`")
    setting: str = option(MISSING, choices=SETTINGS,
                          help="NABench: few-shot k in {5, 20, 50, 100}, supervised 5-fold CV, or transfer "
                               "(leave one assay out within a family); variants: chromosome-held-out AUROC")
    out: str = out_option("report folder")
    probes: list[str] | None = option(None, parse=comma_list, choices=_probe_names,
                                      help="comma-separated: ridge, mlp, logistic (default: ridge,mlp; variants: mlp,logistic)")
    protocol: str = option("glmscore", choices=PROTOCOLS,
                           help="fewshot/supervised: glmscore (standardised features, inner-CV grids, mean over "
                                "folds) or paper (the published NABench scripts: ridge on unscaled features, "
                                "np.random.seed(42) draws, KFold(5, shuffle, 42) + RidgeCV, pooled out-of-fold Spearman)")
    fold_metric: str = option("pooled", choices=list(FOLD_METRICS),
                              help="supervised (glmscore protocol): pooled = one Spearman over a scheme's out-of-fold "
                                   "predictions (ProteinGym's rule), mean = the mean of the folds' Spearman")
    folds: str | None = option(None, help="supervised: distributed folds instead of generated ones: a fold CSV, or a "
                                          "folder of <DMS_ID>.csv, with mutant + fold_* columns (fold_random_5, "
                                          "fold_modulo_5, fold_contiguous_5: each present one is a scheme), joined by mutant")
    wildtype: str | None = option(None, choices=WILDTYPE,
                                  help="keep or drop the wild-type rows (empty mutant) before any split; published: as "
                                       "the NABench scripts (compute_fitness.py drops it for few-shot and random folds, "
                                       "run_contiguous.py keeps it; default under --protocol paper, else keep)")
    repeats: int = option(5, minimum=1, help="few-shot repeats per k")
    k: list[int] | None = option(None, parse=lambda text: [int(v) for v in comma_list(text)],
                                 help="few-shot: comma-separated training-set sizes (default 5,20,50,100; the published "
                                      "runs use 50, and up to 300 with --repeats 10-20)")
    seed: int = seed_option("seed of splits and fits (under --protocol paper the published split seeds are used "
                               "and this seeds only the bootstrap)")
    transfer_from: list[str] | None = option(None, parse=family_list, help="transfer: train on these families ...")
    transfer_to: list[str] | None = option(None, parse=family_list, help="transfer: ... and predict each assay of these")
    address: str | None = address_option()
    dry_run: bool = option(False, help="say what would run (assays, rows, trials, resources, trials reused from an "
                                       "interrupted run) and stop: nothing is started or written")


def load_embeddings(emb_dir, wildtype: str = "keep", keys: dict | None = None, put=None) -> tuple[str, dict]:
    """Per-assay arrays from an embedding folder (each assay read on its own: one-hot widths differ).

    Rows are in assay-file order (``pair_index``); rows without a label are left out, and with
    ``wildtype="drop"`` the wild type too (an empty ``mutant``). ``keys``, if given, receives per assay
    the kept rows' mutants and occurrence numbers (to join distributed folds). ``put`` (``ray.put``):
    each assay's embeddings go to the object store as soon as they are read, and only the reference
    stays here, so the driver's memory is bound by the largest assay, not by all of them.
    """


    data, model = {}, None
    for name in datasets_of(emb_dir):
        folder = store.join(emb_dir, f"dataset={name}")
        t = read_table(emb_dir, datasets=[name])
        if "embedding" not in t.column_names or "label" not in t.column_names:
            raise GlmscoreError(f"{folder} holds no NABench embeddings with labels.")
        frame = t.select(["pair_index", "label", "mutant", "model", "group"]).to_pandas()
        X = np.asarray(t.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(t.num_rows, -1)
        del t
        order = np.argsort(frame["pair_index"].to_numpy())
        frame = frame.iloc[order].reset_index(drop=True)
        keep = ~frame["label"].isna().to_numpy()
        mutants = frame["mutant"].fillna("").astype(str).str.strip()
        if wildtype == "drop":
            keep &= (mutants != "").to_numpy()
        if keys is not None:
            keys[name] = (mutants[keep].tolist(), occurrence(mutants)[keep])
        model = frame["model"].iloc[0]
        X = X[order[keep]]  # one copy: sorted and cut together
        digest = ""
        if put is not None:
            digest = hashlib.blake2b(X.tobytes(), digest_size=16).hexdigest() + str(X.shape)
            X = put(X)
        data[name] = AssayArrays(
            X=X, x_digest=digest, y=frame["label"].to_numpy()[keep],
            positions=[positions(m) for m in frame["mutant"][keep]], family=frame["group"].iloc[0],
            wildtype=(mutants == "").to_numpy()[keep])
    if not data:
        raise GlmscoreError(f"{emb_dir} has no dataset=<assay> folders.")
    return model, data


def wildtype_rule(cfg: ProbeConfig) -> str:
    """``--wildtype`` as given, else ``published`` under --protocol paper and ``keep`` otherwise."""
    return cfg.wildtype or ("published" if cfg.protocol == "paper" else "keep")


def drops_wildtype(rule: str, setting: str, split) -> bool:
    """Whether a trial fits without the wild-type row: ``published`` drops it where compute_fitness.py
    does (few-shot, random folds, and fold files, which take the random folds' rule) and keeps it in
    contiguous folds, as run_contiguous.py does."""
    if rule != "published":
        return rule == "drop"
    return not (setting == "supervised" and split == "contiguous")


def check_protocol(cfg: ProbeConfig) -> None:
    """Refuse combinations that have no meaning, each in one sentence, before anything is read."""
    if cfg.protocol == "paper" and cfg.setting not in ("fewshot", "supervised"):
        raise GlmscoreError(f"--protocol paper covers --setting fewshot and supervised only; {cfg.setting} has no "
                            "published NABench rule here, so run it with --protocol glmscore.")
    if cfg.protocol == "paper" and cfg.probes and set(cfg.probes) != {"ridge"}:
        others = sorted(set(cfg.probes) - {"ridge"})
        raise GlmscoreError(f"--protocol paper fits the published ridge only, not {', '.join(others)}; leave out "
                            "--probes or use --protocol glmscore.")
    if cfg.k is not None and (cfg.setting != "fewshot" or any(k < 1 for k in cfg.k)):
        raise GlmscoreError("--k gives few-shot training-set sizes (each at least 1) and applies to --setting fewshot only.")
    if cfg.folds is not None and cfg.setting != "supervised":
        raise GlmscoreError(f"--folds gives supervised cross-validation folds and does not apply to --setting {cfg.setting}.")


def attach_folds(data: dict, keys: dict, folds: str) -> None:
    """Distributed fold columns of each assay (``--folds``) into its ``AssayArrays``."""
    for assay, path in fold_files_for(Path(folds), sorted(data)).items():
        mutants, occ = keys[assay]
        data[assay].folds = join_folds(assay, mutants, occ, path)
        data[assay].fold_source = str(path.resolve())


def run_probes(cfg: ProbeConfig) -> dict:

    check_protocol(cfg)
    paper = cfg.protocol == "paper"
    setting, seed, repeats, out = cfg.setting, cfg.seed, cfg.repeats, cfg.out
    probes = cfg.probes or (["ridge"] if paper else ["ridge", "mlp"])
    keys: dict = {}
    rule = wildtype_rule(cfg)
    # "published" decides per trial, so the rows keep the wild type here and each trial drops it or not
    if not cfg.dry_run:  # Ray first: each assay's embeddings go to its object store as they are read
        start_ray(ray_address(cfg.address), Path(cfg.out), command="probe")
    model, data = load_embeddings(cfg.embeddings, wildtype="drop" if rule == "drop" else "keep", keys=keys,
                                  put=None if cfg.dry_run else ray.put)
    if cfg.folds is not None:
        attach_folds(data, keys, cfg.folds)
    folds_label = str(Path(cfg.folds).resolve()) if cfg.folds is not None else "generated"
    grid = trial_grid(data, setting, probes, seed=seed, repeats=repeats, transfer_from=cfg.transfer_from,
                      transfer_to=cfg.transfer_to, protocol=cfg.protocol, ks=tuple(cfg.k or FEWSHOT_K),
                      fold_metric=cfg.fold_metric)
    if rule == "published":
        for trial in grid:
            trial["drop_wildtype"] = drops_wildtype(rule, trial["setting"], trial["split"])
    if not grid:
        raise GlmscoreError(f"no {setting} trial fits these embeddings (few-shot k must be below an assay's rows).")

    out_dir = Path(out)
    if cfg.dry_run:
        rows = sum(len(a.y) for a in data.values())
        dims = sorted({a.X.shape[1] for a in data.values()})
        head = (f"dry run: probe {setting} ({cfg.protocol} protocol) on {model} embeddings from {cfg.embeddings} into "
                f"{out_dir.resolve()}; nothing is started or written\n"
                f"  assays: {len(data)} ({rows:,} rows, {'/'.join(map(str, dims))}-dim embeddings); probes {','.join(probes)}; "
                f"wild type: {rule}; folds: {folds_label}")
        return {"dry_run": head + "\n" + run_probe_trials(data, grid, out_dir / "tune", name=setting, dry_run_on=ray_address(cfg.address))}
    out_dir.mkdir(parents=True, exist_ok=True)

    trials = run_probe_trials(data, grid, out_dir / "tune", name=f"{setting}")
    trials.insert(0, "model", model)
    per = trials.assign(split=trials["split"].astype(str))
    metrics = ["metric"] + [m for m in ("metric_std", "mse") if m in per.columns]
    if setting == "supervised" and per["split"].nunique() > 1:
        # ProteinGym's headline: each assay's mean over its fold schemes, then the usual aggregation
        average = (per.groupby(["model", "assay", "family", "setting", "probe"], as_index=False)[metrics].mean()
                   .assign(split="average"))
        per = pd.concat([per, average], ignore_index=True)
    with warnings.catch_warnings():
        # metric_std is NaN for pooled out-of-fold trials: its mean over them is an empty slice, and NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        families, summary = aggregate(per, metrics=metrics, by=("model", "setting", "probe", "split"), seed=seed)
    # metric_std is a spread already; a bootstrap SE of its mean would only add noise to the tables
    families, summary = (t.drop(columns=["metric_std_se"], errors="ignore") for t in (families, summary))
    natural = lambda s: s.map(lambda v: (0, int(v), "") if str(v).isdigit() else (1, 0, str(v)))  # noqa: E731
    families = families.sort_values(["probe", "split", "family"], key=natural).reset_index(drop=True)
    summary = summary.sort_values(["probe", "split"], key=natural).reset_index(drop=True)
    tables = []
    for table in (summary, families, trials):
        # say which metric each number is, and call the few-shot split what it is: the k training rows
        table.insert(table.columns.get_loc("probe") + 1, "metric_name",
                     np.where(table["probe"] == "logistic", "auc", "spearman"))
        # and which rules, folds and rows produced it
        at = table.columns.get_loc("setting") + 1
        table.insert(at, "protocol", cfg.protocol)
        table.insert(at + 1, "folds", table["assay"].map(lambda a: data[a].fold_source) if "assay" in table.columns
                     else folds_label)
        table.insert(at + 2, "wildtype", table["split"].map(
            lambda split: ("drop" if drops_wildtype(rule, setting, split) else "keep") if rule == "published" else rule)
            if "split" in table.columns else rule)
        tables.append(table.rename(columns={"split": "k"}) if setting == "fewshot" else table)
    summary, families, trials = tables
    trials.to_csv(out_dir / "probe_trials.csv", index=False)
    families.to_csv(out_dir / "probe_families.csv", index=False)
    summary.to_csv(out_dir / "probe_summary.csv", index=False)
    manifest = read_manifest(cfg.embeddings)
    provenance = pd.DataFrame([{"model": model, "embeddings": str(store.absolute(cfg.embeddings)),
                                "card": manifest["model_card"].get("hf_id") or manifest["model_card"]["id"],
                                "revision": manifest.get("resolved_revision"),
                                "pooling": manifest.get("config", {}).get("resolved_pooling") or manifest.get("config", {}).get("pooling"),
                                "layer": manifest.get("config", {}).get("layer"), "finished": manifest.get("finished")}])
    settings = {"setting": setting, "protocol": cfg.protocol, "folds": folds_label,
                "wildtype": rule + (" (dropped for few-shot and random folds, kept for contiguous folds)" if rule == "published" else ""),
                "probes": ",".join(probes), "seed": seed, "repeats": repeats}
    if paper:
        settings |= {"metric": "Spearman (few-shot: mean over repeats and metric_std their SD with ddof 0; supervised "
                               "random and fold-file folds: one Spearman of the pooled out-of-fold predictions; "
                               "contiguous: mean over folds and metric_std their SD; families and summary: means of both)",
                     "split seeds": f"published ({PAPER_SEED}; contiguous truncation 0; --seed seeds only the bootstrap)",
                     "rules": SOURCE}
    elif setting == "supervised":
        settings["metric"] = (f"Spearman (AUC for logistic): {cfg.fold_metric} over each scheme's folds (pooled: one value "
                              "over the pooled out-of-fold predictions, ProteinGym's rule; the trials table has both); "
                              "mse: pooled normalised MSE; split 'average': each assay's mean over its schemes (the headline)")
    else:
        settings["metric"] = "Spearman (AUC for logistic)"
    report = write_table_report(f"NABench {setting} probes", {"Summary": summary, "Families": families,
                                                              "Trials": trials, "Provenance": provenance}, [], out_dir,
                                settings)
    return {"report": str(report), "summary": summary}


def _assays_trial(config: dict, data: dict) -> dict:
    """``probe_trial`` on the assays it reads, fetched from the object store (``run_trials(by_item=...)``)."""
    c = config["trial"]
    return probe_trial(config, fetch(data, (c["assay"], *c.get("train_assays", ()))))


def run_probe_trials(data: dict[str, AssayArrays], grid: list[dict], storage: Path, name: str = "probes",
              cpus_per_trial: float = 1.0, dry_run_on: str | None = None) -> pd.DataFrame | str:
    """One Ray Tune trial per grid entry (``analysis/probe_trials.py``: ``probe_trial``); each assay's arrays
    go to the object store once, and a trial fetches only the assays it reads. Returns one row per trial
    (``dry_run_on``, a Ray address: what would run there, as text)."""
    results = run_trials(_assays_trial, {"trial": tune.grid_search(grid)}, storage=storage, name=name,
                         resources={"cpu": cpus_per_trial}, n_trials=len(grid), data=data, by_item=("data",),
                         dry_run_on=dry_run_on)
    if dry_run_on is not None:
        return results
    rows = [r.metrics for r in results]
    keep = ["assay", "family", "setting", "probe", "split", "metric"] + [
        k for k in ("metric_std", "pooled", "fold_mean", "mse") if any(k in r for r in rows)] + ["n_splits"] + (
        ["n_skipped"] if any("n_skipped" in r for r in rows) else []) + (
        ["train_assays"] if any("train_assays" in r for r in rows) else [])
    return pd.DataFrame([{k: r.get(k) for k in keep} for r in rows]).sort_values(["assay", "probe", "split"],
                                                                                 key=lambda s: s.astype(str))
