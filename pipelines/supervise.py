"""The ``glmscore`` command as two processes: a small parent that never starts a thread, and the command
itself in a fresh interpreter (not a fork) that the parent watches.

Why two: Ray's core worker ends its process at once, with status 1 and not a word (C++ ``QuickExit``),
when it loses its node's raylet or object store (the head killed mid-job); the kernel's OOM killer ends
a driver as silently; Ray's own teardown has been seen to abort a driver whose job was complete (a gRPC
assertion, SIGABRT). The parent turns such an end into one sentence and keeps a finished job's status.

Why not ``fork``: a process that already has threads (the AWS SDK's S3 client threads, gRPC, Ray) may
only do async-signal-safe work in a forked child (POSIX). A driver forked after its first S3 call hung
for ever at interpreter exit (pyarrow's S3 finalisation joined threads that did not exist in the child),
so a finished ``glmscore score --out s3://...`` never ended. The child here is a new interpreter, and the
parent imports nothing but the standard library.

The two talk through two pipes. ``GLMSCORE_SUPERVISOR_FD``: the child reports what the parent needs
(the cluster address, Ray's log, and how it ends: ``=`` and its exit status once it has said all it
says, or ``x`` for any Python exit). ``GLMSCORE_PARENT_FD``: the parent never writes to it, so the child
reads end-of-file when the parent dies (``kill -9`` of the command, a closed terminal, a CI time-out)
and ends the job as on SIGTERM: a local run has no reason to outlive its command.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from glmscore.pipelines.console import say

EXIT_CLUSTER_LOST = 3
REPORT_FD = "GLMSCORE_SUPERVISOR_FD"
PARENT_FD = "GLMSCORE_PARENT_FD"
CHILD = "import sys; from glmscore.pipelines.cli import main; sys.exit(main(supervised=True))"


# ---------------------------------------------------------------- the parent (the ``glmscore`` command)

def command() -> None:
    """The ``glmscore`` console script (and ``python -m glmscore``): the command line in a child interpreter;
    exits with its status."""
    sys.exit(supervise(["-c", CHILD, *sys.argv[1:]]))


def supervise(child_args: list[str]) -> int:
    """Run ``python child_args...`` as the supervised child and return the command's exit status, said in one
    sentence when the child died without saying it."""
    report_r, report_w = os.pipe()
    alive_r, alive_w = os.pipe()
    # RAY_ENABLE_AUTO_CONNECT=0: a Ray call made after the command shut its cluster down (a sweep's run thread
    # after Ctrl-C) raises instead of making Ray start (or join) another cluster from that thread
    env = {**os.environ, REPORT_FD: str(report_w), PARENT_FD: str(alive_r), "RAY_ENABLE_AUTO_CONNECT": "0"}
    child = subprocess.Popen([sys.executable, *child_args], pass_fds=(report_w, alive_r), env=env)
    os.close(report_w)
    os.close(alive_r)
    # Ctrl-C reaches both from the terminal: the child handles it. SIGTERM (``ray job stop``, a scheduler)
    # may reach the parent alone: passed on, and the child says what is kept.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    code = child.wait()  # retried after a signal (PEP 475)
    report = _read_all(report_r)
    os.close(alive_w)
    return verdict(code, report)


def _read_all(fd: int) -> dict:
    """What the child reported, read without waiting (a process the child started and that outlived it
    may still hold the pipe open)."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    os.close(fd)
    report: dict = {}
    for line in data.decode(errors="replace").splitlines():
        if line:
            report[line[0]] = line[1:]
    return report


def verdict(code: int, report: dict) -> int:
    """The command's exit status from the child's (``code``, negative: killed by that signal) and what it
    reported; prints the sentence a silent end needs."""
    ray_log, address = report.get("L"), report.get("A")
    if "=" in report:  # the command had finished with this status before anything else happened
        said = int(report["="])
        if code != said:
            say(f"note: Ray's shutdown ended the driver (status {code}) after the job had finished; "
                  f"the job's status is kept{f' (Ray: {ray_log})' if ray_log else ''}.")
        return said
    if "x" in report:  # a Python exit: its own words are said
        return code if code >= 0 else 128 - code
    if address and gcs_gone(address):
        say(f"error: lost the Ray cluster (its head at {address} stopped answering); finished shards "
              "are kept and a rerun resumes from them.")
        return EXIT_CLUSTER_LOST
    if code < 0:
        name = signal.Signals(-code).name
        say(f"error: the job's driver process was killed ({name}"
              + (": out of memory? the kernel's log (`dmesg`) says" if name == "SIGKILL" else "")
              + "); finished shards are kept and a rerun resumes from them.")
        return 128 - code
    if address:
        say(f"error: Ray ended the job's driver process (status {code}: it lost its node's raylet or "
              "object store; Ray's logs say more); finished shards are kept and a rerun resumes from them.")
        return EXIT_CLUSTER_LOST
    return code


