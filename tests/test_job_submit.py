"""`ray job submit` against a head started in the test, and a real-data slice scored on Ray."""

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, shared_data

pytestmark = pytest.mark.ray
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _proc_table() -> dict:
    """{pid: (ppid, sid, starttime, cmdline)} for this user's live (not zombie) processes, read from /proc
    (empty off Linux)."""
    table, uid = {}, os.getuid()
    proc = Path("/proc")
    if not proc.is_dir():
        return table
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            if d.stat().st_uid != uid:
                continue
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        # the fields after "(comm)": state ppid pgrp session ... starttime is field 22 overall
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            table[int(d.name)] = (int(fields[1]), int(fields[3]), fields[19], cmd)
    return table


def _head_processes(head_pid: int, port: int) -> dict:
    """{pid: starttime} of every process that belongs to the head started as `head_pid` (its session
    leader) with GCS port `port`: its session, its descendants (job drivers run in sessions of their own),
    and anything whose command line names its session directory or its GCS address."""
    table = _proc_table()
    ours = {pid for pid, (_, sid, _, _) in table.items() if sid == head_pid}
    ours.add(head_pid)
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _, _, _) in table.items() if ppid in ours} - ours
        grew = bool(kids)
        ours |= kids
    # the session directory is /tmp/ray/session_<date>_<pid of `ray start`>
    session_dirs = {m.group(0) for pid in ours if pid in table
                    for m in re.finditer(rf"\S*/session_\d{{4}}-[^/\s]*_{head_pid}(?=[/\s]|$)", table[pid][3])}
    by_port = re.compile(rf"(--gcs[-_]address[= ]\S*:{port}|--gcs_server_port[= ]{port})(?!\d)")
    for pid, (_, _, _, cmd) in table.items():
        if by_port.search(cmd) or any(s in cmd for s in session_dirs):
            ours.add(pid)
    ours.discard(os.getpid())
    return {pid: table[pid][2] for pid in ours if pid in table}


def _alive(procs: dict) -> dict:
    table = _proc_table()
    return {pid: st for pid, st in procs.items() if pid in table and table[pid][2] == st}


def _end_head(proc: subprocess.Popen, port: int) -> tuple:
    """SIGTERM the head's process group (``ray start --block`` shuts its cluster down on it), SIGKILL the
    group after 30 s, then SIGKILL by PID whatever of the head escaped the group (workers get process
    groups of their own, job drivers sessions of their own). Never the CLI's stop command: it ends every Ray
    process on the machine. Returns ({pid: cmdline} alive after the group kill, {pid: starttime} alive
    at the end)."""
    procs = _head_processes(proc.pid, port)  # before any signal: orphans lose their parent link
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    procs.update(_head_processes(proc.pid, port))
    table = _proc_table()
    escaped = {pid: table[pid][3] for pid in _alive(procs)}
    deadline = time.monotonic() + 20
    while True:
        procs.update(_head_processes(proc.pid, port))
        left = _alive(procs)
        if not left or time.monotonic() > deadline:
            return escaped, left
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


