"""Learned predictors of the causal-variant benchmark, trained in Ray Tune trials: probes on embeddings
(``glmscore probe --setting variants``) and the one-hot CNN (``glmscore baseline cnn``).

One trial per (method, fold): fold model f trains on the other training folds, stops early on fold f
(training chromosomes only) and predicts fold f (``val``) and the test chromosomes (``test``). The data
go to the object store once (``tune.with_parameters``); each trial hands its predictions back as a Tune
checkpoint (so they reach the driver from any node of a cluster). Every output folder gets
``predictions.parquet`` (one row per method x fold x split x site x tissue), ``summary.csv``,
``per_tissue.csv``, ``report.md`` and ``run.json``; ``glmscore analyze variants`` reads them.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from ray import tune
from sklearn.exceptions import ConvergenceWarning

from glmscore.analysis.report import write_table_report
from glmscore.analysis.variants import (
    VARIANT_PROBES,
    check_no_leak,
    chromosome_folds,
    fit_variant_probe,
    labelled_rows,
    summarise_predictions,
    tissue_onehot,
    variant_features,
)
from glmscore.models.alphabet import codes
from glmscore.models.cnn import CNNTrainConfig, predict_cnn, train_cnn
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import Options, address_option, comma_list, option, out_option, seed_option, test_chroms_option
from glmscore.pipelines.benchmarks.variants.report import PREDICTIONS
from glmscore.pipelines.benchmarks.variants.source import Variants, read_build
from glmscore.pipelines.ray_session import ray_address, start_ray
from glmscore.pipelines.shards import datasets_of, read_table
from glmscore.pipelines.trials import run_trials


@dataclass
class VariantRows:
    """Labelled rows (site x tissue) with their split: ``fold`` -1 = test chromosomes."""
    rows: pd.DataFrame  # site_index, variant_id, chrom, tissue, label, fold, site_row (index into per-site arrays)
    tissues: list[str]


def split_rows(sites: pd.DataFrame, test_chroms, n_folds: int, shuffle_labels: bool, seed: int) -> VariantRows:
    """Explode the sites' label lists into rows, assign chromosome folds, assert that nothing leaks."""
    sites = sites.assign(site_row=np.arange(len(sites)))
    rows = labelled_rows(sites)
    if rows.empty:
        raise GlmscoreError("these windows carry no labels; learned predictors need a labelled variant list.")
    if rows["label"].nunique() < 2:
        raise GlmscoreError("every labelled row has the same label; AUROC needs positives and negatives.")
    if shuffle_labels:  # the control: the same rows and splits, labels permuted across sites
        perm = np.random.default_rng([seed, 7]).permutation(len(rows))
        rows["label"] = rows["label"].to_numpy()[perm]
    rows["fold"] = chromosome_folds(rows["chrom"].to_numpy(), test_chroms, n_folds)
    check_no_leak(rows["site_index"].to_numpy(), rows["chrom"].to_numpy(), rows["fold"].to_numpy())
    return VariantRows(rows.reset_index(drop=True), sorted(rows["tissue"].unique()))


def _predictions(data: VariantRows, method: str, fold: int, predict) -> pd.DataFrame:
    r = data.rows
    parts = []
    for split, mask in (("val", r["fold"] == fold), ("test", r["fold"] == -1)):
        idx = np.flatnonzero(mask.to_numpy())
        parts.append(r.iloc[idx][["site_index", "variant_id", "chrom", "tissue", "label"]].assign(
            method=method, fold=fold, split=split, prob=predict(idx)))
    return pd.concat(parts, ignore_index=True)


def _report(pred: pd.DataFrame) -> None:
    from ray import tune  # in here: runs inside a Ray Train/Tune worker, which imports what it needs itself

    with tempfile.TemporaryDirectory() as tmp:
        pred.to_parquet(Path(tmp) / PREDICTIONS, index=False)
        tune.report({"rows": len(pred)}, checkpoint=tune.Checkpoint.from_directory(tmp))


