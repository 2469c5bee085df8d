"""A score job's output folder (``OutputFolder``) and the shard contract, one module each:

- ``format``: where a unit's shard lies, its content checksum, the atomic write and the verified read;
- ``lock``: one run at a time in a local folder, and no links in it;
- ``run_record``: ``_run.json`` and the refusals made from it (another configuration, another selection);
- ``changes``: what changed between two configurations, as the user names it;
- ``manifest``: ``_manifest.json``, written last; ``versions``: the package versions it keeps;
- ``readers``: reading finished folders, verified, a few shards at a time.

Layout: ``<out>/dataset=<d>/group=<g>/part-<chunk:05d>.parquet`` (hive partitions; the partition values
are not repeated inside the files) and ``<out>/_manifest.json``. File names are a function of the input
chunk, so a rerun knows which shards exist. A shard is written to a temporary name and renamed, so a
file with a final name is whole; its Parquet metadata carries this run's fingerprint, its input chunk's
CRC, its row count, the digest of the reference a fitted backend learnt from, and a checksum of its
content. A shard counts as done only if all of these match and the content still hashes to its checksum.
The manifest lists every shard with its checksum, and readers read exactly those files, verified.

``<out>`` is a local folder or an object-store prefix (``pipelines/store.py``).
"""

from __future__ import annotations

import pyarrow as pa

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import store
from glmscore.pipelines.shards.format import (
    IO_THREADS,
    META_KEY,
    PARTITIONING,
    CorruptShard,
    Seen,
    each,
    inspect,
    io_threads,
    is_complete,
    path_segment,
    read_shard,
    shard_meta,
    shard_path,
    shard_rel,
    table_digest,
    verified,
    write_shard,
)
from glmscore.pipelines.shards.lock import LOCK_FILE, ReadOnlyFolder, locked, refuse_links
from glmscore.pipelines.shards.manifest import MANIFEST, now, read_manifest, write_json, write_manifest
from glmscore.pipelines.shards.readers import datasets_of, describe, output_folders, read_datasets, read_scores, read_table
from glmscore.pipelines.shards.run_record import RUN_FILE, check_out, prepare_out, read_run_file, read_run_record

__all__ = ["IO_THREADS", "LOCK_FILE", "MANIFEST", "META_KEY", "PARTITIONING", "RUN_FILE", "CorruptShard", "OutputFolder",
           "ReadOnlyFolder", "Seen", "check_out", "datasets_of", "describe", "each", "inspect", "io_threads", "is_complete", "locked",
           "now", "output_folders", "path_segment", "prepare_out", "read_datasets", "read_manifest", "read_run_file", "read_run_record",
           "read_scores", "read_shard", "read_table", "refuse_links", "shard_meta", "shard_path", "shard_rel",
           "table_digest", "verified", "write_json", "write_manifest", "write_shard"]


