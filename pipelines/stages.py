"""The score job's Ray Data stages, each a class that names the columns it reads and writes, and the
processor's row-level stages built from the same parts (``pipelines/processor.py``).

Unit stages (one Ray Data row per unit, a chunk of rows that becomes one shard, written atomically):
``PrepareActor`` reads a unit and encodes it (``ids``/``real`` list columns), ``ScoreActor`` runs the backend
on it, ``WriteActor`` writes its shard. ``ModelRunner`` is the one place a backend's outputs become
score/embedding columns, for the unit stages and for the processor alike.

User errors inside a stage (a malformed file, a sequence over the token limit) travel to the driver as data
(an ``error`` column), because Ray Data does not keep a worker exception's type.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache, wraps

import numpy as np
import pyarrow as pa

from glmscore.models.alphabet import reverse_complement
from glmscore.models.base import Backend, Context, Encoded, Runtime
from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import Options
from glmscore.models.pooling import Pooling
from glmscore.pipelines import attempts, shards, store
from glmscore.pipelines.benchmark import REGION_COLUMNS, Unit
from glmscore.pipelines.plan import ERROR, Plan


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
    strands = encode_strands(encoder, rows.sequences, names, plan.cfg.rc)
    encoded = strands[""]
    table = pa.Table.from_pylist([{
        **row,
        "seq_id": rows.seq_ids,
        "pair_index": rows.pair_index.tolist(),
        "n_ambiguous": [e.n_ambiguous for e in encoded],
        "truncated": [e.truncated for e in encoded],
        "n_bases": [len(s) for s in rows.sequences],
        **rows.extra,
    }])
    for strand, rows_encoded in strands.items():
        table = table.append_column(f"ids{strand}", _nested([e.ids for e in rows_encoded], np.int32))
        table = table.append_column(f"real{strand}", _nested([e.real for e in rows_encoded], np.bool_))
    return table


def encode_strands(encoder, sequences: list[str], names: list[str], rc: str) -> dict[str, list[Encoded]]:
    """The rows encoded by the backend's rules, and with ``rc`` their other strand by the same rules."""
    strands = {"": encoder.encode(sequences, names)}
    if rc != "none":
        strands["_rc"] = encoder.encode([reverse_complement(s) for s in sequences], [f"{n}, reverse strand" for n in names])
    return strands


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


class ModelRunner:
    """A loaded backend and what the job asks of it (task, reduction, pooling, layer, strands): turns encoded
    rows into output columns. The unit stages and the processor's model stage both run their rows here."""

    def __init__(self, backend: Backend, task: str, *, reduction: str = "mean", pooling: str = "mean", layer: int = -1,
                 rc: str = "none", focus: bool = False):
        self.backend, self.task, self.reduction, self.layer, self.rc, self.focus = backend, task, reduction, layer, rc, focus
        self.pooling = Pooling.parse(pooling) if task == "embed" else None
        self.strands = [""] if rc == "none" else ["", "_rc"]

    def run(self, encoded: dict[str, list[Encoded]], contexts: dict[str, Context], n_bases: np.ndarray,
            report=None) -> dict:
        """Per strand (``""``, and ``"_rc"`` unless ``rc`` is none) the rows' encodings and contexts -> columns:
        ``embedding`` (rows x dim float32), or ``score``, ``loglik_sum``, ``n_scored`` (and ``score_fwd``/``score_rc``
        with ``rc`` both). ``report(n)``, if given, hears of rows as they are done: a backend with a
        ``progress_step`` runs them in steps of 1, 2, 4, ... up to it rows (a fixed schedule)."""
        n, step = len(next(iter(encoded.values()))), self.backend.progress_step
        if report is None or not step or n <= 1:
            out = self._run(encoded, contexts, n_bases)
            if report is not None:
                report(n)
            return out
        parts, start, size = [], 0, 1
        while start < n:
            rows = np.arange(start, min(start + size, n))
            parts.append(self._run({s: [e[i] for i in rows] for s, e in encoded.items()},
                                   {s: c.subset(rows) for s, c in contexts.items()}, n_bases[rows] if len(n_bases) else n_bases))
            report(len(rows))
            start, size = start + len(rows), min(2 * size, step)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _run(self, encoded: dict[str, list[Encoded]], contexts: dict[str, Context], n_bases: np.ndarray) -> dict:
        if self.task == "embed":
            per = [np.asarray(self._embed(encoded[s], contexts[s], n_bases if s else None), dtype=np.float32)
                   for s in self.strands]
            return {"embedding": np.ascontiguousarray(np.concatenate(per, axis=1) if self.rc == "both" else np.mean(per, axis=0))}
        results = [self.backend.loglik(encoded[s], contexts[s]) for s in self.strands]
        scores = [r.score("sum" if self.focus else self.reduction) for r in results]
        out = {"score": np.mean(scores, axis=0), "loglik_sum": np.mean([r.loglik_sum for r in results], axis=0),
               "n_scored": np.asarray(results[0].n_scored)}
        if self.rc == "both":
            out.update(score_fwd=np.asarray(scores[0]), score_rc=np.asarray(scores[1]))
        return out

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


