"""Strict FASTA reading for benchmark files.

Benchmarks pair rows across files by position, so a malformed record must stop the job with the file
and line, never be skipped. ``scan`` validates a whole file in one streaming pass and records where
each chunk of ``chunk_rows`` records starts (byte offset) and a CRC of its bytes, so chunks can be
read independently by Ray tasks and a rerun can tell whether a finished shard still matches its input.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.textfiles import BOM, bounded_lines

_SEQ_OK = re.compile(rb"^[A-Za-z*\-.]+$")


@dataclass(frozen=True)
class Chunk:
    offset: int  # byte offset of the chunk's first '>'
    length: int  # bytes in the chunk
    n_records: int
    first_record: int
    crc: int
    max_len: int = 0  # longest record in the chunk (bases)


def scan(path: Path, chunk_rows: int, limit: int | None = None, notes: dict | None = None,
         names: list[bytes] | None = None) -> tuple[int, list[Chunk]]:
    """Validate ``path`` and split its first ``limit`` records into chunks; return (n_records, chunks).
    ``notes``, if given, gets what is usable but suspicious: ``duplicate_names`` (records whose name an
    earlier record had) and ``lowercase`` (records with lowercase letters, read as uppercase). ``names``, if
    given, gets each record's name in order (the header's first word, as bytes), in the same pass."""
    seen: set[int] | None = set() if notes is not None else None  # hashes of names: 8 bytes of key per record
    duplicates = lowercase = 0
    lower_here = False
    chunks: list[Chunk] = []
    n = 0
    seq_lines = 0
    chunk_start = 0
    chunk_first = 0
    crc = 0
    pos = 0
    header_line = 0
    record_len = 0
    chunk_max = 0

    def close_record():
        if n and seq_lines == 0:
            raise GlmscoreError(f"{path}: record {n} (line {header_line}) has no sequence.")

    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise GlmscoreError(f"cannot read {path}: {exc.strerror}.") from None
    with fh:
        for lineno, line in bounded_lines(fh, path):
            if lineno == 1 and line.startswith(BOM):  # a UTF-8 byte-order mark (some editors write one)
                pos += len(BOM)
                line = line[len(BOM):]
            if line.startswith(b">"):
                close_record()
                if limit is not None and n >= limit:
                    break
                if n % chunk_rows == 0 and n > 0:
                    chunks.append(Chunk(chunk_start, pos - chunk_start, n - chunk_first, chunk_first, crc, chunk_max))
                    chunk_start, chunk_first, crc, chunk_max = pos, n, 0, 0
                if len(line.strip()) == 1:
                    raise GlmscoreError(f"{path}: line {lineno} is a header without a name.")
                if n == 0:
                    chunk_start = pos  # blank lines before the first header belong to no record
                if names is not None:
                    names.append(line[1:].split(None, 1)[0])
                if seen is not None:
                    key = hash(line[1:].strip())
                    duplicates += key in seen
                    seen.add(key)
                    lower_here = False
                n += 1
                seq_lines = 0
                record_len = 0
                header_line = lineno
            else:
                body = line.strip()
                if body:
                    if n == 0:
                        raise GlmscoreError(f"{path}: line {lineno} comes before the first '>' header; is this a FASTA file?")
                    if not _SEQ_OK.match(body):
                        raise GlmscoreError(f"{path}: line {lineno} has characters that are not sequence letters.")
                    if seen is not None and not lower_here and body != body.upper():
                        lower_here, lowercase = True, lowercase + 1
                    seq_lines += 1
                    record_len += len(body)
                    chunk_max = max(chunk_max, record_len)
            crc = zlib.crc32(line, crc)
            pos += len(line)
        else:
            close_record()
    if n == 0:
        raise GlmscoreError(f"{path} holds no FASTA records.")
    chunks.append(Chunk(chunk_start, pos - chunk_start, n - chunk_first, chunk_first, crc, chunk_max))
    if notes is not None:
        notes.update(duplicate_names=duplicates, lowercase=lowercase)
    return n, chunks


def read_chunk(path: str, offset: int, length: int) -> tuple[list[str], list[str]]:
    """Names and sequences of the records in ``length`` bytes from ``offset`` (as found by ``scan``)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    names, seqs = [], []
    for record in data.split(b"\n>"):
        header, _, body = record.partition(b"\n")
        names.append(header.lstrip(b">").strip().decode("utf-8", errors="replace"))
        seqs.append(b"".join(body.split()).decode("ascii"))
    return names, seqs


def read_all(path: Path) -> tuple[list[str], list[str]]:
    n, chunks = scan(path, chunk_rows=1 << 62)
    c = chunks[0]
    return read_chunk(str(path), c.offset, c.length)


def sequence_blocks(path: Path, rows: int) -> Iterator[list[str]]:
    """The sequences of ``path``, ``rows`` records at a time: memory bounded by one block, whatever the
    file's size (a fitted baseline's reference streams through this)."""
    for c in scan(Path(path), chunk_rows=rows)[1]:
        yield read_chunk(str(path), c.offset, c.length)[1]


def write_fasta(path: Path, names, seqs) -> None:
    """Write records one line each, atomically (a partial file never carries the final name)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        for name, seq in zip(names, seqs):
            fh.write(f">{name}\n{seq}\n")
    tmp.replace(path)
