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
import uuid
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, field, replace
from functools import lru_cache, wraps
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from models.alphabet import reverse_complement
from models.base import BACKENDS, Backend, Context, Encoded, Runtime, resolve_card
from models.cards import ModelCard
from models.errors import GlmscoreError
from models.options import Options, address_option, comma_list, option, option_fields, out_option
from models.pooling import Pooling
from pipelines import attempts, environments, shards, store
from pipelines.benchmark import BENCHMARKS, REFERENCE_BLOCK, REGION_COLUMNS, Benchmark, Unit
from pipelines.console import Laps, Progress
from pipelines.fasta import sequence_blocks
from pipelines.provenance import content_digest, glmscore_version
from pipelines.ray_session import (
    ACTOR_CPUS,
    PREPARE_CPUS,
    WRITE_CPUS,
    Pool,
    actor_remote_args,
    check_fits,
    cluster_words,
    ray_address,
    size_pool,
    start_ray,
    started_local,
    warn_if_starved,
    watch_cluster,
)

TASKS = ("score", "embed")
REDUCTIONS = ("mean", "sum", "focus")
RC_MODES = ("none", "mean", "both")
DEVICES = ("auto", "cpu", "gpu")
DEFAULT_CHUNK_ROWS = 1024
ERROR = "error"  # the column a stage's user error travels in
JOB_ENV = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}  # every worker's; a model's own env adds to it


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
    out: str = out_option("output folder for Parquet shards and _manifest.json")
    task: str = option("score", choices=TASKS, cli=False, help="score (log-likelihoods) or embed")
    backend: str | None = option(None, affects_result=False, choices=lambda: BACKENDS.names(aliases=True), help="override the card's backend")
    reduction: str = option("mean", choices=REDUCTIONS, commands=("score",),
                            help="score = mean (default) or sum of token log-likelihoods; focus = the token at the benchmark's focus "
                                 "position only (variants: the variant's base; masked LMs)")
    pooling: str = option("mean", commands=("embed",), help="mean | cls | last | cls+mean | window:START-END (variants: tss, or a window relative to the window centre)")
    layer: int = option(-1, commands=("embed",), help="hidden-state layer (-1 = last, 0 = embeddings)")
    rc: str = option("none", choices=RC_MODES,
                     help="reverse-complement averaging: mean scores or embeds both strands and averages them (as Evo 2's "
                          "score_sequences_rc and gReLU's rc=True); both keeps each strand too (score: score_fwd and "
                          "score_rc beside their mean; embed: the two strands' embeddings side by side)")
    limit: int | None = option(None, minimum=1, affects_result=False, help="only the first N rows (pairs) of every file, for quick runs")
    datasets: list[str] | None = option(None, parse=comma_list, affects_result=False, help="comma-separated dataset names (default: all)")
    chunk_rows: int = option(DEFAULT_CHUNK_ROWS, minimum=1, help="rows per shard")
    trust_remote_code: bool | None = option(None, affects_result=False, help="allow code from the model repository (off unless the card says so)")
    overwrite: bool = option(False, affects_result=False, help="discard shards of a different earlier run in --out")
    dry_run: bool = option(False, affects_result=False,
                           help="say what the job would do (units, rows, shards reused and to compute, token limit, "
                                "resources) and start nothing")
    address: str | None = address_option()
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
    """Everything the stages need, decided once on the driver: what the job names, checked before Ray
    starts (``resolve_job``: a user mistake fails in a second, not in an actor), then what the cluster
    decides (``plan_job``: runtime, pool, fingerprint). The stages take the plan and nothing beside it."""

    cfg: ScoreConfig
    benchmark: Benchmark
    backend: type[Backend]
    card: ModelCard
    options: Options
    pooling: str  # the embed pooling in generic form (``Benchmark.resolve_pooling``)
    staged: tuple[str, str, str] | None = None  # --data in object storage: (URI, version, copy root) per node
    runtime: Runtime | None = None
    fingerprint: str = ""
    identity: dict = field(default_factory=dict)  # what the fingerprint hashes (a refusal names what changed)
    provenance: dict = field(default_factory=dict)
    pool: Pool | None = None
    references: dict = field(default_factory=dict)  # per dataset: digest of a fitted backend's reference
    actor_env: dict = field(default_factory=dict)  # the model actors' Ray runtime env (pipelines/environments.py)

    @property
    def task(self) -> str:
        return self.cfg.task


