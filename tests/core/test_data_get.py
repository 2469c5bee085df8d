"""``glmscore data get`` and data names in ``--data``, against a loopback HTTP server (``GLMSCORE_DATA_MIRROR``, the
test-only override: the registered files under their names) serving archives built from ``../shared/data``: a good
download that ``score --data nullsette --dry-run`` then uses, a corrupted one, an interrupted one resumed with a
Range request, no network, and archives that would write outside their folder."""

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import downloads
from glmscore.pipelines.benchmarks.nullsette.source import build
from tests.conftest import shared_data


class Mirror:
    """Files by name on 127.0.0.1, with Range requests (206), and a file whose first response stops mid-body."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop_once: set[str] = set()
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                mirror.requests.append((name, self.headers.get("Range")))
                body = mirror.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
                    start = int(match[1])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if name in mirror.drop_once:  # the connection drops half-way through the body
                    mirror.drop_once.discard(name)
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def mirror():
    m = Mirror()
    yield m
    m.server.shutdown()
    m.server.server_close()


def _zip(path: Path, members: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path.read_bytes()


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, bytes]:
    """The released archives in miniature: processed_data.zip (kosuri, 8 cassettes, built from the shared component
    table) and NABench's metadata files and an assay archive of two real assays."""
    nullsette, nabench = shared_data("nullsette"), shared_data("nabench")
    tmp = tmp_path_factory.mktemp("archives")
    spec = tmp / "spec"
    spec.mkdir()
    shutil.copy(nullsette / "translocations.json", spec)
    (spec / "kosuri.tsv").write_text("".join((nullsette / "kosuri.tsv").read_text().splitlines(keepends=True)[:9]))
    build(spec, tmp / "processed_data")
    layout = {f"processed_data/{p.relative_to(tmp / 'processed_data')}": p.read_bytes()
              for p in sorted((tmp / "processed_data").rglob("*")) if p.is_file()}
    assays = {f"NABench_DMS_assays/{name}": (nabench / name).read_bytes()
              for name in ("Pitt_2010_ribozyme.csv", "Gregory_2018_mRNA.csv")}
    return {"processed_data.zip": _zip(tmp / "processed_data.zip", layout),
            "metadata.csv": (nabench / "metadata.csv").read_bytes(),
            "metadata_rfam_id.csv": (nabench / "metadata_rfam_id.csv").read_bytes(),
            "NABench_DMS_assays.zip": _zip(tmp / "NABench_DMS_assays.zip", assays)}


