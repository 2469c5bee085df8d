"""A local rerun whose every shard is complete reads each shard exactly once (its bytes, verified against its
checksum), and no footer again: the checks of the rows, of completeness and the manifest share that read.
The first run is the ``glmscore`` command; the rerun runs in this process (no Ray: nothing is left to compute),
with the reads counted."""

import os
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq

from glmscore.pipelines import store
from glmscore.pipelines.score import ScoreConfig, run_score
from tests.conftest import ROOT


def test_a_local_rerun_reads_each_shard_once(tmp_path, small_nullsette, monkeypatch):
    out = tmp_path / "k3"
    args = ["--benchmark", "nullsette", "--data", str(small_nullsette), "--model", "kmer:3", "--out", str(out),
            "--limit", "4", "--chunk-rows", "4"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.run([sys.executable, "-m", "glmscore", "score", *args], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    parts = sorted(str(p) for p in out.rglob("part-*.parquet"))
    assert len(parts) > 10

    reads, footers = Counter(), Counter()
    real_read, real_schema = store.read_bytes, pq.read_schema
    monkeypatch.setattr(store, "read_bytes", lambda loc, *a, **k: reads.update([str(loc)]) or real_read(loc, *a, **k))
    monkeypatch.setattr(pq, "read_schema", lambda where, *a, **k: footers.update([str(where)]) or real_schema(where, *a, **k))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    manifest = run_score(ScoreConfig(benchmark="nullsette", data=str(small_nullsette), model="kmer:3", out=str(out),
                                     limit=4, chunk_rows=4))
    assert manifest["shards_reused"] == len(parts) and manifest["shards_computed"] == 0
    assert {p: reads[p] for p in parts} == {p: 1 for p in parts}
    assert not [w for w in footers if "part-" in w], footers
