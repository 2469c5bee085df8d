"""The score job: benchmark units -> Ray Data -> model actor pool -> Parquet shards + manifest.

Flow (each Ray Data row is one *unit*: a chunk of rows that becomes one shard)::

    from_items(pending units)
      -> prepare   (CPU tasks: the benchmark reads the unit, the backend's encoder tokenizes it and
                    enforces the token limit)
      -> score     (actor pool, ActorPoolStrategy(min, max); one backend per actor, num_gpus per actor)
      -> write     (CPU tasks: one Parquet shard per unit, written atomically)

This module is generic: the benchmark and the backend come from their registries and everything
specific to them is behind their interfaces (``pipelines/benchmark.py``, ``models/base.py``).
Memory is bounded by the units in flight (Ray Data's streaming executor applies backpressure), not by
the number of sequences. Units whose shard is complete are not even read, so a rerun resumes.
User errors inside a stage (a malformed file, a sequence over the token limit) travel to the driver
as data (an ``error`` column), because Ray Data does not keep a worker exception's type; the driver
stops the job at the first one and raises it, so no manifest is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import MISSING, asdict, dataclass, replace
from functools import lru_cache, wraps
from pathlib import Path

import numpy as np
import pyarrow as pa

from models.base import BACKENDS, Backend, Context, Encoded, Runtime
from models.cards import ModelCard, resolve_card
from models.errors import GlmscoreError
from models.options import Options, comma_list, option, option_fields
from pipelines import shards, store
from pipelines.benchmark import BENCHMARKS, Benchmark, Unit
from pipelines.provenance import content_digest, glmscore_version

TASKS = ("score", "embed")
REDUCTIONS = ("mean", "sum", "focus")
DEVICES = ("auto", "cpu", "gpu")
DEFAULT_CHUNK_ROWS = 1024
ERROR = "error"  # the column a stage's user error travels in
EXIT_CLUSTER_LOST = 3
# CPUs each stage reserves: an actor holds one (its torch threads use the cores it shares with the tasks);
# prepare and write are light beside a forward pass, and fractions let them run next to an actor that
# holds a node's only whole CPU (a restarted actor plus whole-CPU write tasks stalled writes for minutes)
ACTOR_CPUS, PREPARE_CPUS, WRITE_CPUS = 1.0, 0.5, 0.1
TASK_CPUS = PREPARE_CPUS + WRITE_CPUS


@dataclass
class ScoreConfig(Options):
    """A score or embed job. Backend options (``--long``, ``--mlm-scoring``, vLLM engine flags...) go in
    ``options``, benchmark options (NABench ``--assays``...) in ``benchmark_options``: each is checked
    against the options its backend or benchmark declares."""

    # affects_result=False where the fingerprint covers a field in resolved form instead: the data by each
    # unit's CRC, the model by its card and weights, the options by the backend's and benchmark's fields
    benchmark: str = option(MISSING, choices=lambda: BENCHMARKS.names(), help="benchmark family")
    data: str = option(MISSING, affects_result=False, help="benchmark data folder")
    model: str = option(MISSING, affects_result=False, help="card id (glmscore models), local save_pretrained dir, hub id, kmer:K or onehot")
    out: str = option(MISSING, affects_result=False, help="output folder for Parquet shards and _manifest.json")
    task: str = option("score", choices=TASKS, cli=False, help="score (log-likelihoods) or embed")
    backend: str | None = option(None, affects_result=False, choices=lambda: BACKENDS.names(aliases=True), help="override the card's backend")
    reduction: str = option("mean", choices=REDUCTIONS, commands=("score",),
                            help="score = mean (default) or sum of token log-likelihoods; focus = the token at the benchmark's focus "
                                 "position only (variants: the variant's base; masked LMs)")
    pooling: str = option("mean", commands=("embed",), help="mean | cls | last | cls+mean | window:START-END (variants: tss, or a window relative to the window centre)")
    layer: int = option(-1, commands=("embed",), help="hidden-state layer (-1 = last, 0 = embeddings)")
    limit: int | None = option(None, minimum=1, affects_result=False, help="only the first N rows (pairs) of every file, for quick runs")
    datasets: list[str] | None = option(None, parse=comma_list, affects_result=False, help="comma-separated dataset names (default: all)")
    chunk_rows: int = option(DEFAULT_CHUNK_ROWS, minimum=1, help="rows per shard")
    trust_remote_code: bool | None = option(None, affects_result=False, help="allow code from the model repository (off unless the card says so)")
    overwrite: bool = option(False, affects_result=False, help="discard shards of a different earlier run in --out")
    address: str | None = option(None, affects_result=False, help="Ray address (default: RAY_ADDRESS, as set by `ray job submit`, else a new local cluster)")
    min_actors: int = option(1, minimum=1, affects_result=False, help="smallest actor pool")
    max_actors: int | None = option(None, minimum=1, affects_result=False, help="largest actor pool (default: one per GPU, 1 on CPU)")
    device: str = option("auto", choices=DEVICES, affects_result=False,
                         help="gpu: GPU actors even when the cluster has no GPU node yet (an autoscaler adds them); "
                              "cpu: never; auto: GPU actors when the cluster has GPUs at start and the backend can use them")
    gpus_per_actor: float | None = option(None, minimum=0, affects_result=False,
                                          help="GPUs per actor, fractions to share a GPU (default: 1 on GPU, 0 on CPU; "
                                               "see --gpu-memory-gb)")
    gpu_memory_gb: float | None = option(None, minimum=1, affects_result=False,
                                         help="memory of one of the cluster's GPUs: a card whose gpu_memory_gb fits k >= 2 "
                                              "times gets 1/k GPU per actor, so k actors share a GPU (default: one per GPU)")
    threads_per_actor: int | None = option(None, minimum=1, affects_result=False, help="torch CPU threads per actor (default: CPUs / actors)")
    options: dict = option({}, cli=False, affects_result=False, help="backend options by field name")
    benchmark_options: dict = option({}, cli=False, affects_result=False, help="benchmark options by field name")

    def __post_init__(self):
        super().__post_init__()
        if self.max_actors is not None and self.max_actors < self.min_actors:
            raise GlmscoreError("--max-actors must be at least --min-actors.")


@dataclass(frozen=True)
class Plan:
    """Everything the stages need, decided once on the driver."""

    benchmark: Benchmark
    backend: type[Backend]
    card: ModelCard
    options: Options
    runtime: Runtime
    fingerprint: str
    provenance: dict
    gpus_per_actor: float
    actors: tuple[int, int]  # (min, max)
    staged: tuple[str, str, str] | None = None  # --data in object storage: (URI, version, copy root) per node


@dataclass(frozen=True)
class Resolved:
    """What a job names, checked before Ray starts (a user mistake fails in a second, not in an actor)."""

    benchmark: Benchmark
    backend: type[Backend]
    card: ModelCard
    options: Options
    pooling: str  # the embed pooling in generic form (``Benchmark.resolve_pooling``)
    staged: tuple[str, str, str] | None = None  # (URI, version, copy root) of --data in object storage


def _option_names(backend: type[Backend]) -> set[str]:
    return {f.name for f in option_fields(backend.Options)}


def resolve_job(cfg: ScoreConfig) -> Resolved:
    staged, data = None, cfg.data
    if store.is_uri(cfg.data):  # an object-store folder: read from a local copy on each node (store.stage)
        staged = (cfg.data.rstrip("/"), store.data_version(cfg.data), str(store.cache_root()))
        data = str(store.stage(*staged))
    bench_cls = BENCHMARKS.get(cfg.benchmark)
    benchmark = bench_cls(data, bench_cls.Options.from_values(cfg.benchmark_options, owner=f"benchmark {bench_cls.name}"))
    card = resolve_card(cfg.model, backend=cfg.backend, trust_remote_code=cfg.trust_remote_code)
    backend = BACKENDS.get(card.backend)
    given = {k for k, v in cfg.options.items() if v is not None}
    if not cfg.backend and card.fallback_backend and not given <= _option_names(backend) \
            and given <= _option_names(BACKENDS.get(card.fallback_backend)):
        # options only the card's fallback backend has (``--protocol paper`` on a vLLM card) pick it
        card = card.with_(backend=card.fallback_backend)
        backend = BACKENDS.get(card.backend)
    if cfg.task == "embed" and not backend.embeds:
        raise GlmscoreError(f"backend {backend.name} gives no embeddings; use a transformers backend or onehot.")
    if cfg.task == "score" and not backend.scores:
        raise GlmscoreError(f"backend {backend.name} gives no scores (use it with `glmscore embed`).")
    if cfg.task == "score" and cfg.reduction == "focus":
        if not benchmark.focus_column:
            raise GlmscoreError(f"--reduction focus needs a benchmark with a focus position; {benchmark.name} has none.")
        if not backend.scores_focus:
            raise GlmscoreError(f"backend {backend.name} cannot score one position (--reduction focus is for masked LMs).")
    options = backend.Options.from_values(cfg.options, owner=f"backend {backend.name}")
    backend.preflight(card, options, cfg.task, cfg.layer)
    pooling = benchmark.resolve_pooling(cfg.pooling) if cfg.task == "embed" else cfg.pooling
    if cfg.task == "embed":
        from models.pooling import Pooling

        Pooling.parse(pooling)
    return Resolved(benchmark, backend, card, options, pooling, staged)


def plan_job(cfg: ScoreConfig, cluster: dict, resolved: Resolved | None = None) -> Plan:
    """The backend's runtime on ``cluster`` (Ray's resource totals), the weights' identity and the
    fingerprint: everything that changes a score is in the fingerprint."""
    r = resolved or resolve_job(cfg)
    benchmark, backend, card, options = r.benchmark, r.backend, r.card, r.options
    gpus, min_actors, max_actors, threads = _resources(cfg, backend, cluster, card)
    device = "cuda" if gpus and backend.can_use_gpu else "cpu"  # a CPU-only backend holding a GPU still runs on CPU
    if backend.needs_gpu and device == "cpu":
        raise GlmscoreError(f"backend {backend.name} needs a GPU; pass --gpus-per-actor or use a cluster with GPUs.")
    revision, local = backend.provenance(card)
    if revision:
        card = card.with_(revision=revision)  # every actor loads the commit resolved here
    runtime = backend.runtime(card, options, device, threads)
    if 0 < gpus < 1:
        runtime = replace(runtime, gpu_share=gpus)
    version = glmscore_version()
    provenance = {"weights": content_digest(local) if local else None, "device": device, "dtype": runtime.dtype,
                  "token_limit": runtime.token_limit, "glmscore": version}
    job = {f.name: getattr(cfg, f.name) for f in option_fields(ScoreConfig)
           if f.metadata["affects_result"] and cfg.task in (f.metadata["commands"] or TASKS)}
    blob = json.dumps({"job": job, "pooling": r.pooling if cfg.task == "embed" else None, "card": card.to_dict(), "backend": backend.name, "options": options.result_fields(),
                       "benchmark_options": benchmark.options.result_fields(),
                       "runtime": {"device": device, "dtype": runtime.dtype, "token_limit": runtime.token_limit},
                       "weights": provenance["weights"], "glmscore": version["version"]}, sort_keys=True, default=str)
    fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return Plan(benchmark, backend, card, options, runtime, fingerprint, provenance, gpus, (min_actors, max_actors), r.staged)


# ---------------------------------------------------------------- Ray Data stages (run in workers)

def guarded(stage, batch: pa.Table, *args, **kwargs) -> pa.Table:
    """Run ``stage`` on a unit, handing its user error downstream as a one-row ``error`` table (and
    passing such rows through untouched); any other exception is a bug and keeps its traceback."""
    if ERROR in batch.column_names:
        return batch
    try:
        return stage(batch, *args, **kwargs)
    except GlmscoreError as exc:
        return pa.table({ERROR: [str(exc)]})


def errors_as_rows(stage):
    """``guarded`` as a decorator of a stage function."""
    return wraps(stage)(lambda batch, *args, **kwargs: guarded(stage, batch, *args, **kwargs))


@lru_cache(maxsize=4)
def _encoder(backend: type[Backend], card: ModelCard, options: Options, runtime: Runtime):
    """The backend's encoder, made once per worker process."""
    return backend.make_encoder(card, options, runtime)