def _glmscore(*args: str, cache: Path, mirror: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and "proxy" not in k.lower()}
    env.update(GLMSCORE_CACHE=str(cache), GLMSCORE_DATA_MIRROR=mirror, NO_PROXY="127.0.0.1,localhost")
    return subprocess.run([sys.executable, "-m", "glmscore", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _no_complete_copy(cache: Path, name: str) -> None:
    folder = cache / "data" / "get" / name / "data"
    assert not (folder / downloads.MARKER).exists(), "a refused download left a folder that looks complete"
    leftovers = [p for p in (cache / "data" / "get" / name).rglob("*") if p.name.startswith(".tmp-")]
    assert not leftovers, leftovers


def test_good_download_then_data_name_resolves(tmp_path, mirror, archives, monkeypatch):
    mirror.files.update(archives)
    digest = _sha256(archives["processed_data.zip"])
    cache = tmp_path / "cache"
    # the registry pins the real archive's git blob id; this miniature is pinned by hand (--sha256)
    got = _glmscore("data", "get", "nullsette", "--sha256", digest, cache=cache, mirror=mirror.url, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    folder = Path(got.stdout.strip().splitlines()[-1])
    assert folder == cache / "data" / "get" / "nullsette" / "data"
    assert (folder / "kosuri" / "nonmutant.txt").is_file() and (folder / downloads.MARKER).is_file()
    assert oct((cache / "data").stat().st_mode & 0o777) == "0o700"
    assert json.loads((folder.parent / "digests.json").read_text())["processed_data.zip"]["sha256"] == digest
    assert not (folder.parent / "downloads" / "processed_data.zip").exists()  # not kept twice
    dry = _glmscore("score", "--benchmark", "nullsette", "--data", "nullsette", "--model", "kmer:3", "--out",
                    str(tmp_path / "scores"), "--dry-run", cache=cache, mirror=mirror.url, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "kosuri: 160 rows" in dry.stdout, dry.stdout  # 8 cassettes x (nonmutant + 19 mutants)
    monkeypatch.setenv("GLMSCORE_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    assert downloads.resolve_data("nullsette") == str(folder)
    (tmp_path / "nullsette").mkdir()  # a local folder of that name wins over the registered name
    assert downloads.resolve_data("nullsette") == "nullsette"
    # the released archive given as --data: unpacked once under its digest, verified, used
    archive = tmp_path / "processed_data.zip"
    archive.write_bytes(archives["processed_data.zip"])
    unpacked = Path(downloads.resolve_data(str(archive)))
    assert unpacked == cache / "data" / "archives" / digest and (unpacked / "kosuri" / "nonmutant.txt").is_file()
    assert (unpacked / downloads.MARKER).is_file() and downloads.resolve_data(str(archive)) == str(unpacked)


def test_registered_but_not_fetched_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("GLMSCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GlmscoreError, match=r"not fetched on this machine; run `glmscore data get nabench` first"):
        downloads.resolve_data("nabench")


def test_corrupted_download_is_refused_and_nothing_looks_complete(tmp_path, mirror, archives):
    cache = tmp_path / "cache"
    good = archives["processed_data.zip"]
    bad = bytearray(good)
    bad[len(bad) // 3] ^= 0xFF  # one byte flipped inside a member's compressed data
    mirror.files["processed_data.zip"] = bytes(bad)
    refused = _glmscore("data", "get", "nullsette", "--sha256", _sha256(good), cache=cache, mirror=mirror.url, cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"has SHA-256 {_sha256(bytes(bad))}, not {_sha256(good)} (given with --sha256)" in refused.stderr, refused.stderr
    _no_complete_copy(cache, "nullsette")
    assert not (cache / "data" / "get" / "nullsette" / "downloads" / "processed_data.zip").exists()
    # with no digest to hold it to, the zip's own CRCs refuse it: nothing in place, nothing trusted
    mirror.files.update({k: archives[k] for k in ("metadata.csv", "metadata_rfam_id.csv")})
    assays = bytearray(archives["NABench_DMS_assays.zip"])
    assays[len(assays) // 3] ^= 0xFF
    mirror.files["NABench_DMS_assays.zip"] = bytes(assays)
    crc = _glmscore("data", "get", "nabench", cache=cache, mirror=mirror.url, cwd=tmp_path)
    assert crc.returncode == 2 and "is not a readable zip archive" in crc.stderr, crc.stderr
    _no_complete_copy(cache, "nabench")
    records = cache / "data" / "get" / "nabench" / "digests.json"
    assert not records.exists() or "NABench_DMS_assays.zip" not in json.loads(records.read_text())


def test_interrupted_download_resumes_with_a_range_request(tmp_path, mirror, archives):
    cache = tmp_path / "cache"
    mirror.files.update(archives)
    mirror.drop_once.add("NABench_DMS_assays.zip")
    first = _glmscore("data", "get", "nabench", cache=cache, mirror=mirror.url, cwd=tmp_path)
    assert first.returncode == 2 and "Traceback" not in first.stderr
    assert "run the same command again to resume it" in first.stderr, first.stderr
    part = cache / "data" / "get" / "nabench" / "downloads" / "NABench_DMS_assays.zip.part"
    assert part.is_file() and 0 < part.stat().st_size < len(archives["NABench_DMS_assays.zip"])
    _no_complete_copy(cache, "nabench")
    kept = part.stat().st_size
    second = _glmscore("data", "get", "nabench", cache=cache, mirror=mirror.url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    ranges = [r for name, r in mirror.requests if name == "NABench_DMS_assays.zip"]
    assert ranges == [None, f"bytes={kept}-"], ranges  # the rerun asked only for the rest
    assert "resuming NABench_DMS_assays.zip" in second.stderr
    digest = _sha256(archives["NABench_DMS_assays.zip"])
    assert f"NABench_DMS_assays.zip has SHA-256 {digest} (no digest is published: trusted on first use" in second.stderr
    folder = Path(second.stdout.strip().splitlines()[-1])
    assert sorted(p.name for p in folder.glob("*.csv")) == ["Gregory_2018_mRNA.csv", "Pitt_2010_ribozyme.csv",
                                                            "metadata.csv", "metadata_rfam_id.csv"]
    # trust on first use: a later download of another archive under that name is refused
    mirror.files["NABench_DMS_assays.zip"] = archives["processed_data.zip"]
    again = _glmscore("data", "get", "nabench", "--force", cache=cache, mirror=mirror.url, cwd=tmp_path)
    assert again.returncode == 2 and f"not {digest} (recorded on its first download" in again.stderr, again.stderr
    assert (folder / downloads.MARKER).is_file()  # the verified copy stays as it was


def test_offline_is_one_sentence_naming_the_url_and_from(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed
    cache = tmp_path / "cache"
    got = _glmscore("data", "get", "nullsette", cache=cache, mirror=closed, cwd=tmp_path)
    assert got.returncode == 2 and "Traceback" not in got.stderr
    lines = [line for line in got.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, got.stderr
    assert f"cannot download processed_data.zip from {closed}/processed_data.zip" in lines[0]
    assert "glmscore data get nullsette --from /path/to/processed_data.zip" in lines[0]
    _no_complete_copy(cache, "nullsette")


def test_zip_slip_and_links_are_refused(tmp_path, mirror, archives, monkeypatch):
    cache = tmp_path / "cache"
    mirror.files.update({k: archives[k] for k in ("metadata.csv", "metadata_rfam_id.csv")})
    mirror.files["NABench_DMS_assays.zip"] = _zip(tmp_path / "slip.zip", {"data/a.csv": b"x\n", "../../evil.csv": b"x\n"})
    slip = _glmscore("data", "get", "nabench", cache=cache, mirror=mirror.url, cwd=tmp_path)
    assert slip.returncode == 2 and "would be written outside its folder ('../../evil.csv'" in slip.stderr, slip.stderr
    assert not list(tmp_path.rglob("evil.csv"))
    _no_complete_copy(cache, "nabench")
    link = tmp_path / "NABench_DMS_assays.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("data/metadata.csv")
        info.external_attr = (0o120777 << 16)  # a symbolic link to /etc/passwd
        zf.writestr(info, "/etc/passwd")
    monkeypatch.setenv("GLMSCORE_CACHE", str(cache))
    monkeypatch.setenv("GLMSCORE_DATA_MIRROR", mirror.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with pytest.raises(GlmscoreError, match=r"has a symbolic link \('data/metadata.csv'\); refused"):
        downloads.get("nabench", source_from=str(link))
    _no_complete_copy(cache, "nabench")
    assert link.is_file()  # a --from file is the user's: never deleted
