"""The score job: benchmark rows -> Ray Data -> model actor pool -> Parquet shards + manifest.

Flow (each Ray Data row is one *unit*: a chunk of up to ``chunk_rows`` records of one file)::

    from_items(pending units)
      -> prepare   (CPU tasks: read the chunk, map the alphabet, tokenize, enforce the context)
      -> score     (actor pool, ActorPoolStrategy(min, max); one model per actor, num_gpus per actor)
      -> write     (CPU tasks: one Parquet shard per unit, written atomically)

Memory is bounded by the units in flight (Ray Data's streaming executor applies backpressure), not by
the number of sequences. Units whose shard is complete are not even read, so a rerun resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from models.cards import ModelCard, resolve_card
from models.errors import GlmscoreError
from pipelines import shards
from pipelines.fasta import read_chunk

BENCHMARKS = ("nullsette", "nabench")


@dataclass
class ScoreConfig:
    benchmark: str
    data: str
    model: str
    out: str
    backend: str | None = None
    reduction: str = "mean"
    long: str = "error"
    mlm_mode: str = "unmasked"
    dtype: str | None = None
    batch_tokens: int | None = None  # None: the backend's default (4,096 on CPU, 32,768 on GPU)
    min_actors: int = 1
    max_actors: int | None = None
    gpus_per_actor: float | None = None
    threads_per_actor: int | None = None
    limit: int | None = None
    datasets: list[str] | None = None
    chunk_rows: int = 1024
    kmer_folds: int = 5
    trust_remote_code: bool | None = None
    overwrite: bool = False
    address: str | None = None
    vllm: dict = field(default_factory=dict)
    assays: list[str] | None = None  # NABench: DMS_IDs
    families: list[str] | None = None  # NABench: nucleic-acid families
    task: str = "score"  # score | embed
    pooling: str = "mean"
    layer: int = -1

    def fingerprint(self, card: ModelCard) -> str:
        """What determines the scores (not where or how fast they are computed)."""
        keys = {k: getattr(self, k) for k in ("benchmark", "reduction", "long", "mlm_mode", "dtype", "chunk_rows",
                                              "kmer_folds", "task", "pooling", "layer")}
        blob = json.dumps({"config": keys, "card": card.to_dict()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Unit:
    dataset: str
    group: str
    path: str
    offset: int
    length: int
    n_records: int
    first_record: int
    crc: int
    chunk: int
    kind: str = "fasta"  # fasta (offset/length bytes) | assay (rows first_record .. +n_records of a CSV)
    width: int = 0  # one-hot featurizer: the assay's longest sequence


def nullsette_units(cfg: ScoreConfig) -> list[Unit]:
    from pipelines.nullsette import discover

    groups = discover(Path(cfg.data), chunk_rows=cfg.chunk_rows, limit=cfg.limit, datasets=cfg.datasets)
    return [
        Unit(g.dataset, g.group, str(g.path.resolve()), c.offset, c.length, c.n_records, c.first_record, c.crc, i)
        for g in groups
        for i, c in enumerate(g.chunks)
    ]


def nabench_units(cfg: ScoreConfig) -> list[Unit]:
    from pipelines.nabench import discover

    units = []
    for a in discover(Path(cfg.data), assays=cfg.assays, families=cfg.families, limit=cfg.limit):
        for i, start in enumerate(range(0, a.n_rows, cfg.chunk_rows)):
            n = min(cfg.chunk_rows, a.n_rows - start)
            units.append(Unit(a.dms_id, a.family, str(a.path.resolve()), 0, 0, n, start, a.crc, i, "assay", a.max_len))
    return units


def source_units(cfg: ScoreConfig) -> list[Unit]:
    return nabench_units(cfg) if cfg.benchmark == "nabench" else nullsette_units(cfg)


def fold_of(pair_index: np.ndarray, n_folds: int) -> np.ndarray:
    """Crossfit fold of a cassette: a hash of its index, so a cassette's nonmutant and mutants share it."""
    return np.array([zlib.crc32(str(int(i)).encode()) % n_folds for i in pair_index], dtype=np.int64)


def reference_sequences(benchmark: str, units: list[Unit], dataset: str) -> list[str]:
    """What the k-mer crossfit fits on: a Nullsette dataset's nonmutants (all cassettes, not only the
    --limit slice) or every variant of a NABench assay (labels are never used)."""
    from pipelines.nabench import read_assay
    from pipelines.nullsette import NONMUTANT, discover

    mine = [u for u in units if u.dataset == dataset]
    if benchmark == "nabench":
        return read_assay(Path(mine[0].path))["sequence"].tolist()
    non = [u for u in mine if u.group == NONMUTANT]
    if not non:
        raise GlmscoreError(f"k-mer crossfit needs the nonmutant sequences of dataset {dataset}.")
    full = discover(Path(non[0].path).parent, chunk_rows=1 << 40)[0]
    c = full.chunks[0]
    return read_chunk(str(full.path), c.offset, c.length)[1]


