"""One NABench assay CSV, read in O(unit): a streaming scan finds each unit's byte range, and a unit
reads only its own bytes.

``scan`` reads the file once, line by line, in bounded memory (as ``pipelines/fasta.py`` does for
FASTA): it validates every row (a sequence of letters, a score that is a number or missing), counts the
rows, and records per chunk of ``chunk_rows`` rows its byte offset, length, longest sequence and a CRC
of its bytes (seeded with the header line, so a changed header changes every chunk). ``read_span``
parses one such range with pandas. Editing one row therefore changes one chunk's CRC, and only that
unit is recomputed on a rerun; a unit at the end of a 1M-row assay costs what one at the start does
(the earlier reader re-parsed the file from its first line for every unit: quadratic in rows).

Rows are physical lines: a quoted field that spans lines is refused (no assay format has one). A UTF-8
byte-order mark before the header is skipped. A gzip-compressed assay is scanned and read through a copy
decompressed once (``pipelines/gunzip.py``: a byte range of a gzip stream cannot be read without
decompressing everything before it).
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
import os
import re
import zlib
from array import array
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.textfiles import bounded_lines, check_header_fields, without_bom

COLUMNS = ["mutant", "DMS_score", "sequence"]
NA_SCORES = ("", "NA", "NaN", "nan")
_LETTERS = re.compile(rb"[A-Za-z]+")
_NOT_LETTER = re.compile(rb"[^A-Za-z]")


@dataclass(frozen=True)
class Span:
    """A chunk of rows of one assay: the bytes ``offset .. offset + length`` hold rows ``first_row ..
    first_row + n_rows`` (blank lines included, never counted)."""
    offset: int
    length: int
    n_rows: int
    first_row: int
    crc: int
    max_len: int


@dataclass(frozen=True)
class Scan:
    header: list[str]
    n_rows: int  # rows in the file (not only the first ``limit``)
    spans: tuple[Span, ...]  # the first ``limit`` rows, in chunks
    max_len: int  # longest sequence of the spanned rows
    file_crc: int  # of the whole file: what a job that reads every row at once (fine-tuning) compares
    non_numeric_scores: int  # DMS_score values that are not a finite number (empty, NaN, text, inf)
    numeric_scores: int
    duplicate_mutants: int = 0  # rows whose mutant string an earlier row has
    with_t: int = 0  # sequences with a T, and with a U: both in one assay is suspicious (DNA and RNA mixed)
    with_u: int = 0


def _fields(line: bytes, path: Path, lineno: int) -> list[str]:
    text = line.decode("utf-8")
    if '"' not in text:
        return text.rstrip("\r\n").split(",")
    if text.count('"') % 2:
        raise GlmscoreError(f"{path.name}: line {lineno} has a quoted field that does not close on the same line.")
    return next(csv.reader([text]))


def _is_number(text: str) -> bool:
    """A label is a finite number; empty, NaN, text and inf are not (one rule: no label, counted, warned)."""
    if text in NA_SCORES:
        return False
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def scan(path: Path, chunk_rows: int, limit: int | None = None) -> Scan:
    """Validate ``path`` in one streaming pass and split its first ``limit`` rows into spans."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise GlmscoreError(f"cannot read {path}: {exc.strerror}.") from None
    spans: list[Span] = []
    with fh:
        head = next(bounded_lines(fh, path), (1, b""))[1]
        pos = len(head)
        head = without_bom(head)
        check_header_fields(head.count(b",") + 1, path)
        try:
            header = [h.strip() for h in head.decode("utf-8").rstrip("\r\n").split(",")]
        except UnicodeDecodeError:
            raise GlmscoreError(f"{path.name} is not a text CSV file.") from None
        if header[:3] != COLUMNS:
            raise GlmscoreError(f"{path.name}: the header must start with mutant,DMS_score,sequence "
                                f"(it starts with {','.join(header[:3]) or 'nothing'}).")
        file_crc = zlib.crc32(head)
        n = 0
        max_all = 0
        counts = {True: 0, False: 0, None: 0}
        start, first, crc, chunk_max = pos, 0, file_crc, 0
        limit_reached = False
        mutant_hashes = array("Q")  # 64-bit hashes, not the strings: 8 bytes a row for millions of rows
        with_t = with_u = 0
        for lineno, line in bounded_lines(fh, path, start=2):
            file_crc = zlib.crc32(line, file_crc)
            if limit_reached:
                if line.strip():
                    n += 1
                continue
            if not line.strip():  # a blank line: pandas skips it too
                crc = zlib.crc32(line, crc)
                pos += len(line)
                continue
            if limit is not None and n >= limit:
                limit_reached = True
                n += 1
                continue
            if n and n % chunk_rows == 0:
                spans.append(Span(start, pos - start, n - first, first, crc, chunk_max))
                start, first, crc, chunk_max = pos, n, zlib.crc32(head), 0
            try:
                fields = _fields(line, path, lineno)
            except UnicodeDecodeError:
                raise GlmscoreError(f"{path.name}: line {lineno} is not UTF-8 text.") from None
            if len(fields) < 3:
                raise GlmscoreError(f"{path.name}: line {lineno} has {len(fields)} field(s); an assay row needs "
                                    "mutant,DMS_score,sequence.")
            seq = fields[2].encode()
            if not seq:
                raise GlmscoreError(f"{path.name}: line {lineno} has an empty sequence.")
            if not _LETTERS.fullmatch(seq):
                bad = _NOT_LETTER.search(seq).group().decode("utf-8", "replace")
                raise GlmscoreError(f"{path.name}: line {lineno} has {bad!r} in its sequence, which is not a "
                                    "sequence letter.")
            counts[_is_number(fields[1])] += 1
            mutant_hashes.append(zlib.crc32(fields[0].encode()) << 32 | zlib.adler32(fields[0].encode()))
            with_t += b"T" in seq or b"t" in seq
            with_u += b"U" in seq or b"u" in seq
            chunk_max = max(chunk_max, len(seq))
            max_all = max(max_all, len(seq))
            crc = zlib.crc32(line, crc)
            pos += len(line)
            n += 1
        spanned = min(n, limit) if limit is not None else n
        if spanned > first:
            spans.append(Span(start, pos - start, spanned - first, first, crc, chunk_max))
    hashes = np.frombuffer(mutant_hashes, dtype=np.uint64) if mutant_hashes else np.zeros(0, np.uint64)
    duplicates = len(hashes) - len(np.unique(hashes))
    return Scan(header, n, tuple(spans), max_all, file_crc, counts[False], counts[True], duplicates, with_t, with_u)


