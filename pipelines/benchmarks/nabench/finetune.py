"""Fine-tuning a whole gLM on NABench assays: Ray Tune schedules the fits, Ray Train runs each one.

One fit = one (assay, split, fold, hyper-parameters): a ``TorchTrainer`` whose workers (data parallel,
``ScalingConfig(num_workers, use_gpu)``) load the pretrained weights afresh, add a regression head on the
pooled last hidden state (``models/regression.py``) and train with AdamW. Each Tune trial starts one
trainer (Ray Train V2's pattern for Tune over Train), so fits run side by side as the cluster allows.

- Recipe (the published one, as defaults): 3 epochs, learning rate 2e-5, global batch 16 (split across
  workers), AdamW without weight decay, learning rate decaying linearly to 0, gradient norm clipped at 1
  (the Hugging Face ``Trainer`` defaults the published scripts ran with), MSE on labels standardised with the
  training rows' mean and SD. fp32.
- Every fit starts from the pretrained weights. The published scripts build the model once outside the
  fold loop, so their later folds start from weights that have already seen earlier folds' test rows;
  glmscore does not reproduce that. Each fit records a checksum of the weights it started from.
- Folds are the probes' (``analysis/probes.py``): supervised ``random``/``modulo``/``contiguous`` 5-fold,
  few-shot k rows x repeats; transfer is leave-one-assay-out (``analysis/transfer.py``).
- Several values of ``--lr``/``--epochs``/``--head`` make a sweep: every combination is trained on the
  training part minus an inner validation split (``--val-fraction`` of the training rows, never a test
  row) and the one with the best validation Spearman is kept per fold. Its test predictions are reported;
  the others' are kept in the predictions file. Few-shot keeps the fixed recipe (5 rows leave nothing to
  select on).
- Checkpoints: after every epoch, through Ray Train (model, optimiser, schedule, epoch). A fit whose
  workers die restarts from its last epoch (``--max-failures``); a rerun of a killed job restores every
  unfinished fit from its checkpoint (Ray Train restores a run of the same name and storage) and reuses
  finished fits (``fits/<fit>.parquet``) whose fingerprint matches.
- Labels reach a trainer only for its training and validation rows; test rows go as sequences. Metrics are
  computed on the driver: Spearman per test fold, the mean over folds per assay (and the Spearman of the
  pooled out-of-fold predictions), then families and the mean over families with bootstrap SEs
  (``analysis/fitness.aggregate``).

``--out`` must be storage every node of the cluster sees (Ray Train's checkpoints are written there).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import MISSING, asdict, dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray import tune

from glmscore.analysis.fitness import aggregate, spearman
from glmscore.analysis.probes import fewshot_splits, supervised_folds
from glmscore.analysis.report import write_table_report
from glmscore.analysis.transfer import rank_normalise, transfer_tasks
from glmscore.models.base import resolve_card
from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError
from glmscore.models.hf_common import WEIGHT_FILES, config_context, hf_preflight, hf_provenance
from glmscore.models.options import Options, address_option, comma_list, option, out_option, seed_option
from glmscore.models.regression import check_finetunable, load_base, make_regressor, pad_batch, predict, weights_sha256
from glmscore.models.tokenization import TokenPolicy, card_tokenizer
from glmscore.pipelines.benchmarks.nabench.source import discover, family_list, positions, read_assay
from glmscore.pipelines.console import say, warn
from glmscore.pipelines.ray_session import ray_address, start_ray
from glmscore.pipelines.trials import run_trials

SETTINGS = ("supervised", "fewshot", "transfer")
FITS = "fits"
PREDICTIONS = "finetune_predictions.parquet"


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in comma_list(text)]
    except ValueError:
        raise GlmscoreError(f"{text!r} is not a comma-separated list of numbers.") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in comma_list(text)]
    except ValueError:
        raise GlmscoreError(f"{text!r} is not a comma-separated list of whole numbers.") from None


@dataclass(frozen=True)
class FinetuneConfig(Options):
    data: str = option(MISSING, help="NABench data folder (metadata.csv + <DMS_ID>.csv)")
    model: str = option(MISSING, help="a transformers model: card id, hub id or local save_pretrained directory")
    setting: str = option(MISSING, choices=SETTINGS,
                          help="supervised 5-fold CV, few-shot k rows, or transfer (leave one assay out within a family)")
    out: str = out_option("output folder (must be storage every node sees)")
    benchmark: str = option("nabench", choices=("nabench",), help="the benchmark (NABench fitness assays)")
    assays: list[str] | None = option(None, parse=comma_list, help="comma-separated DMS_IDs (default: all)")
    families: list[str] | None = option(None, parse=family_list, help="comma-separated families (case-insensitive RNA_TYPE)")
    limit: int | None = option(None, minimum=1, help="first N rows of each assay only")
    schemes: list[str] = option(["random", "modulo", "contiguous"], parse=comma_list,
                                choices=("random", "modulo", "contiguous"),
                                help="supervised fold schemes (multi-mutant assays: random only)")
    ks: list[int] = option([5, 20, 50, 100], parse=_ints, help="few-shot training rows")
    repeats: int = option(5, minimum=1, help="few-shot repeats per k")
    transfer_from: list[str] | None = option(None, parse=family_list, help="transfer: train on these families ...")
    transfer_to: list[str] | None = option(None, parse=family_list, help="transfer: ... and predict each assay of these")
    pooling: str = option("mean", choices=("mean", "cls", "last", "cls+mean"), help="pooling of the last hidden state")
    head: list[str] = option(["linear"], parse=comma_list, choices=("linear", "mlp"), help="regression head(s)")
    lr: list[float] = option([2e-5], parse=_floats, help="AdamW learning rate(s)")
    epochs: list[int] = option([3], parse=_ints, help="epochs")
    batch_size: int = option(16, minimum=1, help="global batch size (split across workers)")
    val_fraction: float = option(0.1, minimum=0.01, maximum=0.5, help="sweeps: inner validation share of the training rows")
    long: str = option("error", choices=("error", "truncate"), help="sequences longer than the context: error or truncate")
    shuffle_labels: bool = option(False, help="the control: labels permuted within each assay (expect Spearman near 0)")
    seed: int = seed_option("seed of folds, head initialisation and batch order")
    workers: int = option(1, minimum=1, affects_result=False, help="Ray Train workers per fit (data parallel)")
    cpus_per_worker: float = option(1.0, minimum=0.1, affects_result=False, help="CPUs per Ray Train worker")
    use_gpu: bool = option(False, affects_result=False, help="one GPU per Ray Train worker")
    max_failures: int = option(2, minimum=0, affects_result=False, help="restarts of a fit from its checkpoint after a worker dies")
    trust_remote_code: bool = option(False, help="allow the model's own code from the hub (off by default)")
    address: str | None = address_option()

    def __post_init__(self):
        super().__post_init__()
        if not self.head or not self.lr or not self.epochs:
            raise GlmscoreError("--head, --lr and --epochs each need at least one value.")
        if min(self.lr) <= 0 or min(self.epochs) < 1 or (self.ks and min(self.ks) < 1):
            raise GlmscoreError("--lr must be positive, --epochs and --ks at least 1.")
        if self.setting == "fewshot" and self.sweep:
            raise GlmscoreError("few-shot fine-tuning keeps one recipe: k rows leave nothing to select "
                                "hyper-parameters on; give one value of --lr, --epochs and --head.")

    @property
    def sweep(self) -> bool:
        return len(self.head) * len(self.lr) * len(self.epochs) > 1


@dataclass
class Table:
    """Every labelled row of the selected assays, encoded once on the driver. Labels stay here: a fit
    is given labels only for its training and validation rows."""

    assay: np.ndarray
    family: np.ndarray
    pair_index: np.ndarray
    mutant: list[str]
    label: np.ndarray
    ids: list[np.ndarray]
    real: list[np.ndarray]
    data_crc: dict[str, int]

    def rows_of(self, assay: str) -> np.ndarray:
        return np.flatnonzero(self.assay == assay)


@dataclass
class Fit:
    assay: str
    family: str
    split: str
    fold: int
    lr: float
    epochs: int
    head: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    target: np.ndarray = field(repr=False)  # training labels, standardised (rank-normalised per assay first for transfer)
    val_target: np.ndarray = field(repr=False)
    fingerprint: str = ""

    @property
    def group(self) -> str:
        """The fits one trainer runs in turn: an assay x split (a transfer task), all folds and configurations."""
        return f"{self.assay}__{self.split.replace('>', '').replace('+', '_')}"

    @property
    def name(self) -> str:
        return f"{self.assay}__{self.split.replace('>', '').replace('+', '_')}__{self.fold}__lr{self.lr:g}_ep{self.epochs}_{self.head}"


# ---------------------------------------------------------------- driver: data, folds, fits


def load_table(cfg: FinetuneConfig, card, warnings: list[str]) -> Table:
    assays = discover(Path(cfg.data), assays=cfg.assays, families=cfg.families, limit=cfg.limit, warnings=warnings)
    parts = []
    for a in assays:
        frame = read_assay(a.path, 0, a.n_rows)
        frame = frame.assign(assay=a.dms_id, family=a.family, pair_index=np.arange(len(frame)))
        parts.append(frame[frame["DMS_score"].notna()])
    rows = pd.concat(parts, ignore_index=True)
    if cfg.shuffle_labels:  # the control: same rows and folds, labels permuted within each assay
        rng = np.random.default_rng([cfg.seed, 11])
        rows["DMS_score"] = rows.groupby("assay")["DMS_score"].transform(lambda s: rng.permutation(s.to_numpy()))
    tokenizer = card_tokenizer(card)  # a card may keep its tokenizer in another repository (BiRNA-BERT)
    policy = TokenPolicy(card, tokenizer, config_context(card), cfg.long)
    encoded = policy.encode(rows["sequence"].tolist(), [f"{a}/{i}" for a, i in zip(rows["assay"], rows["pair_index"])])
    return Table(rows["assay"].to_numpy(), rows["family"].to_numpy(), rows["pair_index"].to_numpy(np.int64),
                 rows["mutant"].tolist(), rows["DMS_score"].to_numpy(float),
                 [e.ids.astype(np.int32) for e in encoded], [e.real for e in encoded],
                 {a.dms_id: a.crc for a in assays})


def _standardise(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    sd = float(np.std(ref))
    return (y - float(np.mean(ref))) / (sd if sd > 0 else 1.0)


def _inner_split(train: np.ndarray, fraction: float, seed) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, int(round(fraction * len(train))))
    return np.sort(train[perm[n_val:]]), np.sort(train[perm[:n_val]])


def plan_fits(cfg: FinetuneConfig, table: Table) -> list[Fit]:
    """Every fit of the run: outer splits (folds, few-shot draws, held-out assays) x hyper-parameters."""
    outer: list[tuple[str, str, str, int, np.ndarray, np.ndarray, np.ndarray]] = []  # assay, family, split, fold, train, test, target
    assays = sorted(set(table.assay.tolist()))
    if cfg.setting == "transfer":
        families = {a: str(table.family[table.rows_of(a)][0]) for a in assays}
        for task in transfer_tasks(families, cfg.transfer_from, cfg.transfer_to):
            train = np.concatenate([table.rows_of(a) for a in task.train])
            target = np.concatenate([rank_normalise(table.label[table.rows_of(a)]) for a in task.train])
            outer.append((task.test, families[task.test], task.split, 0, train, table.rows_of(task.test), target))
    for assay in assays if cfg.setting != "transfer" else []:
        rows = table.rows_of(assay)
        family = str(table.family[rows[0]])
        if cfg.setting == "fewshot":
            splits = [(str(k), r, tr, te) for k in cfg.ks
                      for r, (tr, te) in enumerate(fewshot_splits(len(rows), k, cfg.repeats, cfg.seed))]
        else:
            pos = [positions(table.mutant[i]) for i in rows]
            multi = any(len(p) > 1 for p in pos)
            splits = [(scheme, f, tr, te) for scheme in cfg.schemes if scheme == "random" or not multi
                      for f, (tr, te) in enumerate(supervised_folds(pos, scheme, seed=cfg.seed))]
        for split, fold, tr, te in splits:
            outer.append((assay, family, split, fold, rows[tr], rows[te], table.label[rows[tr]]))
    fits = []
    for assay, family, split, fold, train, test, target in outer:
        assert not set(train.tolist()) & set(test.tolist()), "a test row is in the training part"
        val = np.zeros(0, dtype=np.int64)
        val_target = np.zeros(0)
        if cfg.sweep:
            seed = [cfg.seed, int(hashlib.sha256(f"{assay}/{split}/{fold}".encode()).hexdigest()[:8], 16)]
            keep, val = _inner_split(np.arange(len(train)), cfg.val_fraction, seed)
            ref = target[keep]
            train, target, val, val_target = train[keep], target[keep], train[val], target[val]
        else:
            ref = target
        for head, lr, epochs in product(cfg.head, cfg.lr, cfg.epochs):
            fits.append(Fit(assay, family, split, fold, lr, epochs, head, train, val, test,
                            _standardise(target, ref).astype(np.float32), _standardise(val_target, ref).astype(np.float32)))
    return fits


def fingerprint(cfg: FinetuneConfig, card, table: Table, fit: Fit) -> str:
    """What decides a fit's result: the weights, the recipe, the rows and their labels."""
    revision, local = hf_provenance(card)
    weights = {}
    if local:
        for name in WEIGHT_FILES:
            path = Path(local) / name
            if path.is_file():
                weights[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256(json.dumps({
        "model": card.hf_id, "revision": revision, "weights": weights, "pooling": cfg.pooling, "head": fit.head,
        "lr": fit.lr, "epochs": fit.epochs, "batch_size": cfg.batch_size, "seed": cfg.seed, "long": cfg.long,
        "workers": cfg.workers,  # the per-worker batch (and so the summation order) depends on it
        "crc": table.data_crc[fit.assay] if cfg.setting != "transfer" else sorted(table.data_crc.items()),
    }, sort_keys=True, default=str).encode())
    for part in (fit.train, fit.val, fit.test, fit.target, fit.val_target):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- worker: one Ray Train worker of a group


def train_loop(config: dict) -> None:
    """Ray Train's per-worker function: the fits of one group (an assay's folds or draws, or one transfer
    task, times the hyper-parameters), one after the other. Each fit loads the pretrained weights afresh,
    trains, checkpoints every epoch and, on rank 0, writes its predictions to ``fits/<fit>.parquet``. A
    restarted or resumed group skips finished fits and continues the current one from its checkpoint."""

    import ray  # in here: runs inside a Ray Train/Tune worker, which imports what it needs itself
    import ray.train
    import ray.train.torch
    import torch

    t0 = time.time()
    torch.set_num_threads(max(1, int(config["threads"])))
    data = ray.get(config["data"][0])
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=True)
    start_seconds = time.time() - t0
    for fit in config["fits"]:
        done = read_fit(Path(config["fits_dir"]) / f"{fit['name']}.parquet")
        if done is not None and done[1].get("fingerprint") == fit["fingerprint"]:
            continue
        state = resume if resume is not None and resume["fingerprint"] == fit["fingerprint"] else None
        _train_one(config, fit, data, state, start_seconds)
        resume, start_seconds = None, 0.0