def _option_names(backend: type[Backend]) -> set[str]:
    return {f.name for f in option_fields(backend.Options)}


def resolve_job(cfg: ScoreConfig, stage: bool = True) -> Plan:
    """The job's benchmark, card, backend and options, checked (``stage=False``: an object-store --data
    is not copied, for a check that starts nothing)."""
    staged, data = None, cfg.data
    if store.is_uri(cfg.data) and stage:  # an object-store folder: read from a local copy on each node (store.stage)
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
    if backend.fits_on_reference and not backend.reference_file(card) \
            and type(benchmark).reference_sequences is Benchmark.reference_sequences:  # the base class only refuses
        raise GlmscoreError(f"backend {backend.name} fits on a benchmark's reference sequences, and benchmark "
                            f"{benchmark.name} has none; use a model that needs no fitting.")
    if cfg.rc != "none" and not backend.strand_symmetric:
        if cfg.rc == "mean" and "rc" in _option_names(backend):
            # position-resolved outputs (tracks in bins): the backend flips the other strand's bins back itself
            # (Enformer's ensembling), so the job's own strand averaging stands aside
            cfg = replace(cfg, rc="none", options={**cfg.options, "rc": True})
        else:
            raise GlmscoreError(f"--rc {cfg.rc}: backend {backend.name}'s outputs are position-resolved (a reverse-"
                                "complemented window's bins run backwards), so the strands cannot be kept or averaged "
                                "as they are; use --rc none" + (" or --rc mean (its own ensembling)."
                                                                if "rc" in _option_names(backend) else "."))
    if benchmark.has_regions and not backend.scores_regions:
        raise GlmscoreError(f"benchmark {benchmark.name} is set to score a region of each sequence (--score-subsequence, "
                            f"--track-region centre), which only sequence-to-function models read; backend {backend.name} "
                            "scores whole sequences.")
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
        Pooling.parse(pooling)
    return Plan(cfg, benchmark, backend, card, options, pooling, staged)


def plan_job(cfg: ScoreConfig, cluster: dict, resolved: Plan | None = None) -> Plan:
    """The backend's runtime on ``cluster`` (Ray's resource totals), the weights' identity and the
    fingerprint: everything that changes a score is in the fingerprint."""
    r = resolved or resolve_job(cfg)
    cfg = r.cfg  # as resolved (--rc mean on a tracks model is the backend's own option)
    benchmark, backend, card, options = r.benchmark, r.backend, r.card, r.options
    pool = size_pool(cfg, backend, cluster, card)
    gpus, threads = pool.gpus, pool.threads
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
    if job.get("rc") == "none":
        del job["rc"]  # the default: folders written before --rc existed keep their fingerprint
    blob = json.dumps({"job": job, "pooling": r.pooling if cfg.task == "embed" else None, "card": card.to_dict(), "backend": backend.name, "options": options.result_fields(),
                       "benchmark_options": benchmark.options.result_fields(),
                       "runtime": {"device": device, "dtype": runtime.dtype, "token_limit": runtime.token_limit},
                       "weights": provenance["weights"], "glmscore": version["version"]}, sort_keys=True, default=str)
    fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return replace(r, card=card, runtime=runtime, fingerprint=fingerprint, identity=json.loads(blob), provenance=provenance,
                   pool=pool)


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
    """The backend's encoder, made once per process."""
    return backend.make_encoder(card, options, runtime)


class StageActor:
    """A light stage (``prepare_unit``, ``write_unit``) in a long-lived pool process. As plain tasks, each
    unit could land in a fresh worker (Ray ends idle workers beyond a node's CPU count), and every fresh
    worker paid for its imports and, to prepare, for loading the tokenizer: 25 worker processes and 13
    tokenizer loads for 76 units of a tiny Llama on 2 cores (py-spy). In a pool they are paid once."""
    stage = None

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, batch: pa.Table) -> pa.Table:
        return type(self).stage(batch, **self.kwargs)