def crossfit_tables(benchmark: str, units: list[Unit], order: int, n_folds: int) -> dict:
    """Leave-one-fold-out k-mer tables per dataset; a row's fold is a hash of its pair_index."""
    from models.kmer import fit_counts, logprob_table

    tables = {}
    for ds in sorted({u.dataset for u in units}):
        seqs = reference_sequences(benchmark, units, ds)
        folds = fit_counts(seqs, order, groups=fold_of(np.arange(len(seqs)), n_folds), n_groups=n_folds)
        total = folds.sum(axis=0)
        for f in range(n_folds):
            tables[(ds, f)] = logprob_table(total - folds[f])
    return tables


# ---------------------------------------------------------------- Ray Data stages (run in workers)

def load_encoder(card: ModelCard, long: str):
    """What the prepare stage tokenizes with (loaded once per worker process)."""
    if card.backend in ("kmer", "onehot"):
        from models.kmer import KmerScorer

        return KmerScorer(card, {})
    from models.tokenization import TokenPolicy, load_tokenizer

    return TokenPolicy(card, load_tokenizer(card.hf_id, card.revision, card.trust_remote_code), card.max_context)


_ENCODERS: dict = {}


def prepare_unit(batch: pa.Table, card: dict, long: str) -> pa.Table:
    card_obj = ModelCard(**card)
    key = (json.dumps(card, sort_keys=True, default=str), long)
    if key not in _ENCODERS:
        _ENCODERS[key] = load_encoder(card_obj, long)
    enc = _ENCODERS[key]
    unit = batch.to_pylist()[0]
    extra = {}
    if unit["kind"] == "assay":
        from pipelines.nabench import read_assay

        frame = read_assay(Path(unit["path"]), unit["first_record"], unit["n_records"])
        seqs, names = frame["sequence"].tolist(), frame["mutant"].tolist()
        extra = {"label": frame["DMS_score"].tolist(), "mutant": names, "is_wildtype": [m == "" for m in names]}
    else:
        names, seqs = read_chunk(unit["path"], unit["offset"], unit["length"])
    if len(seqs) != unit["n_records"]:
        raise GlmscoreError(f"{unit['path']} changed while the job ran; rerun to rescan it.")
    pair_index = np.arange(unit["first_record"], unit["first_record"] + len(seqs), dtype=np.int32)
    seq_ids = [f"{unit['dataset']}/{i}" if unit["kind"] == "assay" else f"{unit['dataset']}/{unit['group']}/{i}"
               for i in pair_index]
    if card_obj.backend in ("kmer", "onehot"):
        encoded = enc.encode(seqs)
    else:
        encoded = enc.encode(seqs, long=long, row_names=[f"{s} ({n})" for s, n in zip(seq_ids, names)])
    table = pa.Table.from_pylist([{
        **unit,
        "seq_id": seq_ids,
        "pair_index": pair_index.tolist(),
        "n_ambiguous": [e.n_ambiguous for e in encoded],
        "truncated": [e.truncated for e in encoded],
        **extra,
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
    """One model per actor, loaded once; scores one unit per call."""

    def __init__(self, card: dict, options: dict, threads: int | None = None, kmer_tables=None, n_folds: int = 5,
                 task: str = "score", pooling: str = "mean", layer: int = -1):
        if threads and card["backend"] not in ("kmer", "onehot"):  # baselines need no torch import
            import torch

            torch.set_num_threads(threads)
        from models.loader import load_scorer

        options = dict(options)
        self.reduction = options.pop("reduction", "mean")
        self.card = ModelCard(**card)
        self.scorer = load_scorer(self.card, kmer_tables=kmer_tables, **options)
        self.n_folds = n_folds
        self.crossfit = self.card.backend == "kmer" and kmer_tables is not None
        self.task, self.layer = task, layer
        if task == "embed":
            from models.pooling import Pooling

            self.pooling = Pooling.parse(pooling)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from models.base import Encoded

        ids, real = _ragged(batch, "ids"), _ragged(batch, "real")
        row = batch.drop_columns(["ids", "real"]).to_pylist()[0]
        encoded = [Encoded(ids=i, real=r) for i, r in zip(ids, real)]
        if self.task == "embed":
            kw = {"width": row["width"]} if self.card.backend == "onehot" else {}
            emb = np.ascontiguousarray(self.scorer.embed_encoded(encoded, self.pooling, self.layer, **kw), dtype=np.float32)
            row.update(resolved_revision=str(getattr(self.scorer, "resolved_revision", None) or ""))
            # the unit's (rows x dim) matrix as one list<fixed_size_list<float32>> cell, never as Python floats
            cell = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])
            return pa.Table.from_pylist([row]).append_column(
                "embedding", pa.ListArray.from_arrays(pa.array([0, len(emb)], pa.int32()), cell))
        if self.crossfit:
            folds = fold_of(np.asarray(row["pair_index"]), self.n_folds)
            res = self.scorer.loglik_encoded(encoded, keys=[(row["dataset"], int(f)) for f in folds])
        else:
            res = self.scorer.loglik_encoded(encoded)
        row.update(
            score=res.score(self.reduction).tolist(),
            loglik_sum=res.loglik_sum.tolist(),
            n_scored=res.n_scored.tolist(),
            resolved_revision=str(getattr(self.scorer, "resolved_revision", None) or ""),
        )
        return pa.Table.from_pylist([row])


def unit_table(row: dict, benchmark: str, model: str, embedding: pa.Array | None = None) -> pa.Table:
    """One unit's rows in the shard contract (scores or embeddings; NABench adds label, mutant, is_wildtype)."""
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
    if "label" in row and row["label"] is not None:
        cols.update(label=pa.array(row["label"], pa.float64()), mutant=pa.array(row["mutant"], pa.string()),
                    is_wildtype=pa.array(row["is_wildtype"], pa.bool_()))
    return pa.table(cols)


def write_unit(batch: pa.Table, out: str, benchmark: str, model: str, fingerprint: str) -> pa.Table:
    embedding = None
    if "embedding" in batch.column_names:
        embedding = batch.column("embedding").combine_chunks().values  # this unit's fixed_size_list rows
        batch = batch.drop_columns(["embedding"])
    row = batch.to_pylist()[0]
    table = unit_table(row, benchmark, model, embedding)
    path = shards.shard_path(Path(out), row["dataset"], row["group"], row["chunk"])
    shards.write_shard(path, table, {"fingerprint": fingerprint, "crc": row["crc"], "rows": table.num_rows,
                                     "resolved_revision": row["resolved_revision"]})
    return pa.table({"dataset": [row["dataset"]], "group": [row["group"]], "rows": [table.num_rows],
                     "resolved_revision": [row["resolved_revision"]]})


# ---------------------------------------------------------------- driver

def tensor_parallel_bundle(tp: int):
    """``ray_remote_args_fn`` giving each vLLM actor a placement group of ``tp`` GPUs on one node.

    The actor itself takes no GPU; vLLM's Ray executor starts its ``tp`` workers inside the group
    (``placement_group_capture_child_tasks``). Size a cluster as actors x tp GPUs.
    """

    def remote_args():
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = ray.util.placement_group([{"GPU": 1, "CPU": 1}] * tp, strategy="STRICT_PACK")
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)}

    return remote_args


