"""What a person sees: a few lines of glmscore's own and one progress line per job; Ray's logs go to a
file under the output folder (``-v``/``--verbose`` keeps them on the console).

Quiet by default because Ray's INFO lines, the token-auth notice, Ray Data's own progress logging and
Tune's result tables bury the one line a user wants (how far, how fast, how long to go).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path


class Console:
    """Where glmscore's own lines go: ``stream`` (None: ``sys.stderr`` at the time of writing, never kept:
    Tune pickles callbacks that print, and tests swap stderr), or nowhere while ``silent``. A library
    caller redirects or silences them with ``console.redirect``; the CLI leaves them on stderr."""

    stream = None
    silent = False

    def write(self, text: str) -> None:
        if self.silent:
            return
        stream = self.stream or sys.stderr
        stream.write(text)
        stream.flush()


CONSOLE = Console()


def say(text: str) -> None:
    """One line of glmscore's own (``glmscore: text``)."""
    CONSOLE.write(f"glmscore: {text}\n")


def show(text) -> None:
    """A command's result (a table, where its report is): stdout, or where ``redirect`` sends glmscore's lines."""
    if CONSOLE.silent:
        return
    stream = CONSOLE.stream or sys.stdout
    stream.write(f"{text}\n")
    stream.flush()


def warn(text: str) -> None:
    """Suspicious but usable input, or a choice the user should know of (``glmscore: warning: text``)."""
    CONSOLE.write(f"glmscore: warning: {text}\n")


@contextmanager
def redirect(stream=None, *, silent: bool = False):
    """glmscore's lines to ``stream`` (or none at all with ``silent``) inside the block."""
    before = (CONSOLE.stream, CONSOLE.silent)
    CONSOLE.stream, CONSOLE.silent = stream, silent
    try:
        yield CONSOLE
    finally:
        CONSOLE.stream, CONSOLE.silent = before


RAY_LOGGERS = ("ray", "ray.data", "ray.tune", "ray.train", "ray.serve",
               "ray._private.authentication")  # the token-auth notice does not reach the "ray" logger's handlers


class Terminated(KeyboardInterrupt):
    """SIGTERM (``ray job stop``, a scheduler, ``kill``), handled like Ctrl-C."""

def _terminate(signum, frame):
    # the first SIGTERM only: `ray job stop` signals the driver and its supervising parent, which passes it
    # on (a no-op handler, not SIG_IGN: processes started from here must not inherit an ignored SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: None)
    raise Terminated()


def handle_sigterm() -> None:
    """SIGTERM raises ``Terminated`` in the main thread. Called at start-up and again after ``ray.init``,
    which installs its own handlers (Python: ``sys.exit(15)``; the C++ core: a stack dump that can end in
    SIGABRT)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


# Set by the command's SIGINT handler and never cleared within a command: a loop that waits on the main
# thread checks it (``check_interrupt``), so a KeyboardInterrupt that something swallowed (a finalizer running
# on the main thread when the signal is handled: CPython prints and drops it) cannot let the command go on
# as if no Ctrl-C had come. A clean-clone run saw a sweep finish both runs after its Ctrl-C.
INTERRUPTED = threading.Event()


def _interrupt(signum, frame):
    INTERRUPTED.set()
    raise KeyboardInterrupt()


def handle_sigint() -> None:
    """The command's SIGINT handler (Ctrl-C): raises ``KeyboardInterrupt`` as Python's does and records it in
    ``INTERRUPTED``. Only the command installs it: a library caller keeps its own (Tune and Train put theirs in
    while they run and restore this one)."""
    if threading.current_thread() is threading.main_thread():
        INTERRUPTED.clear()
        signal.signal(signal.SIGINT, _interrupt)


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` in a main-thread wait loop once the command was interrupted."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt()


def verbose() -> bool:
    return os.environ.get("GLMSCORE_VERBOSE") == "1"


def ray_log(out: Path) -> Path:
    """Where ``quiet_ray`` sends Ray's driver-side log for an output under ``out``."""
    return Path(out) / "_logs" / "ray.log"


def quiet_ray(out: Path) -> dict:
    """Send Ray's driver-side logs to ``<out>/_logs/ray.log`` (printed once) and return the extra
    ``ray.init`` arguments that keep workers' output and Ray's own console logging off."""
    if verbose():
        return {"log_to_driver": True}
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy output honours verbose=0 (no result tables)
    from ray.data import DataContext  # first: importing Ray Data configures its console logging

    log = ray_log(out)
    log.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        if handler not in logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False
    DataContext.get_current().enable_progress_bars = False
    say(f"Ray's logs: {log} (-v shows them here)")
    return {"log_to_driver": False, "configure_logging": False}