@errors_as_rows
def prepare_unit(batch: pa.Table, plan: Plan) -> pa.Table:
    if plan.staged:
        store.stage(*plan.staged)  # this node's copy of --data, at the path the driver's units name
    row = batch.to_pylist()[0]
    unit = Unit(**row)
    rows = plan.benchmark.read(unit)
    encoder = _encoder(plan.backend, plan.card, plan.options, plan.runtime)
    encoded = encoder.encode(rows.sequences, [f"{s} ({n})" for s, n in zip(rows.seq_ids, rows.names)])
    table = pa.Table.from_pylist([{
        **row,
        "seq_id": rows.seq_ids,
        "pair_index": rows.pair_index.tolist(),
        "n_ambiguous": [e.n_ambiguous for e in encoded],
        "truncated": [e.truncated for e in encoded],
        **rows.extra,
    }])
    table = table.append_column("ids", _nested([e.ids for e in encoded], np.int32))
    return table.append_column("real", _nested([e.real for e in encoded], np.bool_))


def _nested(arrays: list[np.ndarray], dtype) -> pa.Array:
    """One unit's ragged arrays as a list<list<x>> cell, built from offsets (no Python lists)."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)
    inner = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pa.ListArray.from_arrays(pa.array([0, len(arrays)], pa.int32()), inner)


def _ragged(batch: pa.Table, name: str) -> list[np.ndarray]:
    """The unit's list-of-lists column as numpy views, through Arrow offsets (no Python lists)."""
    inner = batch.column(name).combine_chunks().values  # list<list<x>> -> list<x> of this unit
    flat = inner.values.to_numpy(zero_copy_only=False)
    offsets = inner.offsets.to_numpy()
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


