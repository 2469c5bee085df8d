"""The one Tune runner (``run_trials``): Ctrl-C stops a sweep with ``TrialsInterrupted`` and a rerun of
the same grid reuses the finished trials; another grid starts afresh. On a real local Ray cluster."""

import os
import pickle
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from ray import tune

from glmscore.pipelines.trials import TrialsInterrupted, fetch, run_trials

pytestmark = pytest.mark.ray


def _trial(config, marks: str):
    """Record each run; trials 2 and 3 wait until the test releases them (bounded: a stuck test fails)."""
    i = config["trial"]
    with open(Path(marks) / f"ran-{i}", "a") as fh:
        fh.write("run\n")
    if i >= 2:
        deadline = time.monotonic() + 600
        while not (Path(marks) / "release").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("never released")
            time.sleep(0.05)
    return {"value": i * 10}


class _Marker:
    """Unpickling it leaves a file: what a hostile tuner.pkl could do instead."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _wait_for(condition, what: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_an_interrupted_sweep_resumes_with_its_finished_trials(ray_cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    grid = {"trial": tune.grid_search([0, 1, 2, 3])}
    common = dict(storage=tmp_path / "tune", name="probes", resources={"cpu": 1}, n_trials=4, marks=str(marks))

    def interrupt_once_2_and_3_run():
        # 2 CPUs, 1 per trial: trials 2 and 3 start only after Tune has finished 0 and 1
        _wait_for(lambda: (marks / "ran-2").exists() and (marks / "ran-3").exists(), "trials 2 and 3 to start")
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: Tune's handler stops the run and saves its state

    def dry_run() -> str:  # what --dry-run says; it never starts a trial
        return run_trials(_trial, grid, **common, dry_run_on="local")

    assert "4 Ray Tune trials, 1 CPU each" in dry_run() and "no earlier trials: every trial runs" in dry_run()
    sender = threading.Thread(target=interrupt_once_2_and_3_run, daemon=True)
    sender.start()
    with pytest.raises(TrialsInterrupted):
        run_trials(_trial, grid, **common)
    sender.join(timeout=60)
    assert "holds an interrupted run of this grid: its finished trials would be reused" in dry_run()
    # the same interrupted folder as somebody else could hand it over: its Tune state changed after glmscore
    # signed it (a pickle that would run code when restored); it is never restored, every trial runs afresh
    tampered = tmp_path / "tampered"
    shutil.copytree(tmp_path / "tune", tampered, symlinks=True)
    (tampered / "probes" / "tuner.pkl").write_bytes(pickle.dumps(_Marker(str(marks / "unpickled"))))
    (marks / "release").touch()
    results = run_trials(_trial, grid, **common)
    assert "(a finished run, or another grid's) are replaced: every trial runs" in dry_run()
    assert sorted(r.metrics["value"] for r in results) == [0, 10, 20, 30]
    runs = {i: (marks / f"ran-{i}").read_text().count("run") for i in range(4)}
    assert runs[0] == 1 and runs[1] == 1, runs  # finished trials were reused, not rerun
    assert runs[2] == 2 and runs[3] == 2, runs
    foreign = {**common, "storage": tampered}
    assert "that this installation did not write (or that changed since)" in run_trials(_trial, grid, **foreign, dry_run_on="local")
    results = run_trials(_trial, grid, **foreign)
    assert sorted(r.metrics["value"] for r in results) == [0, 10, 20, 30] and not (marks / "unpickled").exists()
    assert (marks / "ran-0").read_text().count("run") == 2  # every trial ran again
    for i in range(4):
        (marks / f"ran-{i}").write_text("run\n" * runs[i])
    # a finished sweep is not restored: the same grid again runs again (only an interrupted one resumes),
    # and so does another grid, with no trial of the first one mixed in
    results = run_trials(_trial, {"trial": tune.grid_search([0, 1])}, **{**common, "n_trials": 2})
    assert sorted(r.metrics["value"] for r in results) == [0, 10]
    assert (marks / "ran-0").read_text().count("run") == 2


def test_the_grid_stamp_covers_the_shared_data():
    """An interrupted sweep is restored only for the same grid AND the same data (other embeddings under
    the same folder must not reuse its trials): the digest sees every value, a DataFrame's middle rows too."""
    import hashlib

    import numpy as np
    import pandas as pd

    from glmscore.pipelines.trials import digest as feed

    def digest(value) -> str:
        h = hashlib.blake2b(digest_size=16)
        feed(value, h)
        return h.hexdigest()

    frame = pd.DataFrame({"x": np.arange(1000.0)})
    edited = frame.copy()
    edited.loc[500, "x"] = -1.0
    assert digest({"data": frame}) != digest({"data": edited})
    assert digest({"X": np.zeros((3, 4), np.float32)}) != digest({"X": np.zeros((4, 3), np.float32)})
    assert digest({"X": np.arange(4)}) == digest({"X": np.arange(4)})


def _one_item(config, data):
    """A trial of a ``by_item`` sweep: it is given object references, and fetches only its own item."""
    import ray

    assert all(isinstance(v, ray.ObjectRef) for v in data.values())
    got = fetch(data, [config["item"]])
    return {"item": config["item"], "sum": float(got[config["item"]].sum()), "fetched": len(got)}


def test_a_by_item_sweep_gives_each_trial_only_the_items_it_reads(ray_cluster, tmp_path):
    import numpy as np

    data = {name: np.full(1_000, i, dtype=np.float32) for i, name in enumerate(["a", "b", "c"])}
    results = run_trials(_one_item, {"item": tune.grid_search(["a", "c"])}, storage=tmp_path / "tune", name="items",
                         resources={"cpu": 1}, n_trials=2, data=data, by_item=("data",))
    assert sorted((r.metrics["item"], r.metrics["sum"], r.metrics["fetched"]) for r in results) == \
        [("a", 0.0, 1), ("c", 2_000.0, 1)]