@errors_as_rows
def prepare_unit(batch: pa.Table, plan: Plan) -> pa.Table:
    if plan.staged:
        store.stage(*plan.staged)  # this node's copy of --data, at the path the driver's units name
    row = batch.to_pylist()[0]
    unit = Unit(**row)
    rows = plan.benchmark.read(unit)
    encoder = _encoder(plan.backend, plan.card, plan.options, plan.runtime)
    names = [f"{s} ({n})" for s, n in zip(rows.seq_ids, rows.names)]
    encoded = encoder.encode(rows.sequences, names)
    table = pa.Table.from_pylist([{
        **row,
        "seq_id": rows.seq_ids,
        "pair_index": rows.pair_index.tolist(),
        "n_ambiguous": [e.n_ambiguous for e in encoded],
        "truncated": [e.truncated for e in encoded],
        "n_bases": [len(s) for s in rows.sequences],
        **rows.extra,
    }])
    table = table.append_column("ids", _nested([e.ids for e in encoded], np.int32))
    table = table.append_column("real", _nested([e.real for e in encoded], np.bool_))
    if plan.cfg.rc != "none":  # the other strand, encoded by the same rules
        other = encoder.encode([reverse_complement(s) for s in rows.sequences], [f"{n}, reverse strand" for n in names])
        table = table.append_column("ids_rc", _nested([e.ids for e in other], np.int32))
        table = table.append_column("real_rc", _nested([e.real for e in other], np.bool_))
    return table


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
    def __init__(self, plan: Plan, fitted=None, run: str = ""):
        self.error = None
        self.ledger, self.factor, self.size = attempts.Ledger(run), 1, None
        cfg = plan.cfg
        self.focus_column = plan.benchmark.focus_column if cfg.reduction == "focus" else None
        try:
            self.backend = plan.backend(plan.card, plan.options, plan.runtime, fitted)
        except GlmscoreError as exc:  # reported with the first unit, as data (see errors_as_rows)
            self.error = str(exc)
        self.task, self.reduction, self.layer, self.rc = cfg.task, cfg.reduction, cfg.layer, cfg.rc
        if cfg.task == "embed":
            self.pooling = Pooling.parse(plan.pooling)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return guarded(self._attempt, batch)

    def _attempt(self, batch: pa.Table) -> pa.Table:
        """The unit, counted in the job's ledger: after its worker was killed (a retry), batches are halved
        per kill; after ``attempts.MAX_KILLS`` kills the job stops with a sentence naming the unit."""
        if self.error:
            raise GlmscoreError(self.error)
        unit = Unit(**{f: batch.column(f)[0].as_py() for f in UNIT_FIELDS})
        name = f"{unit.dataset}/{unit.group} chunk {unit.chunk} (rows {unit.first_row}-{unit.first_row + unit.n_rows - 1})"
        with self.ledger.attempt(shards.shard_rel(unit.dataset, unit.group, unit.chunk)) as record:
            held = (f"it held {attempts.size(record.peak_rss)}; the node had {attempts.size(record.node_used)} of "
                    f"{attempts.size(record.node_total)} in use")
            if record.kills >= attempts.MAX_KILLS:
                size = self.backend.shrink_batches(2 ** (attempts.MAX_KILLS - 1))
                change = (f"with batches down to {size}; pass a smaller --batch-tokens or" if size else
                          "and this backend has no batch size to shrink; pass a smaller --chunk-rows or")
                raise GlmscoreError(f"{name}: the worker scoring it was killed {record.kills} times, most likely for "
                                    f"memory ({held}), {change} run on nodes with more memory.")
            factor = 2**record.kills
            if factor != self.factor:
                self.factor, self.size = factor, self.backend.shrink_batches(factor)
            result = self._run(batch)
            note = ""
            if record.kills:
                note = (f"{name}: its worker was killed {record.kills} time(s), most likely for memory ({held}); "
                        + (f"scored with batches of {self.size}" if self.size else "scored again as it was"))
            return result.append_column("note", pa.array([note], pa.string()))

    def _run(self, batch: pa.Table) -> pa.Table:
        strands = [""] if self.rc == "none" else ["", "_rc"]
        encoded = {s: [Encoded(ids=i, real=r) for i, r in zip(_ragged(batch, f"ids{s}"), _ragged(batch, f"real{s}"))]
                   for s in strands}
        row = batch.drop_columns([f"{c}{s}" for c in ("ids", "real") for s in strands]).to_pylist()[0]
        n_bases = np.asarray(row.pop("n_bases", []))
        focus = np.asarray(row[self.focus_column]) if self.focus_column else None
        region = np.stack([np.asarray(row[c]) for c in REGION_COLUMNS], axis=1) if REGION_COLUMNS[0] in row else None
        contexts = {"": Context(row["dataset"], np.asarray(row["pair_index"]), row["dataset_max_len"], focus, region),
                    # the same bases on the other strand: position i of n is n - 1 - i there
                    "_rc": Context(row["dataset"], np.asarray(row["pair_index"]), row["dataset_max_len"],
                                   None if focus is None else n_bases - 1 - focus,
                                   None if region is None else n_bases[:, None] - region[:, ::-1])}
        row["resolved_revision"] = str(self.backend.resolved_revision or "")
        if self.task == "embed":
            per = [np.asarray(self._embed(encoded[s], contexts[s], n_bases if s else None), dtype=np.float32)
                   for s in strands]
            emb = np.ascontiguousarray(np.concatenate(per, axis=1) if self.rc == "both" else np.mean(per, axis=0))
            # the unit's (rows x dim) matrix as one list<fixed_size_list<float32>> cell, never as Python floats
            cell = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])
            return pa.Table.from_pylist([row]).append_column(
                "embedding", pa.ListArray.from_arrays(pa.array([0, len(emb)], pa.int32()), cell))
        results = [self.backend.loglik(encoded[s], contexts[s]) for s in strands]
        scores = [r.score("sum" if self.focus_column else self.reduction) for r in results]
        row.update(score=np.mean(scores, axis=0).tolist(), loglik_sum=np.mean([r.loglik_sum for r in results], axis=0).tolist(),
                   n_scored=results[0].n_scored.tolist())
        if self.rc == "both":
            row.update(score_fwd=scores[0].tolist(), score_rc=scores[1].tolist())
        return pa.Table.from_pylist([row])


    def _embed(self, encoded: list[Encoded], context: Context, mirror_lengths: np.ndarray | None) -> np.ndarray:
        """Pooled embeddings; on the reverse strand (``mirror_lengths``: each row's bases) a window pooling
        takes the same bases, which lie at ``[n - end, n - start)`` there: rows are pooled in groups of
        one length (a variants view has one)."""
        if mirror_lengths is None or self.pooling.kind != "window":
            return self.backend.embed(encoded, self.pooling, self.layer, context)
        out = None
        for n in np.unique(mirror_lengths):
            rows = np.flatnonzero(mirror_lengths == n)
            pooling = replace(self.pooling, start=max(int(n) - self.pooling.end, 0), end=int(n) - self.pooling.start)
            part = np.asarray(self.backend.embed([encoded[i] for i in rows], pooling, self.layer, context.subset(rows)))
            out = np.zeros((len(encoded), part.shape[1]), dtype=part.dtype) if out is None else out
            out[rows] = part
        return out


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
        if "score_fwd" in row:  # --rc both: each strand beside their mean
            cols.update(score_fwd=pa.array(row["score_fwd"], pa.float64()), score_rc=pa.array(row["score_rc"], pa.float64()))
    cols.update(n_ambiguous=pa.array(row["n_ambiguous"], pa.int32()), truncated=pa.array(row["truncated"], pa.bool_()))
    cols.update({name: pa.array(row[name], typ) for name, typ in extra_columns.items()})
    return pa.table(cols)


