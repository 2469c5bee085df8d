"""Where results live: a local (or shared) folder, or a prefix in object storage (``s3://``, ``gs://``...).

Everything goes through pyarrow's filesystems, so a score folder on S3 works like one on disk.
Credentials and endpoints come only from the standard chain of each store (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``,
instance roles), never from glmscore's options: a location is a plain URI, so manifests and logs never
hold a secret. Workers get the URI, not a filesystem object (which could carry resolved credentials),
and open it with their own environment.

Atomic writes: on a local disk, write a temporary name and rename; an object store publishes an object
whole when its upload completes (and has no rename), so objects are written once under their final name.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shutil
import socket
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.caches import cache_dir

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location) -> bool:
    """An object-store location (``s3://bucket/prefix``); local paths and ``file://`` are not."""
    return isinstance(location, str) and bool(_URI.match(location)) and not location.startswith("file://")


def redacted(location) -> str:
    """``location`` with any credentials written into it (``s3://KEY:SECRET@bucket``) replaced by ``***``."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", str(location))


def refuse_credentials(location, what: str) -> None:
    """Credentials never travel in a URI: they would be printed, logged and written to manifests. One sentence
    naming the standard chain (the URI is shown redacted)."""
    if is_uri(location) and "@" in str(location).split("://", 1)[1].split("/", 1)[0]:
        raise GlmscoreError(f"{what} {redacted(location)} carries credentials in the URI; glmscore takes them only from "
                            "the standard chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or "
                            "pod role; GOOGLE_APPLICATION_CREDENTIALS for gs://), so they never reach logs or manifests.")


def absolute(location) -> str | Path:
    """A location workers can use from any working directory."""
    if is_uri(location):
        return location.rstrip("/")
    return Path(str(location).removeprefix("file://")).resolve()


def join(base, *parts: str) -> str | Path:
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return Path(base).joinpath(*parts)


def local_path(location) -> Path | None:
    return None if is_uri(location) else Path(location)


@lru_cache(maxsize=16)
def _filesystem(root: str) -> pafs.FileSystem:
    """One filesystem per bucket and process (S3 clients resolve credentials and region once)."""
    return pafs.FileSystem.from_uri(root)[0]


def forget_filesystems() -> None:
    """Drop the filesystems made so far: the next access resolves endpoint and credentials again (after the
    standard AWS variables changed in this process)."""
    _filesystem.cache_clear()


def resolve(location) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it)."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    refuse_credentials(location, "location")
    scheme, rest = location.split("://", 1)
    bucket = rest.split("/", 1)[0]
    try:
        fs = _filesystem(f"{scheme}://{bucket}")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise GlmscoreError(f"cannot open {location}: {_first_line(exc)}.") from None
    return fs, rest.rstrip("/")


def _first_line(exc: BaseException) -> str:
    """The reason, once: pyarrow's local errors repeat the path before the OS's words
    ("Cannot create directory '/x'. Detail: [errno 1] Operation not permitted"); keep the OS's words."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    text = re.split(r"Detail: \[errno \d+\] ", text)[-1]
    return text.strip().splitlines()[0].rstrip(".")


def io_error(exc: OSError, what: str) -> GlmscoreError:
    """An I/O failure (full disk, no permission, a store that cannot be reached) as one sentence."""
    return GlmscoreError(f"cannot {what}: {_first_line(exc)}.")


def info(location) -> pafs.FileInfo:
    fs, path = resolve(location)
    try:
        return fs.get_file_info(path)
    except OSError as exc:
        raise io_error(exc, f"reach {location}") from None


def exists(location) -> bool:
    return info(location).type != pafs.FileType.NotFound


def is_file(location) -> bool:
    return info(location).type == pafs.FileType.File


def makedirs(location) -> None:
    fs, path = resolve(location)
    try:
        fs.create_dir(path, recursive=True)
    except OSError as exc:
        raise io_error(exc, f"create {location}") from None


def files(root, pattern: str = "*") -> list[str]:
    """Files under ``root`` whose name matches ``pattern``, as sorted paths relative to ``root``."""
    return sorted(rel for rel, info in _file_infos(root, allow_not_found=True)
                  if fnmatch.fnmatchcase(info.base_name, pattern))


def _file_infos(root, allow_not_found: bool) -> list[tuple[str, pafs.FileInfo]]:
    """(path relative to ``root``, info) of every file under ``root``; I/O errors as one sentence."""
    fs, path = resolve(root)
    try:
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=allow_not_found))
    except FileNotFoundError:
        raise GlmscoreError(f"{root} does not exist.") from None
    except OSError as exc:
        raise io_error(exc, f"list {root}") from None
    return [(f.path[len(path) + 1:], f) for f in found if f.type == pafs.FileType.File]


