"""The one Ray Tune runner of every sweep (probes, fine-tuning, a benchmark's learners): ``run_trials``, with
its resume rule (only an interrupted run of the same grid on the same data is restored) and ``fetch`` for
the trials' per-item data."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import ray
from ray import tune

from glmscore.pipelines.caches import secret
from glmscore.pipelines.console import say, trial_progress


def run_trials(trainable, param_space: dict, *, storage: Path, name: str, resources: dict, n_trials: int,
               max_concurrent: int | None = None, dry_run_on: str | None = None, by_item: tuple[str, ...] = (),
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

    ``dry_run_on`` (the Ray address the run would use): nothing starts and nothing is written; returns the
    lines saying how many trials would run with what, and whether an interrupted run's trials would be reused."""
    experiment = Path(storage).resolve() / name
    stamp = experiment / GRID_STAMP
    h = hashlib.blake2b(json.dumps(param_space, sort_keys=True, default=str).encode(), digest_size=16)
    digest(shared, h)  # the data too: a rerun on other embeddings must not reuse the trials of these
    grid = h.hexdigest()
    if dry_run_on is not None:
        each = ", ".join(f"{v:g} {k.upper()}" for k, v in resources.items() if v)
        at_once = (f"a new local Ray cluster on this machine's {os.cpu_count()} CPUs runs "
                   f"{min(n_trials, int(os.cpu_count() // max(resources.get('cpu', 1), 1e-9)) or 1)} at once"
                   if dry_run_on == "local" else f"the Ray cluster at {dry_run_on} decides how many run at once")
        if _resumable(stamp, grid, experiment):
            reuse = f"{experiment} holds an interrupted run of this grid: its finished trials would be reused"
        elif _stamped_grid(stamp) == grid:
            reuse = (f"{experiment} holds an interrupted run of this grid that this installation did not write (or that "
                     "changed since): it is never restored (Tune's state is a pickle); every trial runs")
        elif experiment.exists():
            reuse = f"the trials in {experiment} (a finished run, or another grid's) are replaced: every trial runs"
        else:
            reuse = "no earlier trials: every trial runs"
        return f"  trials: {n_trials} Ray Tune trials, {each} each; {at_once}\n  reuse: {reuse}"
    shared = {k: ({item: ray.put(v) for item, v in value.items()} if k in by_item else value) for k, value in shared.items()}
    runnable = tune.with_resources(tune.with_parameters(trainable, **shared), resources)
    if _resumable(stamp, grid, experiment) and tune.Tuner.can_restore(str(experiment)):
        say(f"resuming the interrupted trials in {experiment}: finished trials are reused")
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
        stamp.write_text(json.dumps({"grid": grid, "signature": None}))
    results = tuner.fit()
    # Tune caught a SIGINT: it stopped the running trials (marked terminated, with no final result) and
    # saved the experiment as it was before, so a restore runs them again
    if any(r.error is None and not (r.metrics or {}).get("done") for r in results):
        stamp.write_text(json.dumps({"grid": grid, "signature": _signature(grid, experiment)}))
        raise TrialsInterrupted()
    stamp.unlink(missing_ok=True)  # finished: only an interrupted experiment is ever restored
    errors = [r.error for r in results if r.error]
    if errors:
        # Tune's error is the trial's exception, except for a trial whose process died (killed for memory, say):
        # then it may be a description rather than an exception object
        raise errors[0] if isinstance(errors[0], BaseException) else RuntimeError(f"a Ray Tune trial failed: {errors[0]}")
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


def digest(value, h) -> None:
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
            digest(getattr(value, f.name), h)
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            digest(value[k], h)
    elif isinstance(value, ray.ObjectRef):
        pass  # its id is new in every run; whoever puts data there digests its content beside it
    elif isinstance(value, (list, tuple)):
        h.update(f"[{len(value)}".encode())
        for v in value:
            digest(v, h)
    else:
        h.update(repr(value).encode())


GRID_STAMP = "_glmscore_grid"  # the digest of the grid an experiment folder holds trials of, and its signature


# Tune restores an experiment by unpickling its files (tuner.pkl, trial state): an experiment folder that came
# from somewhere else (a colleague's probe folder, a shared disk) would run its pickles here. Only state this
# installation wrote is restored: after an interrupt the stamp gets an HMAC, under a key private to this user
# (``caches.secret``), of the grid and every file of the experiment; anything else starts afresh. (A run ended
# by SIGKILL never signed its state, so its rerun starts afresh too.)
def _stamped_grid(stamp: Path) -> str | None:
    try:
        return json.loads(stamp.read_text()).get("grid")
    except (OSError, ValueError, AttributeError):
        return None


def _signature(grid: str, experiment: Path) -> str:
    mac = hmac.new(secret("trials"), grid.encode(), hashlib.sha256)
    for path in sorted(p for p in experiment.rglob("*") if p.name != GRID_STAMP):
        if path.is_symlink():
            mac.update(b"link:" + str(path.relative_to(experiment)).encode())
        elif path.is_file():
            mac.update(str(path.relative_to(experiment)).encode() + b"\0")
            mac.update(hashlib.sha256(path.read_bytes()).digest())
    return mac.hexdigest()


def _resumable(stamp: Path, grid: str, experiment: Path) -> bool:
    try:
        record = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    signature = record.get("signature") if isinstance(record, dict) else None
    return record.get("grid") == grid and isinstance(signature, str) and hmac.compare_digest(signature, _signature(grid, experiment))


class TrialsInterrupted(KeyboardInterrupt):
    """Ctrl-C during a Tune sweep; the CLI says what is kept."""
    kept = "finished trials are kept and a rerun of the same command reuses them"