PARALLEL_BYTES = 32 << 20  # below this, scanning in this process beats starting others


def scan_files(paths: list[Path], chunk_rows: int, limit: int | None = None) -> list[Scan]:
    """``scan`` of each file, in order. Many large files (SELEX-scale assays) are scanned in parallel
    processes, one per CPU: the scan is pure Python over every line. It stays on the driver, before Ray
    starts, so a bad input is refused before a cluster is paid for (Ray tasks would need one)."""
    workers = min(len(paths), os.cpu_count() or 1)
    if workers < 2 or sum(p.stat().st_size for p in paths) < PARALLEL_BYTES:
        return [scan(p, chunk_rows, limit) for p in paths]
    # forkserver, not fork: the driver may already hold Ray's threads (an in-process ray.init)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        return list(pool.map(scan, paths, [chunk_rows] * len(paths), [limit] * len(paths)))


def read_span(path: Path, offset: int, length: int, crc: int | None = None) -> pd.DataFrame:
    """The rows of one span: the header line and the span's bytes are all that is read. With ``crc``
    (the scan's), a user error if those bytes changed since the scan."""
    with open(path, "rb") as fh:
        head = fh.readline()
        fh.seek(offset)
        data = fh.read(length)
    head = without_bom(head)
    if crc is not None and (len(data) != length or zlib.crc32(data, zlib.crc32(head)) != crc):
        raise GlmscoreError(f"{path} changed while the job ran; rerun to rescan it.")
    header = [h.strip() for h in head.decode("utf-8", "replace").rstrip("\r\n").split(",")]
    return parse(io.BytesIO(data), path, header=header)


def parse(source, path: Path, header: list[str] | None = None) -> pd.DataFrame:
    """An assay's CSV rows as a frame (``header``: the column names when ``source`` has no header line);
    ``DMS_score`` as float64; a value that is not a finite number (empty, NaN, text, inf) is NaN: no label."""
    try:
        frame = pd.read_csv(source, dtype={"mutant": str, "sequence": str}, keep_default_na=False,
                            na_values={"DMS_score": list(NA_SCORES)}, encoding="utf-8-sig",
                            header=None if header else "infer", names=header)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise GlmscoreError(f"{path.name} is not a readable assay CSV ({str(exc).splitlines()[0]}).") from None
    numeric = pd.to_numeric(frame["DMS_score"], errors="coerce").astype(np.float64)
    frame["DMS_score"] = numeric.where(np.isfinite(numeric))
    return frame
