"""Text inputs as people really have them: a UTF-8 byte-order mark (spreadsheets and Windows editors write one)
is never part of the first line, and a gzip-compressed file reads as its text. One place decides both."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

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
