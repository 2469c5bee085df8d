"""What identifies a result beyond its configuration: the weights' content, glmscore's version.

A local model directory (or a background FASTA) is identified by a SHA-256 of its files' names and
bytes, so re-saving different weights into the same directory makes a different fingerprint. Hashing
multi-GB weights takes seconds, so the digest is cached under ``$GLMSCORE_CACHE`` (default
``~/.cache/glmscore``) keyed by every file's name, size and modification time: it is computed once per
version of the files.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.caches import cache_dir

HASH_BLOCK = 1 << 22  # bytes read at a time


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))


def content_digest(location: str) -> str:
    """``sha256:<hex>`` of a file or a directory's files (relative names and bytes), cached by stat."""
    path = Path(location)
    if not path.exists():
        raise GlmscoreError(f"{location} does not exist.")
    files = _files(path)
    base = path if path.is_dir() else path.parent
    stats = [(str(f.relative_to(base)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha256(json.dumps([str(path.resolve()), stats]).encode()).hexdigest()
    cache = cache_dir("digests") / f"{key}.json"
    try:
        return json.loads(cache.read_text())["digest"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for f, (name, _, _) in zip(files, stats):
        h.update(name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(HASH_BLOCK):
                h.update(block)
    digest = f"sha256:{h.hexdigest()}"
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"digest": digest, "path": str(path.resolve())}))
    except OSError:
        pass  # a read-only home only costs the hash again next time
    return digest


def glmscore_version() -> dict:
    """The installed version and, in a git checkout, the commit (``+dirty`` with uncommitted changes)."""
    try:
        version = metadata.version("glmscore")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parents[1]
    commit = None
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    check=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, check=True, timeout=10).stdout.strip()
            commit += "+dirty" if dirty else ""
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"version": version, "git_commit": commit}