class ScoreActor:
    """One backend per actor, loaded once; scores or embeds one unit per call."""

    def __init__(self, plan: Plan, fitted=None, task: str = "score", reduction: str = "mean",
                 pooling: str = "mean", layer: int = -1):
        self.error = None
        self.focus_column = plan.benchmark.focus_column if reduction == "focus" else None
        try:
            self.backend = plan.backend(plan.card, plan.options, plan.runtime, fitted)
        except GlmscoreError as exc:  # reported with the first unit, as data (see errors_as_rows)
            self.error = str(exc)
        self.task, self.reduction, self.layer = task, reduction, layer
        if task == "embed":
            from models.pooling import Pooling

            self.pooling = Pooling.parse(pooling)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return guarded(self._run, batch)

    def _run(self, batch: pa.Table) -> pa.Table:
        if self.error:
            raise GlmscoreError(self.error)
        ids, real = _ragged(batch, "ids"), _ragged(batch, "real")
        row = batch.drop_columns(["ids", "real"]).to_pylist()[0]
        encoded = [Encoded(ids=i, real=r) for i, r in zip(ids, real)]
        focus = np.asarray(row[self.focus_column]) if self.focus_column else None
        context = Context(row["dataset"], np.asarray(row["pair_index"]), row["dataset_max_len"], focus)
        row["resolved_revision"] = str(self.backend.resolved_revision or "")
        if self.task == "embed":
            emb = np.ascontiguousarray(self.backend.embed(encoded, self.pooling, self.layer, context), dtype=np.float32)
            # the unit's (rows x dim) matrix as one list<fixed_size_list<float32>> cell, never as Python floats
            cell = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])
            return pa.Table.from_pylist([row]).append_column(
                "embedding", pa.ListArray.from_arrays(pa.array([0, len(emb)], pa.int32()), cell))
        res = self.backend.loglik(encoded, context)
        row.update(score=res.score("sum" if self.focus_column else self.reduction).tolist(), loglik_sum=res.loglik_sum.tolist(),
                   n_scored=res.n_scored.tolist())
        return pa.Table.from_pylist([row])