@errors_as_rows
def write_unit(batch: pa.Table, plan: Plan, out: shards.OutputFolder) -> pa.Table:
    embedding = None
    if "embedding" in batch.column_names:
        rows_ = batch.column("embedding").combine_chunks().values  # this unit's fixed_size_list rows
        # stored as list<float32>: assays of different widths (one-hot) then read as one table
        # (pd.read_parquet(folder)); the flat values are the same
        width = rows_.type.list_size
        embedding = pa.ListArray.from_arrays(pa.array(np.arange(len(rows_) + 1, dtype=np.int32) * width), rows_.flatten())
        batch = batch.drop_columns(["embedding"])
    row = batch.to_pylist()[0]
    table = unit_table(row, plan.benchmark.name, plan.card.id, plan.benchmark.extra_columns, embedding)
    out.write(Unit(**{f: row[f] for f in UNIT_FIELDS}), table,
              {"fingerprint": plan.fingerprint, "crc": row["crc"], "rows": table.num_rows,
               "reference": plan.references.get(row["dataset"]), "resolved_revision": row["resolved_revision"]})
    return pa.table({"dataset": [row["dataset"]], "group": [row["group"]], "rows": [table.num_rows],
                     "resolved_revision": [row["resolved_revision"]], "note": [row.get("note", "")]})


