"""An output folder's run record (``_run.json``: the fingerprint of the run writing it and what that fingerprint
hashed) and the refusals made from it: another configuration's folder, shards of another selection."""

from __future__ import annotations

import json

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import store
from glmscore.pipelines.console import say
from glmscore.pipelines.shards.changes import changes
from glmscore.pipelines.shards.format import each, io_threads, shard_meta
from glmscore.pipelines.shards.manifest import MANIFEST, write_json

RUN_FILE = "_run.json"


def read_run_record(out) -> dict:
    """``out``'s run record: its ``fingerprint`` and the ``identity`` that fingerprint hashed; empty when
    there is none or it is unreadable (then each shard's own fingerprint decides what is reused)."""
    try:
        record = json.loads(store.read_bytes(store.join(out, RUN_FILE)))
    except (FileNotFoundError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def interrupted_overwrite(out, fingerprint: str) -> bool:
    """``out`` holds an unfinished run (a run record, no manifest) of this fingerprint started with --overwrite."""
    record = read_run_record(out)
    return (record.get("fingerprint") == fingerprint and bool(record.get("config", {}).get("overwrite"))
            and not store.exists(store.join(out, MANIFEST)))


def read_run_file(out) -> str | None:
    """The fingerprint in ``out``'s run record (None: none, or unreadable)."""
    return read_run_record(out).get("fingerprint")


def prepare_out(out, fingerprint: str, config: dict, overwrite: bool, shard_rels: list[str],
                expected: list[tuple[int, int]] | None = None, identity: dict | None = None,
                checked: list[str] | None = None, meta_of=None) -> None:
    """Claim ``out`` (whose lock the caller holds) for this run, whose shards are ``shard_rels`` (paths
    relative to ``out``, with ``expected`` (crc, rows) each): refuse one that holds a different run,
    shards this run would not write (an earlier run of more rows or other datasets: the folder would then
    mix two selections under one manifest), or shards of other rows at this run's paths (a different
    --limit, or changed input), which a rerun would silently replace; drop temporary files of dead runs
    and the old manifest (so an interrupted rerun never looks complete)."""
    # ``checked``: the shards ``check_out`` found just now, with these arguments (not listed and checked again)
    existing = checked if checked is not None else check_out(out, fingerprint, overwrite, shard_rels, expected, identity,
                                                             meta_of)
    if overwrite and interrupted_overwrite(out, fingerprint):
        # an --overwrite run of this configuration was interrupted: it deleted the old shards when it started,
        # so every shard here is its own; its rerun resumes instead of throwing them away again
        say(f"resuming the interrupted --overwrite run in {out}: the {len(existing)} shard(s) it wrote are kept")
    elif overwrite:
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


def check_out(out, fingerprint: str, overwrite: bool, shard_rels: list[str],
              expected: list[tuple[int, int]] | None = None, identity: dict | None = None,
              meta_of=None) -> list[str]:
    """``prepare_out``'s refusals, changing nothing (a local run makes them before Ray starts, with the plan
    it predicts); returns the shards ``out`` holds. ``identity``: what this run's fingerprint hashes, so
    that a refusal names what changed since the folder's run. ``meta_of(rel)``: a shard's metadata (default:
    its footer; ``OutputFolder`` passes what its one read of the shard found)."""
    meta_of = meta_of or (lambda rel: shard_meta(store.join(out, *rel.split("/"))))
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
        metas = each(lambda rel: meta_of(rel) if rel in present else None, shard_rels if expected else [], io_threads(out))
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