def _probe_trial(config: dict, data: VariantRows, X: np.ndarray) -> None:

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    fold, probe = config["fold"], config["method"]
    r = data.rows
    train = np.flatnonzero(((r["fold"] >= 0) & (r["fold"] != fold)).to_numpy())
    val = np.flatnonzero((r["fold"] == fold).to_numpy())
    predict = fit_variant_probe(probe, X, r["label"].to_numpy(), train, val, seed=config["seed"])
    _report(_predictions(data, probe, fold, predict))


def _cnn_trial(config: dict, data: VariantRows, ref: np.ndarray, alt: np.ndarray) -> None:
    import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it


    fold = config["fold"]
    r = data.rows
    train = np.flatnonzero(((r["fold"] >= 0) & (r["fold"] != fold)).to_numpy())
    val = np.flatnonzero((r["fold"] == fold).to_numpy())
    site, tissue = r["site_row"].to_numpy(), np.searchsorted(data.tissues, r["tissue"].to_numpy())
    device = "cuda" if config["gpus"] > 0 and torch.cuda.is_available() else "cpu"
    cfg = CNNTrainConfig(**config["train"], threads=max(1, int(config["cpus"])), device=device)
    torch.set_num_threads(cfg.threads)
    model, history = train_cnn(ref[site], alt[site], tissue, r["label"].to_numpy(), train, val, len(data.tissues), cfg)
    _report(_predictions(data, "cnn", fold, lambda idx: predict_cnn(model, ref[site], alt[site], tissue, idx)))


def fold_trials(trainable, methods: list[str], n_folds: int, seed: int, storage: Path, name: str, resources: dict,
                extra: dict | None = None, dry_run_on: str | None = None, **data) -> pd.DataFrame | str:
    """One Ray Tune trial per (method, fold); returns all trials' predictions (``dry_run_on``, a Ray address: what would run there)."""
    space = {"method": tune.grid_search(methods), "fold": tune.grid_search(list(range(n_folds))),
             "seed": seed, "cpus": resources.get("cpu", 1), "gpus": resources.get("gpu", 0), **(extra or {})}
    results = run_trials(trainable, space, storage=storage, name=name, resources=resources,
                         n_trials=len(methods) * n_folds, dry_run_on=dry_run_on, **data)
    if dry_run_on is not None:
        return results
    frames = []
    for result in results:
        with result.checkpoint.as_directory() as d:
            frames.append(pd.read_parquet(Path(d) / PREDICTIONS))
    return pd.concat(frames, ignore_index=True).sort_values(["method", "fold", "split", "site_index", "tissue"],
                                                           ignore_index=True)


def write_results(out: Path, pred: pd.DataFrame, title: str, settings: dict, *, n_boot: int = 1000) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summary, tissues = summarise_predictions(pred, n_boot=n_boot, seed=settings.get("seed", 0))
    pred.to_parquet(out / PREDICTIONS, index=False)
    summary.to_csv(out / "summary.csv", index=False)
    tissues.to_csv(out / "per_tissue.csv", index=False)
    report = write_table_report(title, {"Test AUROC (held-out chromosomes)": summary, "Per tissue (ensemble)": tissues},
                                [], out, settings)
    (out / "run.json").write_text(json.dumps(settings, indent=2, default=str))
    return {"report": str(report), "summary": summary}


# ---------------------------------------------------------------- probes on embeddings