UNIT_FIELDS = tuple(f for f in Unit.__dataclass_fields__)


class PrepareActor(StageActor):  # named classes: Ray Data's progress and the logs name the stage
    stage = prepare_unit


class WriteActor(StageActor):
    stage = write_unit


# ---------------------------------------------------------------- driver

def _references(plan: Plan, units: list[Unit]) -> dict[str | None, Iterator[list[str]]]:
    """What a fitted backend learns from, as blocks of sequences read lazily: its own reference FASTA
    (key None), or the benchmark's reference sequences per dataset."""
    path = plan.backend.reference_file(plan.card)
    if path:
        return {None: sequence_blocks(Path(path), REFERENCE_BLOCK)}
    return {d: plan.benchmark.reference_sequences(units, d) for d in sorted({u.dataset for u in units})}


def _digesting(blocks: Iterator[list[str]], h) -> Iterator[list[str]]:
    for block in blocks:
        for seq in block:
            h.update(seq.encode() + b"\n")
        yield block


def _fitted(plan: Plan, units: list[Unit], fit: bool = False) -> tuple[object, dict[str, str]]:
    """A fitted backend's table (with ``fit``) and, per dataset, a digest of the sequences it came from;
    (None, {}) for other backends. A shard's scores depend on every reference sequence, not only on its
    own chunk (editing one nonmutant changes every k-mer crossfit score of that dataset), so resume
    compares the digest too. One streaming pass does both: the sequences are read block by block and
    never held whole on the driver."""
    if not plan.backend.fits_on_reference:
        return None, {}
    references = _references(plan, units)
    hashes = {key: hashlib.blake2b(digest_size=12) for key in references}
    streams = {key: _digesting(blocks, hashes[key]) for key, blocks in references.items()}
    fitted = plan.backend.fit(plan.card, plan.options, streams) if fit else None
    for stream in streams.values():
        for _ in stream:  # whatever the fit left unread still belongs in the digest
            pass
    digests = {key: h.hexdigest() for key, h in hashes.items()}
    return fitted, {u.dataset: digests.get(u.dataset, digests.get(None)) for u in units}


def run_score(cfg: ScoreConfig) -> dict:
    started, laps = shards.now(), Laps()
    plan = resolve_job(cfg)
    laps.lap("model and options")
    units = plan.benchmark.units(chunk_rows=cfg.chunk_rows, limit=cfg.limit, datasets=cfg.datasets)
    laps.lap("input scan")
    out = shards.OutputFolder(cfg.out)
    address = ray_address(cfg.address)
    if cfg.dry_run:
        return dry_run(plan, units, out, address)
    try:
        predicted = local_plan(plan)  # the plan on this machine's devices, decided without Ray
    except GlmscoreError:
        predicted = None  # the guess of the local devices was wrong for this job: Ray's own count decides
    refuse_over_context(plan, predicted, units)
    out.create()
    fixed_size = not ray.is_initialized() and address == "local"  # a cluster we start cannot grow
    with out.lock():  # before Ray starts: a folder another run is writing is refused in a second
        if fixed_size and predicted is not None:
            done = _complete_without_ray(plan, predicted, units, out, started, laps)
            if done is not None:
                return done
        print(f"glmscore: {cfg.task} on {cluster_words(address)}; output {out}", file=sys.stderr, flush=True)  # the first line
        for warning in plan.benchmark.warnings:
            print(f"glmscore: warning: {warning}", file=sys.stderr)
        start_ray(address, out.out, runtime_env=JOB_ENV)
        done = watch_cluster()
        laps.lap("Ray start")
        try:
            cluster = ray.cluster_resources()
            plan = plan_job(cfg, cluster, plan)
            if fixed_size:
                plan = replace(plan, pool=check_fits(plan.pool, cluster))
            else:
                warn_if_starved(plan.pool, cluster)
            return _score(plan, units, out, started, laps)
        finally:
            done.set()


