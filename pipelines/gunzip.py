"""gzip-compressed inputs (SELEX-scale NABench assays, Nullsette FASTA), read through a copy decompressed once.

A job's units are byte ranges of a file, read by many workers at once; a gzip stream has no random
access (a range deep in it costs decompressing everything before it), so a ``.gz`` input is decompressed
once, streaming, into ``.glmscore-gunzip/`` beside it (or under ``$GLMSCORE_CACHE/gunzip`` when that
folder is not writable), and the job scans and reads the copy. The copy is reused while the ``.gz``
file's size and modification time are unchanged, and replaced when they change; units keep their CRCs
of the decompressed bytes, so an edited row still recomputes only its own unit. A worker that does not
see the driver's copy (another node, a staged object-store input) makes its own the same way.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import tempfile
import zlib
from pathlib import Path

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.caches import cache_dir
from glmscore.pipelines.console import say
from glmscore.pipelines.textfiles import max_gunzip_ratio

CACHE = ".glmscore-gunzip"


def is_gzip(path: Path) -> bool:
    return Path(path).name.endswith(".gz")


def plain_name(path: Path) -> str:
    """``assay.csv.gz`` -> ``assay.csv``."""
    return Path(path).name[: -len(".gz")]


def in_cache(path: Path) -> bool:
    """Whether ``path`` lies in a decompressed-copy folder (a dataset search must not find the copies)."""
    return CACHE in Path(path).parts


def readable(path: Path) -> Path:
    """``path`` itself, or for a .gz file its decompressed copy."""
    return decompressed(path) if is_gzip(path) else Path(path)


def where(path: Path, source: Path) -> dict:
    """A unit's file fields: the plain file it reads (``path``) and, when that is a copy, the .gz
    ``source`` it was made from."""
    return {"path": str(Path(path).resolve()), **({"gz": str(Path(source).resolve())} if is_gzip(source) else {})}


def unit_file(fields: dict) -> Path:
    """The plain file a unit's byte range is of (``where``): a .gz input's copy, made here if this node
    has none."""
    return decompressed(Path(fields["gz"])) if "gz" in fields else Path(fields["path"])


def _folders(path: Path) -> list[Path]:
    home = cache_dir("gunzip")
    key = hashlib.blake2b(str(path.parent.resolve()).encode(), digest_size=8).hexdigest()
    return [path.parent / CACHE, home / key]


def decompressed(path: Path) -> Path:
    """The decompressed copy of the gzip file ``path``, made now if there is none for its current
    size and modification time."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise GlmscoreError(f"cannot read {path}: {exc.strerror}.") from None
    stamp = f"{st.st_size} {st.st_mtime_ns}"
    for folder in _folders(path):
        target, source = folder / plain_name(path), folder / f"{plain_name(path)}.source"
        if _current(target, source, stamp):
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = open(folder / f"{plain_name(path)}.lock", "w")
        except OSError:
            continue  # a read-only data folder: the next place
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process of a machine decompresses; the others wait for it
            if not _current(target, source, stamp):
                _decompress(path, target, folder)
                source.write_text(stamp)
        return target
    raise GlmscoreError(f"{path} is gzip-compressed and no folder to decompress it into is writable "
                        f"(tried {', '.join(str(f) for f in _folders(path))}); set GLMSCORE_CACHE or gunzip it.")


def _current(target: Path, source: Path, stamp: str) -> bool:
    try:
        return source.read_text() == stamp and target.exists()
    except OSError:
        return False


class Unbounded(GlmscoreError):
    """A decompression past its bound (``textfiles.max_gunzip_ratio``)."""


def _decompress(path: Path, target: Path, folder: Path) -> None:
    say(f"decompressing {path} once into {target} (inputs are read by byte range; the copy is "
          "reused while the .gz is unchanged)")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.")
    try:
        ratio, after = max_gunzip_ratio()
        packed, written = max(path.stat().st_size, 1), 0
        with os.fdopen(fd, "wb") as dst, gzip.open(path, "rb") as src:
            while block := src.read(1 << 20):
                dst.write(block)
                written += len(block)
                if written > after and written > ratio * packed:
                    raise Unbounded(f"{path} unpacks to more than {ratio:,} times its {packed:,} bytes "
                                    f"(GLMSCORE_MAX_GUNZIP_RATIO); stopped at {written:,} bytes. Is this the right file?")
        os.replace(tmp, target)
    except Unbounded:
        Path(tmp).unlink(missing_ok=True)
        raise
    except (OSError, EOFError, zlib.error) as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno is not None:
            raise GlmscoreError(f"cannot decompress {path} into {folder}: {exc.strerror}.") from None
        raise GlmscoreError(f"{path} is not a readable gzip file ({exc}).") from None
