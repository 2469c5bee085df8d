"""Node loss: a score job on a 2-node cluster loses its worker node (raylet SIGKILLed) and still finishes.

Two raylets on this machine, each `ray start --block` in a session of its own with token authentication.
The same job runs twice on that cluster: once cleanly, once losing the worker node while it holds one of the
pool's two actors. The second run must end with every row exactly once and the same shards as the clean run.

The head declares 3 CPUs: after the loss it has to hold both actors of ``--min-actors 2`` (the lost one is
restarted there) and the prepare (0.5 CPU) and write (0.1 CPU) pool actors beside them. The worker declares
2 CPUs, room for a model actor beside the light pools' actors (Ray Data spreads actors over nodes, and a
light actor placed there first would leave a 1-CPU node no room for a model actor): the node's loss is the
loss of a model actor, and of whatever light actors it held.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from tests.conftest import ROOT
from tests.ray_procs import _end_session, _proc_table, _tail, dashboard_actors, dashboard_nodes, ray_head, ray_worker

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LIMIT = 6  # pairs per dataset: 20 groups x 6 = 120 rows, one shard each: the job outlasts a few polls
ROWS = 20 * LIMIT
KILL_AFTER_SHARDS = 12


def _job(data: Path, out: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data", str(data),
            "--model", "kmer:3", "--out", str(out), "--address", f"127.0.0.1:{port}", "--min-actors", "2",
            "--max-actors", "2", "--limit", str(LIMIT), "--chunk-rows", "1"]


def _raylets(sid: int) -> list[int]:
    """The raylet binary among the processes of session ``sid`` (a node's `ray start --block`)."""
    return [pid for pid, (_, s, _, cmd) in _proc_table().items() if s == sid and cmd.split()[0].endswith("/raylet")]


def _shards(out: Path) -> dict[str, bytes]:
    """{relative path: bytes} of the visible shards (hidden names are unfinished writes)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("part-*.parquet")}


def _table(out: Path):
    df = pads.dataset(out, format="parquet", partitioning="hive").to_table().to_pandas()
    return df.sort_values(["dataset", "group", "pair_index"]).reset_index(drop=True)


def _watched_run(cmd: list, out: Path, err: Path, dash: int, env: dict, worker_node: str, kill: list[int] | None):
    """Run a job, polling its shards and its ScoreActors; with ``kill`` (PIDs), SIGKILL them once
    KILL_AFTER_SHARDS shards exist and an actor is alive on the worker node. Returns (the process, seconds,
    s when KILL_AFTER_SHARDS shards existed or the kill happened, shards then, trace of changes)."""
    earlier = {a["actor_id"] for a in dashboard_actors(dash, env)}  # an earlier run's, all dead
    t0 = time.monotonic()
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(err, "w"),
                           start_new_session=True)
    trace, mark, at_mark = [], None, None
    try:
        while run.poll() is None:
            now = time.monotonic() - t0
            done = len(_shards(out)) if out.exists() else 0
            try:
                actors = sorted((a["state"], "worker" if a.get("node_id") == worker_node else "head")
                                for a in dashboard_actors(dash, env)
                                if "ScoreActor" in a.get("class_name", "") and a["actor_id"] not in earlier)
            except (OSError, ValueError, KeyError, TypeError):
                actors = None  # the dashboard was slow to answer; the next poll counts
            if actors is not None and (not trace or trace[-1][2] != actors):
                trace.append((round(now, 1), done, actors))
            if mark is None and done >= KILL_AFTER_SHARDS and (not kill or (actors and ("ALIVE", "worker") in actors)):
                for pid in kill or ():
                    os.kill(pid, signal.SIGKILL)  # the worker node's raylet: the node is lost
                mark, at_mark = now, done
                if kill:
                    trace.append((round(now, 1), done, "worker raylet SIGKILLed"))
            if now > 400:
                pytest.fail(f"the job did not end within 400 s: {trace}\n{_tail(err)}")
            time.sleep(0.5)
    except BaseException:
        _end_session(run, grace=5)
        raise
    return run, time.monotonic() - t0, mark, at_mark, trace


def test_a_job_that_loses_a_worker_node_finishes_with_every_row_once(tmp_path, small_nullsette):
    temp_dir = tempfile.mkdtemp(prefix="gs", dir="/tmp")  # short: Ray's socket paths live under it
    # Ray Data's own gate: each pool's actors are all alive before its first unit, so the model actor on
    # the worker node runs from the start (otherwise the head's actor could finish the job while the
    # worker's was still starting, and nothing would be lost with the node)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "600"}
    env.pop("RAY_ADDRESS", None)
    clean_out, lost_out = tmp_path / "clean", tmp_path / "lost"
    try:
        with ray_head(tmp_path, env, timeout=240, temp_dir=temp_dir,
                      args=("--num-cpus=3",)) as (port, dash, _head):
            with ray_worker(tmp_path, env, port, dash, args=("--num-cpus=2",), temp_dir=temp_dir) as worker:
                nodes = [n for n in dashboard_nodes(dash, env) if n.get("state") == "ALIVE"]
                worker_node = [n["node_id"] for n in nodes if not n.get("is_head_node")]
                assert len(nodes) == 2 and len(worker_node) == 1, nodes
                worker_node = worker_node[0]
                raylets = _raylets(worker.pid)
                assert len(raylets) == 1, f"the worker node's raylet among its session's processes: {raylets}"

                clean, clean_s, clean_mark, _, clean_trace = _watched_run(
                    _job(small_nullsette, clean_out, port), clean_out, tmp_path / "clean.err", dash, env, worker_node, None)
                assert clean.returncode == 0, _tail(tmp_path / "clean.err")
                run, lost_s, killed_at, shards_at_kill, trace = _watched_run(
                    _job(small_nullsette, lost_out, port), lost_out, tmp_path / "lost.err", dash, env, worker_node, raylets)
                try:
                    worker_gone = worker.wait(timeout=60)  # `ray start --block` ends when its raylet dies
                except subprocess.TimeoutExpired:
                    worker_gone = "no (still running 60 s after the job)"
                after = {n["node_id"]: n.get("state") for n in dashboard_nodes(dash, env)}

        print("\nclean run's trace (s since the job started, shards written, ScoreActors (state, node)):")
        for point in clean_trace:
            print("  ", point)
        print("node-loss trace:")
        for point in trace:
            print("  ", point)
        print(f"clean run {clean_s:.1f} s ({KILL_AFTER_SHARDS} shards at {clean_mark:.1f} s, then {clean_s - clean_mark:.1f} s "
              f"to the end); run with the node loss {lost_s:.1f} s: worker raylet killed at "
              f"{killed_at if killed_at is None else round(killed_at, 1)} s with {shards_at_kill}/{ROWS} shards written, "
              f"job ended {None if killed_at is None else round(lost_s - killed_at, 1)} s after the kill; "
              f"worker `ray start` exited {worker_gone}")
        assert killed_at is not None, f"the job ended before an actor ran on the worker node: {trace}"
        assert run.returncode == 0, _tail(tmp_path / "lost.err")
        assert after[worker_node] == "DEAD", after

        manifest = json.loads((lost_out / "_manifest.json").read_text())
        assert manifest["rows_total"] == ROWS and manifest["shards_computed"] == ROWS
        got, want = _table(lost_out), _table(clean_out)
        assert len(got) == ROWS and not got.duplicated(["dataset", "group", "seq_id"]).any()
        assert got["seq_id"].tolist() == want["seq_id"].tolist()
        for col in ("score", "loglik_sum", "n_scored", "n_ambiguous"):
            assert np.array_equal(got[col].to_numpy(), want[col].to_numpy()), col
        lost_files, clean_files = _shards(lost_out), _shards(clean_out)
        assert sorted(lost_files) == sorted(clean_files)
        same = sum(lost_files[p] == clean_files[p] for p in clean_files)
        hidden = [str(p.relative_to(lost_out)) for p in lost_out.rglob(".*") if p.is_file() and p.name != ".glmscore.lock"]
        print(f"shards byte-identical to the clean run: {same}/{len(clean_files)}; hidden files left in --out: {hidden}")
        assert same == len(clean_files)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
