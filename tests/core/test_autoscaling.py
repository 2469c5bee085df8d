"""Elastic GPU clusters: `--device gpu` placement rules, and a score job on Ray's own autoscaler.

The cluster test starts a head with Ray's ``fake_multinode`` node provider (fake nodes are extra raylets on
this machine that declare a GPU; they have no CUDA, so the job uses the k-mer backend, which runs on CPU,
with ``--gpus-per-actor 1``). The cluster starts with no GPU node: the job's pending GPU actors make the
autoscaler add GPU workers until the pool has its 2 actors, and the idle GPU nodes are removed after the job.

``--min-actors 2``: Ray Data grows an actor pool beyond its minimum only while its actors are the bottleneck
(``actor_pool_util_upscaling_threshold`` 1.75 tasks per actor), which a k-mer scorer never is (reading and
tokenizing a chunk costs more than scoring it). With ``--min-actors 1`` Ray Data's cluster autoscaler still
asks for GPU nodes for the pool's maximum (2 GPU nodes came up), but the pool stayed at one actor and the
second node stayed idle until the job ended (docs/clusters.md's elastic-cluster section has that trace).
"""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from glmscore.models.base import BACKENDS
from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.pools import size_pool as _resources
from glmscore.pipelines.score import ScoreConfig
from tests.conftest import ROOT
from tests.ray_procs import _end_session, _free_port, _tail, dashboard_actors, dashboard_nodes, ray_head

LIMIT = 8  # pairs per dataset: 20 groups x 8 = 160 rows, one unit (shard) each
ROWS = 20 * LIMIT
IDLE_TIMEOUT_MIN = 0.1  # 6 s: fractional minutes are accepted (the schema says "number")
RELEASE_BOUND_S = 240


# ---------------------------------------------------------------- placement rules (no cluster)

def _cfg(**kw) -> ScoreConfig:
    return ScoreConfig(benchmark="nullsette", data="unused", model="kmer:3", out="unused", **kw)


def test_device_flag_decides_gpu_actors_from_flags_not_from_the_cluster_at_start():
    hf, kmer = BACKENDS.get("hf_causal"), BACKENDS.get("kmer")
    no_gpu, gpus = {"CPU": 4.0}, {"CPU": 8.0, "GPU": 2.0}
    # (gpus per actor, min actors, max actors, torch threads per actor)
    assert _resources(_cfg(), hf, no_gpu) == (0.0, 1, 1, 4)  # auto: what the cluster has now
    assert _resources(_cfg(), hf, gpus) == (1.0, 1, 2, None)
    assert _resources(_cfg(), kmer, gpus) == (0.0, 1, 1, 8)  # auto never gives a CPU-only backend a GPU
    # gpu: GPU actors although no GPU node exists yet (an autoscaler adds them); the pool's size is the
    # user's, since the cluster's GPUs at start say nothing
    assert _resources(_cfg(device="gpu"), hf, no_gpu) == (1.0, 1, 1, None)
    assert _resources(_cfg(device="gpu", max_actors=4), hf, no_gpu) == (1.0, 1, 4, None)
    # a CPU-only backend asks for GPUs only when told how many (tests on fake GPU nodes do this)
    assert _resources(_cfg(device="gpu", gpus_per_actor=1, max_actors=2), kmer, no_gpu) == (1.0, 1, 2, None)
    # fractions share a GPU: two actors per GPU
    assert _resources(_cfg(device="gpu", gpus_per_actor=0.5), hf, {"CPU": 8.0, "GPU": 1.0}) == (0.5, 1, 2, None)
    assert _resources(_cfg(gpus_per_actor=0.5), hf, {"CPU": 8.0, "GPU": 2.0}) == (0.5, 1, 4, None)
    # cpu: never a GPU, even on a GPU cluster
    assert _resources(_cfg(device="cpu"), hf, gpus) == (0.0, 1, 1, 8)
    assert _resources(_cfg(device="cpu", gpus_per_actor=0), hf, gpus) == (0.0, 1, 1, 8)


