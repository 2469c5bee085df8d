"""glmscore's one cache root and its rooms: ``$GLMSCORE_CACHE``, else ``$XDG_CACHE_HOME/glmscore`` (default
``~/.cache/glmscore``). Per user, never the machine's shared temporary folder: a cache another user made
first could feed this one's jobs (staged data, decompressed assays, weight digests, model environments).

Rooms: ``data`` (local copies of object-store inputs), ``gunzip`` (decompressed copies of ``.gz`` inputs
whose folder cannot be written), ``digests`` (weight digests by file stat), ``envs`` (a model's own pip
environment; ``$GLMSCORE_ENVS`` puts it elsewhere, as tests do to share one across runs)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from glmscore.models.errors import GlmscoreError


def cache_root() -> Path:
    """The cache root, made private (0700) if new; one that is a link or belongs to another user is refused."""
    root = Path(os.environ.get("GLMSCORE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glmscore")
    return _private(root.absolute())


def cache_dir(room: str) -> Path:
    """A room of the cache (``data``, ``gunzip``, ``digests``, ``envs``), made private if new."""
    if room == "envs" and os.environ.get("GLMSCORE_ENVS"):
        return _private(Path(os.environ["GLMSCORE_ENVS"]).absolute())
    return _private(cache_root() / room)


def _private(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise GlmscoreError(f"the cache folder {path} is a link or not a folder; remove it or set GLMSCORE_CACHE.")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise GlmscoreError(f"the cache folder {path} belongs to another user (uid {info.st_uid}); set GLMSCORE_CACHE "
                            "to a folder of your own.")
    return path


def secret(name: str) -> bytes:
    """A random key private to this user (``keys/<name>``, 0600, made once with O_EXCL): what glmscore signs state
    with that it will later trust (an interrupted Tune experiment it may restore)."""
    path = cache_dir("keys") / name
    if not os.path.lexists(path):  # written whole under another name, then linked: a reader never sees half a key
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(32))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process made it first: theirs is the key
        finally:
            os.unlink(tmp)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o077):
            raise GlmscoreError(f"the key {path} is readable by others or not yours; remove it (glmscore makes a new one).")
        key = fh.read()
    if len(key) < 32:
        raise GlmscoreError(f"the key {path} is damaged; remove it (glmscore makes a new one).")
    return key
