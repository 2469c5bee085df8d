"""One run at a time in a local output folder: ``locked`` (``flock`` on ``.glmscore.lock``, opened without
following a link, so a link planted there cannot make glmscore write through it), and ``refuse_links``."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import store
from glmscore.pipelines.shards.manifest import now

LOCK_FILE = ".glmscore.lock"
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


class ReadOnlyFolder(GlmscoreError):
    """The folder's lock cannot be written: a read-only file system or folder. A finished run there can still be
    rerun when nothing is left to compute (``score._finished_read_only``); anything else is refused."""


@contextmanager
def locked(out):
    """Hold a local ``out`` for one run: a second run into the same folder stops with one sentence instead
    of deleting the first one's temporary files. The lock (``flock``) dies with its process, so a killed
    run never leaves a folder locked. Object stores have no such lock (and no temporary files to lose:
    objects are written once under their final names); two runs into one prefix are the user's to avoid."""
    if store.is_uri(out):
        yield
        return
    path = Path(out) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno in READ_ONLY:
            raise ReadOnlyFolder(f"{out} is read-only ({exc.strerror.lower()}: glmscore cannot write its lock there); make "
                                 "it writable or choose another --out.") from None
        if exc.errno != errno.ELOOP:
            raise
        raise GlmscoreError(f"{path} is a symbolic link; glmscore never writes through links in an output folder: "
                            "remove it or choose another --out.") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise GlmscoreError(f"{out} is in use by another glmscore run ({holder}); wait for it to finish or choose another --out.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {now()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def refuse_links(out) -> None:
    """A local output folder holds no symbolic link: a lock, a ``dataset=`` folder or a shard that is a link would
    make glmscore write (or ``--overwrite`` delete) outside the folder. Checked before anything is written
    (``lstat``: links are never followed)."""
    if store.is_uri(out) or not os.path.isdir(out):
        return
    for folder, dirs, files in os.walk(out, followlinks=False):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                raise GlmscoreError(f"{out} holds a symbolic link ({os.path.relpath(path, out)} -> {os.readlink(path)}); "
                                    "glmscore never writes or deletes through links in an output folder: remove it or "
                                    "choose another --out.")