def unit_table(row: dict, benchmark: str, model: str, extra_columns: dict[str, pa.DataType],
               embedding: pa.Array | None = None) -> pa.Table:
    """One unit's rows in the shard contract (scores or embeddings), plus the benchmark's extra columns."""
    n = len(row["seq_id"])
    cols = {
        "seq_id": pa.array(row["seq_id"], pa.string()),
        "benchmark": pa.array([benchmark] * n, pa.string()),
        "pair_index": pa.array(row["pair_index"], pa.int32()),
        "model": pa.array([model] * n, pa.string()),
    }
    if embedding is not None:
        cols["embedding"] = embedding
    else:
        cols.update(
            score=pa.array(row["score"], pa.float64()), loglik_sum=pa.array(row["loglik_sum"], pa.float64()),
            n_scored=pa.array(row["n_scored"], pa.int32()),
        )
    cols.update(n_ambiguous=pa.array(row["n_ambiguous"], pa.int32()), truncated=pa.array(row["truncated"], pa.bool_()))
    cols.update({name: pa.array(row[name], typ) for name, typ in extra_columns.items()})
    return pa.table(cols)


@errors_as_rows
def write_unit(batch: pa.Table, out: str, benchmark: str, model: str, extra_columns: dict, fingerprint: str,
               references: dict[str, str]) -> pa.Table:
    embedding = None
    if "embedding" in batch.column_names:
        rows_ = batch.column("embedding").combine_chunks().values  # this unit's fixed_size_list rows
        # stored as list<float32>: assays of different widths (one-hot) then read as one table
        # (pd.read_parquet(folder)); the flat values are the same
        width = rows_.type.list_size
        embedding = pa.ListArray.from_arrays(pa.array(np.arange(len(rows_) + 1, dtype=np.int32) * width), rows_.flatten())
        batch = batch.drop_columns(["embedding"])
    row = batch.to_pylist()[0]
    table = unit_table(row, benchmark, model, extra_columns, embedding)
    path = shards.shard_path(out, row["dataset"], row["group"], row["chunk"])
    shards.write_shard(path, table, {"fingerprint": fingerprint, "crc": row["crc"], "rows": table.num_rows,
                                     "reference": references.get(row["dataset"]), "resolved_revision": row["resolved_revision"]})
    return pa.table({"dataset": [row["dataset"]], "group": [row["group"]], "rows": [table.num_rows],
                     "resolved_revision": [row["resolved_revision"]]})