class OutputFolder:
    """A score job's output folder as one object: ``claim`` it (lock + refuse another run's shards),
    ask which units are ``pending``, ``write`` a unit's shard (in a Ray task), then ``finish``: verify
    every shard and write the manifest that readers read. Units are ``pipelines.benchmark.Unit``s (their
    dataset, group and chunk name the shard; their CRC and rows say what a finished shard must match)."""

    def __init__(self, out):
        self.out = store.absolute(out)  # workers may run in another working directory: absolute paths
        # what this run read of each existing shard (by path relative to the folder): each is read once, for
        # every question the run asks of it (its rows, its completeness, why it is recomputed, the manifest)
        self._seen: dict[str, Seen] = {}
        self._checked: tuple | None = None  # (arguments, shards found) of the last ``check``

    def __str__(self) -> str:
        return str(self.out)

    @staticmethod
    def rel(unit) -> str:
        return shard_rel(unit.dataset, unit.group, unit.chunk)

    def path(self, unit):
        return shard_path(self.out, unit.dataset, unit.group, unit.chunk)

    def seen(self, rel: str) -> Seen:
        """The one read of the shard at ``rel`` (made now if this run has not read it)."""
        if rel not in self._seen:
            self._seen[rel] = inspect(store.join(self.out, *rel.split("/")))
        return self._seen[rel]

    def _read(self, rels: list[str]) -> list[Seen]:
        return each(self.seen, rels, io_threads(self.out))

    def create(self) -> None:
        """Make the folder now: an unwritable --out (or an unreachable store) fails before Ray starts."""
        if store.is_file(self.out):
            raise GlmscoreError(f"--out {self.out} is a file, not a folder.")
        refuse_links(self.out)
        store.makedirs(self.out)

    def lock(self):
        """Hold the folder for this run while the block runs (``locked``): taken before Ray starts, so a
        folder another run is writing is refused in a second."""
        return locked(self.out)

    def claim(self, fingerprint: str, config: dict, overwrite: bool, units: list, identity: dict | None = None) -> None:
        """Claim the locked folder for this run (``prepare_out``): refuse another run's shards or another
        selection's, drop dead runs' temporary files and the old manifest, write the run record."""
        refuse_links(self.out)
        rels, expected = [self.rel(u) for u in units], [(u.crc, u.n_rows) for u in units]
        key = (fingerprint, overwrite, tuple(rels), tuple(expected), repr(identity))
        checked = self._checked[1] if self._checked and self._checked[0] == key else None
        prepare_out(self.out, fingerprint, config, overwrite, rels, expected, identity, checked=checked,
                    meta_of=lambda rel: self.seen(rel).meta)
        if overwrite:
            self._seen.clear()  # its shards were deleted (or, resuming an interrupted --overwrite run, are re-read)

    def check(self, fingerprint: str, overwrite: bool, units: list, identity: dict | None = None) -> None:
        """``claim``'s refusals, changing nothing."""
        refuse_links(self.out)
        rels, expected = [self.rel(u) for u in units], [(u.crc, u.n_rows) for u in units]
        found = check_out(self.out, fingerprint, overwrite, rels, expected, identity, meta_of=lambda rel: self.seen(rel).meta)
        self._checked = ((fingerprint, overwrite, tuple(rels), tuple(expected), repr(identity)), found)

    def pending(self, units: list, fingerprint: str, references: dict[str, str]) -> list:
        """The units whose shard is not complete (``references``: per dataset, the digest of a fitted
        backend's reference sequences)."""
        seen = self._read([self.rel(u) for u in units])
        return [u for u, s in zip(units, seen) if not s.complete(fingerprint, u.crc, u.n_rows, references.get(u.dataset))]

    def why_pending(self, pending: list, fingerprint: str, references: dict[str, str]) -> dict[str, int]:
        """How many of ``pending`` have no finished shard of this run, an edited input chunk, another
        fitted reference (the dataset's reference sequences changed), or a damaged shard."""
        counts = {"new": 0, "input changed": 0, "reference changed": 0, "damaged": 0}
        for u, seen in zip(pending, self._read([self.rel(u) for u in pending])):
            meta = seen.meta
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

    def finish(self, units: list, fingerprint: str, *, revisions: set[str], computed: int, written: list | None = None,
               **manifest) -> dict:
        """Check that every unit's shard is this run's, with its rows, and write ``_manifest.json``
        listing them with their checksums; ``manifest``: the rest of ``write_manifest``'s fields. ``written``:
        the units whose shards this run wrote (their footers are read now; the others were read and verified
        when the run checked them). None: read every shard's footer."""
        rows: dict[str, int] = {}
        listed = []
        revisions = set(revisions)
        fresh = {self.rel(u) for u in (units if written is None else written)}
        metas = each(lambda u: (shard_meta(self.path(u)) if self.rel(u) in fresh else self.seen(self.rel(u)).meta) or {},
                     units, io_threads(self.out))
        for u, meta in zip(units, metas):
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
