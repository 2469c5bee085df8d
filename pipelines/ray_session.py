"""Which Ray cluster a command runs on and how it gets there: ``ray_address`` (explicit, never the last
cluster somebody started on the machine), ``start_ray`` (start or join it once, Ray's logs to a file),
``watch_cluster`` (one sentence when the head stops answering), and ``SESSION``, which says once whether
this process started the cluster it runs on.

Actor pools are ``pipelines/pools.py``, Tune sweeps ``pipelines/trials.py``, the supervising parent of the
``glmscore`` command ``pipelines/supervise.py``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import ray

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import store
from glmscore.pipelines.console import handle_sigterm, quiet_ray, ray_log, say, verbose
from glmscore.pipelines.supervise import CHANNEL, EXIT_CLUSTER_LOST


@dataclass
class Session:
    """What this process's Ray session is, decided once by ``start_ray``: ``owns_cluster`` when it started
    the cluster it runs on (``local``: every node is this machine, sharing its files, and nothing can add
    nodes), and where Ray's driver-side log goes (None: the console, under -v)."""

    address: str | None = None
    owns_cluster: bool = False
    ray_log: Path | None = None


SESSION = Session()
# every worker's runtime env (a model's own environment adds to it): tokenizers' threads off in forked workers
JOB_RUNTIME_ENV = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}



def watch_cluster(every: float = 5.0, misses: int = 3):
    """A daemon thread that, while the job runs, ends this process with one sentence when the Ray head
    stops answering (``misses`` failed connections to its GCS, ``every`` seconds apart): without it a
    driver blocked on a dead cluster waits for Ray's own minute-long reconnect timeout, then dies with
    pages of C++ logs. Exit status 3: the cluster was lost, not the input. Returns an event to set when
    the job is over (a cluster shut down afterwards is not a loss)."""
    host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
    done = threading.Event()

    def watch():
        failed = 0
        while not done.wait(every):
            try:
                socket.create_connection((host, int(port)), timeout=every).close()
                failed = 0
            except OSError:
                failed += 1
                if failed >= misses and not done.is_set():
                    say(f"error: lost the Ray cluster (its head at {host}:{port} stopped answering); "
                          "finished shards are kept and a rerun resumes from them.")
                    CHANNEL.report()
                    os._exit(EXIT_CLUSTER_LOST)

    threading.Thread(target=watch, name="glmscore-cluster-watch", daemon=True).start()
    return done


def will_own_cluster(address: str) -> bool:
    """Decided once, before Ray starts: this run starts the cluster it runs on (no Ray session in this process
    yet, and the address is ``local``), so the cluster is this machine and cannot grow."""
    return not ray.is_initialized() and address == "local"


def ray_address(address: str | None) -> str:
    """Which cluster a job uses, explicitly: ``--address``, else ``RAY_ADDRESS`` (set by ``ray job
    submit`` for the job's driver), else a new local cluster. Never the last cluster that somebody
    started with ``ray start`` on this machine (what ``ray.init()`` without an address would join)."""
    chosen = address or os.environ.get("RAY_ADDRESS") or "local"
    if chosen.startswith(("http://", "https://")):
        where = "--address" if address else "RAY_ADDRESS"
        host = chosen.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
        raise GlmscoreError(f"{where} {chosen} is a Ray dashboard (Jobs API) address, the one `ray job submit` takes; "
                            f"a glmscore run joins a cluster at its GCS address ({host}:6379 on a default head), or "
                            "`auto` on a node of the cluster; under `ray job submit` RAY_ADDRESS is set for the job.")
    return chosen