def _train_one(config: dict, fit: dict, data: dict, state: dict | None, start_seconds: float) -> None:
    import ray.train  # in here: runs inside a Ray Train/Tune worker, which imports what it needs itself
    import ray.train.torch
    import torch
    from torch.utils.data import DistributedSampler


    t0 = time.time()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    card = ModelCard(**config["card"])
    base = load_base(card)  # the pretrained weights, afresh for every fit
    initial_sha = weights_sha256(base)
    model = make_regressor(base, config["pooling"], fit["head"], config["seed"], card.masks_padding)
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    inner = model.module if hasattr(model, "module") else model
    train, target = np.asarray(fit["train"]), torch.as_tensor(fit["target"])
    per_worker = max(1, config["batch_size"] // world)
    sampler = DistributedSampler(range(len(train)), num_replicas=world, rank=rank, shuffle=True, seed=config["seed"])
    total = max(1, -(-len(sampler) // per_worker) * fit["epochs"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=fit["lr"], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
    start, history = 0, []
    if state is not None:
        inner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start, history = state["epoch"] + 1, json.loads(state["history"])
    load_seconds = start_seconds + time.time() - t0
    loss_fn = torch.nn.MSELoss()
    for epoch in range(start, fit["epochs"]):
        t_epoch = time.time()
        sampler.set_epoch(epoch)
        model.train()
        order, losses = list(sampler), []
        for b in range(0, len(order), per_worker):
            idx = [train[i] for i in order[b : b + per_worker]]
            batch = [t.to(device) for t in pad_batch([data["ids"][i] for i in idx], [data["real"][i] for i in idx], data["pad_id"])]
            loss = loss_fn(model(*batch), target[order[b : b + per_worker]].to(device))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "resumed_at": start, "steps": len(losses),
                        "samples": len(order), "seconds": time.time() - t_epoch})
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                torch.save({"fingerprint": fit["fingerprint"], "model": inner.state_dict(), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "epoch": epoch, "history": json.dumps(history)},
                           Path(tmp) / "state.pt")
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"fit": fit["name"], "epoch": epoch, "train_loss": history[-1]["train_loss"]}, checkpoint=ckpt)
    if rank == 0:
        rows = np.concatenate([fit["val"], fit["test"]]).astype(np.int64)
        pred = predict(inner, [data["ids"][i] for i in rows], [data["real"][i] for i in rows], data["pad_id"], device)
        # the training rows are listed too (no prediction), so every fit's split can be audited
        _write_fit(Path(config["fits_dir"]) / f"{fit['name']}.parquet",
                   pd.DataFrame({"row": np.concatenate([train, rows]).astype(np.int64),
                                 "role": ["train"] * len(train) + ["val"] * len(fit["val"]) + ["test"] * len(fit["test"]),
                                 "prediction": np.concatenate([np.full(len(train), np.nan), pred.astype(np.float64)])}),
                   {"name": fit["name"], "fingerprint": fit["fingerprint"], "initial_weights_sha256": initial_sha,
                    "final_weights_sha256": weights_sha256(inner.base), "history": history,
                    "load_seconds": load_seconds, "workers": world, "train_rows": len(train)})


