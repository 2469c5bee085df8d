"""The shard file: where a unit's shard lies (hive partitions ``dataset=<d>/group=<g>/part-<chunk>.parquet``,
names from data checked to be plain folder names), its content checksum (logical content, not layout), the
atomic write with its metadata in the Parquet footer, and the verified read."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import store

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
    return verified(path)[0]


def verified(path) -> tuple[pa.Table, dict]:
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


@dataclass(frozen=True)
class Seen:
    """What one read of a shard found: the metadata written with it (None: missing or not a readable Parquet
    file with glmscore's metadata) and whether its content still hashes to the checksum in it."""

    meta: dict | None
    intact: bool

    def complete(self, fingerprint: str, crc: int, rows: int, reference: str | None = None) -> bool:
        """Done: written by this run's configuration from this input chunk (and this reference, for a
        fitted backend), with the expected rows, and its content intact."""
        meta = self.meta or {}
        return (self.intact and meta.get("fingerprint") == fingerprint and meta.get("crc") == crc
                and meta.get("rows") == rows and meta.get("reference") == reference)


def inspect(path) -> Seen:
    """One read of a shard's bytes: its metadata and whether its content is intact."""
    try:
        data = store.read_bytes(path)
    except FileNotFoundError:
        return Seen(None, False)
    try:
        table = pq.read_table(pa.BufferReader(data))
        meta = json.loads((table.schema.metadata or {})[META_KEY])
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError):
        return Seen(None, False)
    try:
        return Seen(meta, isinstance(meta, dict) and table_digest(table) == meta.get("digest"))
    except (pa.ArrowException, ValueError, UnicodeDecodeError):
        return Seen(meta if isinstance(meta, dict) else None, False)


def is_complete(path: Path, fingerprint: str, crc: int, rows: int, reference: str | None = None) -> bool:
    """``inspect(path).complete(...)``: one read of the shard."""
    return inspect(path).complete(fingerprint, crc, rows, reference)


def each(fn, items: list, threads: int) -> list:
    """``[fn(x) for x in items]``, ``threads`` at a time: per-shard I/O (reads, footers, checks)."""
    items = list(items)
    if threads < 2 or len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(threads, len(items)), thread_name_prefix="glmscore-io") as pool:
        return list(pool.map(fn, items))