def refuse_over_context(plan: Plan, predicted: Plan | None, units: list[Unit]) -> None:
    """``--long error``: a dataset whose longest sequence cannot fit the model's context, however it is
    tokenized, is refused on the driver before Ray starts (before: by the first actor, 20-45 s later).
    Only for whole datasets (no ``--limit``: the longest sequence may lie outside a slice), and only when
    the backend bounds its token count (``Backend.fewest_tokens``); the actors still check each row.
    ``predicted``: the plan on this machine's devices (``local_plan``; None: another cluster's decide)."""
    if plan.cfg.limit or getattr(plan.options, "long", None) != "error" or not units or predicted is None:
        return
    limit = predicted.runtime.token_limit  # the limit is the model's, whatever devices run it
    if not limit:
        return
    longest: dict[str, int] = {}
    for u in units:
        longest[u.dataset] = max(longest.get(u.dataset, 0), u.dataset_max_len)
    over = {}
    for dataset, n in longest.items():
        fewest = plan.backend.fewest_tokens(plan.card, n)
        if fewest is not None and fewest > limit:
            over[dataset] = (n, fewest)
    if over:
        dataset, (n, fewest) = max(over.items(), key=lambda kv: kv[1][1])
        raise GlmscoreError(f"{len(over)} dataset(s) hold sequences longer than the model's context of {limit} tokens "
                            f"({dataset}: {n:,} nt, at least {fewest:,} tokens); pass --long truncate or --long window.")


def dry_run(plan: Plan, units: list[Unit], out: shards.OutputFolder, address: str) -> dict:
    """What the job would do, decided as the run decides it but with nothing started or written: the
    plan on the local machine's CPUs and GPUs (for another cluster, an estimate: its devices may differ
    and change the fingerprint), the shards in ``--out`` it would reuse and why the others are computed."""
    cfg = plan.cfg
    local = ray_address(cfg.address) == "local"
    predicted = local_plan(plan)
    previous = shards.read_run_file(out.out) if store.exists(out.out) else None
    if previous is not None and previous != predicted.fingerprint and not cfg.overwrite:
        state = f"{out} holds another configuration's run: the job would stop (choose a new --out or pass --overwrite)"
        pending, why = units, {"new": len(units)}
    else:
        _, digests = _fitted(predicted, units)
        pending = units if cfg.overwrite else out.pending(units, predicted.fingerprint, digests)
        why = out.why_pending(pending, predicted.fingerprint, digests)
        state = pending_line(len(units), why)
    datasets: dict[str, list[Unit]] = {}
    for u in units:
        datasets.setdefault(u.dataset, []).append(u)
    limit = predicted.runtime.token_limit
    lines = [f"dry run: {cfg.task} {plan.benchmark.name} with {plan.card.id} (backend {plan.backend.name}) into {out}; "
             "nothing is started or written",
             f"  units: {len(units)} ({sum(u.n_rows for u in units):,} rows in {len(datasets)} dataset(s), "
             f"--chunk-rows {cfg.chunk_rows})"]
    for name, us in sorted(datasets.items()):
        longest = max(u.dataset_max_len for u in us)
        over = f"; its longest sequence ({longest:,} nt) may exceed the token limit (--long {getattr(plan.options, 'long', '-')})" \
            if limit and longest >= limit else ""
        lines.append(f"    {name}: {sum(u.n_rows for u in us):,} rows, {len(us)} unit(s), longest {longest:,} nt{over}")
    lines += [f"  shards: {state}",
              f"  token limit: {limit if limit else 'none'}; device {predicted.provenance['device']}, dtype {predicted.runtime.dtype or '-'}",
              f"  actors: {predicted.pool.min_actors}..{predicted.pool.max_actors}, {predicted.pool.gpus:g} GPU and "
              f"{ACTOR_CPUS:g} CPU each (+{PREPARE_CPUS + WRITE_CPUS:g} CPU for the prepare and write actors beside them)"
              + ("" if local else f"; on {address} the cluster's own devices decide (estimated here from this machine)"),
              f"  fingerprint: {predicted.fingerprint}" + ("" if local else " (estimate)")]
    for warning in plan.benchmark.warnings:
        lines.append(f"  warning: {warning}")
    return {"dry_run": "\n".join(lines), "units": len(units), "pending": len(pending), "why": why,
            "fingerprint": predicted.fingerprint}


