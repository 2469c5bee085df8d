"""The Ray session every command shares: which cluster (``ray_address``), starting or joining it once
(``start_ray``), watching it (``watch_cluster``), sizing actor pools and checking that they fit
(``size_pool``, ``check_fits``), and running a grid of Ray Tune trials (``run_trials``).

Drivers (the score job, sweeps, probe and fine-tuning commands, a benchmark's learners) call these and
nothing of Ray's set-up themselves. What a backend's actors need beyond CPUs and whole GPUs (vLLM's
tensor-parallel placement group) comes from the backend (``Backend.actor_resources``).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import ray
from ray import tune
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from models.base import ActorResources, Backend
from models.cards import ModelCard
from models.errors import GlmscoreError
from pipelines import store
from pipelines.console import handle_sigterm, quiet_ray, ray_log, trial_progress, verbose

EXIT_CLUSTER_LOST = 3
# CPUs each stage's pool actors reserve: a model actor holds one (its torch threads use the cores it shares
# with the light stages); prepare and write are light beside a forward pass, and fractions let them run next
# to a model actor that holds a node's only whole CPU (a restarted actor plus whole-CPU writes stalled for minutes)
ACTOR_CPUS, PREPARE_CPUS, WRITE_CPUS = 1.0, 0.5, 0.1
TASK_CPUS = PREPARE_CPUS + WRITE_CPUS


class Pool(NamedTuple):
    """An actor pool: GPUs per actor (fractions share a GPU), its smallest and largest size, and the torch
    threads per actor (None: the backend's default)."""

    gpus: float
    min_actors: int
    max_actors: int
    threads: int | None


def size_pool(cfg, backend: type[Backend], cluster: dict, card: ModelCard | None = None) -> Pool:
    """The actor pool of a job (``cfg``: a ``ScoreConfig``) on ``cluster`` (Ray's resource totals). Actors share a
    GPU only when the card says how much memory one needs and --gpu-memory-gb says it fits twice or more."""
    gpus = cfg.gpus_per_actor
    if cfg.device == "cpu":
        if gpus:
            raise GlmscoreError("--device cpu asks for no GPU; drop --gpus-per-actor.")
        gpus = 0.0
    elif cfg.device == "gpu" and not backend.can_use_gpu and not gpus:
        raise GlmscoreError(f"backend {backend.name} runs on CPU only; drop --device gpu.")
    elif gpus is None:
        # "gpu" asks for GPU actors whatever the cluster has now: on an autoscaling cluster whose GPU
        # workers are at zero, the pending actors are what make the autoscaler add GPU nodes
        gpus = 1.0 if cfg.device == "gpu" or (backend.can_use_gpu and cluster.get("GPU", 0) >= 1) else 0.0
    elif cfg.device == "gpu" and gpus == 0:
        raise GlmscoreError("--device gpu needs --gpus-per-actor above 0.")
    if cfg.gpus_per_actor is None and gpus and cfg.gpu_memory_gb and card is not None and card.gpu_memory_gb > 0:
        fits = int(cfg.gpu_memory_gb // card.gpu_memory_gb)
        if fits >= 2:
            gpus = 1.0 / fits
    max_actors = cfg.max_actors
    if max_actors is None:
        max_actors = max(cfg.min_actors, int(cluster.get("GPU", 0) / gpus + 1e-9) if gpus else 1)
    threads = cfg.threads_per_actor
    if threads is None and not gpus:
        # An actor reserves 1 CPU so the prepare/write actors can run beside it, but torch should use
        # the cores it shares with them: those tasks are light next to a forward pass.
        threads = max(1, int(cluster.get("CPU", 1)) // max_actors)
    return Pool(gpus, cfg.min_actors, max_actors, threads)


def check_fits(pool: Pool, cluster: dict) -> Pool:
    """On a cluster that cannot add nodes (the local one this job started), an actor pool that can never
    be placed is a user error, not a job that waits for ever; so is one that would hold every CPU, which
    leaves none for the prepare and write actors beside it (the job would hang without a word). Returns
    the pool with its largest size capped to what fits."""
    gpus, cpus = cluster.get("GPU", 0), cluster.get("CPU", 0)
    if pool.gpus > gpus:
        raise GlmscoreError(f"each actor asks for {pool.gpus:g} GPU(s) but this local cluster has {gpus:g}; "
                            "drop --gpus-per-actor or pass --address of a cluster with GPUs.")
    by_cpu = int((cpus - TASK_CPUS) / ACTOR_CPUS + 1e-9)
    fit = min(by_cpu, int(gpus / pool.gpus + 1e-9) if pool.gpus else by_cpu)
    if pool.min_actors > fit:
        raise GlmscoreError(f"--min-actors {pool.min_actors} cannot start: this local cluster fits {max(fit, 0)} actor(s) "
                            f"({cpus:g} CPUs, {gpus:g} GPUs; each actor takes {ACTOR_CPUS:g} CPU and {pool.gpus:g} GPU, "
                            f"and its prepare and write actors {TASK_CPUS:g} CPU beside them).")
    return pool._replace(max_actors=min(pool.max_actors, fit))


def warn_if_starved(pool: Pool, cluster: dict) -> None:
    """On a cluster this job joined, an autoscaler may still add nodes: a pool that leaves no CPU for the
    prepare and write actors beside it is a warning, not an error."""
    if cluster.get("CPU", 0) < pool.min_actors * ACTOR_CPUS + TASK_CPUS:
        print(f"glmscore: warning: the cluster has {cluster.get('CPU', 0):g} CPUs now; {pool.min_actors} actor(s) and their "
              f"prepare/write actors need {pool.min_actors * ACTOR_CPUS + TASK_CPUS:g}: the job waits until nodes are added.",
              file=sys.stderr)


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
                    print(f"glmscore: error: lost the Ray cluster (its head at {host}:{port} stopped answering); "
                          "finished shards are kept and a rerun resumes from them.", file=sys.stderr, flush=True)
                    reported()
                    os._exit(EXIT_CLUSTER_LOST)

    threading.Thread(target=watch, name="glmscore-cluster-watch", daemon=True).start()
    return done


_supervisor_pipe: int | None = None  # the write end, in a supervised driver (see ``supervise_driver``)
_supervise = False  # only the glmscore command forks; a Python program that calls run_score is never forked
_ray_log: Path | None = None  # where Ray's driver-side log goes (None: to the console, under -v)


def supervise_drivers() -> None:
    """This process is the ``glmscore`` command: a job that starts or joins Ray runs under ``supervise_driver``."""
    global _supervise
    _supervise = True


def reported(code: int | None = None) -> None:
    """Tell the supervising parent that this process ends with its own words (a Python exit, or a
    sentence already printed: ``code`` None), or that the command finished with exit status ``code``
    (what this process then does while Ray shuts down no longer changes the job's status)."""
    global _supervisor_pipe
    if _supervisor_pipe is not None:
        os.write(_supervisor_pipe, b"x" if code is None else b"=" + bytes([code & 0xFF]))
        os.close(_supervisor_pipe)
        _supervisor_pipe = None


def finished(code: int) -> None:
    """The command has said all it says and ends with ``code``. In a supervised driver the parent is told
    so, and what Ray prints while it shuts down goes to its log, not the console: Ray's teardown has been
    seen to abort a driver whose job was complete (a gRPC ``grpc_cq_begin_op`` assertion on one of its
    threads, SIGABRT), which must not turn a finished job into a crash."""
    if _supervisor_pipe is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        fd = os.open(_ray_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if _ray_log else None
    except OSError:  # the log's folder is gone (a removed --out): the console it is
        fd = None
    if fd is not None:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    reported(code)


def _gcs_answers(address: str) -> bool | None:
    """Whether something listens at a joined cluster's GCS address (None: not a host:port address)."""
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or address.startswith("ray://"):
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
        return True
    except OSError:
        return False


def supervise_driver(address: str) -> None:
    """Before Ray starts, fork: the child goes on as the Ray driver and runs the job; this process only
    waits for it and exits with its status (the status the child reported with ``finished``, whatever
    Ray's teardown does after it). Ray's core worker ends its process at once, with
    status 1 and not a word (C++ ``QuickExit``: no Python clean-up), when it loses its node's raylet or
    object store, as when the head is killed mid-job; the kernel's OOM killer ends a driver as silently.
    The parent turns such an end into one sentence. SIGTERM is passed on to the child (the signal of
    ``ray job stop`` reaches both; the child takes the first one only); Ctrl-C reaches both from the
    terminal, and the parent leaves it to the child."""
    global _supervisor_pipe
    if not _supervise or not hasattr(os, "fork") or _supervisor_pipe is not None:
        return
    sys.stdout.flush()
    sys.stderr.flush()  # or the child prints the parent's buffered lines a second time
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        _supervisor_pipe = write_end
        atexit.register(reported)  # every Python exit runs it: normal, sys.exit, an uncaught exception
        return
    os.close(write_end)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGTERM))
    status = os.waitpid(child, 0)[1]  # retried after a signal (PEP 475)
    code = os.waitstatus_to_exitcode(status)
    said = os.read(read_end, 2)
    if said[:1] == b"=" and len(said) == 2:
        if code != said[1]:
            print(f"glmscore: note: Ray's shutdown ended the driver (status {code}) after the job had finished; "
                  f"the job's status is kept{f' (Ray: {_ray_log})' if _ray_log else ''}.", file=sys.stderr, flush=True)
        code = said[1]
    elif said != b"x":
        if _gcs_answers(address) is False:
            print(f"glmscore: error: lost the Ray cluster (its head at {address} stopped answering); finished shards "
                  "are kept and a rerun resumes from them.", file=sys.stderr, flush=True)
            code = EXIT_CLUSTER_LOST
        elif code < 0:
            name = signal.Signals(-code).name
            print(f"glmscore: error: the job's driver process was killed ({name}"
                  + (": out of memory? the kernel's log (`dmesg`) says" if name == "SIGKILL" else "")
                  + "); finished shards are kept and a rerun resumes from them.", file=sys.stderr, flush=True)
            code = 128 - code
        else:
            print(f"glmscore: error: Ray ended the job's driver process (status {code}: it lost its node's raylet "
                  "or object store; Ray's logs say more); finished shards are kept and a rerun resumes from them.",
                  file=sys.stderr, flush=True)
            code = EXIT_CLUSTER_LOST
    os._exit(code)  # the child ran the command; nothing of it is left to do here


def ray_address(address: str | None) -> str:
    """Which cluster a job uses, explicitly: ``--address``, else ``RAY_ADDRESS`` (set by ``ray job
    submit`` for the job's driver), else a new local cluster. Never the last cluster that somebody
    started with ``ray start`` on this machine (what ``ray.init()`` without an address would join)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


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
    global _ray_log, _started_local
    check_address(address)
    _started_local = address == "local"
    if command:  # the first line of every command that starts Ray names the cluster and the output
        print(f"glmscore: {command} on {cluster_words(address)}; output {store.absolute(out)}", file=sys.stderr, flush=True)
    dashboard = None if address != "local" else state_api
    # Ray's own log goes beside a local output; an object-store output gets it in the local temp folder
    logs = (store.local_path(out) or Path(tempfile.gettempdir()) / "glmscore").absolute()  # the log path printed whole
    _ray_log = None if verbose() else ray_log(logs)
    supervise_driver(address)
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            ray.init(address=address, ignore_reinit_error=True, **quiet_ray(logs), include_dashboard=dashboard,
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
            print(f"glmscore: the local Ray cluster did not start within Ray's 30 s; starting it again "
                  f"(attempt {attempt + 1} of {START_ATTEMPTS})", file=sys.stderr, flush=True)
    handle_sigterm()  # ray.init installs handlers of its own



_started_local = False
START_ATTEMPTS = 3  # starts of a local cluster whose raylet does not register within Ray's fixed 30 s


def started_local() -> bool:
    """Whether this process started the cluster it runs on (``start_ray`` with ``local``): every node is this
    machine, sharing its files (a model's cached environment, ``pipelines/environments.py``)."""
    return _started_local


def run_trials(trainable, param_space: dict, *, storage: Path, name: str, resources: dict, n_trials: int,
               max_concurrent: int | None = None, dry_run: str | None = None, by_item: tuple[str, ...] = (),
               **shared) -> list | str:
    """The one Ray Tune runner of every sweep (probes, fine-tuning, a benchmark's learners): the trials of
    ``param_space`` (its ``tune.grid_search`` entries), each with ``resources``; ``shared`` goes to the
    object store once (``tune.with_parameters``); one progress line per finished trial (of ``n_trials``).
    The dicts named in ``by_item`` go there one value at a time, and the trial is given a dict of object
    references to ``ray.get`` what it reads: a trial of one assay then holds that assay, not
    every assay of the sweep (2 x 500k x 256 embeddings: 15 GB of trial processes before).
    Returns Tune's results; the first failed trial's error is raised (a user error keeps its sentence, a
    bug its traceback). No configuration is ever chosen here: every trial's result is returned.

    Ctrl-C: Tune stops the trials and saves the experiment's state; this raises ``TrialsInterrupted``
    (exit 130). A rerun of the same grid into the same ``storage``/``name`` restores the experiment, so
    its finished trials are reused and only the others run; another grid starts afresh.

    ``dry_run`` (the Ray address the run would use): nothing starts and nothing is written; returns the
    lines saying how many trials would run with what, and whether an interrupted run's trials would be reused."""
    experiment = Path(storage).resolve() / name
    stamp = experiment / GRID_STAMP
    h = hashlib.blake2b(json.dumps(param_space, sort_keys=True, default=str).encode(), digest_size=16)
    _digest(shared, h)  # the data too: a rerun on other embeddings must not reuse the trials of these
    grid = h.hexdigest()
    if dry_run is not None:
        each = ", ".join(f"{v:g} {k.upper()}" for k, v in resources.items() if v)
        at_once = (f"a new local Ray cluster on this machine's {os.cpu_count()} CPUs runs "
                   f"{min(n_trials, int(os.cpu_count() // max(resources.get('cpu', 1), 1e-9)) or 1)} at once"
                   if dry_run == "local" else f"the Ray cluster at {dry_run} decides how many run at once")
        if stamp.is_file() and stamp.read_text() == grid:
            reuse = f"{experiment} holds an interrupted run of this grid: its finished trials would be reused"
        elif experiment.exists():
            reuse = f"the trials in {experiment} (a finished run, or another grid's) are replaced: every trial runs"
        else:
            reuse = "no earlier trials: every trial runs"
        return f"  trials: {n_trials} Ray Tune trials, {each} each; {at_once}\n  reuse: {reuse}"
    shared = {k: ({item: ray.put(v) for item, v in value.items()} if k in by_item else value) for k, value in shared.items()}
    runnable = tune.with_resources(tune.with_parameters(trainable, **shared), resources)
    if stamp.is_file() and stamp.read_text() == grid and tune.Tuner.can_restore(str(experiment)):
        print(f"glmscore: resuming the interrupted trials in {experiment}: finished trials are reused", file=sys.stderr, flush=True)
        tuner = tune.Tuner.restore(str(experiment), runnable, resume_unfinished=True, restart_errored=True)
    else:
        if experiment.exists():
            shutil.rmtree(experiment)  # another grid's trials: never mixed with this one's
        tuner = tune.Tuner(
            runnable,
            param_space=param_space,
            # reuse_actors: a finished trial's process takes the next trial of the same resources, so a
            # sweep of many small trials (probe x fold) does not pay a process start and the imports of
            # torch/sklearn for each one (Tune's default starts a fresh actor per trial)
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(experiment.parent), name=name, verbose=0,
                                      callbacks=[trial_progress(n_trials)]),
        )
        experiment.mkdir(parents=True, exist_ok=True)
        stamp.write_text(grid)
    results = tuner.fit()
    # Tune caught a SIGINT: it stopped the running trials (marked terminated, with no final result) and
    # saved the experiment as it was before, so a restore runs them again
    if any(r.error is None and not (r.metrics or {}).get("done") for r in results):
        raise TrialsInterrupted()
    stamp.unlink(missing_ok=True)  # finished: only an interrupted experiment is ever restored
    errors = [r.error for r in results if r.error]
    if errors:
        raise errors[0]
    return list(results)


def fetch(items: dict, keys) -> dict:
    """In a trial of ``run_trials(by_item=...)``: the values of ``keys`` (object references there), with any
    field of theirs that is itself a reference fetched too (embeddings the driver put as it read them)."""
    out = {}
    for k in dict.fromkeys(keys):
        value = ray.get(items[k]) if isinstance(items[k], ray.ObjectRef) else items[k]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            refs = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)
                    if isinstance(getattr(value, f.name), ray.ObjectRef)}
            value = dataclasses.replace(value, **dict(zip(refs, ray.get(list(refs.values()))))) if refs else value
        out[k] = value
    return out