@pytest.mark.parametrize("kw, backend, message", [
    (dict(device="cpu", gpus_per_actor=1), "hf_causal", "--device cpu asks for no GPU; drop --gpus-per-actor."),
    (dict(device="gpu"), "kmer", "backend kmer runs on CPU only; drop --device gpu."),
    (dict(device="gpu", gpus_per_actor=0), "kmer", "backend kmer runs on CPU only; drop --device gpu."),
    (dict(device="gpu", gpus_per_actor=0), "hf_causal", "--device gpu needs --gpus-per-actor above 0."),
])
def test_contradictory_device_flags_are_one_sentence(kw, backend, message):
    with pytest.raises(GlmscoreError) as err:
        _resources(_cfg(**kw), BACKENDS.get(backend), {"CPU": 2.0})
    assert str(err.value) == message


# ---------------------------------------------------------------- Ray's autoscaler, fake GPU nodes

def _autoscaler_config(port: int) -> dict:
    """A fake_multinode cluster: a CPU head and up to 2 workers that each declare one GPU."""
    return {
        "cluster_name": "glmscore-test", "max_workers": 2, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "auth": {"ssh_user": "nobody"}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _gpu_state(dash: int, env: dict) -> tuple[int, int]:
    """(GPU nodes alive, ScoreActors alive on them), from the head's dashboard (this process never joins)."""
    nodes = dashboard_nodes(dash, env)
    gpu_nodes = {n["node_id"] for n in nodes if n.get("state") == "ALIVE" and (n.get("resources_total") or {}).get("GPU", 0) >= 1}
    actors = [a for a in dashboard_actors(dash, env) if "ScoreActor" in a.get("class_name", "") and a.get("state") == "ALIVE"]
    return len(gpu_nodes), sum(a.get("node_id") in gpu_nodes for a in actors)


def _autoscaler_events(temp_dir: str) -> list[str]:
    """The autoscaler's add/remove decisions, with their time stamps, from its log."""
    lines = []
    for log in Path(temp_dir).glob("session_2*/logs/monitor.log"):  # not the session_latest link to it
        lines += [line.strip() for line in log.read_text(errors="replace").splitlines()
                  if re.search(r"(Adding|Removing) \d+ node", line)]
    return lines


def _scores(out: Path):
    df = pads.dataset(out, format="parquet", partitioning="hive").to_table().to_pandas()
    return df.sort_values(["dataset", "group", "pair_index"]).reset_index(drop=True)


@pytest.mark.ray
@pytest.mark.slow
def test_autoscaler_adds_gpu_nodes_for_the_pool_and_removes_them_after(tmp_path, small_nullsette):
    temp_dir = tempfile.mkdtemp(prefix="gs", dir="/tmp")  # short: Ray's socket paths live under it
    port = _free_port()
    config = tmp_path / "autoscaler.yaml"
    config.write_text(json.dumps(_autoscaler_config(port)))  # JSON is YAML
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    out, plain = tmp_path / "scores", tmp_path / "plain"
    job = reference = None
    try:
        with ray_head(tmp_path, env, timeout=240, temp_dir=temp_dir, port=port,
                      args=("--num-cpus=2", "--num-gpus=0", f"--autoscaling-config={config}")) as (port, dash, _head):
            assert _gpu_state(dash, env) == (0, 0), "the cluster must start without GPU nodes"
            # a driver without the cluster's token: one sentence (it was a ConnectionError traceback after
            # Ray's 20 s of retries); this machine's ~/.ray/auth_token, if any, is another cluster's
            tokenless = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(tmp_path)}
            refused = subprocess.run([sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data",
                                      str(small_nullsette), "--model", "kmer:3", "--out", str(tmp_path / "refused"),
                                      "--address", f"127.0.0.1:{port}"], cwd=ROOT, env=tokenless, capture_output=True,
                                     text=True, timeout=600)
            assert refused.returncode == 2, refused.stderr[-3000:]
            assert f"glmscore: error: could not join the Ray cluster at 127.0.0.1:{port} (" in refused.stderr
            assert "Traceback" not in refused.stderr
            cmd = [sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data", str(small_nullsette),
                   "--model", "kmer:3", "--out", str(out), "--address", f"127.0.0.1:{port}", "--device", "gpu",
                   "--gpus-per-actor", "1", "--min-actors", "2", "--max-actors", "2", "--limit", str(LIMIT), "--chunk-rows", "1"]
            t0 = time.monotonic()
            job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(tmp_path / "job.out", "w"),
                                   stderr=open(tmp_path / "job.err", "w"), start_new_session=True)
            trace, ended, released = [], None, None  # trace: (s since submit, GPU nodes, ScoreActors on them)
            while True:
                now = round(time.monotonic() - t0, 1)
                try:
                    state = _gpu_state(dash, env)
                except (OSError, ValueError, KeyError, TypeError):
                    state = None  # the dashboard was slow to answer; the next poll counts
                if state is not None and (not trace or trace[-1][1:] != state):
                    trace.append((now, *state))
                if ended is None and job.poll() is not None:
                    ended = now
                    trace.append((now, "job ended", job.returncode))
                    # the reference: the same job on a plain local cluster (no --address, no GPU), meanwhile
                    local_env = {k: v for k, v in env.items() if not k.startswith(("RAY_AUTH", "RAY_FAKE", "AUTOSCALER"))}
                    reference = subprocess.Popen(
                        [sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data",
                         str(small_nullsette), "--model", "kmer:3", "--out", str(plain), "--limit", str(LIMIT)],
                        cwd=ROOT, env=local_env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "plain.err", "w"),
                        start_new_session=True)  # its local cluster is ended with its session
                if ended is not None and state is not None and state[0] == 0:
                    released = now
                    break
                if ended is None and now > 360:
                    pytest.fail(f"the job did not end within 360 s; trace {trace}\n{_tail(tmp_path / 'job.err')}\n"
                                f"{_autoscaler_events(temp_dir)}")
                if ended is not None and now - ended > RELEASE_BOUND_S:
                    break
                time.sleep(1)
            deadline = time.monotonic() + 20  # the autoscaler logs its summary after the nodes are gone
            while not any("Removing" in e for e in _autoscaler_events(temp_dir)) and time.monotonic() < deadline:
                time.sleep(1)
            events = _autoscaler_events(temp_dir)
        print("\nautoscaling trace (seconds since the job was started: GPU nodes alive, ScoreActors alive on them):")
        for point in trace:
            print("  ", point)
        print("autoscaler decisions:\n  " + "\n  ".join(events))
        gpu_up = [t for t, *s in trace if s and isinstance(s[0], int) and s[0] >= 1]
        both = [t for t, *s in trace if s and isinstance(s[0], int) and s[0] == 2]
        pool = [t for t, *s in trace if s and isinstance(s[0], int) and s[1] == 2]
        print(f"first GPU node at {gpu_up[0] if gpu_up else None} s, 2 GPU nodes at {both[0] if both else None} s, "
              f"2 ScoreActors at {pool[0] if pool else None} s, job ended at {ended} s, GPU nodes back to 0 at {released} s "
              f"({None if released is None else round(released - ended, 1)} s after the job)")

        assert job.returncode == 0, _tail(tmp_path / "job.err")
        assert trace[0][1] == 0, f"a GPU node existed when the job started: {trace}"
        assert max(s[0] for t, *s in trace if isinstance(s[0], int)) == 2, f"the pool's GPU nodes never reached 2: {trace}"
        assert pool, f"2 ScoreActors were never alive at once on GPU nodes: {trace}"
        assert released is not None, f"GPU nodes still alive {RELEASE_BOUND_S} s after the job: {trace}\n{events}"
        assert any("Adding" in e for e in events) and any("Removing" in e and "(idle)" in e for e in events), events

        manifest = json.loads((out / "_manifest.json").read_text())
        assert manifest["rows_total"] == ROWS and manifest["shards_computed"] == ROWS
        assert reference.wait(timeout=300) == 0, _tail(tmp_path / "plain.err")
        got, want = _scores(out), _scores(plain)
        assert len(got) == ROWS and not got.duplicated(["dataset", "group", "seq_id"]).any()
        assert got["seq_id"].tolist() == want["seq_id"].tolist()
        for col in ("score", "loglik_sum", "n_scored", "n_ambiguous"):
            assert np.array_equal(got[col].to_numpy(), want[col].to_numpy()), col
    finally:
        for proc in (job, reference):  # a driver and its local cluster, ended by session, never by name
            if proc is not None:
                _end_session(proc, grace=5)
        shutil.rmtree(temp_dir, ignore_errors=True)
