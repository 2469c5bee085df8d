"""How many times each unit was started in this job, and the most memory its workers held.

A worker killed for memory (Ray's memory monitor, the kernel's OOM killer) or with its node leaves no
exception behind, only a retried task on a restarted actor, and Ray Data's pools retry without end
(``max_restarts=-1``, ``max_task_retries=-1``). This ledger, kept in the cluster's GCS key-value store so
that every node's actors see it, lets the retry know it is one: the score actor then runs smaller
batches, and after ``MAX_KILLS`` kills stops the job with one sentence (``pipelines/score.py``).
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import psutil
from ray.experimental import internal_kv

NAMESPACE = "glmscore"
MAX_KILLS = 3  # a unit whose worker was killed this many times stops the job
SAMPLE_S = 0.2  # how often a running unit's memory is sampled


@dataclass
class Attempt:
    """A unit's record: ``starts`` counts this start; the memory fields are the most seen so far, in bytes."""

    starts: int = 0
    peak_rss: int = 0  # the worker process and its children (an engine's processes)
    node_used: int = 0
    node_total: int = 0

    @property
    def kills(self) -> int:
        """Earlier starts that never finished: their worker died."""
        return self.starts - 1


def _process_rss() -> int:
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:  # a child that ended meanwhile
            pass
    return total


class Ledger:
    """The attempts of one job (``run``: a key made once by the driver), one record per unit."""

    def __init__(self, run: str):
        self.run = run
        self.local: dict[str, Attempt] = {}  # without a Ray worker (a backend run in process): this process only

    def _key(self, unit: str) -> bytes:
        return f"attempts/{self.run}/{unit}".encode()

    def _get(self, unit: str) -> Attempt:
        if not internal_kv._internal_kv_initialized():
            return self.local.get(unit, Attempt())
        raw = internal_kv._internal_kv_get(self._key(unit), namespace=NAMESPACE)
        return Attempt(**json.loads(raw)) if raw else Attempt()

    def _put(self, unit: str, record: Attempt) -> None:
        if not internal_kv._internal_kv_initialized():
            self.local[unit] = record
            return
        internal_kv._internal_kv_put(self._key(unit), json.dumps(asdict(record)), overwrite=True, namespace=NAMESPACE)

    @contextmanager
    def attempt(self, unit: str):
        """Count a start of ``unit`` and yield its record (earlier kills, their memory); while the block runs,
        a thread keeps the record's memory peak up to date, so the next start sees it if this worker is
        killed. A block that ends (returns or raises) removes the record: only a killed worker leaves one."""
        record = self._get(unit)
        node = psutil.virtual_memory()
        # sampled now as well as by the thread: a worker killed in its first moments still leaves a figure
        record.starts, record.node_total = record.starts + 1, node.total
        record.peak_rss, record.node_used = max(record.peak_rss, _process_rss()), max(record.node_used, node.used)
        self._put(unit, record)
        seen = Attempt(**asdict(record))
        stop = threading.Event()

        def sample():
            while not stop.wait(SAMPLE_S):
                rss, used = _process_rss(), psutil.virtual_memory().used
                if rss > seen.peak_rss * 1.02 or used > seen.node_used * 1.02:  # a write only when it grew
                    seen.peak_rss, seen.node_used = max(seen.peak_rss, rss), max(seen.node_used, used)
                    self._put(unit, seen)

        watcher = threading.Thread(target=sample, name="glmscore-memory", daemon=True)
        watcher.start()
        try:
            yield record
        finally:
            stop.set()
            watcher.join()
            if internal_kv._internal_kv_initialized():
                internal_kv._internal_kv_del(self._key(unit), namespace=NAMESPACE)
            else:
                self.local.pop(unit, None)

    def clear(self) -> None:
        """Remove this job's records (the driver, when the job ends: a failed job leaves its killed units')."""
        if internal_kv._internal_kv_initialized():
            internal_kv._internal_kv_del(f"attempts/{self.run}/".encode(), del_by_prefix=True, namespace=NAMESPACE)


def size(n: int) -> str:
    """Bytes in the unit a reader compares with a node's memory."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"