def _digest(value, h) -> None:
    """Feed the content of a trial's shared data (arrays, dataclasses, containers) into ``h``."""
    if isinstance(value, np.ndarray):
        h.update(f"{value.dtype.str}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes() if value.dtype != object else repr(value.tolist()).encode())
    elif isinstance(value, (pd.DataFrame, pd.Series)):  # its repr shows only the first and last rows
        h.update(repr(list(value.columns) if isinstance(value, pd.DataFrame) else value.name).encode())
        h.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            h.update(f.name.encode())
            _digest(getattr(value, f.name), h)
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            _digest(value[k], h)
    elif isinstance(value, ray.ObjectRef):
        pass  # its id is new in every run; whoever puts data there digests its content beside it
    elif isinstance(value, (list, tuple)):
        h.update(f"[{len(value)}".encode())
        for v in value:
            _digest(v, h)
    else:
        h.update(repr(value).encode())


GRID_STAMP = "_glmscore_grid"  # the digest of the grid an experiment folder holds trials of


class TrialsInterrupted(KeyboardInterrupt):
    """Ctrl-C during a Tune sweep; the CLI says what is kept."""
    kept = "finished trials are kept and a rerun of the same command reuses them"


def actor_remote_args(resources: ActorResources) -> dict:
    """Ray Data's arguments for a model actor pool: the backend's remote arguments, and for a backend that
    asks for a placement group per actor, a ``ray_remote_args_fn`` that makes one for each actor and puts
    the actor's children (vLLM's tensor-parallel workers) in it."""
    if not resources.bundles:
        return dict(resources.remote_args)
    bundles = [dict(b) for b in resources.bundles]

    def remote_args():
        pg = ray.util.placement_group(bundles, strategy="STRICT_PACK")
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)}

    return {**resources.remote_args, "ray_remote_args_fn": remote_args}