def read_bytes(location) -> bytes:
    """The file's bytes; FileNotFoundError when there is none."""
    fs, path = resolve(location)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(location)) from None
        raise io_error(exc, f"read {location}") from None


def write_bytes(location, data: bytes) -> None:
    """Atomically: readers see the old content or the new, never part of it."""
    def put(fs, path):
        with fs.open_output_stream(path) as f:
            f.write(data)
    write_with(location, put)


def write_with(location, write) -> None:
    """``write(filesystem, path)`` atomically (a Parquet writer, say), errors as one sentence."""
    fs, path = resolve(location)
    local = not is_uri(location)
    target = str(Path(path).with_name(f".{Path(path).name}.{socket.gethostname()}.{os.getpid()}.tmp")) if local else path
    try:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        write(fs, target)
        if local:
            os.replace(target, path)
    except OSError as exc:
        if local:
            Path(target).unlink(missing_ok=True)
        raise io_error(exc, f"write {location}") from None


def delete(location) -> None:
    fs, path = resolve(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise io_error(exc, f"delete {location}") from None


def upload_folder(local: Path, location) -> None:
    """Copy a finished local folder (a report) to ``location``."""
    for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        write_bytes(join(location, *path.relative_to(local).parts), path.read_bytes())


# ---------------------------------------------------------------- inputs from object storage

def data_version(location) -> str:
    """A digest of an object-store folder's listing (names, sizes, modification times): the key of its
    local copies, so a changed object is never read from a stale copy."""
    listing = sorted((rel, f.size, f.mtime_ns or 0) for rel, f in _file_infos(location, allow_not_found=False))
    blob = json.dumps([str(location).rstrip("/"), listing])
    return hashlib.blake2b(blob.encode(), digest_size=10).hexdigest()


def cache_root() -> Path:
    """Where the driver keeps local copies of object-store inputs (``pipelines/caches.py``: its ``data`` room)."""
    return cache_dir("data")


def stage(location, version: str, root: str | Path | None = None) -> Path:
    """A local copy of the object-store folder ``location`` as of ``version`` (``data_version``) under
    ``root`` (default ``cache_root()``), made once per machine: benchmark inputs are read by random access
    (genome indexes, tables), which local files do well and object stores do not. Workers are given the
    driver's ``root``, so every node's copy lies at the path the driver's units name. The copy is streamed
    beside its final name and renamed when complete (a lock keeps two processes of one machine from
    downloading it twice); a folder that changed since the job started is an error, not a mixed copy."""

    final = Path(root or cache_root()) / version
    if final.is_dir():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(final.parent / f"{version}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if final.is_dir():
                return final
            if data_version(location) != version:
                raise GlmscoreError(f"the data at {location} changed after the job started; run it again.")
            partial = final.parent / f"{version}.partial-{socket.gethostname()}-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            fs, path = resolve(location)
            pafs.copy_files(path, str(partial), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            os.rename(partial, final)
    except OSError as exc:
        raise io_error(exc, f"copy {location} to {final}") from None
    return final