def gcs_gone(address: str, tries: int = 6, every: float = 1.0) -> bool:
    """Whether a cluster's GCS stops answering within a few seconds: a head killed whole (GCS, raylet) ends the
    driver as soon as its raylet goes, while the GCS process may still be exiting on a busy machine (its port
    answered in a CI run); asked once, that was reported as a lost raylet instead of a lost cluster."""
    for attempt in range(tries):
        answers = gcs_answers(address)
        if answers is None:  # not an address that can be asked
            return False
        if answers is False:
            return True
        if attempt + 1 < tries:
            time.sleep(every)
    return False


def gcs_answers(address: str) -> bool | None:
    """Whether something listens at a cluster's GCS address (None: not a host:port address)."""
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or address.startswith("ray://"):
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- the child (the command itself)

@dataclass
class Channel:
    """The child's end: ``fd`` is the report pipe (None: not run by the ``glmscore`` command, as when a
    Python program calls the library, which nobody supervises)."""

    fd: int | None = None
    ray_log: str | None = None
    console: int | None = None  # the console's stderr once file descriptor 2 goes to Ray's log (``native_to_log``)

    def attach(self) -> None:
        """In the child: take the pipes from the environment (so Ray's workers do not inherit them), report
        every Python exit, and end the job when the parent dies."""
        report, parent = os.environ.pop(REPORT_FD, None), os.environ.pop(PARENT_FD, None)
        if report is None:
            return
        self.fd = int(report)
        atexit.register(self.report)
        if parent is not None:
            threading.Thread(target=_end_with_parent, args=(int(parent),), name="glmscore-parent-watch",
                             daemon=True).start()

    def tell(self, key: str, value: str) -> None:
        if self.fd is not None:
            os.write(self.fd, f"{key}{value}\n".encode())

    def cluster(self, address: str, ray_log: str | None) -> None:
        """The cluster this command runs on and where Ray's log goes (for the parent's sentence if it dies)."""
        self.ray_log = ray_log
        self.tell("A", address)
        if ray_log:
            self.tell("L", ray_log)

    def native_to_log(self, ray_log: str) -> None:
        """In the command's child, before Ray starts: what writes to file descriptor 2 itself goes to Ray's log,
        while ``sys.stderr`` (glmscore's lines, Python's tracebacks and warnings) stays on the console. Ray's C++
        core worker writes there: ~70 lines when it loses its raylet, a line per actor whose arguments sit in the
        object store; so do the processes a local cluster starts. A library caller's process is left as it is."""
        if self.fd is None or self.console is not None:
            return
        try:
            log = os.open(ray_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError:  # no log to write to: the console keeps everything
            return
        sys.stderr.flush()
        self.console = os.dup(2)  # not inherited (os.dup's default): Ray's processes get the log as their stderr
        sys.stderr = os.fdopen(self.console, "w", buffering=1, encoding=sys.stderr.encoding,
                               errors=sys.stderr.errors, closefd=False)
        os.dup2(log, 2)
        os.close(log)

    def report(self, code: int | None = None) -> None:
        """The command ends with its own words (``code`` None) or has finished with status ``code``."""
        if self.fd is not None:
            self.tell("x" if code is None else "=", "" if code is None else str(code & 0xFF))
            os.close(self.fd)
            self.fd = None

    def finished(self, code: int) -> None:
        """The command has said all it says and ends with ``code``: the parent is told so, and what Ray
        prints while it shuts down goes to its log, not the console (a teardown that aborts must not turn a
        finished job into a crash on the screen)."""
        if self.fd is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            fd = os.open(self.ray_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600) if self.ray_log else None
        except OSError:  # the log's folder is gone (a removed --out): the console it is
            fd = None
        if fd is not None:
            for target in (1, 2, self.console):
                if target is not None:
                    os.dup2(fd, target)
            os.close(fd)
        self.report(code)


def _end_with_parent(fd: int) -> None:
    """Block until the parent's end of the pipe closes (it never writes), then end the job as on SIGTERM."""
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


CHANNEL = Channel()