def strand_contexts(dataset: str, pair_index: np.ndarray, max_len: int, n_bases: np.ndarray, focus: np.ndarray | None,
                    region: np.ndarray | None) -> dict[str, Context]:
    """The rows' context on each strand: position i of n is n - 1 - i on the other one."""
    return {"": Context(dataset, pair_index, max_len, focus, region),
            "_rc": Context(dataset, pair_index, max_len, None if focus is None else n_bases - 1 - focus,
                           None if region is None else n_bases[:, None] - region[:, ::-1])}


class ProgressBoard:
    """The job's row-level progress (a Ray actor, no CPU): model actors add the rows they finish as they
    go and say when their model is loaded; the driver reads it for its progress line."""

    def __init__(self):
        self.rows, self.ready = 0, 0

    def add(self, n: int) -> None:
        self.rows += n

    def loaded(self) -> None:
        self.ready += 1

    def read(self) -> tuple[int, int]:
        return self.rows, self.ready


class ScoreActor:
    """One backend per actor, loaded once; scores or embeds one unit per call. Reads the unit's fields, its
    ``ids``/``real`` (and ``_rc``) list columns and the benchmark's focus/region columns; writes the unit's
    output columns (``ModelRunner``) and a ``note``."""
    def __init__(self, plan: Plan, fitted=None, run: str = "", board=None):
        self.error, self.board = None, board
        self.ledger, self.factor, self.size = attempts.Ledger(run), 1, None
        cfg = plan.cfg
        self.focus_column = plan.benchmark.focus_column if cfg.reduction == "focus" else None
        self.rc = cfg.rc
        try:
            self.backend = plan.backend(plan.card, plan.options, plan.runtime, fitted)
            self.runner = ModelRunner(self.backend, cfg.task, reduction=cfg.reduction, pooling=plan.pooling,
                                      layer=cfg.layer, rc=cfg.rc, focus=self.focus_column is not None)
        except GlmscoreError as exc:  # reported with the first unit, as data (see errors_as_rows)
            self.error = str(exc)
        if board is not None:
            board.loaded.remote()

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
        strands = self.runner.strands
        encoded = {s: [Encoded(ids=i, real=r) for i, r in zip(_ragged(batch, f"ids{s}"), _ragged(batch, f"real{s}"))]
                   for s in strands}
        row = batch.drop_columns([f"{c}{s}" for c in ("ids", "real") for s in strands]).to_pylist()[0]
        n_bases = np.asarray(row.pop("n_bases", []))
        focus = np.asarray(row[self.focus_column]) if self.focus_column else None
        region = np.stack([np.asarray(row[c]) for c in REGION_COLUMNS], axis=1) if REGION_COLUMNS[0] in row else None
        contexts = strand_contexts(row["dataset"], np.asarray(row["pair_index"]), row["dataset_max_len"], n_bases, focus, region)
        row["resolved_revision"] = str(self.backend.resolved_revision or "")
        out = self.runner.run(encoded, contexts, n_bases, report=self.board.add.remote if self.board is not None else None)
        if "embedding" in out:
            emb = out["embedding"]
            # the unit's (rows x dim) matrix as one list<fixed_size_list<float32>> cell, never as Python floats
            cell = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])
            return pa.Table.from_pylist([row]).append_column(
                "embedding", pa.ListArray.from_arrays(pa.array([0, len(emb)], pa.int32()), cell))
        row.update({k: v.tolist() for k, v in out.items()})
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


