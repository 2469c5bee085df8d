"""Ray clusters of a test's own: `ray start --block` in a session of its own, ended by PID.

Never the CLI's stop command (it ends every Ray process on the machine, other people's too): a head is
ended by signalling its session's process group, then by PID whatever of it escaped the group.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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


def dashboard_nodes(dash: int, env: dict, timeout: float = 5) -> list[dict]:
    """The nodes the head's dashboard lists (``/api/v0/nodes``: node_id, state, resources_total...), read
    with the cluster's token when it has one. Raises OSError/ValueError while the dashboard is not up."""
    request = urllib.request.Request(f"http://127.0.0.1:{dash}/api/v0/nodes", headers=(
        {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"} if env.get("RAY_AUTH_TOKEN") else {}))
    local = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with local.open(request, timeout=timeout) as r:
        return json.loads(r.read())["data"]["result"]["result"]


def _ray_start(args: list[str], log_path: Path, env: dict, temp_dir=None) -> subprocess.Popen:
    """``ray start --block ...`` in a session of its own (so the test can end exactly its processes),
    its output to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen([RAY, "start", "--block", *args, *([f"--temp-dir={temp_dir}"] if temp_dir else []),
                                 "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)


@contextlib.contextmanager
def ray_head(tmp_path: Path, env: dict, timeout: float = 120, args: tuple = ("--num-cpus=2",),
             temp_dir: str | None = None, port: int | None = None):
    """A Ray head of its own, ``ray start --head --block`` in a new session; yields (gcs port, dashboard
    port, the `ray start` process) once it is up, and ends exactly that head's processes on exit.
    ``args``: more `ray start` flags (resources, ``--autoscaling-config``); ``temp_dir``: a private
    ``--temp-dir`` (keep it short: Ray's socket paths under it have a length limit); ``port``: the GCS
    port, when something written before the start names it (an autoscaler's config)."""
    port, dash, client = port or _free_port(), _free_port(), _free_port()
    # the job agent's HTTP port defaults to 52365 on every head: a second Ray on the machine (another
    # test's, another user's) holds it, the agent never serves, and `ray job submit` answers "No available
    # agent" for as long as one waits. A free port of its own, like every other port here
    if not any(a.startswith("--dashboard-agent-listen-port") for a in args):
        args = (*args, f"--dashboard-agent-listen-port={_free_port()}")
    # no 30 s drain on SIGTERM (nothing of a test cluster is worth waiting for); an unbuffered log
    env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "ray_head.log"
    proc = _ray_start(["--head", f"--port={port}", *args, "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                       f"--ray-client-server-port={client}", "--include-dashboard=true"], log_path, env, temp_dir)
    try:
        # ready once `ray start` says so and the dashboard lists the head's raylet alive. Not earlier: the
        # raylet shows alive while `ray start` still waits in a GCS call that a SIGTERM cannot interrupt
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start --head exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                if "Ray runtime started" not in _tail(log_path, 10**6):
                    raise ValueError("not started")
                if any(n.get("state") == "ALIVE" for n in dashboard_nodes(dash, env)):
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


def dashboard_actors(dash: int, env: dict, timeout: float = 5) -> list[dict]:
    """The actors the head's dashboard lists (``/api/v0/actors``: class_name, state, node_id...)."""
    request = urllib.request.Request(f"http://127.0.0.1:{dash}/api/v0/actors?limit=10000", headers=(
        {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"} if env.get("RAY_AUTH_TOKEN") else {}))
    local = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with local.open(request, timeout=timeout) as r:
        return json.loads(r.read())["data"]["result"]["result"]


def session_processes(sid: int) -> dict:
    """{pid: starttime} of this user's live processes in session ``sid``."""
    return {pid: st for pid, (_, s, st, _) in _proc_table().items() if s == sid}


def _end_session(proc: subprocess.Popen, grace: float = 20) -> dict:
    """SIGTERM the process group of ``proc`` (a session leader), SIGKILL it after ``grace`` seconds, then
    SIGKILL by PID whatever is left in its session. Returns {pid: starttime} still alive at the end."""
    procs = session_processes(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    while True:
        procs.update(session_processes(proc.pid))
        left = _alive(procs)
        if not left or time.monotonic() > deadline:
            return left
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


@contextlib.contextmanager
def ray_worker(tmp_path: Path, env: dict, port: int, dash: int, args: tuple = ("--num-cpus=1",),
               temp_dir: str | None = None, timeout: float = 120):
    """A second node for the head at GCS ``port``: ``ray start --address=... --block`` in a session of its
    own (on this machine: a second raylet). Yields the `ray start` process once the head's dashboard lists
    one more live node; ends that session's processes on exit (the head's own end sweeps its GCS port too)."""
    env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "PYTHONUNBUFFERED": "1"}
    alive_before = sum(n.get("state") == "ALIVE" for n in dashboard_nodes(dash, env))
    log_path = tmp_path / "ray_worker.log"
    proc = _ray_start([f"--address=127.0.0.1:{port}", *args, f"--dashboard-agent-listen-port={_free_port()}"],
                      log_path, env, temp_dir)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start --address exited with {proc.returncode}:\n{_tail(log_path)}")
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                if sum(n.get("state") == "ALIVE" for n in dashboard_nodes(dash, env)) > alive_before:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray worker node did not join within {timeout:.0f} s:\n{_tail(log_path)}")
            time.sleep(1)
        yield proc
    except BaseException:
        _end_session(proc)  # the body's failure is the one to report
        raise
    left = _end_session(proc)
    assert not left, f"processes of the test's Ray worker node survived their kill: {sorted(left)}"
