"""A Ray Data processor for gLM scoring, as ``ray.data.llm`` gives one for generation: built once on the
driver from a model (a card id, a local folder, a hub id, ``kmer:K``, ``onehot``) and applied to any
``ray.data.Dataset`` with a ``sequence`` column; returns the Dataset with the output columns added:

    import ray, glmscore
    ds = ray.data.read_parquet("s3://lab/variants.parquet").filter(lambda r: len(r["sequence"]) < 2000)
    scored = glmscore.processor(model="nt-v2-50m", reduction="mean", rc="mean")(ds)
    scored.write_parquet("s3://lab/scored/")

Stages (each a class that names what it reads and adds, with its own ``map_batches`` settings):
``EncodeRows`` (CPU actors: the backend's encoder, the same rules as the score job's prepare stage) and
``ModelRows`` (the model actor pool: ``ModelRunner``, the same code that scores the job's units). Columns
added: ``score``, ``loglik_sum``, ``n_scored`` (``score_fwd``/``score_rc`` with ``rc="both"``) or ``embedding``,
and ``n_ambiguous``, ``truncated``; every input column is kept. The same rules as ``glmscore score``: a model
is checked on the driver before any actor starts (one sentence for a mistake), remote code only when the
caller passes ``trust_remote_code=True`` or the card allows it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from glmscore.models.base import BACKENDS, Backend, Encoded, Runtime, resolve_card
from glmscore.models.cards import ModelCard, pin_revision
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import Options
from glmscore.pipelines.plan import RC_MODES, REDUCTIONS, TASKS, check_strands
from glmscore.pipelines.pools import ACTOR_CPUS, PREPARE_CPUS, PoolRequest, actor_remote_args, size_pool
from glmscore.pipelines.stages import ModelRunner, encode_strands, strand_contexts

SEQUENCE = "sequence"


@dataclass(frozen=True)
class ProcessorConfig:
    """What a processor runs; decided once on the driver (``processor``)."""

    card: ModelCard
    backend: type[Backend]
    options: Options
    task: str = "score"
    reduction: str = "mean"
    rc: str = "none"
    pooling: str = "mean"
    layer: int = -1
    batch_size: int = 64
    sequence_column: str = SEQUENCE
    fitted: object = None
    runtime: Runtime | None = None
    pool: tuple[int, int, float] = (1, 1, 0.0)  # smallest and largest actor pool, GPUs per actor
    extra: dict = field(default_factory=dict)


class EncodeRows:
    """Reads ``sequence``; adds ``ids``/``real`` (and ``ids_rc``/``real_rc``), ``n_ambiguous``, ``truncated``,
    ``n_bases``. User errors (a sequence over the token limit under ``long="error"``) raise with their sentence."""

    def __init__(self, config: ProcessorConfig):
        self.config = config
        self.encoder = config.backend.make_encoder(config.card, config.options, config.runtime)

    def __call__(self, batch: pa.Table) -> pa.Table:
        c = self.config
        sequences = [str(s) for s in batch.column(c.sequence_column).to_pylist()]
        strands = encode_strands(self.encoder, sequences, [f"row {i}" for i in range(len(sequences))], c.rc)
        out = batch
        for strand, encoded in strands.items():
            out = out.append_column(f"ids{strand}", pa.array([e.ids.astype(np.int32) for e in encoded], pa.list_(pa.int32())))
            out = out.append_column(f"real{strand}", pa.array([e.real.astype(np.bool_) for e in encoded], pa.list_(pa.bool_())))
        first = strands[""]
        return (out.append_column("n_ambiguous", pa.array([e.n_ambiguous for e in first], pa.int32()))
                   .append_column("truncated", pa.array([e.truncated for e in first], pa.bool_()))
                   .append_column("n_bases", pa.array([len(s) for s in sequences], pa.int32())))


class ModelRows:
    """The model, loaded once per actor. Reads the ``ids``/``real`` columns; adds the outputs (``ModelRunner``)
    and drops the encodings."""

    def __init__(self, config: ProcessorConfig):
        self.config = config
        backend = config.backend(config.card, config.options, config.runtime, config.fitted)
        self.runner = ModelRunner(backend, config.task, reduction=config.reduction, pooling=config.pooling,
                                  layer=config.layer, rc=config.rc)

    def __call__(self, batch: pa.Table) -> pa.Table:
        strands = self.runner.strands
        encoded = {s: [Encoded(ids=np.asarray(i, np.int64), real=np.asarray(r, np.bool_))
                       for i, r in zip(batch.column(f"ids{s}").to_numpy(zero_copy_only=False),
                                       batch.column(f"real{s}").to_numpy(zero_copy_only=False))]
                   for s in strands}
        n_bases = batch.column("n_bases").to_numpy()
        contexts = strand_contexts("", np.arange(batch.num_rows), 0, n_bases, None, None)
        out = self.runner.run(encoded, contexts, n_bases)
        table = batch.drop_columns([f"{c}{s}" for c in ("ids", "real") for s in strands] + ["n_bases"])
        for name, values in out.items():
            if name == "embedding":
                column = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])
            else:
                column = pa.array(values, pa.int32() if name == "n_scored" else pa.float64())
            table = table.append_column(name, column)
        return table


class Processor:
    """Apply to a ``ray.data.Dataset`` with a ``sequence`` column: ``processor(ds)`` -> Dataset with outputs."""

    def __init__(self, config: ProcessorConfig):
        self.config = config

    def __call__(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        c = self.config
        low, high, gpus = c.pool
        ds = ds.map_batches(EncodeRows, batch_size=c.batch_size, batch_format="pyarrow", num_cpus=PREPARE_CPUS,
                            compute=ActorPoolStrategy(min_size=1, max_size=high), fn_constructor_kwargs={"config": c})
        return ds.map_batches(ModelRows, batch_size=c.batch_size, batch_format="pyarrow", num_cpus=ACTOR_CPUS,
                              compute=ActorPoolStrategy(min_size=low, max_size=high), fn_constructor_kwargs={"config": c},
                              **actor_remote_args(c.backend.actor_resources(c.card, c.options, gpus)))


def processor(model: str, *, task: str = "score", reduction: str = "mean", rc: str = "none", pooling: str = "mean",
              layer: int = -1, backend: str | None = None, trust_remote_code: bool | None = None, revision: str | None = None,
              batch_size: int = 64,
              min_actors: int = 1, max_actors: int | None = None, device: str = "auto", gpus_per_actor: float | None = None,
              threads_per_actor: int | None = None, reference: list[str] | None = None,
              sequence_column: str = SEQUENCE, **options) -> Processor:
    """A processor for ``model``: ``task`` "score" (log-likelihoods, ``reduction`` mean|sum) or "embed" (``pooling``,
    ``layer``); ``rc`` none|mean|both as ``glmscore score --rc``; backend options (``long="truncate"``,
    ``mlm_scoring="pll"``...) as keyword arguments. A backend fitted on reference sequences (``kmer:K``) is fitted
    here on ``reference``. Actors: ``min_actors``..``max_actors`` (default: one per GPU, one on CPU), sized on the
    cluster this process is connected to (``ray.init`` first for another cluster)."""
    if task not in TASKS:
        raise GlmscoreError(f"task {task!r}: choose one of {', '.join(TASKS)}.")
    if reduction not in REDUCTIONS or reduction == "focus":
        raise GlmscoreError(f"reduction {reduction!r}: choose mean or sum (focus needs a benchmark's focus position).")
    if rc not in RC_MODES:
        raise GlmscoreError(f"rc {rc!r}: choose one of {', '.join(RC_MODES)}.")
    card = pin_revision(resolve_card(model, backend=backend, trust_remote_code=trust_remote_code), revision, trust_remote_code)
    backend_cls = BACKENDS.get(card.backend)
    backend_cls.check_task(task, reduction)
    rc, options = check_strands(backend_cls, rc, options)
    opts = backend_cls.Options.from_values(options, owner=f"backend {backend_cls.name}")
    backend_cls.preflight(card, opts, task, layer)
    fitted = None
    if backend_cls.fits_on_reference:
        if not reference:
            raise GlmscoreError(f"backend {backend_cls.name} is fitted on reference sequences; pass reference=[...] "
                                "(the sequences its table is counted on).")
        fitted = backend_cls.fit(card, opts, {None: [list(reference)]})
    cfg = PoolRequest(min_actors, max_actors, device, gpus_per_actor, None, threads_per_actor)
    cluster = ray.cluster_resources() if ray.is_initialized() else {"CPU": float(os.cpu_count() or 1)}
    pool = size_pool(cfg, backend_cls, cluster, card)
    run_on = "cuda" if pool.gpus and backend_cls.can_use_gpu else "cpu"
    revision, _ = backend_cls.provenance(card)
    card = card.with_(revision=revision) if revision else card
    runtime = backend_cls.runtime(card, opts, run_on, pool.threads)
    return Processor(ProcessorConfig(card, backend_cls, opts, task, reduction, rc, pooling, layer, batch_size,
                                     sequence_column, fitted, runtime, (pool.min_actors, pool.max_actors, pool.gpus)))