class Laps:
    """Where a job's start-up goes, phase by phase (``lap`` ends the running phase and names it): printed
    as one line before the first row streams, and kept in the manifest (``startup_s``)."""

    def __init__(self, clock=time.perf_counter):
        self.clock, self.last, self.laps = clock, clock(), {}

    def lap(self, name: str) -> None:
        now = self.clock()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now

    def seconds(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.laps.items()}

    def line(self) -> str:
        return (f"start-up {sum(self.laps.values()):.1f} s: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in self.laps.items()))


def rate_text(rate: float, what: str) -> str:
    """A rate a person can read: ``12,345.6 rows/s``, ``2.5 rows/s``, or below one per second the time per
    item (``31.4 s/window``: a real-size window model printed ``0.0 rows/s``)."""
    if rate >= 1:
        return f"{rate:,.1f} {what}/s"
    return f"{1 / rate:,.1f} s/{what[:-1] if what.endswith('s') else what}"


class Progress:
    """Rows done of ``total`` with rows/s and ETA: a bar that redraws on a terminal, else one line every
    ``every`` seconds (CI, ``ray job submit`` logs). The rate and ETA come from the recent updates
    (the last ``window`` seconds), never from the start: the first unit waits for Ray and the model to
    load, and an ETA over the whole elapsed time was 20-35x too long early on a short job.

    Two sources move it: ``update`` (rows of finished shards, authoritative) and ``observe`` (rows the model
    actors report as they go, so a slow unit shows progress before its shard is written); the line shows
    the larger. ``heartbeat`` prints what is happening when nothing has moved for ``every`` seconds
    (actors starting, weights loading). Thread-safe: a driver thread polls the actors' reports."""

    def __init__(self, total: int, what: str = "rows", every: float = 10.0, window: float = 60.0,
                 clock=time.monotonic):
        self.total, self.what, self.every, self.window, self.clock = total, what, every, window, clock
        self.tty = getattr(sys.stderr, "isatty", lambda: False)()
        self.done, self.scored, self.start, self.last = 0, 0, clock(), 0.0
        self.recent: deque[tuple[float, int]] = deque()  # (time, rows shown) of recent updates
        self.lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Tune pickles the callback that holds one (``trial_progress``): a lock does not pickle
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    @property
    def shown(self) -> int:
        return min(self.total, max(self.done, self.scored))

    def update(self, n: int) -> None:
        with self.lock:
            self.done += n
            self._moved(force=self.done >= self.total)

    def observe(self, scored: int) -> None:
        """The rows the model actors have reported so far (a retried unit may count twice: capped at total)."""
        with self.lock:
            if scored > self.scored:
                self.scored = scored
                self._moved(force=False)

    def heartbeat(self, state: str) -> None:
        """Print ``state`` (what the job waits for) if no line was printed for ``every`` seconds."""
        with self.lock:
            now = self.clock()
            if now - self.last >= self.every and self.shown < self.total:
                self.last = now
                elapsed = now - self.start
                text = self.line(now) if self.shown else f"glmscore: {state}; elapsed {elapsed:.0f} s"
                CONSOLE.write(("\r" if self.tty else "") + text + ("" if self.tty else "\n"))

    def _moved(self, force: bool) -> None:
        now = self.clock()
        self.recent.append((now, self.shown))
        while len(self.recent) > 2 and now - self.recent[0][0] > self.window:
            self.recent.popleft()
        if self.tty or force or now - self.last >= self.every:
            self.last = now
            self._show(now)

    def rate(self) -> float | None:
        """Rows per second over the recent updates (None until two updates, the first one after warm-up)."""
        if len(self.recent) < 2:
            return None
        (t0, d0), (t1, d1) = self.recent[0], self.recent[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or self.clock()) - self.start, 1e-9)
        rate, shown = self.rate(), self.shown
        pct = 100.0 * shown / self.total if self.total else 100.0
        if self.done >= self.total:
            speed = f"{rate_text(self.done / elapsed, self.what)} overall"
            eta = "done"
        elif rate:
            speed, eta = rate_text(rate, self.what), f"ETA {(self.total - shown) / rate:.0f} s"
        else:
            speed, eta = f"- {self.what}/s", "ETA -"
        return f"glmscore: {shown:,}/{self.total:,} {self.what} ({pct:.0f}%), {speed}, elapsed {elapsed:.0f} s, {eta}"

    def _show(self, now: float) -> None:
        if self.tty:
            CONSOLE.write("\r" + self.line(now) + ("\n" if self.done >= self.total else ""))
        else:
            CONSOLE.write(self.line(now) + "\n")


def trial_progress(total: int):
    """A Ray Tune callback that shows trials done of ``total`` (as ``Progress``)."""
    from ray.tune import Callback  # in here: runs inside a Ray Train/Tune worker, which imports what it needs itself

    class TrialProgress(Callback):
        def __init__(self):
            self.progress = Progress(total, "trials", every=5.0)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.progress.update(1)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.progress.update(1)

    return TrialProgress()