# ---------------------------------------------------------------- Tune trial: one group = one TorchTrainer


def _group_trial(config: dict, shared: dict) -> None:
    import ray.train  # in here: runs inside a Ray Train/Tune worker, which imports what it needs itself
    from ray import tune
    from ray.train.torch import TorchTrainer

    run = shared["run"]
    fits = shared["groups"][config["group"]]
    # the run's name changes with any fit's fingerprint, so Ray Train restores only a checkpoint of this plan
    name = f"{config['group']}-{hashlib.sha256(''.join(f['fingerprint'] for f in fits).encode()).hexdigest()[:12]}"
    resources = {"CPU": run["cpus_per_worker"], **({"GPU": 1} if run["use_gpu"] else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"fits": fits, "data": shared["data"], "card": run["card"], "pooling": run["pooling"],
                           "batch_size": run["batch_size"], "seed": run["seed"], "threads": run["cpus_per_worker"],
                           "fits_dir": run["fits"]},
        scaling_config=ray.train.ScalingConfig(num_workers=run["workers"], use_gpu=run["use_gpu"], resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=run["train_storage"], checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=run["max_failures"])),
    )
    trainer.fit()
    tune.report({"fits": len(fits)})


def _write_fit(path: Path, pred: pd.DataFrame, info: dict) -> None:
    """Write-then-rename: a fit file exists only when complete."""
    table = pa.Table.from_pandas(pred, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"glmscore.fit": json.dumps(info).encode()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_fit(path: Path) -> tuple[pd.DataFrame, dict] | None:
    """A finished fit's predictions and record, or None when it is missing or unreadable."""
    try:
        table = pq.read_table(path)
        info = json.loads(table.schema.metadata[b"glmscore.fit"])
    except (OSError, KeyError, ValueError):
        return None
    return table.to_pandas(), info


# ---------------------------------------------------------------- the command


def run_finetune(cfg: FinetuneConfig) -> dict:

    card = resolve_card(cfg.model, trust_remote_code=cfg.trust_remote_code or None)
    check_finetunable(card, cfg.pooling)
    hf_preflight(card, "embed")
    warnings: list[str] = []
    table = load_table(cfg, card, warnings)
    fits = plan_fits(cfg, table)
    if not fits:
        raise GlmscoreError(f"nothing to fine-tune: no assay here allows {cfg.setting} splits of "
                            f"{', '.join(cfg.schemes) if cfg.setting == 'supervised' else 'k = ' + ','.join(map(str, cfg.ks))} "
                            "(modulo and contiguous folds need single mutants; k must be below the assay's rows).")
    for fit in fits:
        fit.fingerprint = fingerprint(cfg, card, table, fit)
    out = Path(cfg.out).resolve()
    fits_dir = out / FITS
    fits_dir.mkdir(parents=True, exist_ok=True)
    for w in warnings:
        warn(w)
    todo = [f for f in fits if (done := read_fit(fits_dir / f"{f.name}.parquet")) is None
            or done[1].get("fingerprint") != f.fingerprint]
    say(f"fine-tune {card.id} on {len(set(table.assay.tolist()))} assay(s): {len(fits)} fits "
          f"({len(fits) - len(todo)} finished before), {cfg.workers} Ray Train worker(s) each")
    if todo:
        start_ray(ray_address(cfg.address), out, state_api=True, command="finetune")
        pad_id = _pad_id(card)
        data_ref = ray.put({"ids": table.ids, "real": table.real, "pad_id": pad_id})
        per_fit = cfg.workers * (1.0 if cfg.use_gpu else cfg.cpus_per_worker)
        capacity = ray.cluster_resources().get("GPU" if cfg.use_gpu else "CPU", 0.0)
        run = {"card": asdict(card), "pooling": cfg.pooling, "batch_size": cfg.batch_size, "seed": cfg.seed,
               "workers": cfg.workers, "cpus_per_worker": cfg.cpus_per_worker, "use_gpu": cfg.use_gpu,
               "max_failures": cfg.max_failures, "train_storage": str(out / "train"), "fits": str(fits_dir)}
        # one trainer per group of fits (an assay's folds, draws or configurations; a transfer task): its
        # workers start, import torch and load the model code once for all of them. The fits' row arrays
        # travel in the object store with the data; a trial's config is its group's name.
        groups: dict[str, list[dict]] = {}
        for f in fits:
            groups.setdefault(f.group, []).append(
                {"name": f.name, "fingerprint": f.fingerprint, "lr": f.lr, "epochs": f.epochs, "head": f.head,
                 "train": f.train, "val": f.val, "test": f.test, "target": f.target})
        todo_groups = sorted({f.group for f in todo})
        groups = {g: groups[g] for g in todo_groups}  # a group's finished fits are skipped by its workers
        # a trial only waits for its trainer (Ray Train V2's controller takes no CPU either): it asks for no
        # CPU (one byte of memory, as Tune refuses an empty request), the workers hold the resources, and as
        # many groups run at once as the cluster has room for
        run_trials(_group_trial, {"group": tune.grid_search(todo_groups)}, storage=out / "tune", name="finetune",
                   resources={"cpu": 0, "memory": 1}, n_trials=len(todo_groups),
                   max_concurrent=max(1, int(capacity // per_fit)), shared={"run": run, "data": [data_ref], "groups": groups})
    return summarise(cfg, card, table, fits, out, warnings)


def _pad_id(card) -> int:
    tok = card_tokenizer(card)
    return tok.pad_token_id if tok.pad_token_id is not None else 0


# ---------------------------------------------------------------- driver: metrics and report


def collect(table: Table, fits: list[Fit], fits_dir: Path, model: str, setting: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All fits' predictions joined with labels (one row per fit x predicted row) and each fit's record."""
    preds, records = [], []
    for f in fits:
        got = read_fit(fits_dir / f"{f.name}.parquet")
        if got is None or got[1].get("fingerprint") != f.fingerprint:
            raise GlmscoreError(f"fit {f.name} has no predictions in {fits_dir}; rerun to compute it.")
        pred, info = got
        pred = pred[pred["role"] != "train"]
        rows = pred["row"].to_numpy()
        preds.append(pred.assign(model=model, setting=setting, assay=table.assay[rows], family=table.family[rows],
                                 pair_index=table.pair_index[rows], label=table.label[rows], split=f.split, fold=f.fold,
                                 lr=f.lr, epochs=f.epochs, head=f.head, fit=f.name))
        history = info.get("history", [])
        records.append({"fit": f.name, "assay": f.assay, "split": f.split, "fold": f.fold, "lr": f.lr, "epochs": f.epochs,
                        "head": f.head, "n_train": len(f.train), "n_val": len(f.val), "n_test": len(f.test),
                        "initial_weights_sha256": info["initial_weights_sha256"],
                        "final_weights_sha256": info["final_weights_sha256"],
                        "final_train_loss": history[-1]["train_loss"] if history else np.nan,
                        "resumed_at_epoch": max((h["resumed_at"] for h in history), default=0)})
    return pd.concat(preds, ignore_index=True), pd.DataFrame(records)


def summarise(cfg: FinetuneConfig, card, table: Table, fits: list[Fit], out: Path, warnings: list[str]) -> dict:
    preds, records = collect(table, fits, out / FITS, card.id, cfg.setting)
    keys = ["assay", "family", "split", "fold"]
    per_fit = (preds.groupby(keys + ["lr", "epochs", "head", "role"], sort=True)
               .apply(lambda g: spearman(g["label"].to_numpy(), g["prediction"].to_numpy()), include_groups=False)
               .unstack("role").reset_index())
    per_fit = per_fit.rename(columns={"test": "test_spearman", "val": "val_spearman"})
    if "val_spearman" not in per_fit:
        per_fit["val_spearman"] = np.nan
    # per fold, the configuration with the best validation Spearman (the only one without a sweep)
    per_fit["selected"] = False
    best = per_fit.assign(_v=per_fit["val_spearman"].fillna(-np.inf)).groupby(keys)["_v"].idxmax()
    per_fit.loc[best.to_numpy(), "selected"] = True
    chosen = per_fit[per_fit["selected"]]
    sel = preds.merge(chosen[keys + ["lr", "epochs", "head"]], on=keys + ["lr", "epochs", "head"])
    pooled = (sel[sel["role"] == "test"].groupby(["assay", "split"])
              .apply(lambda g: spearman(g["label"].to_numpy(), g["prediction"].to_numpy()), include_groups=False)
              .rename("pooled_spearman"))
    assays = (chosen.groupby(["assay", "family", "split"], sort=True)
              .agg(spearman=("test_spearman", "mean"), n_folds=("test_spearman", "size")).reset_index()
              .merge(pooled.reset_index(), on=["assay", "split"]))
    assays.insert(0, "model", card.id)
    assays.insert(1, "setting", cfg.setting)
    families, summary = aggregate(assays, metrics=["spearman", "pooled_spearman"], by=("model", "setting", "split"), seed=cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    preds.to_parquet(out / PREDICTIONS, index=False)
    per_fit.to_csv(out / "finetune_folds.csv", index=False)
    records.to_csv(out / "finetune_fits.csv", index=False)
    assays.to_csv(out / "finetune_assays.csv", index=False)
    families.to_csv(out / "finetune_families.csv", index=False)
    summary.to_csv(out / "finetune_summary.csv", index=False)
    settings = {"setting": cfg.setting, "model": card.hf_id, "pooling": cfg.pooling, "head": ",".join(cfg.head),
                "lr": ",".join(f"{v:g}" for v in cfg.lr), "epochs": ",".join(map(str, cfg.epochs)),
                "batch": cfg.batch_size, "workers": cfg.workers, "seed": cfg.seed,
                "shuffled labels (control)": cfg.shuffle_labels,
                "metric": "Spearman on held-out rows; mean over folds (spearman) and over pooled out-of-fold rows"}
    (out / "run.json").write_text(json.dumps({"config": cfg.to_dict(), "card": asdict(card), "warnings": warnings,
                                              "fits": len(fits)}, indent=1, default=str))
    report = write_table_report(f"NABench {cfg.setting} fine-tuning", {
        "Summary (unweighted mean over families)": summary, "Families": families, "Assays": assays,
        "Folds": per_fit, "Fits": records, "Data notes": pd.DataFrame({"note": warnings or ["none"]})}, [], out, settings)
    return {"report": str(report), "summary": summary}
