"""The benchmarks' data, fetched and verified: ``glmscore data get <name>`` and the names ``--data`` accepts.

A registered name (``nullsette``, ``nabench``, ``causal-eqtl``, ``hg38``) stands for public files at pinned
locations (a repository commit, a dataset revision). ``glmscore data get NAME`` downloads them into this
user's cache (``pipelines/caches.py``: ``<cache>/data/get/NAME``, private, 0700), checks each file's
digest, unpacks archives and says where the data is; ``--data NAME`` (and a variants build's ``--genome``
and ``--variants``) then means that folder or file. An existing local path always wins over a name; a
released archive given as ``--data`` (``processed_data.zip``, ``NABench_DMS_assays.zip``) is unpacked once
into the cache under its SHA-256 and the folder is used. Names are resolved on the driver only: workers are
given the resolved path and never download.

Digests. Where the publisher gives one it is pinned here (the NABench metadata files' SHA-256, computed
from the repository at the pinned commit; the Nullsette archive's git blob id at the pinned commit, which
is a SHA-1 over ``blob <size>\\0<bytes>`` and what GitHub serves at that commit). Where none is published
(the variants labels, the hg38 FASTA, the NABench assay archive) the entry says so (``sha256=None``) and the
first download is trusted: its SHA-256 is printed and recorded in ``digests.json`` beside the data, and a
later download must match it; ``--sha256`` pins one yourself (it replaces the registry's pin for that file).

Safety. Downloads go to ``<file>.part`` and resume with an HTTP Range request after an interruption; a file
is verified before it is used; archives are unpacked into a temporary folder beside the target, a marker
file (``.glmscore-data.json``: every file and its size) is written last and the folder is renamed into
place, so an interrupted or refused unpack never leaves a folder that looks complete. Zip members with
absolute paths, ``..`` or drive letters (zip-slip) and symbolic links are refused. urllib (standard library)
fetches, with a timeout, through the proxy of ``HTTPS_PROXY``/``HTTP_PROXY`` (urllib's default handlers);
credentials in a URL are never printed.

Tests only: ``GLMSCORE_DATA_MIRROR`` (an environment variable, read here and nowhere else; no data, sweep or
configuration file can set it) is a base URL that serves the registered files under their file names
(``$GLMSCORE_DATA_MIRROR/processed_data.zip``); every registered URL is replaced by it.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.caches import cache_dir
from glmscore.pipelines.console import say

MIRROR_ENV = "GLMSCORE_DATA_MIRROR"
TIMEOUT_S = 60  # per socket operation (connect, each read), not the whole download
CHUNK = 1 << 20
MARKER = ".glmscore-data.json"
IGNORED = ("__MACOSX", ".DS_Store")


@dataclass(frozen=True)
class Remote:
    """One published file: where it is, what it must hash to (when known) and what to do with it."""

    filename: str
    url: str | None  # None: no published URL (``--from`` gives one)
    sha256: str | None = None
    git_blob: str | None = None  # git's blob id at the pinned commit (SHA-1 of "blob <size>\0" + bytes)
    unpack: str | None = None  # "zip": unpacked into the folder; "gunzip": decompressed (and indexed); None: as is
    note: str = ""  # where the pin comes from, or why there is none


@dataclass(frozen=True)
class Source:
    name: str
    title: str
    files: tuple[Remote, ...]
    main: str = ""  # what the name stands for: "" the folder, else a file in it
    check: Callable[[Path], str | None] | None = None  # the layout, checked before the folder is put in place
    aliases: tuple[str, ...] = ()

    @property
    def primary(self) -> Remote:
        """The file ``--from`` and ``--sha256`` apply to (the archive or the one file)."""
        return self.files[-1]


def _has(pattern: str, what: str) -> Callable[[Path], str | None]:
    def check(folder: Path) -> str | None:
        return None if any(folder.glob(pattern)) else f"it holds no {what}"
    return check


def _nabench_layout(folder: Path) -> str | None:
    if not (folder / "metadata.csv").is_file():
        return "it has no metadata.csv"
    if not any(p.name not in ("metadata.csv", "metadata_rfam_id.csv") for p in folder.glob("*.csv*")):
        return "it holds no assay (<DMS_ID>.csv) beside metadata.csv"
    return None


NULLSETTE_COMMIT = "be792567a1e48f4313e4289971cf62757f259f16"
NABENCH_COMMIT = "0a75bc2e79a364f44e28a11e80ae7d861984ad37"
GLRB_REVISION = "1575e22e185371f31365424ed36ba54a547910ff"

SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("nullsette", "Nullsette: the released processed_data (GLM-Nullsette-Benchmark, MIT)", (
        Remote("processed_data.zip",
               f"https://raw.githubusercontent.com/cellethology/GLM-Nullsette-Benchmark/{NULLSETTE_COMMIT}/data/processed_data.zip",
               git_blob="fbbbc5b2823b311416d0de1387591016bb7bf3be", unpack="zip",
               note="pinned: git blob id of data/processed_data.zip at the commit (no SHA-256 is published; the first "
                    "download's SHA-256 is recorded too)"),
    ), check=_has("**/nonmutant.txt", "Nullsette dataset (<dataset>/nonmutant.txt)")),
    Source("nabench", "NABench: metadata (mrzzmrzz/NABench) and the DMS assay archive", (
        Remote("metadata.csv", f"https://raw.githubusercontent.com/mrzzmrzz/NABench/{NABENCH_COMMIT}/metadata.csv",
               sha256="b6005c6bbc3522e292873fcb15a3c2570f9ea626ebd0bef07652a10341a77742",
               note="pinned: SHA-256 of metadata.csv at the commit (36,001 bytes)"),
        Remote("metadata_rfam_id.csv", f"https://raw.githubusercontent.com/mrzzmrzz/NABench/{NABENCH_COMMIT}/metadata_rfam_id.csv",
               sha256="384af3833719525c4bf63d3f98ead18658b3fb3cec417eeb5e150454cec25647",
               note="pinned: SHA-256 of metadata_rfam_id.csv at the commit (6,019 bytes)"),
        Remote("NABench_DMS_assays.zip", None, unpack="zip",
               note="no URL and no digest published (the NABench README names a placeholder host): give the archive "
                    "with --from; trusted on first use"),
    ), check=_nabench_layout),
    Source("causal-eqtl", "causal variants: the Genomics Long-Range Benchmark's variant_effect_causal_eqtl (CC BY-NC-SA 4.0)", (
        Remote("All_Tissues.csv",
               "https://huggingface.co/datasets/InstaDeepAI/genomics-long-range-benchmark/resolve/"
               f"{GLRB_REVISION}/variant_effect_causal_eqtl/All_Tissues.csv",
               note="no digest known here (a Git LFS file of the dataset at the pinned revision): trusted on first use"),
    ), main="All_Tissues.csv", check=_has("All_Tissues.csv", "All_Tissues.csv"),
        aliases=("variant_effect_causal_eqtl", "variants")),
    Source("hg38", "the hg38 genome FASTA (UCSC), decompressed and indexed for `glmscore variants build --genome`", (
        Remote("hg38.fa.gz", "https://hgdownload.soe.ucsc.edu/goldenPath/hg38/bigZips/hg38.fa.gz", unpack="gunzip",
               note="no SHA-256 published (UCSC lists MD5s only, and the file at this URL is not versioned): trusted "
                    "on first use"),
    ), main="hg38.fa", check=_has("hg38.fa.fai", "hg38.fa.fai index")),
)}


def lookup(name: str) -> Source | None:
    key = name.strip().lower()
    for source in SOURCES.values():
        if key == source.name or key in source.aliases:
            return source
    return None


def home(source: Source) -> Path:
    return cache_dir("data") / "get" / source.name


def shown(url: str) -> str:
    """``url`` without credentials (``https://user:secret@host/x`` -> ``https://host/x``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        parts = parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else ""))
    return urllib.parse.urlunsplit(parts._replace(query="", fragment=""))  # a query may carry a signature


def _url(remote: Remote) -> str | None:
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{remote.filename}" if mirror else remote.url


# ---------------------------------------------------------------- resolving --data


# the command-line flags whose value may be a registered data name (``glmscore data get``), resolved by the CLI
DATA_FLAGS = ("data", "genome", "variants")


def resolve_data(value, flag: str = "--data", *, archives: bool = True):
    """What ``value`` given to ``flag`` means on this machine: an existing path as it is (a ``.zip`` archive
    unpacked once into the cache, when ``archives``), a registered name its fetched, verified folder or file,
    anything else unchanged (the command's own check names it)."""
    if not isinstance(value, (str, Path)) or not str(value) or "://" in str(value):
        return value
    path = Path(value).expanduser()
    if path.exists():
        if archives and path.is_file() and path.name.lower().endswith(".zip"):
            return str(unpacked_archive(path))
        return value
    source = lookup(str(value)) if "/" not in str(value) and os.sep not in str(value) else None
    if source is None:
        return value
    return str(fetched(source, flag))


def fetched(source: Source, flag: str = "--data") -> Path:
    """The cached, verified folder (or main file) of ``source``; one sentence when it is not fetched."""
    folder = home(source) / "data"
    problem = _incomplete(folder)
    if problem == "absent":
        raise GlmscoreError(f"{flag} {source.name}: the {source.name} data is not fetched on this machine; run "
                            f"`glmscore data get {source.name}` first (or give a local path).")
    if problem:
        raise GlmscoreError(f"{flag} {source.name}: the cached copy in {folder} {problem}; run "
                            f"`glmscore data get {source.name} --force` to fetch it again.")
    return folder / source.main if source.main else folder


def _incomplete(folder: Path) -> str | None:
    """None when ``folder`` is a complete copy (its marker lists every file with its size), else why not."""
    marker = folder / MARKER
    if not folder.is_dir():
        return "absent"
    try:
        listing = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "is incomplete (no completion marker)"
    for rel, size in listing.items():
        try:
            if (folder / rel).stat().st_size != size:
                return f"has changed ({rel} is not the size it was)"
        except OSError:
            return f"has lost {rel}"
    return None


# ---------------------------------------------------------------- glmscore data get


def get(name: str, source_from: str | None = None, sha256: str | None = None, force: bool = False) -> Path:
    """``glmscore data get NAME``: fetch (or reuse), verify, unpack; returns what the name now stands for."""
    source = lookup(name)
    if source is None:
        raise GlmscoreError(f"no data named {name!r}; known: {', '.join(SOURCES)}.")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise GlmscoreError(f"--sha256 {sha256!r} is not a SHA-256 (64 hexadecimal digits).")
    root = home(source)
    folder = root / "data"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(root.with_name(f"{source.name}.lock")):
        if not force and source_from is None and _incomplete(folder) is None:
            say(f"{source.name}: already fetched and complete in {folder}")
            return fetched(source)
        downloads = root / "downloads"
        downloads.mkdir(mode=0o700, exist_ok=True)
        files: list[tuple[Remote, Path]] = []
        trusted: dict[str, dict] = {}
        try:
            for remote in source.files:
                given = source_from if remote is source.primary else None
                pin = sha256.lower() if sha256 and remote is source.primary else None
                path, record = _obtain(source, remote, downloads, given, pin, force)
                files.append((remote, path))
                trusted[remote.filename] = record
            _assemble(source, files, folder)
        except GlmscoreError:  # a refused archive is not kept (nor trusted): a rerun downloads it afresh
            for remote, path in files:
                if path.parent == downloads and remote.unpack:
                    path.unlink(missing_ok=True)
            raise
        _record(source, trusted)
        for remote, path in files:  # the folder holds the data now; a download is not kept twice
            if path.parent == downloads:
                path.unlink(missing_ok=True)
    say(f"{source.name}: verified and unpacked into {folder}")
    return fetched(source)


def _obtain(source: Source, remote: Remote, downloads: Path, given: str | None, pin: str | None,
            force: bool) -> tuple[Path, dict]:
    """The verified local file of ``remote``: a local ``--from`` file, or a download (resumed if a ``.part``
    is there; a file placed by hand at its download path is taken as downloaded), checked against its pin."""
    if given and "://" not in given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise GlmscoreError(f"--from {given}: no such file.")
        return path, _verify(source, remote, path, pin, str(path.resolve()), delete=False)
    url = given or _url(remote)
    dest = downloads / remote.filename
    if force and dest.exists():
        dest.unlink()
    if not dest.is_file():
        if url is None:
            raise GlmscoreError(f"{remote.filename} of {source.name} has no published download URL ({remote.note}); "
                                f"run `glmscore data get {source.name} --from /path/to/{remote.filename}` (or --from an "
                                "https URL).")
        _download(source, remote, url, dest)
    return dest, _verify(source, remote, dest, pin, shown(url) if url else str(dest), delete=True)


def _download(source: Source, remote: Remote, url: str, dest: Path) -> None:
    """``url`` into ``dest`` through ``dest.part``, resuming a partial download with a Range request."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "glmscore", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    where = shown(url)
    by_hand = f"run `glmscore data get {source.name} --from /path/to/{remote.filename}`" if remote is source.primary \
        else f"place it at {dest} and run `glmscore data get {source.name}` again"
    offline = (f"cannot download {remote.filename} from {where} ({{why}}); on a machine without network, fetch it "
               f"elsewhere and {by_hand}.")
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part is whole already: verified below like any download
            part.rename(dest)
            return
        raise GlmscoreError(offline.format(why=f"HTTP {exc.code} {exc.reason}")) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise GlmscoreError(offline.format(why=str(getattr(reason, "strerror", None) or reason))) from None
    with response:
        resumed = have and response.status == 206 and \
            (response.headers.get("Content-Range") or "").startswith(f"bytes {have}-")
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        say(f"{source.name}: {'resuming' if resumed else 'downloading'} {remote.filename} from {where}"
            + (f" at byte {have:,}" if resumed else "") + (f" ({total:,} bytes)" if total else ""))
        last = time.monotonic()
        with open(part, "ab" if resumed else "wb") as out:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    if time.monotonic() - last > 10:
                        last = time.monotonic()
                        say(f"{source.name}: {out.tell():,}" + (f" of {total:,}" if total else "") + " bytes")
            except (OSError, http.client.HTTPException, ValueError) as exc:  # reset, timeout, IncompleteRead
                out.flush()
                raise GlmscoreError(f"the download of {remote.filename} from {where} stopped after {out.tell():,} bytes "
                                    f"({type(exc).__name__}); run the same command again to resume it.") from None
            got = out.tell()
    if total is not None and got != total:
        raise GlmscoreError(f"the download of {remote.filename} from {where} stopped after {got:,} of {total:,} bytes; "
                            "run the same command again to resume it.")
    part.rename(dest)


def _hashes(path: Path) -> tuple[str, str]:
    """(SHA-256, git blob id) of a file, in one pass."""
    size = path.stat().st_size
    sha, blob = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            blob.update(chunk)
    return sha.hexdigest(), blob.hexdigest()


def _records(source: Source) -> tuple[Path, dict]:
    record_file = home(source) / "digests.json"
    try:
        return record_file, json.loads(record_file.read_text())
    except (OSError, ValueError):
        return record_file, {}


def _verify(source: Source, remote: Remote, path: Path, pin: str | None, where: str, delete: bool) -> dict:
    """``path`` against ``--sha256``, else the registry's pin, else the digest recorded on its first use. A
    mismatch deletes a download and is one sentence. Returns what to record once the data is in place."""
    sha, blob = _hashes(path)
    record_file, records = _records(source)
    recorded = records.get(remote.filename, {}).get("sha256")
    if pin:
        expected, kind, got = pin, "given with --sha256", sha
    elif remote.sha256:
        expected, kind, got = remote.sha256, "pinned in glmscore", sha
    elif remote.git_blob:
        expected, kind, got = remote.git_blob, "the git blob id pinned in glmscore", blob
    elif recorded:
        expected, kind, got = recorded, f"recorded on its first download in {record_file}", sha
    else:
        expected, kind, got = None, "", sha
    if expected is not None and got != expected:
        if delete:
            path.unlink(missing_ok=True)
        what = "git blob id" if got == blob and got != sha else "SHA-256"
        raise GlmscoreError(f"{remote.filename} from {where} has {what} {got}, not {expected} ({kind}); "
                            + ("it was deleted and " if delete else "") + "nothing was unpacked (a damaged transfer or a "
                            "changed upstream file): run the command again, or pass --sha256 " + sha
                            + " if you trust this copy.")
    return {"sha256": sha, "size": path.stat().st_size, "from": where, "first_use": expected is None,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _record(source: Source, trusted: dict[str, dict]) -> None:
    """The digests of files now in place, into ``digests.json`` beside the data (what later downloads must match)."""
    record_file, records = _records(source)
    for filename, record in trusted.items():
        if record.pop("first_use"):
            say(f"{source.name}: {filename} has SHA-256 {record['sha256']} (no digest is published: trusted on first "
                f"use and recorded in {record_file}; later downloads must match it, --sha256 pins another)")
        if records.get(filename, {}).get("sha256") != record["sha256"]:
            records[filename] = record
    _write_json(record_file, records)


# ---------------------------------------------------------------- unpacking


def _assemble(source: Source, files: list[tuple[Remote, Path]], folder: Path) -> None:
    """Every file of ``source`` into a temporary folder beside ``folder``; the layout checked, the marker
    written last, then renamed into place (an older copy is moved aside and removed)."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        staged = tmp / "data"
        staged.mkdir()
        for remote, path in files:
            if remote.unpack == "zip":
                _merge(_unzip(path, tmp / f"zip-{remote.filename}", remote.filename), staged)
            elif remote.unpack == "gunzip":
                _gunzip(path, staged / remote.filename.removesuffix(".gz"))
            else:
                shutil.copyfile(path, staged / remote.filename)
        problem = source.check(staged) if source.check else None
        if problem:
            raise GlmscoreError(f"the files fetched for {source.name} are not its layout: {problem}; nothing was put "
                                "in place.")
        _finish(staged, {"name": source.name})
        _replace(staged, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _finish(folder: Path, about: dict) -> None:
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    _write_json(folder / MARKER, {**about, "files": files})


def _replace(staged: Path, folder: Path) -> None:
    if folder.exists():
        old = folder.with_name(f".old-{os.getpid()}-{time.monotonic_ns()}")
        folder.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    staged.rename(folder)


def _merge(root: Path, into: Path) -> None:
    for child in root.iterdir():
        shutil.move(str(child), str(into / child.name))


def _unzip(archive: Path, into: Path, label: str) -> Path:
    """Every member of ``archive`` under ``into`` (zip-slip and links refused, CRCs checked); returns the data
    root: ``into``, or the one folder it holds (``processed_data/``), followed down."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                _check_member(info, label)
            for info in members:
                parts = PurePosixPath(info.filename).parts
                if not parts or parts[0] in IGNORED or parts[-1] in IGNORED:
                    continue
                target = into.joinpath(*parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise GlmscoreError(f"{label} is not a readable zip archive ({exc}); nothing was put in place.") from None
    root = into
    while root.is_dir():
        entries = [p for p in root.iterdir() if p.name not in IGNORED]
        if len(entries) != 1 or not entries[0].is_dir():
            break
        root = entries[0]
    return root if root.is_dir() else into


def _check_member(info: zipfile.ZipInfo, label: str) -> None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\x00" in name:
        raise GlmscoreError(f"{label} has a member that would be written outside its folder ({name!r}: an absolute "
                            "path or '..'); refused, nothing was unpacked.")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise GlmscoreError(f"{label} has a symbolic link ({name!r}); refused, nothing was unpacked.")


def _gunzip(path: Path, target: Path) -> None:
    """``path`` decompressed into ``target``, streaming; a FASTA gets its ``.fai`` (samtools' format) on the way."""
    say(f"decompressing {path.name} into {target.name}" + (" and indexing it" if target.suffix == ".fa" else "") + " (once)")
    index = FaiWriter() if target.suffix in (".fa", ".fasta") else None
    try:
        with gzip.open(path, "rb") as src, open(target, "xb") as dst:
            for line in src:
                if index is not None:
                    index.line(line)
                dst.write(line)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise GlmscoreError(f"{path.name} is not a readable gzip file or FASTA ({exc}); nothing was put in place.") from None
    if index is not None:
        _write_text(Path(str(target) + ".fai"), index.text())


class FaiWriter:
    """A FASTA index (``.fai``: name, length, offset, bases per line, bytes per line) built from the lines as
    they are written, so a downloaded genome needs no second pass and no samtools."""

    def __init__(self):
        self.rows: list[str] = []
        self.offset = 0
        self.record: list | None = None  # [name, length, offset, bases per line, bytes per line, short line seen]

    def line(self, line: bytes) -> None:
        self.offset += len(line)
        if line.startswith(b">"):
            self._close()
            self.record = [line[1:].split()[0].decode(), 0, self.offset, 0, 0, False]
            return
        record = self.record
        bases = len(line.rstrip(b"\r\n"))
        if record is None or not bases:
            return
        if record[3] == 0:
            record[3], record[4] = bases, len(line)
        elif record[5] or bases > record[3]:
            raise ValueError(f"record {record[0]} has lines of different lengths; it cannot be indexed")
        elif bases < record[3]:
            record[5] = True  # the last line of a record may be short
        record[1] += bases

    def _close(self) -> None:
        if self.record is not None:
            self.rows.append("\t".join(map(str, self.record[:5])))

    def text(self) -> str:
        self._close()
        self.record = None
        return "".join(row + "\n" for row in self.rows)


# ---------------------------------------------------------------- archives given as --data


def unpacked_archive(archive: Path) -> Path:
    """A released archive given as ``--data``: unpacked once into ``<cache>/data/archives/<sha256>`` (zip-slip
    and links refused, CRCs checked, marker last, renamed into place) and that folder returned."""
    archive = archive.resolve()
    room = cache_dir("data") / "archives"
    info = archive.stat()
    key = hashlib.sha256(f"{archive}\0{info.st_size}\0{info.st_mtime_ns}".encode()).hexdigest()[:32]
    index = room / "by-file" / f"{key}.sha256"
    try:
        digest = index.read_text().strip()
    except OSError:
        say(f"hashing {archive.name} once (SHA-256, the key of its unpacked copy)")
        digest = _hashes(archive)[0]
        index.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_text(index, digest)
    folder = room / digest
    if _incomplete(folder) is None:
        return folder
    with _locked(room / f"{digest}.lock"):
        if _incomplete(folder) is None:
            return folder
        if _hashes(archive)[0] != digest:
            index.unlink(missing_ok=True)
            raise GlmscoreError(f"{archive} changed while it was being read; run the command again.")
        say(f"unpacking {archive.name} into {folder} (once)")
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=room))
        try:
            root = _unzip(archive, tmp / "zip", archive.name)
            staged = tmp / "data"
            staged.mkdir()
            _merge(root, staged)
            _finish(staged, {"archive": archive.name, "sha256": digest})
            _replace(staged, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ---------------------------------------------------------------- small helpers


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def describe() -> str:
    """``glmscore data list``: each name, whether it is fetched here, and each file's pin."""
    lines = []
    for source in SOURCES.values():
        folder = home(source) / "data"
        state = "fetched: " + str(fetched(source)) if _incomplete(folder) is None else "not fetched"
        lines.append(f"{source.name:12s} {source.title} ({state})")
        for remote in source.files:
            lines.append(f"  {remote.filename}: {remote.url or 'no published URL'}; {remote.note}")
    return "\n".join(lines)