def _validate(cfg: ScoreConfig) -> None:
    if cfg.benchmark not in BENCHMARKS:
        raise GlmscoreError(f"unknown benchmark {cfg.benchmark!r}: choose one of {', '.join(BENCHMARKS)}.")
    if cfg.reduction not in ("mean", "sum"):
        raise GlmscoreError(f"--reduction must be mean or sum, not {cfg.reduction!r}.")
    if cfg.long not in ("error", "truncate", "window"):
        raise GlmscoreError(f"--long must be error, truncate or window, not {cfg.long!r}.")
    for name in ("batch_tokens", "min_actors", "chunk_rows"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise GlmscoreError(f"--{name.replace('_', '-')} must be at least 1.")
    if cfg.max_actors is not None and cfg.max_actors < cfg.min_actors:
        raise GlmscoreError("--max-actors must be at least --min-actors.")
    if cfg.limit is not None and cfg.limit < 1:
        raise GlmscoreError("--limit must be at least 1.")


def _resources(cfg: ScoreConfig, card: ModelCard) -> tuple[float, int, int, int | None]:
    """(gpus per actor, min actors, max actors, torch threads per actor) for this cluster."""
    import ray

    cluster = ray.cluster_resources()
    gpus = cfg.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if card.backend not in ("kmer", "onehot") and cluster.get("GPU", 0) >= 1 else 0.0
    max_actors = cfg.max_actors
    if max_actors is None:
        max_actors = max(cfg.min_actors, int(cluster.get("GPU", 0) // gpus) if gpus else 1)
    threads = cfg.threads_per_actor
    if threads is None and not gpus:
        # An actor reserves 1 CPU so the prepare/write tasks can run beside it, but torch should use
        # the cores it shares with them: those tasks are light next to a forward pass.
        threads = max(1, int(cluster.get("CPU", 1)) // max_actors)
    return gpus, cfg.min_actors, max_actors, threads


def run_score(cfg: ScoreConfig) -> dict:
    import ray
    from ray.data import ActorPoolStrategy

    _validate(cfg)
    if cfg.backend == "vllm":
        cfg.backend = "vllm_causal"
    card = resolve_card(cfg.model, backend=cfg.backend, trust_remote_code=cfg.trust_remote_code)
    if cfg.task == "embed":
        from models.pooling import Pooling

        Pooling.parse(cfg.pooling)
        if card.backend in ("kmer", "vllm_causal"):
            raise GlmscoreError(f"backend {card.backend} gives no embeddings; use a transformers backend or onehot.")
    elif card.backend == "onehot":
        raise GlmscoreError("onehot is a featurizer for `glmscore embed`; it gives no scores.")
    started = shards.now()
    units = source_units(cfg)
    fingerprint = cfg.fingerprint(card)
    config = {**asdict(cfg), "fingerprint": fingerprint}
    out = Path(cfg.out)
    shards.prepare_out(out, fingerprint, config, cfg.overwrite)
    pending = [u for u in units if not shards.is_complete(
        shards.shard_path(out, u.dataset, u.group, u.chunk), fingerprint, u.crc, u.n_records)]

    revisions = set()
    if pending:
        kmer_tables = None
        if card.backend == "kmer" and card.fit == "crossfit":
            kmer_tables = crossfit_tables(cfg.benchmark, units, card.order, cfg.kmer_folds)
        if not ray.is_initialized():
            ray.init(address=cfg.address, ignore_reinit_error=True, log_to_driver=True,
                     runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
        gpus, min_a, max_a, threads = _resources(cfg, card)
        options = {"device": None if gpus else "cpu", "dtype": cfg.dtype, "batch_tokens": cfg.batch_tokens,
                   "long": cfg.long, "mlm_mode": cfg.mlm_mode, "reduction": cfg.reduction, **cfg.vllm}
        card_dict = card.to_dict()
        ds = ray.data.from_items([asdict(u) for u in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(prepare_unit, batch_size=1, batch_format="pyarrow",
                            fn_kwargs={"card": card_dict, "long": cfg.long})
        actor_args = {"num_gpus": gpus, "num_cpus": 1}
        tp = int(cfg.vllm.get("tensor_parallel_size") or 1)
        if card.backend == "vllm_causal" and tp > 1:
            actor_args = {"num_gpus": 0, "num_cpus": 1, "ray_remote_args_fn": tensor_parallel_bundle(tp)}
        ds = ds.map_batches(
            ScoreActor, batch_size=1, batch_format="pyarrow",
            compute=ActorPoolStrategy(min_size=min_a, max_size=max_a), **actor_args,
            fn_constructor_kwargs={"card": card_dict, "options": options, "threads": threads,
                                   "kmer_tables": kmer_tables, "n_folds": cfg.kmer_folds, "task": cfg.task,
                                   "pooling": cfg.pooling, "layer": cfg.layer},
        )
        ds = ds.map_batches(write_unit, batch_size=1, batch_format="pyarrow",
                            fn_kwargs={"out": str(out), "benchmark": cfg.benchmark, "model": card.id,
                                       "fingerprint": fingerprint})
        for row in ds.iter_rows():
            revisions.add(row["resolved_revision"])

    rows: dict[str, int] = {}
    for u in units:
        meta = shards.shard_meta(shards.shard_path(out, u.dataset, u.group, u.chunk)) or {}
        if meta.get("fingerprint") != fingerprint or meta.get("rows") != u.n_records:
            raise GlmscoreError(f"shard for {u.dataset}/{u.group} chunk {u.chunk} is missing after the run.")
        revisions.add(meta.get("resolved_revision", ""))
        key = f"dataset={u.dataset}/group={u.group}"
        rows[key] = rows.get(key, 0) + u.n_records
    revisions.discard("")
    return shards.write_manifest(
        out, config=config, card=card.to_dict(), resolved_revision=sorted(revisions)[0] if revisions else None,
        rows=rows, started=started, skipped=len(units) - len(pending), computed=len(pending),
    )