# ---------------------------------------------------------------- driver

def _resources(cfg: ScoreConfig, backend: type[Backend], cluster: dict,
               card: ModelCard | None = None) -> tuple[float, int, int, int | None]:
    """(gpus per actor, min actors, max actors, torch threads per actor) for this cluster. Actors share a
    GPU only when the card says how much memory one needs and --gpu-memory-gb says it fits twice or more."""
    gpus = cfg.gpus_per_actor
    if cfg.device == "cpu":
        if gpus:
            raise GlmscoreError("--device cpu asks for no GPU; drop --gpus-per-actor.")
        gpus = 0.0
    elif cfg.device == "gpu" and not backend.can_use_gpu and not gpus:
        raise GlmscoreError(f"backend {backend.name} runs on CPU only; drop --device gpu.")
    elif gpus is None:
        # "gpu" asks for GPU actors whatever the cluster has now: on an autoscaling cluster whose GPU
        # workers are at zero, the pending actors are what make the autoscaler add GPU nodes
        gpus = 1.0 if cfg.device == "gpu" or (backend.can_use_gpu and cluster.get("GPU", 0) >= 1) else 0.0
    elif cfg.device == "gpu" and gpus == 0:
        raise GlmscoreError("--device gpu needs --gpus-per-actor above 0.")
    if cfg.gpus_per_actor is None and gpus and cfg.gpu_memory_gb and card is not None and card.gpu_memory_gb > 0:
        fits = int(cfg.gpu_memory_gb // card.gpu_memory_gb)
        if fits >= 2:
            gpus = 1.0 / fits
    max_actors = cfg.max_actors
    if max_actors is None:
        max_actors = max(cfg.min_actors, int(cluster.get("GPU", 0) / gpus + 1e-9) if gpus else 1)
    threads = cfg.threads_per_actor
    if threads is None and not gpus:
        # An actor reserves 1 CPU so the prepare/write tasks can run beside it, but torch should use
        # the cores it shares with them: those tasks are light next to a forward pass.
        threads = max(1, int(cluster.get("CPU", 1)) // max_actors)
    return gpus, cfg.min_actors, max_actors, threads


def _references(plan: Plan, units: list[Unit]) -> dict[str | None, list[str]]:
    """What a fitted backend learns from: its own reference FASTA (key None), or the benchmark's
    reference sequences per dataset."""
    from pipelines.fasta import read_all

    path = plan.backend.reference_file(plan.card)
    if path:
        return {None: read_all(Path(path))[1]}
    return {d: plan.benchmark.reference_sequences(units, d) for d in sorted({u.dataset for u in units})}


def reference_digests(references: dict[str | None, list[str]], units: list[Unit]) -> dict[str, str]:
    """Per dataset, a digest of the sequences its fitted table came from: a shard's scores depend on
    every reference sequence, not only on its own chunk (editing one nonmutant changes every k-mer
    crossfit score of that dataset), so resume compares this too."""
    digests = {}
    for key, seqs in references.items():
        h = hashlib.blake2b(digest_size=12)
        for seq in seqs:
            h.update(seq.encode() + b"\n")
        digests[key] = h.hexdigest()
    return {u.dataset: digests.get(u.dataset, digests.get(None)) for u in units}


def check_fits(plan: Plan, cluster: dict) -> Plan:
    """On a cluster that cannot add nodes (the local one this job started), an actor pool that can never
    be placed is a user error, not a job that waits for ever; so is one that would hold every CPU, which
    leaves none for the prepare and write tasks beside it (the job would hang without a word). Returns
    the plan with the pool's largest size capped to what fits."""
    gpus, cpus = cluster.get("GPU", 0), cluster.get("CPU", 0)
    if plan.gpus_per_actor > gpus:
        raise GlmscoreError(f"each actor asks for {plan.gpus_per_actor:g} GPU(s) but this local cluster has {gpus:g}; "
                            "drop --gpus-per-actor or pass --address of a cluster with GPUs.")
    by_cpu = int((cpus - TASK_CPUS) / ACTOR_CPUS + 1e-9)
    fit = min(by_cpu, int(gpus / plan.gpus_per_actor + 1e-9) if plan.gpus_per_actor else by_cpu)
    if plan.actors[0] > fit:
        raise GlmscoreError(f"--min-actors {plan.actors[0]} cannot start: this local cluster fits {max(fit, 0)} actor(s) "
                            f"({cpus:g} CPUs, {gpus:g} GPUs; each actor takes {ACTOR_CPUS:g} CPU and {plan.gpus_per_actor:g} GPU, "
                            f"and its prepare and write tasks {TASK_CPUS:g} CPU beside them).")
    return replace(plan, actors=(plan.actors[0], min(plan.actors[1], fit)))


def warn_if_starved(plan: Plan, cluster: dict) -> None:
    """On a cluster this job joined, an autoscaler may still add nodes: a pool that leaves no CPU for the
    tasks beside it is a warning, not an error."""
    if cluster.get("CPU", 0) < plan.actors[0] * ACTOR_CPUS + TASK_CPUS:
        print(f"glmscore: warning: the cluster has {cluster.get('CPU', 0):g} CPUs now; {plan.actors[0]} actor(s) and their "
              f"prepare/write tasks need {plan.actors[0] * ACTOR_CPUS + TASK_CPUS:g}: the job waits until nodes are added.",
              file=sys.stderr)


def watch_cluster(every: float = 5.0, misses: int = 3):
    """A daemon thread that, while the job runs, ends this process with one sentence when the Ray head
    stops answering (``misses`` failed connections to its GCS, ``every`` seconds apart): without it a
    driver blocked on a dead cluster waits for Ray's own minute-long reconnect timeout, then dies with
    pages of C++ logs. Exit status 3: the cluster was lost, not the input. Returns an event to set when
    the job is over (a cluster shut down afterwards is not a loss)."""
    import socket
    import threading

    import ray

    host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
    done = threading.Event()

    def watch():
        failed = 0
        while not done.wait(every):
            try:
                socket.create_connection((host, int(port)), timeout=every).close()
                failed = 0
            except OSError:
                failed += 1
                if failed >= misses and not done.is_set():
                    print(f"glmscore: error: lost the Ray cluster (its head at {host}:{port} stopped answering); "
                          "finished shards are kept and a rerun resumes from them.", file=sys.stderr, flush=True)
                    os._exit(EXIT_CLUSTER_LOST)

    threading.Thread(target=watch, name="glmscore-cluster-watch", daemon=True).start()
    return done


def ray_address(address: str | None) -> str:
    """Which cluster a job uses, explicitly: ``--address``, else ``RAY_ADDRESS`` (set by ``ray job
    submit`` for the job's driver), else a new local cluster. Never the last cluster that somebody
    started with ``ray start`` on this machine (what ``ray.init()`` without an address would join)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def start_ray(address: str, out: Path, state_api: bool = False, **init_args) -> None:
    """Connect to (or start) the cluster every command uses, once per process: Ray's logs to a file under
    ``out`` (``pipelines/console.py``), our SIGTERM handling restored. A local cluster gets no dashboard
    (about 1 s of start-up) unless ``state_api``: Ray's state API is served by the dashboard, and Ray Train
    polls it (without it, every trainer's shutdown waits out a 12 s time-out)."""
    import ray

    if ray.is_initialized():
        return
    from pipelines.console import handle_sigterm, quiet_ray

    dashboard = None if address != "local" else state_api
    # Ray's own log goes beside a local output; an object-store output gets it in the local temp folder
    logs = store.local_path(out) or Path(tempfile.gettempdir()) / "glmscore"
    ray.init(address=address, ignore_reinit_error=True, **quiet_ray(logs), include_dashboard=dashboard,
             **({"dashboard_host": "127.0.0.1"} if dashboard else {}), **init_args)
    handle_sigterm()  # ray.init installs handlers of its own


def run_score(cfg: ScoreConfig) -> dict:
    import ray

    started = shards.now()
    resolved = resolve_job(cfg)
    units = resolved.benchmark.units(chunk_rows=cfg.chunk_rows, limit=cfg.limit, datasets=cfg.datasets)
    out = store.absolute(cfg.out)  # workers may run in another working directory: they get absolute paths
    if store.is_file(out):
        raise GlmscoreError(f"--out {out} is a file, not a folder.")
    store.makedirs(out)  # an unwritable --out (or an unreachable store) fails here, before Ray starts
    address = ray_address(cfg.address)
    fixed_size = not ray.is_initialized() and address == "local"  # a cluster we start cannot grow
    where = ("the Ray cluster this process joined" if ray.is_initialized() else
             "a new local Ray cluster" if address == "local" else f"the Ray cluster at {address}")
    print(f"glmscore: {cfg.task} on {where}; output {out}", file=sys.stderr, flush=True)  # the first line
    for warning in resolved.benchmark.warnings:
        print(f"glmscore: warning: {warning}", file=sys.stderr)
    start_ray(address, out, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    done = watch_cluster()
    try:
        return _score_on_ray(cfg, resolved, units, out, fixed_size, started)
    finally:
        done.set()


def _score_on_ray(cfg: ScoreConfig, resolved: Resolved, units: list[Unit], out, fixed_size: bool,
                  started: str) -> dict:
    """The job once Ray is up: plan, claim --out, run the pending units, check and write the manifest."""
    import ray

    plan = plan_job(cfg, ray.cluster_resources(), resolved)
    if fixed_size:
        plan = check_fits(plan, ray.cluster_resources())
    else:
        warn_if_starved(plan, ray.cluster_resources())
    config = {**asdict(cfg), "data": cfg.data if resolved.staged else str(Path(cfg.data).resolve()), "out": str(out), "resolved_pooling": resolved.pooling,
              "options": plan.options.to_dict(), "benchmark_options": plan.benchmark.options.to_dict(),
              "fingerprint": plan.fingerprint}
    paths = [shards.shard_path(out, u.dataset, u.group, u.chunk) for u in units]
    with shards.locked(out):
        shards.prepare_out(out, plan.fingerprint, config, cfg.overwrite, [shards.shard_rel(u.dataset, u.group, u.chunk) for u in units],
                           [(u.crc, u.n_rows) for u in units])
        references = _references(plan, units) if plan.backend.fits_on_reference else {}
        digests = reference_digests(references, units) if references else {}
        pending = [u for u, p in zip(units, paths)
                   if not shards.is_complete(p, plan.fingerprint, u.crc, u.n_rows, digests.get(u.dataset))]
        return _run_pending(cfg, resolved, plan, config, units, pending, references, digests, out, started)


def _run_pending(cfg: ScoreConfig, resolved: Resolved, plan: Plan, config: dict, units: list[Unit], pending: list[Unit],
                 references: dict, digests: dict, out, started: str) -> dict:
    import ray
    from ray.data import ActorPoolStrategy

    revisions = set()
    if pending:
        fitted = plan.backend.fit(plan.card, plan.options, references) if plan.backend.fits_on_reference else None
        ds = ray.data.from_items([asdict(u) for u in pending], override_num_blocks=len(pending))
        # prepare and write are light beside a forward pass: fractional CPUs let them run next to an actor
        # that holds a node's only CPU (after a node loss, a restarted actor plus whole-CPU write tasks
        # left writes waiting for minutes on a small cluster)
        ds = ds.map_batches(prepare_unit, batch_size=1, batch_format="pyarrow", num_cpus=PREPARE_CPUS,
                            fn_kwargs={"plan": plan})
        actor_args = plan.backend.actor_resources(plan.card, plan.options) or {"num_gpus": plan.gpus_per_actor}
        ds = ds.map_batches(
            ScoreActor, batch_size=1, batch_format="pyarrow",
            compute=ActorPoolStrategy(min_size=plan.actors[0], max_size=plan.actors[1]),
            # a killed actor (its process, or its node) is restarted and its unit retried: Ray Data creates
            # pool actors with max_restarts=-1 and max_task_retries=-1 (and Ray retries a lost task 3 times);
            # tests/test_faults.py and tests/test_node_loss.py hold it to that
            num_cpus=ACTOR_CPUS, **actor_args,
            fn_constructor_kwargs={"plan": plan, "fitted": fitted, "task": cfg.task, "reduction": cfg.reduction,
                                   "pooling": resolved.pooling, "layer": cfg.layer},
        )
        ds = ds.map_batches(write_unit, batch_size=1, batch_format="pyarrow", num_cpus=WRITE_CPUS,
                            fn_kwargs={"out": str(out), "benchmark": plan.benchmark.name, "model": plan.card.id,
                                       "extra_columns": plan.benchmark.extra_columns, "fingerprint": plan.fingerprint,
                                       "references": digests})
        from pipelines.console import Progress

        progress = Progress(sum(u.n_rows for u in pending), "rows")
        for row in ds.iter_rows():
            if row.get(ERROR):
                raise GlmscoreError(row[ERROR])  # leaving the loop stops the job; no manifest is written
            revisions.add(row["resolved_revision"])
            progress.update(row["rows"])

    rows: dict[str, int] = {}
    listed = []
    for u in units:
        path = shards.shard_path(out, u.dataset, u.group, u.chunk)
        meta = shards.shard_meta(path) or {}
        if meta.get("fingerprint") != plan.fingerprint or meta.get("rows") != u.n_rows:
            raise GlmscoreError(f"shard for {u.dataset}/{u.group} chunk {u.chunk} is missing after the run.")
        revisions.add(meta.get("resolved_revision", ""))
        key = f"dataset={u.dataset}/group={u.group}"
        rows[key] = rows.get(key, 0) + u.n_rows
        listed.append({"path": shards.shard_rel(u.dataset, u.group, u.chunk), "rows": u.n_rows, "digest": meta["digest"]})
    revisions.discard("")
    if len(revisions) > 1:
        raise GlmscoreError(f"the shards in {out} were scored with different model revisions ({', '.join(sorted(revisions))}); "
                            "rerun with --overwrite.")
    return shards.write_manifest(
        out, config=config, card=plan.card.to_dict(), resolved_revision=next(iter(revisions), plan.card.revision),
        rows=rows, started=started, skipped=len(units) - len(pending), computed=len(pending), provenance=plan.provenance,
        shards=listed, warnings=resolved.benchmark.warnings,
    )
