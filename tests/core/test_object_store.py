"""Score folders in object storage: a real S3 API on loopback (moto's server), pyarrow's S3 filesystem,
a real local Ray cluster whose workers write shards straight to the store.

The store is found only through the standard variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION); no glmscore option names an endpoint or a key.
"""

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import shards, store
from glmscore.pipelines.score import ScoreConfig, run_score
from tests.conftest import ROOT

pytestmark = pytest.mark.ray
BUCKET = "glmscore-test"
SECRET = "not-a-real-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; the process environment points at it (workers of
    the Ray cluster started below inherit it, as they would inherit a real machine's credentials)."""
    pytest.importorskip("moto")
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True).create_dir(BUCKET)
    store.forget_filesystems()
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        store.forget_filesystems()
        server.stop()


@pytest.fixture(scope="module")
def ray_s3(s3):
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


def _cfg(data, out, **kw):
    return ScoreConfig(benchmark="nullsette", data=str(data), model="kmer:3", out=str(out), limit=4, chunk_rows=4, **kw)


def _cli(*args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    """The ``glmscore`` command as a user runs it (supervising parent and all), its environment the store's."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "glmscore", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_every_command_that_takes_s3_ends_when_its_job_is_done(s3, small_nullsette, tmp_path):
    """score, embed, analyze and sweep with s3:// outputs, each the whole CLI on a cluster of its own: each exits
    0 with its last line said (a driver forked after its first S3 call hung for ever at exit in pyarrow's S3
    finalisation, so `ray job submit` never saw the job end). The time-out is generous: it only turns a hang
    into a failure."""
    base = f"s3://{BUCKET}/cli"
    common = ["--benchmark", "nullsette", "--data", str(small_nullsette), "--limit", "3", "--chunk-rows", "3"]
    scored = _cli("score", *common, "--model", "kmer:3", "--out", f"{base}/k3")
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert f"into {base}/k3" in scored.stdout.splitlines()[-1]
    embedded = _cli("embed", *common, "--model", "onehot", "--out", f"{base}/oh")
    assert embedded.returncode == 0 and "embedded" in embedded.stdout, embedded.stderr[-3000:]
    analyzed = _cli("analyze", "nullsette", "--scores", f"{base}/k3", "--out", f"{base}/report")
    assert analyzed.returncode == 0 and f"report: {base}/report/report.md" in analyzed.stdout, analyzed.stderr[-3000:]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"out: {base}/sweep\nmodels: [kmer:2]\nlocal_cpus: 2\nbenchmarks:\n"
                     f"  - {{name: nullsette, data: {small_nullsette}, limit: 3}}\n")
    swept = _cli("sweep", str(sweep))
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert store.exists(f"{base}/sweep/report/report.md") and store.exists(f"{base}/k3/{shards.MANIFEST}")
    for proc in (scored, embedded, analyzed, swept):
        assert "Traceback" not in proc.stderr and SECRET not in proc.stderr + proc.stdout


def test_score_analyze_and_resume_on_s3(ray_s3, s3, small_nullsette, tmp_path):
    from glmscore.pipelines.cli import main

    uri = f"s3://{BUCKET}/runs/kmer3"
    manifest = run_score(_cfg(small_nullsette, uri))
    assert manifest["rows_total"] == 20 * 4 and manifest["config"]["out"] == uri
    listed = store.files(uri, "part-*.parquet")
    assert len(listed) == 20 and listed == sorted(e["path"] for e in manifest["shards"])
    assert not store.files(uri, "*.tmp")  # objects are written once under their final names

    # the same job into a local folder gives the same shards, byte for byte
    local = tmp_path / "local"
    run_score(_cfg(small_nullsette, local))
    for rel in listed:
        assert store.read_bytes(store.join(uri, *rel.split("/"))) == (local / rel).read_bytes(), rel

    # analyze reads the store and writes its report to the store
    assert main(["analyze", "nullsette", "--scores", uri, "--out", f"s3://{BUCKET}/reports/kmer3", "--n-perm", "200"]) == 0
    assert main(["analyze", "nullsette", "--scores", str(local), "--out", str(tmp_path / "report"), "--n-perm", "200"]) == 0
    remote = pd.read_csv(pd.io.common.BytesIO(store.read_bytes(f"s3://{BUCKET}/reports/kmer3/nullsette_tests.csv")))
    assert remote.equals(pd.read_csv(tmp_path / "report" / "nullsette_tests.csv"))
    assert store.exists(f"s3://{BUCKET}/reports/kmer3/report.md")

    # resume: a lost object is recomputed, nothing else
    victim = store.join(uri, *listed[3].split("/"))
    before = store.read_bytes(victim)
    store.delete(victim)
    again = run_score(_cfg(small_nullsette, uri))
    assert again["shards_computed"] == 1 and again["shards_reused"] == 19
    assert store.read_bytes(victim) == before

    # a damaged object: analyze refuses it in one sentence, a rerun recomputes it
    data = bytearray(before)
    for at in range(len(data) // 10, len(data)):
        data[at] ^= 0x10
        store.write_bytes(victim, bytes(data))
        try:
            shards.read_shard(victim)
        except shards.CorruptShard:
            break
        data[at] ^= 0x10
    with pytest.raises(GlmscoreError, match="is damaged"):
        shards.read_scores(uri)
    assert run_score(_cfg(small_nullsette, uri))["shards_computed"] == 1
    assert store.read_bytes(victim) == before

    # no credential in what the run wrote
    for rel in ("_manifest.json", "_run.json"):
        text = store.read_bytes(store.join(uri, rel)).decode()
        assert SECRET not in text and "testing" not in json.dumps(json.loads(text)["config"])


def test_a_store_that_cannot_be_reached_is_one_sentence(ray_s3, s3, small_nullsette, tmp_path):
    import ray

    dead = f"http://127.0.0.1:{_free_port()}"
    # the driver cannot reach the store: one sentence before Ray starts
    env = {**os.environ, "AWS_ENDPOINT_URL": dead, "AWS_MAX_ATTEMPTS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data",
                           str(small_nullsette), "--model", "kmer:3", "--out", f"s3://{BUCKET}/runs/dead", "--limit", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"glmscore: error: cannot reach s3://{BUCKET}/runs/dead"), proc.stderr
    assert SECRET not in proc.stderr

    # the driver reaches it, the workers cannot: the job stops with one sentence and writes no manifest
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"AWS_ENDPOINT_URL": dead, "AWS_MAX_ATTEMPTS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    uri = f"s3://{BUCKET}/runs/workers-cut-off"
    try:
        with pytest.raises(GlmscoreError, match=f"^cannot write {uri}/dataset=.*\\.parquet: "):
            run_score(_cfg(small_nullsette, uri))
    finally:
        ray.shutdown()
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    assert not store.exists(store.join(uri, shards.MANIFEST))
    assert not store.files(uri, "part-*.parquet")


def test_local_only_commands_refuse_object_store_paths(s3, tmp_path):
    from glmscore.pipelines.cli import main

    assert main(["probe", "--embeddings", f"s3://{BUCKET}/emb", "--setting", "supervised", "--out", str(tmp_path / "p")]) == 2
    with pytest.raises(GlmscoreError, match=f"s3://{BUCKET}/no-such-data does not exist"):
        run_score(ScoreConfig(benchmark="nullsette", data=f"s3://{BUCKET}/no-such-data", model="kmer:3", out=str(tmp_path / "o")))


def test_data_in_object_storage_is_read_from_a_local_copy(ray_s3, s3, small_nullsette, tmp_path, monkeypatch):
    """--data s3://...: each node reads a local copy keyed by the folder's listing; the shards equal those
    of the same data on disk, and a changed object makes a new copy instead of reading a stale one."""
    monkeypatch.setenv("GLMSCORE_CACHE", str(tmp_path / "cache"))
    data = f"s3://{BUCKET}/data/processed_data"
    for path in sorted(p for p in small_nullsette.rglob("*") if p.is_file()):
        store.write_bytes(store.join(data, *path.relative_to(small_nullsette).parts), path.read_bytes())
    manifest = run_score(_cfg(data, tmp_path / "from-s3"))
    run_score(_cfg(small_nullsette, tmp_path / "from-disk"))
    assert manifest["config"]["data"] == data
    from_s3 = {p.relative_to(tmp_path / "from-s3"): p.read_bytes() for p in (tmp_path / "from-s3").rglob("part-*.parquet")}
    from_disk = {p.relative_to(tmp_path / "from-disk"): p.read_bytes() for p in (tmp_path / "from-disk").rglob("part-*.parquet")}
    assert from_s3 == from_disk and len(from_s3) == 20
    copies = [p for p in (tmp_path / "cache" / "data").iterdir() if p.is_dir()]
    assert len(copies) == 1 and not list((tmp_path / "cache" / "data").glob("*.partial-*"))
    version = store.data_version(data)
    # an object changes: a new version, a new copy; the old copy is never read for it
    first = store.join(data, "synthetic_ecoli", "nonmutant.txt")
    store.write_bytes(first, store.read_bytes(first).replace(b"A", b"C", 1))
    assert store.data_version(data) != version
    with pytest.raises(GlmscoreError, match="changed after the job started"):
        store.stage(data, version + "0")
    again = run_score(_cfg(data, tmp_path / "from-s3-2"))
    assert again["rows_total"] == manifest["rows_total"]
    assert len([p for p in (tmp_path / "cache" / "data").iterdir() if p.is_dir()]) == 2
