"""``_manifest.json``: what a finished output folder holds (every shard with its checksum, rows, configuration,
card, provenance, package versions, times); written last, so a folder with one is complete."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import store
from glmscore.pipelines.shards.versions import package_versions

MANIFEST = "_manifest.json"


def write_json(path, payload: dict) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    store.write_bytes(path, json.dumps(payload, indent=2, default=str).encode())


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