def check_address(address: str, timeout: float = 10.0) -> None:
    """A cluster address that does not resolve or where nothing listens is one sentence within seconds
    (``ray.init`` would retry its GCS connection for minutes, printing C++ errors). ``local`` and
    ``auto`` (Ray finds the address itself) are not checked here."""
    if address in ("local", "auto"):
        return
    where = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit():
        host, port = where, "10001" if address.startswith("ray://") else "6379"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except socket.gaierror:
        raise GlmscoreError(f"--address {address}: the host {host} does not resolve; pass the head node's "
                            "address (host:port).") from None
    except OSError as exc:
        reason = ("nothing listens there" if isinstance(exc, ConnectionRefusedError) else
                  f"no answer in {timeout:g} s" if isinstance(exc, TimeoutError) else exc.strerror or type(exc).__name__)
        raise GlmscoreError(f"--address {address}: cannot reach a Ray cluster at {host}:{port} ({reason}); start the "
                            "cluster or pass the head node's address (host:port).") from None


def cluster_words(address: str) -> str:
    """The cluster a command runs on, as its first line names it."""
    if ray.is_initialized():
        return "the Ray cluster this process joined"
    return {"local": "a new local Ray cluster", "auto": "the running Ray cluster"}.get(address, f"the Ray cluster at {address}")


def start_ray(address: str, out: Path, state_api: bool = False, command: str | None = None, **init_args) -> None:
    """Connect to (or start) the cluster every command uses, once per process: Ray's logs to a file under
    ``out`` (``pipelines/console.py``), our SIGTERM handling restored. A local cluster gets no dashboard
    (about 1 s of start-up) unless ``state_api``: Ray's state API is served by the dashboard, and Ray Train
    polls it (without it, every trainer's shutdown waits out a 12 s time-out)."""
    if ray.is_initialized():
        return
    check_address(address)
    SESSION.address, SESSION.owns_cluster = address, address == "local"
    if command:  # the first line of every command that starts Ray names the cluster and the output
        say(f"{command} on {cluster_words(address)}; output {store.absolute(out)}")
    dashboard = None if address != "local" else state_api
    # Ray's own log goes beside a local output; an object-store output gets it in the local temp folder
    logs = (store.local_path(out) or Path(tempfile.gettempdir()) / "glmscore").absolute()  # the log path printed whole
    SESSION.ray_log = None if verbose() else ray_log(logs)
    CHANNEL.cluster(address, str(SESSION.ray_log) if SESSION.ray_log else None)
    quiet = quiet_ray(logs)  # creates the log's folder
    if SESSION.ray_log:
        CHANNEL.native_to_log(str(SESSION.ray_log))
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            ray.init(address=address, ignore_reinit_error=True, **quiet, include_dashboard=dashboard,
                     **({"dashboard_host": "127.0.0.1"} if dashboard else {}), **init_args)
            break
        except ConnectionError as exc:  # something answers at the address but will not take this driver
            raise GlmscoreError(f"could not join the Ray cluster at {address} ({str(exc).splitlines()[0].rstrip('.')}); "
                                "a cluster with token authentication needs its token (RAY_AUTH_TOKEN or "
                                "RAY_AUTH_TOKEN_PATH), and the address must be its GCS port.") from None
        except Exception as exc:  # Ray raises a bare Exception when its own raylet does not register in 30 s
            if "timed out during startup" not in str(exc):
                raise
            ray.shutdown()  # ends what this attempt started (its GCS), so the next one starts clean
            if address != "local" or attempt == START_ATTEMPTS:
                raise GlmscoreError(f"the local Ray cluster did not start within Ray's 30 s, {attempt} time(s) (its raylet "
                                    "never registered; the machine is very busy); no shard was written.") from None
            # Ray's 30 s is fixed in its code; a busy machine (CI running tests side by side) can need longer
            say(f"the local Ray cluster did not start within Ray's 30 s; starting it again "
                  f"(attempt {attempt + 1} of {START_ATTEMPTS})")
    handle_sigterm()  # ray.init installs handlers of its own



START_ATTEMPTS = 3  # starts of a local cluster whose raylet does not register within Ray's fixed 30 s


def started_local() -> bool:  # the question every caller asks of SESSION
    """Whether this process started the cluster it runs on (``start_ray`` with ``local``): every node is this
    machine, sharing its files (a model's cached environment, ``pipelines/environments.py``)."""
    return SESSION.owns_cluster