def local_plan(plan: Plan) -> Plan:
    """The plan on the cluster a local run would start here (this machine's CPUs and GPUs), without Ray."""
    return plan_job(plan.cfg, {"CPU": float(os.cpu_count() or 1), "GPU": float(local_gpus())}, plan)


def local_gpus() -> int:
    """The GPUs a local Ray cluster would find here (``CUDA_VISIBLE_DEVICES``, else the NVIDIA device
    files), without starting it. A wrong guess costs only a Ray start-up."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def _complete_without_ray(plan: Plan, predicted: Plan, units: list[Unit], out: shards.OutputFolder, started: str,
                          laps: Laps) -> dict | None:
    """A rerun on a local cluster (whose plan is ``predicted``) whose every shard is already this
    configuration's, from this input: verify, write the manifest and return it, without starting Ray (27 s
    of nothing, before). None when anything is left to compute, so the job starts Ray as usual. Shards of
    this configuration that the run would refuse (another --limit's, other datasets') are refused here,
    before Ray starts."""
    previous = shards.read_run_file(out.out)
    if previous is None or not units or plan.cfg.overwrite:
        return None  # --overwrite replaces the folder's shards, so everything is computed, on Ray
    # another configuration's folder is refused here, naming what changed: on the cluster a local run
    # starts (this machine, a fixed size) the plan is the one predicted
    out.check(predicted.fingerprint, plan.cfg.overwrite, units, predicted.identity)
    if out.pending(units, predicted.fingerprint, _fitted(predicted, units)[1]):
        return None
    print(f"glmscore: {plan.cfg.task}: every shard in {out} is complete for this configuration and input; "
          "Ray not started", file=sys.stderr, flush=True)
    return _score(predicted, units, out, started, laps, fit=False)


def _score(plan: Plan, units: list[Unit], out: shards.OutputFolder, started: str, laps: Laps, fit: bool = True) -> dict:
    """The job once planned (and, unless nothing is left to compute, Ray up), ``out`` locked: claim it,
    run the pending units, verify, write the manifest. ``fit=False``: nothing is pending (known before),
    so a fitted backend's table is not made."""
    cfg = plan.cfg
    config = {**asdict(cfg), "data": cfg.data if plan.staged else str(Path(cfg.data).resolve()), "out": str(out),
              "resolved_pooling": plan.pooling, "options": plan.options.to_dict(),
              "benchmark_options": plan.benchmark.options.to_dict(), "fingerprint": plan.fingerprint}
    out.claim(plan.fingerprint, config, cfg.overwrite, units, plan.identity)
    # the fit comes with the digest (one pass over the reference sequences), before we know whether any
    # shard is pending: the fit costs a fraction of reading them (a local rerun known to have nothing
    # left to compute comes from ``_complete_without_ray`` with fit=False)
    fitted, digests = _fitted(plan, units, fit=fit)
    if digests:
        laps.lap("reference sequences and fit")
    plan = replace(plan, references=digests)
    pending = out.pending(units, plan.fingerprint, plan.references)
    print(f"glmscore: {pending_line(len(units), out.why_pending(pending, plan.fingerprint, plan.references))}",
          file=sys.stderr, flush=True)
    laps.lap("output check")
    provenance = dict(plan.provenance)
    if pending and plan.card.environment:  # built (or found) before the actors ask for it
        plan = replace(plan, actor_env=environments.actor_env(plan.card, local=started_local()))
        laps.lap("model environment")
        provenance["environment"] = {"packages": list(plan.card.environment),
                                     "installed": environments.installed(plan.card.environment)}
    revisions = _run_pending(plan, pending, fitted, out, laps) if pending else set()
    return out.finish(units, plan.fingerprint, revisions=revisions, computed=len(pending), config=config,
                      card=plan.card.to_dict(), started=started, provenance={**provenance, "startup_s": laps.seconds()},
                      warnings=plan.benchmark.warnings)


