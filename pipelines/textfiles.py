"""Text inputs as people really have them: a UTF-8 byte-order mark (spreadsheets and Windows editors write one)
is never part of the first line, and a gzip-compressed file reads as its text. One place decides both."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

from glmscore.models.errors import GlmscoreError

BOM = b"\xef\xbb\xbf"


def without_bom(head: bytes) -> bytes:
    """A file's first line (bytes) without its byte-order mark."""
    return head[len(BOM):] if head.startswith(BOM) else head


def open_text(path: str | Path):
    """A text file (plain or gzip-compressed, decided by its bytes, not its name) for reading, without its
    byte-order mark, newlines as written (``csv`` wants them so)."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return io.TextIOWrapper(gzip.open(path), encoding="utf-8-sig", newline="") if gz else \
        open(path, encoding="utf-8-sig", newline="")


# Bounds on what one input may cost before any of its rows is checked (a file from someone else can be built to
# cost gigabytes: one 300 MB line, 200,000 columns, a 194 KB .gz that unpacks to 200 MB). Generous for real
# benchmark data; each can be raised through its environment variable when a real input needs more.
def _bound(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def max_line_bytes() -> int:
    """One line of a FASTA or CSV input (a Nullsette cassette is ~1 kb; NABench's longest rows ~10 kb)."""
    return _bound("GLMSCORE_MAX_LINE_BYTES", 64 << 20)


def max_fields() -> int:
    """The fields of a CSV header."""
    return _bound("GLMSCORE_MAX_FIELDS", 1000)


def max_gunzip_ratio() -> tuple[int, int]:
    """(ratio, after): a ``.gz`` whose output passes ``after`` bytes at more than ``ratio`` times its own size."""
    return _bound("GLMSCORE_MAX_GUNZIP_RATIO", 1000), _bound("GLMSCORE_GUNZIP_CHECK_AFTER", 64 << 20)


def bounded_lines(fh, path, start: int = 1):
    """``(line number, line)`` of a binary file, each line at most ``max_line_bytes``: a longer one is one sentence
    naming the file and the line, read no further than the bound."""
    limit = max_line_bytes()
    lineno = start
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        if len(line) > limit:
            raise GlmscoreError(f"{path}: line {lineno} is longer than {limit:,} bytes (GLMSCORE_MAX_LINE_BYTES); it was "
                                "not read further. Is this the right file?")
        yield lineno, line
        lineno += 1


def check_header_fields(n: int, path) -> None:
    if n > max_fields():
        raise GlmscoreError(f"{path}: line 1 has {n:,} fields, more than {max_fields():,} (GLMSCORE_MAX_FIELDS); "
                            "is this the right file?")