@contextlib.contextmanager
def ray_head(tmp_path: Path, env: dict, timeout: float = 120):
    """A Ray head of its own, ``ray start --head --block`` in a new session; yields (gcs port, dashboard
    port, the `ray start` process) once it is up, and ends exactly that head's processes on exit."""
    port, dash, client = _free_port(), _free_port(), _free_port()
    # no 30 s drain on SIGTERM (nothing of a test cluster is worth waiting for); an unbuffered log
    env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "ray_head.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                                 f"--ray-client-server-port={client}", "--include-dashboard=true",
                                 "--disable-usage-stats"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        # ready once `ray start` says so and the dashboard lists the head's raylet alive. Not earlier: the
        # raylet shows alive while `ray start` still waits in a GCS call that a SIGTERM cannot interrupt
        nodes = urllib.request.Request(f"http://127.0.0.1:{dash}/api/v0/nodes", headers=(
            {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"} if env.get("RAY_AUTH_TOKEN") else {}))
        local = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start --head exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                if "Ray runtime started" not in _tail(log_path, 10**6):
                    raise ValueError("not started")
                with local.open(nodes, timeout=5) as r:
                    listed = json.loads(r.read())["data"]["result"]["result"]
                if any(n.get("state") == "ALIVE" for n in listed):
                    break
            except (OSError, ValueError, KeyError, TypeError):
                pass  # not listening yet, or an HTTP error while it starts
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not come up within {timeout:.0f} s:\n{_tail(log_path)}")
            time.sleep(1)
        yield port, dash, proc
    except BaseException:
        _end_head(proc, port)  # the body's failure is the one to report
        raise
    escaped, left = _end_head(proc, port)
    if escaped:  # shown with the test's output: what the group kill alone would have left behind
        print(f"ended by PID after the Ray head's process group: {escaped}")
    assert not left, f"processes of the test's Ray head survived their kill: {sorted(left)}"


def _submit(cmd: list, env: dict, timeout: float, agent_wait: float = 0) -> subprocess.CompletedProcess:
    """Run `ray job submit`; right after the head starts it can answer "No available agent to submit
    job": retry that for up to `agent_wait` seconds."""
    deadline = time.monotonic() + agent_wait
    while True:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if "No available agent to submit job" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(2)


def test_ray_job_submit_scores_and_resumes(tmp_path, small_nullsette, tiny_llama):
    # token authentication on, as in cluster/: the head and the submitting client share the token
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32),
           # the job's `python` must be this environment's, as after activating the venv
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with ray_head(tmp_path, env) as (_port, dash, _head):
        out = tmp_path / "scores"
        submit = [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
                  "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "demo_out", "bench_out"]}),
                  "--", "python", "-m", "pipelines.cli", "score", "--benchmark", "nullsette",
                  "--data", str(small_nullsette), "--model", "kmer:4", "--out", str(out), "--limit", "5"]
        proc = _submit(submit, env, timeout=300, agent_wait=60)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "scored 100 rows" in proc.stdout
        manifest = json.loads((out / "_manifest.json").read_text())
        assert manifest["rows_total"] == 100 and manifest["shards_computed"] == 20
        # the same submission again reuses every shard
        proc = _submit(submit, env, timeout=300)
        assert proc.returncode == 0 and "20 reused" in proc.stdout
        # the vLLM backend as a job entrypoint (CPU engine inside the job's actor)
        try:
            import vllm  # noqa: F401
        except ImportError:
            vllm_ok = False
        else:
            vllm_ok = True
        if vllm_ok:
            v = submit[: submit.index("--model") + 1] + [str(tiny_llama), "--backend", "vllm", "--max-model-len", "1024",
                                                         "--out", str(tmp_path / "vllm"), "--limit", "2"]
            proc = _submit(v, env, timeout=600)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            assert json.loads((tmp_path / "vllm" / "_manifest.json").read_text())["model_card"]["backend"] == "vllm_causal"
        # a user error inside a job: non-zero status and the one-sentence message in the job's log
        bad = submit[: submit.index("--model") + 1] + ["no-such-model", "--out", str(tmp_path / "bad")]
        proc = _submit(bad, env, timeout=300)
        assert proc.returncode != 0 and "glmscore: error: unknown model" in proc.stdout + proc.stderr


@pytest.mark.realdata
def test_real_nullsette_slice_scored_and_analysed(tmp_path, tiny_llama):
    import pandas as pd
    import ray

    from pipelines.benchmarks.nullsette import Nullsette, build
    from pipelines.score import ScoreConfig, run_score

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


def test_a_run_whose_cluster_dies_stops_with_one_sentence(tmp_path, small_nullsette, tiny_llama):
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    with ray_head(tmp_path, env) as (port, _dash, head):
        run = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "score", "--benchmark", "nullsette", "--data",
                                str(small_nullsette), "--model", str(tiny_llama), "--chunk-rows", "1",
                                "--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "o")],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first = run.stderr.readline()
        assert first.startswith(f"glmscore: score on the Ray cluster at 127.0.0.1:{port}"), first
        time.sleep(8)  # scoring under way
        os.killpg(head.pid, signal.SIGKILL)  # the head dies: GCS, raylet, dashboard
        start = time.monotonic()
        _, err = run.communicate(timeout=120)
        assert run.returncode == 3, err[-3000:]
        assert time.monotonic() - start < 60
        assert "glmscore: error: lost the Ray cluster" in err and not (tmp_path / "o" / "_manifest.json").exists()