def pending_line(total: int, why: dict[str, int]) -> str:
    """``12 of 80 shards to compute (2 input changed, 10 new); 68 reused`` (what a rerun redoes and why)."""
    todo = sum(why.values())
    reasons = ", ".join(f"{n} {k}" for k, n in sorted(why.items()) if n)
    return f"{todo} of {total} shards to compute" + (f" ({reasons})" if reasons else "") + f"; {total - todo} reused"


def _run_pending(plan: Plan, pending: list[Unit], fitted, out: shards.OutputFolder, laps: Laps) -> set[str]:
    """Ray Data over the pending units: prepare -> the backend (given ``fitted``, a fitted backend's
    table) -> write, each an actor pool (see ``StageActor``). Returns the model revisions the actors
    reported."""
    if not ray.is_initialized():  # Ray Data would otherwise join whatever cluster it finds on the machine
        raise RuntimeError("_run_pending needs the Ray cluster this job started or joined")
    print(f"glmscore: {laps.line()}", file=sys.stderr, flush=True)
    ledger = attempts.Ledger(uuid.uuid4().hex)  # this job's kills per unit (a restarted job starts afresh)
    ds = ray.data.from_items([asdict(u) for u in pending], override_num_blocks=len(pending))
    # prepare and write are light beside a forward pass: fractional CPUs let them run next to a model actor
    # that holds a node's only CPU (after a node loss, a restarted actor plus whole-CPU writes left writes
    # waiting for minutes on a small cluster); their pools grow to the model pool's size at most
    ds = ds.map_batches(PrepareActor, batch_size=1, batch_format="pyarrow", num_cpus=PREPARE_CPUS,
                        compute=ActorPoolStrategy(min_size=1, max_size=plan.pool.max_actors),
                        fn_constructor_kwargs={"plan": plan})
    ds = ds.map_batches(
        ScoreActor, batch_size=1, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=plan.pool.min_actors, max_size=plan.pool.max_actors),
        # a killed actor (its process, or its node) is restarted and its unit retried: Ray Data creates
        # pool actors with max_restarts=-1 and max_task_retries=-1 (and Ray retries a lost task 3 times);
        # tests/core/test_faults.py and tests/core/test_node_loss.py hold it to that
        num_cpus=ACTOR_CPUS, **actor_remote_args(plan.backend.actor_resources(plan.card, plan.options, plan.pool.gpus)),
        # a model whose packages cannot share glmscore's environment gets its own, for these actors only
        **({"runtime_env": {**JOB_ENV, **plan.actor_env}} if plan.actor_env else {}),
        fn_constructor_kwargs={"plan": plan, "fitted": fitted, "run": ledger.run},
    )
    ds = ds.map_batches(WriteActor, batch_size=1, batch_format="pyarrow", num_cpus=WRITE_CPUS,
                        compute=ActorPoolStrategy(min_size=1, max_size=plan.pool.max_actors),
                        fn_constructor_kwargs={"plan": plan, "out": out})
    revisions = set()
    progress = Progress(sum(u.n_rows for u in pending), "rows")
    try:
        for row in ds.iter_rows():
            if row.get(ERROR):
                raise GlmscoreError(row[ERROR])  # leaving the loop stops the job; no manifest is written
            if row.get("note"):
                print(f"glmscore: {row['note']}", file=sys.stderr, flush=True)
            revisions.add(row["resolved_revision"])
            progress.update(row["rows"])
    finally:
        ledger.clear()
    return revisions