def load_variant_embeddings(emb_dir: Path) -> tuple[str, pd.DataFrame, np.ndarray]:
    """(model, sites, features): one row per site with log|ref - alt| of its two embeddings."""
    emb_dir = Path(emb_dir)
    views = datasets_of(emb_dir)
    if not views:
        raise GlmscoreError(f"{emb_dir} has no dataset=<view> folder.")
    t = read_table(emb_dir, datasets=views[:1])
    if "embedding" not in t.column_names or "variant_id" not in t.column_names:
        raise GlmscoreError(f"{emb_dir} holds no causal-variant embeddings (run `glmscore embed --benchmark variants`).")
    frame = t.drop_columns(["embedding"]).to_pandas()
    X = np.asarray(t.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(t.num_rows, -1)
    ref, alt = (frame["group"] == "ref").to_numpy(), (frame["group"] == "alt").to_numpy()
    ref_order = np.argsort(frame["pair_index"].to_numpy()[ref])
    alt_order = np.argsort(frame["pair_index"].to_numpy()[alt])
    sites = frame[ref].iloc[ref_order].reset_index(drop=True)
    if not np.array_equal(sites["pair_index"].to_numpy(), frame[alt]["pair_index"].to_numpy()[alt_order]):
        raise GlmscoreError(f"{emb_dir}: the ref and alt embeddings do not pair up; rerun `glmscore embed`.")
    features = variant_features(X[ref][ref_order], X[alt][alt_order])
    sites = sites.rename(columns={"pair_index": "site_index"})
    return str(sites["model"].iloc[0]), sites, features


@dataclass(frozen=True)
class VariantProbeConfig(Options):
    """``glmscore variants probe`` (also ``glmscore probe --setting variants``)."""
    embeddings: str = option(MISSING, help="an embedding folder written by `glmscore embed --benchmark variants`")
    out: str = out_option("report folder")
    setting: str = option("variants", choices=("variants",), help="variants: chromosome-held-out AUROC")
    probes: list[str] | None = option(None, parse=comma_list, choices=lambda: list(VARIANT_PROBES),
                                      help=f"comma-separated (default: {','.join(VARIANT_PROBES)})")
    seed: int = seed_option("seed of splits and fits")
    test_chroms: list[str] = test_chroms_option()
    chrom_folds: int = option(5, minimum=2, help="CV folds grouped by chromosome on the other chromosomes")
    shuffle_labels: bool = option(False, help="the control, labels permuted across rows (expect AUROC near 0.5)")
    address: str | None = address_option()
    dry_run: bool = option(False, help="say what would run (rows, trials, resources, trials reused from an "
                                       "interrupted run) and stop: nothing is started or written")


def run_variant_probes(cfg: VariantProbeConfig) -> dict:
    """Probes on TSS embeddings, one Ray Tune trial per (probe, fold)."""
    probes = cfg.probes or list(VARIANT_PROBES)
    bad = [p for p in probes if p not in VARIANT_PROBES]
    if bad:
        raise GlmscoreError(f"probe(s) {', '.join(bad)} do not classify; the variants setting runs {', '.join(VARIANT_PROBES)}.")
    model, sites, features = load_variant_embeddings(Path(cfg.embeddings))
    data = split_rows(sites, cfg.test_chroms, cfg.chrom_folds, cfg.shuffle_labels, cfg.seed)
    r = data.rows
    X = np.hstack([features[r["site_row"].to_numpy()], tissue_onehot(r["tissue"], data.tissues)])
    out = Path(cfg.out)
    if cfg.dry_run:
        n_test = int((r["fold"] == -1).sum())
        head = (f"dry run: probe variants on {model} embeddings from {cfg.embeddings} into {out.resolve()}; nothing is "
                f"started or written\n  rows: {len(r):,} variant x tissue rows ({n_test:,} on the test chromosomes "
                f"{','.join(cfg.test_chroms)}), {X.shape[1]} features; probes {','.join(probes)} x {cfg.chrom_folds} folds")
        trials = fold_trials(_probe_trial, probes, cfg.chrom_folds, cfg.seed, out / "tune", "variants", {"cpu": 1},
                             dry_run_on=ray_address(cfg.address), data=data, X=X)
        return {"dry_run": f"{head}\n{trials}"}
    start_ray(ray_address(cfg.address), out, command="probe (variants)")
    pred = fold_trials(_probe_trial, probes, cfg.chrom_folds, cfg.seed, out / "tune", "variants", {"cpu": 1}, data=data, X=X)
    pred.insert(0, "model", model)
    settings = {"setting": "variants", "model": model, "embeddings": str(Path(cfg.embeddings).resolve()),
                "probes": ",".join(probes), "test_chroms": ",".join(cfg.test_chroms), "chrom_folds": cfg.chrom_folds,
                "seed": cfg.seed, "shuffle_labels": cfg.shuffle_labels, "features": "log(|ref - alt| + 1e-6) + tissue one-hot"}
    return write_results(out, pred, "Causal-variant probes", settings)


# ---------------------------------------------------------------- the one-hot CNN baseline


@dataclass(frozen=True)
class CNNOptions(Options):
    data: str = option(MISSING, help="a variant-view windows folder (glmscore variants build --view variant)")
    out: str = out_option("output folder")
    filters: list[int] = option([192, 384, 576, 768], parse=lambda s: [int(x) for x in comma_list(s)], help="filters of the 4 blocks")
    kernels: list[int] = option([7, 3, 3, 5], parse=lambda s: [int(x) for x in comma_list(s)], help="kernel sizes of the 4 blocks")
    hidden: list[int] = option([256, 64], parse=lambda s: [int(x) for x in comma_list(s)], help="MLP hidden layers")
    max_epochs: int = option(30, minimum=1, help="epochs at most")
    patience: int = option(4, minimum=1, help="epochs without a better validation AUROC before stopping")
    lr: float = option(1e-3, minimum=0, help="AdamW learning rate")
    batch_size: int = option(64, minimum=1, help="examples per step")
    test_chroms: list[str] = test_chroms_option()
    folds: int = option(5, minimum=2, help="CV folds grouped by chromosome")
    seed: int = seed_option("seed of initialisation and shuffling")
    shuffle_labels: bool = option(False, help="the control: permute labels across rows (expect AUROC near 0.5)")
    cpus_per_trial: int = option(1, minimum=1, help="CPUs (torch threads) per fold trial")
    gpus_per_trial: float = option(0, minimum=0, help="GPUs per fold trial (trains on CUDA when > 0)")
    address: str | None = address_option()

    def __post_init__(self):
        super().__post_init__()
        if len(self.filters) != 4 or len(self.kernels) != 4:
            raise GlmscoreError("--filters and --kernels need 4 values each (one per block).")


def window_codes(data: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(sites, ref codes, alt codes): every site's windows as base codes (A,C,G,T,N = 0..4, int8)."""
    bench = Variants(data)
    units = bench.units(chunk_rows=1 << 30, limit=None, datasets=None)
    sites, arrays = None, {}
    for unit in units:
        rows = bench.read(unit)
        arrays.setdefault(unit.group, []).append(np.stack([codes(s) for s in rows.sequences]).astype(np.int8))
        if unit.group == "ref":
            part = pd.DataFrame({"site_index": rows.pair_index, **rows.extra})
            sites = part if sites is None else pd.concat([sites, part], ignore_index=True)
    return sites, np.concatenate(arrays["ref"]), np.concatenate(arrays["alt"])


def run_cnn(o: CNNOptions) -> dict:
    record, _ = read_build(Path(o.data))
    if record["view"] != "variant":
        raise GlmscoreError("the CNN baseline takes variant-centred windows (variants build --view variant).")
    sites, ref, alt = window_codes(o.data)
    data = split_rows(sites, o.test_chroms, o.folds, o.shuffle_labels, o.seed)
    start_ray(ray_address(o.address), Path(o.out), command="baseline cnn")
    train = {"filters": tuple(o.filters), "kernels": tuple(o.kernels), "hidden": tuple(o.hidden), "lr": o.lr,
             "batch_size": o.batch_size, "max_epochs": o.max_epochs, "patience": o.patience, "seed": o.seed}
    resources = {"cpu": o.cpus_per_trial, "gpu": o.gpus_per_trial}
    out = Path(o.out)
    pred = fold_trials(_cnn_trial, ["cnn"], o.folds, o.seed, out / "tune", "cnn", resources, extra={"train": train},
                      data=data, ref=ref, alt=alt)
    pred.insert(0, "model", "onehot")
    settings = {**{k: v for k, v in asdict(o).items() if k not in ("address",)}, "window": record["window"],
                "windows": str(Path(o.data).resolve())}
    return write_results(out, pred, "Causal-variant one-hot CNN", settings)


BASELINES = {"cnn": (CNNOptions, run_cnn, "train the one-hot CNN (variant-centred) on chromosome folds in Ray Tune trials")}
