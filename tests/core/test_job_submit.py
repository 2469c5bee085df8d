"""`ray job submit` against a head started in the test, and a real-data slice scored on Ray."""

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, shared_data
from tests.ray_procs import RAY, ray_head

pytestmark = pytest.mark.ray


def _submit(cmd: list, env: dict, timeout: float, agent_wait: float = 0) -> subprocess.CompletedProcess:
    """Run `ray job submit`; right after the head starts it can answer "No available agent to submit
    job": retry that for up to `agent_wait` seconds."""
    deadline = time.monotonic() + agent_wait
    while True:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if "No available agent to submit job" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(2)


def test_ray_job_submit_scores_and_resumes(tmp_path, small_nullsette):
    # token authentication on, as in cluster/: the head and the submitting client share the token
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32),
           # the job's `python` must be this environment's, as after activating the venv
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with ray_head(tmp_path, env) as (_port, dash, _head):
        out = tmp_path / "scores"
        submit = [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
                  "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "demo_out", "bench_out"]}),
                  "--", "python", "-m", "glmscore", "score", "--benchmark", "nullsette",
                  "--data", str(small_nullsette), "--model", "kmer:4", "--out", str(out), "--limit", "5"]
        # the head's job agent can take minutes to come up on a busy machine (180 s was too short beside two
        # other suites): wait for it, bounded, rather than fail
        proc = _submit(submit, env, timeout=300, agent_wait=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "scored 100 rows" in proc.stdout
        manifest = json.loads((out / "_manifest.json").read_text())
        assert manifest["rows_total"] == 100 and manifest["shards_computed"] == 20
        # the same submission again reuses every shard
        proc = _submit(submit, env, timeout=300, agent_wait=300)
        assert proc.returncode == 0 and "20 reused" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
        # a user error inside a job: non-zero status and the one-sentence message in the job's log
        bad = submit[: submit.index("--model") + 1] + ["no-such-model", "--out", str(tmp_path / "bad")]
        proc = _submit(bad, env, timeout=300, agent_wait=300)
        assert proc.returncode != 0 and "glmscore: error: unknown model" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.realdata
def test_real_nullsette_slice_scored_and_analysed(tmp_path, tiny_llama):
    import pandas as pd
    import ray

    from glmscore.pipelines.benchmarks.nullsette.source import Nullsette, build
    from glmscore.pipelines.score import ScoreConfig, run_score

    build(shared_data("nullsette"), tmp_path / "pd")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        for model in (str(tiny_llama), "kmer:5"):
            run_score(ScoreConfig(benchmark="nullsette", data=str(tmp_path / "pd"), model=model,
                                  out=str(tmp_path / Path(model).name), limit=3))
    finally:
        ray.shutdown()
    dirs = [str(tmp_path / "tiny-llama"), str(tmp_path / "kmer:5")]
    Nullsette.analyze(dirs, str(tmp_path / "report"), Nullsette.AnalyzeOptions(n_perm=1000))
    tests = pd.read_csv(tmp_path / "report" / "nullsette_tests.csv")
    assert len(tests) == 2 * 71 and (tests["n_pairs"] == 3).all()
    scores = pd.concat([pd.read_parquet(d) for d in dirs])
    zahm = scores[(scores["dataset"] == "zahm") & (scores["model"] == "tiny-llama")]
    # the Zahm terminator carries IUPAC-degenerate barcode letters: mapped to N and counted
    assert (zahm["n_ambiguous"] > 0).all() and len(zahm) == 12 * 3


def _scoring(cmd: list, env: dict, out: Path) -> subprocess.Popen:
    """Start a score job and return once it is scoring (its first shard is written)."""
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list(out.rglob("part-*.parquet")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run.poll() is None and list(out.rglob("part-*.parquet")), f"the run wrote no shard: {run.communicate()[1][-3000:]}"
    return run


def test_a_run_whose_cluster_or_driver_dies_stops_with_one_sentence(tmp_path, small_nullsette, tiny_llama):
    """Ray's core worker ends a driver that loses its node with status 1 and no word (C++ QuickExit);
    glmscore's supervising parent says what happened, once, whatever the phase of the job."""
    import psutil

    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    with ray_head(tmp_path, env) as (port, _dash, head):
        def job(out):
            return [sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data", str(small_nullsette),
                    "--model", str(tiny_llama), "--chunk-rows", "1", "--address", f"127.0.0.1:{port}", "--out", str(out)]

        # the driver SIGKILLed (as the kernel's OOM killer does): one sentence, the signal's status
        run = _scoring(job(tmp_path / "k"), env, tmp_path / "k")
        [driver] = psutil.Process(run.pid).children()  # the supervised child: the Ray driver
        driver.kill()
        _, err = run.communicate(timeout=120)
        assert run.returncode == 128 + signal.SIGKILL, err[-3000:]
        assert err.count("glmscore: error:") == 1 and "driver process was killed (SIGKILL: out of memory?" in err
        assert not (tmp_path / "k" / "_manifest.json").exists()

        # the head dies while the job is scoring: GCS, raylet, dashboard
        run = _scoring(job(tmp_path / "o"), env, tmp_path / "o")
        os.killpg(head.pid, signal.SIGKILL)
        start = time.monotonic()
        _, err = run.communicate(timeout=120)
        assert run.returncode == 3, err[-3000:]
        assert time.monotonic() - start < 60
        assert err.count("glmscore: error:") == 1 and "glmscore: error: lost the Ray cluster" in err
        assert err.startswith(f"glmscore: score on the Ray cluster at 127.0.0.1:{port}"), err[:300]
        # Ray's C++ core worker's lines (~70 of them when it lost its raylet) go to Ray's log, not the console
        assert not re.search(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\]", err, re.M), err[-3000:]
        assert not (tmp_path / "o" / "_manifest.json").exists()
