"""Reading finished output folders: exactly the shards their manifest lists, each verified against its
checksum, cut to the columns asked for, a few at a time (``read_scores``, ``read_datasets``, ``read_table``), and
``describe`` for ``glmscore runs``."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import store
from glmscore.pipelines.shards.format import each, io_threads, read_shard
from glmscore.pipelines.shards.manifest import MANIFEST, read_manifest
from glmscore.pipelines.shards.run_record import RUN_FILE


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
    return {**row, "benchmark": config.get("benchmark"), "model": config.get("card_id") or config.get("model"),
            "task": config.get("task"),
            "shards": len(written), "state": f"unfinished: {len(written)} shard(s) written; rerun the same command to resume",
            "fingerprint": record.get("fingerprint")}


def output_folders(path, depth: int = 4) -> list:
    """``path`` if it is an output folder (a manifest or a run record); else the output folders below it, as
    ``ls`` would find them (a sweep's ``out/scores/<model>/<benchmark>``, a ``runs/`` folder), up to ``depth``
    levels down, in name order; ``[path]`` when there are none (``describe`` then says what it is)."""
    def is_output(p) -> bool:
        return store.exists(store.join(p, MANIFEST)) or store.exists(store.join(p, RUN_FILE))

    if store.is_uri(path) or is_output(path) or not Path(path).is_dir():
        return [path]
    found, level = [], [Path(path)]
    for _ in range(depth):
        below = sorted(c for p in level for c in p.iterdir() if c.is_dir() and not c.is_symlink() and not c.name.startswith(("_", ".")))
        found += [c for c in below if is_output(c)]
        level = [c for c in below if not is_output(c)]
    return sorted(found) or [path]
