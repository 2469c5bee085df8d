"""``glmscore sweep sweep.yaml``: models x benchmarks as score runs in one Ray job, then one combined report.

The file (YAML, read with ``yaml.safe_load``)::
    out: /data/sweeps/june                # output root (relative paths: from the sweep file's folder)
    max_parallel: 2                       # runs at once (default 2)
    address: null                         # default: RAY_ADDRESS (ray job submit), else a new local cluster
    local_cpus: null                      # logical CPUs of a new local cluster (default: the machine's)
    overwrite: false                      # passed to every run (--overwrite)
    defaults: {device: gpu}               # options of every model (defaults < benchmark < model)
    models:
      - kmer:3                            # a name alone, or a mapping:
      - model: metagene-1                 # card id | local save_pretrained dir | hub id | kmer:K
        name: metagene                    # folder and report label (default: the card id the spec gives)
        gpus_per_actor: 1                 # score-job options (ScoreConfig fields) ...
        tensor_parallel_size: 2           # ... and backend options, by field name
    benchmarks:
      - name: nullsette                   # a registered benchmark
        id: nullsette                     # folder and report name (default: name); unique
        data: /data/nullsette/processed_data
        limit: 200                        # score-job options (limit, datasets, chunk_rows, reduction...)
        datasets: [kosuri, lagator]       # ... the benchmark's own options (NABench assays/families) ...
        analyze: {n_perm: 10000}          # ... and its analyze options

Each (model, benchmark) run is ``pipelines.score.run_score`` with its own ``ScoreConfig`` (an option
set in several places: the model's beats the benchmark's, which beats ``defaults``) writing ``<out>/scores/<model>/<benchmark id>``, so every run resumes on its
own: a rerun of the sweep reuses every finished shard. Runs go through a pool of ``max_parallel`` threads
in this one driver process, each with its own Ray Data actor pool, on the one cluster this process
connects to (``start_ray``, once). On a new local cluster (which cannot grow) a run also waits until
its ``min_actors`` actors (1 CPU + its GPUs each) and 1 CPU for its prepare/write actors fit beside the
runs in flight (two pools holding every CPU would leave neither a CPU for its tasks); an actor pool that
the local cluster can never place fails that run with one sentence. On a cluster it joins, Ray queues
what does not fit and an autoscaler adds nodes.

Failures: the whole file is checked before anything runs (unknown keys, benchmarks or options, bad
values, missing data folders); every problem is one sentence and the exit status is 2. A run that
raises ``GlmscoreError`` (a model that is not a model, a card that needs remote code the sweep turned
off, an option its backend lacks...) fails alone; the others go on; the summary (printed,
``<out>/sweep_summary.csv`` and ``.md``) says which failed and why, and the exit status is 4. Any
other exception is a bug: the run is marked failed, the other runs finish, the summary and report are
written, and then the first such exception is re-raised with its traceback.

The combined report (``<out>/report``) runs each benchmark's own ``analyze`` on the finished runs'
score folders (``report/<benchmark id>/``) and sets their tables side by side (``analysis/combined.py``).
"""

from __future__ import annotations

import difflib
import json
import queue
import re
import shutil
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import ray
import yaml

from glmscore.analysis.combined import provenance_table, write_combined_report
from glmscore.analysis.report import md_table
from glmscore.models.base import BACKENDS
from glmscore.models.cards import shipped_cards
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import Options, address_option, coerce_values, flag_of, option, option_fields
from glmscore.pipelines import store
from glmscore.pipelines.benchmark import BENCHMARKS
from glmscore.pipelines.console import check_interrupt, say, show
from glmscore.pipelines.pools import check_fits, size_pool
from glmscore.pipelines.ray_session import JOB_RUNTIME_ENV, ray_address, start_ray, will_own_cluster
from glmscore.pipelines.score import Plan, ScoreConfig, resolve_job, run_score

EXIT_RUNS_FAILED = 4
EXIT_INVALID = 2
# ScoreConfig fields the sweep sets itself (or that belong to `glmscore embed`)
MANAGED = {"benchmark", "data", "model", "out", "task", "options", "benchmark_options", "address", "overwrite",
           "pooling", "layer", "config_file"}
# what only the person at the command line may turn on: a sweep file (often someone else's) never runs a
# model repository's code (`glmscore sweep FILE --trust-remote-code`, or a card shipped with glmscore)
COMMAND_LINE_ONLY = {"trust_remote_code"}


@dataclass(frozen=True)
class SweepSettings(Options):
    """A sweep file's own keys beside ``out``, ``models``, ``benchmarks`` and ``defaults``."""

    max_parallel: int = option(2, minimum=1, affects_result=False, help="runs in flight at once")
    address: str | None = address_option()
    local_cpus: int | None = option(None, minimum=1, affects_result=False,
                                    help="logical CPUs of a new local cluster (default: the machine's)")
    overwrite: bool = option(False, affects_result=False, help="discard shards of a different earlier run in each run's folder")


TOP_KEYS = ("out", "models", "benchmarks", *(f.name for f in option_fields(SweepSettings)), "defaults")


class SweepFileError(GlmscoreError):
    """Problems in a sweep file, one sentence each (``problems``)."""
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(" ".join(problems))


@dataclass
class SweepModel:
    name: str
    spec: str
    job: dict  # ScoreConfig fields
    options: dict  # backend options by field name


@dataclass
class SweepBenchmark:
    id: str
    name: str
    data: str
    job: dict
    options: dict  # the benchmark's own options
    analyze: dict  # its analyze options


@dataclass
class Sweep:
    path: Path
    out: Path | str  # a local (or shared) folder, or an object-store prefix (s3://bucket/prefix)
    models: list[SweepModel]
    benchmarks: list[SweepBenchmark]
    max_parallel: int = 2
    address: str | None = None
    local_cpus: int | None = None
    overwrite: bool = False
    default_job: dict = field(default_factory=dict)  # `defaults`: score-job options of every model
    default_options: dict = field(default_factory=dict)  # `defaults`: backend options of every model
    trust_remote_code: bool | None = None  # from the command line only (`glmscore sweep --trust-remote-code`)

    def runs(self) -> list["Run"]:
        return [Run(m, b, self.config(m, b)) for m in self.models for b in self.benchmarks]

    def run_dir(self, model: SweepModel, bench: SweepBenchmark) -> Path | str:
        return store.join(self.out, "scores", model.name, bench.id)

    def config(self, model: SweepModel, bench: SweepBenchmark):
        return ScoreConfig(benchmark=bench.name, data=bench.data, model=model.spec, out=str(self.run_dir(model, bench)),
                           address=self.address, overwrite=self.overwrite, options={**self.default_options, **model.options},
                           benchmark_options=dict(bench.options), trust_remote_code=self.trust_remote_code,
                           **{**self.default_job, **bench.job, **model.job})


@dataclass
class Run:
    model: SweepModel
    bench: SweepBenchmark
    cfg: object  # ScoreConfig
    status: str = "pending"  # pending | ok | failed
    error: str = ""
    manifest: dict = field(default_factory=dict)
    seconds: float = 0.0
    bug: BaseException | None = None
    resolved: Plan | None = None  # once the model and benchmark resolve (``resolve_job``)

    @property
    def label(self) -> str:
        return f"{self.model.name} x {self.bench.id}"


# ---------------------------------------------------------------- reading and checking the file


def _suggest(word: str, known) -> str:
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _yaml_names(text: str) -> str:
    """An option sentence in the sweep file's terms: ``--mlm-scoring`` -> ``mlm_mode`` (the field name)."""
    classes = [ScoreConfig] + [c.Options for c in BACKENDS.classes()] + \
        [o for c in BENCHMARKS.classes() for o in (c.Options, c.AnalyzeOptions)]
    names = {flag_of(f): f.name for cls in classes for f in option_fields(cls)}
    return re.sub(r"--[a-z0-9][a-z0-9-]*", lambda m: names.get(m.group(0), m.group(0)), text)


def _check(build, where: str, problems: list[str]) -> bool:
    """Run an option class's own validation; its sentence, prefixed with where it comes from. True: valid."""
    try:
        build()
        return True
    except GlmscoreError as exc:
        problems.append(f"{where}: {_yaml_names(str(exc))}")
    except TypeError as exc:  # a value of a shape the dataclass cannot take
        problems.append(f"{where}: {exc}.")
    return False


def _resolve_path(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _model_spec(base: Path, spec: str) -> str:
    """A local model directory relative to the sweep file's folder becomes absolute; other names stay."""
    path = Path(spec).expanduser()
    if not path.is_absolute() and (base / path).is_dir():
        return str((base / path).resolve())
    return spec


def default_name(spec: str) -> str:
    """The card id ``spec`` gets (``resolve_card``): a card id as is, a local directory's name, a hub
    id with '/' -> '__', ``kmer:K`` -> ``kmerK``; usable as a folder name."""

    path = Path(spec)
    base = spec if spec in shipped_cards() else path.name if path.is_dir() else spec.replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._+-]", "", base) or "model"


def _job_fields() -> set[str]:
    return {f.name for f in option_fields(ScoreConfig)} - MANAGED - COMMAND_LINE_ONLY


def _check_job(job: dict, where: str, problems: list[str]) -> dict:
    job = coerce_values(ScoreConfig, job, where, problems)
    _check(lambda: ScoreConfig(benchmark="nullsette", data=".", model="m", out=".", **job), where, problems)
    return job


def _check_backend_options(options: dict, backend: str | None, where: str, problems: list[str]) -> dict:
    """Backend options must belong to one backend (the model's ``backend`` when it names one); their values
    are checked by that backend's Options (whether they apply to the model's backend is known only once
    the model resolves, when its runs start)."""

    if not options:
        return options
    if backend:
        try:
            candidates = [BACKENDS.get(backend)]
        except GlmscoreError:
            return options  # the backend's own sentence comes from the job check
    else:
        candidates = [c for c in BACKENDS.classes() if set(options) <= {f.name for f in option_fields(c.Options)}]
    if not candidates:
        owners = {k: [c.name for c in BACKENDS.classes() if k in {f.name for f in option_fields(c.Options)}] for k in options}
        problems.append(f"{where}: backend options {', '.join(sorted(options))} belong to no single backend ("
                        + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(owners.items())) + ").")
        return options
    errors = []
    for cls in candidates:
        sub: list[str] = []
        typed = coerce_values(cls.Options, options, where, sub)
        _check(lambda: cls.Options.from_values(typed, owner=f"backend {cls.name}"), where, sub)
        if not sub:
            return typed
        errors.append(sub)
    problems.extend(errors[0])
    return options


def _as_mapping(value, where: str, problems: list[str]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where} must be a mapping of option: value, not {type(value).__name__}.")
        return {}
    return value


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; every problem is one sentence in ``SweepFileError.problems``."""
    BACKENDS.names(), BENCHMARKS.names()  # load the registries here, never first in a run's thread
    path = Path(path)
    name = path.name
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SweepFileError([f"sweep file {path} does not exist."]) from None
    except IsADirectoryError:
        raise SweepFileError([f"sweep file {path} is a folder, not a YAML file."]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SweepFileError([f"{name} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}."]) from None
    if not isinstance(raw, dict):
        raise SweepFileError([f"{name} must be a mapping with keys out, models and benchmarks."])
    base = path.resolve().parent
    problems: list[str] = []
    for key in sorted(set(raw) - set(TOP_KEYS)):
        problems.append(f"{name}: unknown key {key!r}{_suggest(key, TOP_KEYS)}; a sweep file has {', '.join(TOP_KEYS)}.")
    for key in ("out", "models", "benchmarks"):
        if raw.get(key) in (None, "", []):
            problems.append(f"{name}: {key} is missing" + (" (the output root)." if key == "out" else " (a non-empty list)."))
    out: Path | str = base
    try:
        store.refuse_credentials(raw.get("out"), f"{name}: out")
    except GlmscoreError as exc:
        problems.append(str(exc))
        raw = {**raw, "out": None}
    if isinstance(raw.get("out"), str) and store.is_uri(raw["out"]):
        out = raw["out"].rstrip("/")  # object storage: runs write there; the summary and report are uploaded
    elif isinstance(raw.get("out"), str) and raw["out"]:
        out = Path(_resolve_path(base, raw["out"]))
        if out.exists() and not out.is_dir():
            problems.append(f"{name}: out {out} is a file, not a folder.")
    elif raw.get("out") not in (None, ""):
        problems.append(f"{name}: out must be a folder path.")
    given_settings = {f.name: raw[f.name] for f in option_fields(SweepSettings) if raw.get(f.name) is not None}
    settings = coerce_values(SweepSettings, given_settings, name, problems)
    if not _check(lambda: SweepSettings(**settings), name, problems):
        settings = {}

    job_keys = _job_fields()
    backend_keys = {f.name for c in BACKENDS.classes() for f in option_fields(c.Options)}
    defaults = _as_mapping(raw.get("defaults"), f"{name}: defaults", problems)
    for key in sorted(set(defaults) & COMMAND_LINE_ONLY):
        problems.append(f"{name}: defaults: {key} cannot be set in a sweep file (a file must never run a model "
                        "repository's code); pass --trust-remote-code to `glmscore sweep` if you trust every model it names.")
    for key in sorted(set(defaults) - job_keys - backend_keys - COMMAND_LINE_ONLY):
        problems.append(f"{name}: defaults: {key!r} is not a model option{_suggest(key, job_keys | backend_keys)}.")
    default_job = _check_job({k: v for k, v in defaults.items() if k in job_keys}, f"{name}: defaults", problems)
    default_options = {k: v for k, v in defaults.items() if k in backend_keys and k not in job_keys}

    models: list[SweepModel] = []
    for i, entry in enumerate(raw.get("models") or [] if isinstance(raw.get("models"), list) else [], start=1):
        entry = {"model": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str) or not entry["model"]:
            problems.append(f"{name}: model {i} must be a model name or a mapping with a 'model' key.")
            continue
        where = f"{name}: model {i} ({entry['model']})"
        allowed = {"model", "name"} | job_keys | backend_keys
        for key in sorted(set(entry) & COMMAND_LINE_ONLY):
            problems.append(f"{where}: {key} cannot be set in a sweep file (a file must never run a model repository's "
                            "code); pass --trust-remote-code to `glmscore sweep` if you trust every model it names.")
        for key in sorted(set(entry) - allowed - COMMAND_LINE_ONLY):
            problems.append(f"{where}: {key!r} is not a model option{_suggest(key, allowed)}; a model takes name, model, "
                            "score-job options (backend, gpus_per_actor, min_actors...) and backend options by field name.")
        job = _check_job({k: v for k, v in entry.items() if k in job_keys}, where, problems)
        own = {k: v for k, v in entry.items() if k in backend_keys and k not in job_keys}
        typed = _check_backend_options({**default_options, **own}, job.get("backend") or default_job.get("backend"),
                                       where, problems)
        options = {k: typed[k] for k in own}
        spec = _model_spec(base, entry["model"])
        label = entry.get("name") or default_name(spec)
        if not isinstance(label, str) or not re.fullmatch(r"[A-Za-z0-9._+-]+", label) or label in (".", ".."):
            problems.append(f"{where}: name {label!r} must be letters, digits and . _ + - (it names a folder).")
            continue
        models.append(SweepModel(label, spec, job, options))
    if raw.get("models") is not None and not isinstance(raw.get("models"), list):
        problems.append(f"{name}: models must be a list.")
    seen: dict[str, str] = {}
    for m in models:
        if m.name in seen:
            problems.append(f"{name}: models {seen[m.name]} and {m.spec} are both named {m.name!r}; give one a different name.")
        seen.setdefault(m.name, m.spec)

    benchmarks: list[SweepBenchmark] = []
    for i, entry in enumerate(raw.get("benchmarks") or [] if isinstance(raw.get("benchmarks"), list) else [], start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.append(f"{name}: benchmark {i} must be a mapping with a 'name' key ({', '.join(BENCHMARKS.names())}).")
            continue
        where = f"{name}: benchmark {i} ({entry['name']})"
        if entry["name"] not in BENCHMARKS.names():
            problems.append(f"{where}: unknown benchmark {entry['name']!r}{_suggest(entry['name'], BENCHMARKS.names())}; "
                            f"choose one of {', '.join(BENCHMARKS.names())}.")
            continue
        cls = BENCHMARKS.get(entry["name"])
        bench_keys = {f.name for f in option_fields(cls.Options)}
        allowed = {"name", "id", "data", "analyze"} | job_keys | bench_keys
        for key in sorted(set(entry) - allowed):
            problems.append(f"{where}: {key!r} is not a benchmark option{_suggest(key, allowed)}; a benchmark takes name, id, "
                            f"data, analyze, score-job options (limit, datasets, chunk_rows, reduction...)"
                            + (f" and its own options ({', '.join(sorted(bench_keys))})" if bench_keys else "") + ".")
        data = entry.get("data")
        if not isinstance(data, str) or not data:
            problems.append(f"{where}: data is missing (the benchmark's data folder).")
            data = ""
        elif store.is_uri(data):  # object storage: each node reads a local copy (store.stage)
            data = data.rstrip("/")
            try:
                if not store.exists(data):
                    problems.append(f"{where}: data {data} does not exist.")
            except GlmscoreError as exc:
                problems.append(f"{where}: {exc}")
        else:
            data = _resolve_path(base, data)
            if not Path(data).exists():
                problems.append(f"{where}: data folder {data} does not exist.")
        job = _check_job({k: v for k, v in entry.items() if k in job_keys}, where, problems)
        options = coerce_values(cls.Options, {k: v for k, v in entry.items() if k in bench_keys and k not in job_keys}, where, problems)
        _check(lambda: cls.Options.from_values(options, owner=f"benchmark {cls.name}"), where, problems)
        analyze = _as_mapping(entry.get("analyze"), f"{where}: analyze", problems)
        analyze_keys = {f.name for f in option_fields(cls.AnalyzeOptions)}
        if "labels" in analyze:
            problems.append(f"{where}: analyze: labels are the sweep's model names; name the models instead.")
            analyze = {k: v for k, v in analyze.items() if k != "labels"}
        for key in sorted(set(analyze) - analyze_keys):
            problems.append(f"{where}: analyze: {key!r} is not an option of `glmscore analyze {cls.name}`"
                            f"{_suggest(key, analyze_keys)}" + (f" ({', '.join(sorted(analyze_keys - {'labels'}))})." if analyze_keys else "."))
        analyze = coerce_values(cls.AnalyzeOptions, {k: v for k, v in analyze.items() if k in analyze_keys}, where, problems)
        _check(lambda: cls.AnalyzeOptions.from_values(analyze, owner=f"`glmscore analyze {cls.name}`"), f"{where}: analyze", problems)
        bid = entry.get("id") or cls.name
        if not isinstance(bid, str) or not re.fullmatch(r"[A-Za-z0-9._+-]+", bid) or bid in (".", ".."):
            problems.append(f"{where}: id {bid!r} must be letters, digits and . _ + - (it names a folder).")
            continue
        benchmarks.append(SweepBenchmark(bid, cls.name, data, job, options, analyze))
    if raw.get("benchmarks") is not None and not isinstance(raw.get("benchmarks"), list):
        problems.append(f"{name}: benchmarks must be a list.")
    ids = [b.id for b in benchmarks]
    for bid in sorted({b for b in ids if ids.count(b) > 1}):
        problems.append(f"{name}: {ids.count(bid)} benchmarks have the id {bid!r}; give each its own id.")

    default_options = _check_backend_options(default_options, default_job.get("backend"), f"{name}: defaults", problems)
    sweep = Sweep(path, out, models, benchmarks, **settings, default_job=default_job, default_options=default_options)
    if not problems:
        for run in sweep.runs():  # what only the merged options show (--max-actors below --min-actors...)
            _check(lambda: sweep.config(run.model, run.bench), f"{name}: {run.label}", problems)
    if problems:
        raise SweepFileError(list(dict.fromkeys(problems)))
    return sweep


# ---------------------------------------------------------------- running


def _reservation(run: Run, cluster: dict) -> tuple[float, float]:
    """(CPUs, GPUs) a run holds on a fixed-size cluster: its min_actors actors (1 CPU and the GPUs its
    backend says an actor holds) and 1 CPU for its prepare and write actors. Raises the run's user error
    when the cluster can never place its actor pool (``check_fits``, which run_score skips on a cluster
    it did not start)."""
    r = run.resolved
    pool = check_fits(size_pool(run.cfg, r.backend, cluster, r.card), cluster)
    held = r.backend.actor_resources(r.card, r.options, pool.gpus).gpus
    return pool.min_actors + 1.0, pool.min_actors * held


def _say(text: str) -> None:
    say(f"sweep: {text}")


def _execute(run: Run, results: queue.Queue, stopping: threading.Event) -> None:
    start = time.monotonic()
    try:
        run.manifest = run_score(run.cfg)
        run.status = "ok"
    except GlmscoreError as exc:
        run.status, run.error = "failed", str(exc)
    except BaseException as exc:  # a bug: kept with its traceback, re-raised once the sweep is done
        if stopping.is_set():  # the sweep was interrupted and shut Ray down under this run: said once, by the command
            return
        run.status, run.error, run.bug = "failed", f"bug: {type(exc).__name__}: {exc}", exc
        traceback.print_exc()
    run.seconds = time.monotonic() - start
    results.put(run)


def _finished(run: Run, done: int, total: int) -> None:
    if run.status == "ok":
        m = run.manifest
        _say(f"[{done}/{total}] {run.label}: {m['rows_total']:,} rows ({m['shards_computed']} shards computed, "
             f"{m['shards_reused']} reused) in {run.seconds:.0f} s")
    else:
        _say(f"[{done}/{total}] {run.label} failed: {run.error}")


def run_sweep(sweep: Sweep) -> list[Run]:
    """Resolve every run (before Ray starts), then run them on one Ray cluster, ``max_parallel`` at a
    time; returns the runs with their status. The caller writes the summary and the report."""


    runs = sweep.runs()
    total = len(runs)
    done = 0
    for run in runs:
        try:
            run.resolved = resolve_job(run.cfg)
        except GlmscoreError as exc:
            run.status, run.error = "failed", str(exc)
            done += 1
            _finished(run, done, total)
    todo = [r for r in runs if r.status == "pending"]
    if not todo:
        return runs
    address = ray_address(sweep.address)
    started_here = not ray.is_initialized()
    fixed = will_own_cluster(address)
    where = ("the Ray cluster this process joined" if not started_here else
             "a new local Ray cluster" if address == "local" else f"the Ray cluster at {address}")
    _say(f"{len(todo)} run(s) on {where}, up to {sweep.max_parallel} at once; output {sweep.out}")
    start_ray(address, sweep.out, runtime_env=JOB_RUNTIME_ENV, **({"num_cpus": sweep.local_cpus} if fixed and sweep.local_cpus else {}))
    stopping = threading.Event()
    try:
        cluster = ray.cluster_resources()
        results: queue.Queue = queue.Queue()
        free = {"CPU": cluster.get("CPU", 0.0), "GPU": cluster.get("GPU", 0.0)}
        held: dict[int, tuple[float, float]] = {}
        in_flight = 0
        while todo or in_flight:
            for run in list(todo):
                if in_flight >= sweep.max_parallel:
                    break
                need = (0.0, 0.0)
                if fixed:
                    try:
                        need = _reservation(run, cluster)
                    except GlmscoreError as exc:
                        todo.remove(run)
                        run.status, run.error = "failed", str(exc)
                        done += 1
                        _finished(run, done, total)
                        continue
                    # a run alone on the cluster always starts (its pool fits, check_fits said so)
                    if in_flight and (need[0] > free["CPU"] + 1e-9 or need[1] > free["GPU"] + 1e-9):
                        continue
                todo.remove(run)
                held[id(run)] = need
                free["CPU"] -= need[0]
                free["GPU"] -= need[1]
                in_flight += 1
                _say(f"start {run.label} -> {run.cfg.out}")
                threading.Thread(target=_execute, args=(run, results, stopping), name=f"glmscore-sweep-{run.label}",
                                 daemon=True).start()  # daemon: Ctrl-C ends the sweep without waiting for runs
            check_interrupt()
            if not in_flight:
                continue
            try:
                run = results.get(timeout=0.5)  # a timeout, so Ctrl-C and SIGTERM reach this thread
            except queue.Empty:
                continue
            in_flight -= 1
            cpu, gpu = held.pop(id(run))
            free["CPU"] += cpu
            free["GPU"] += gpu
            done += 1
            _finished(run, done, total)
    finally:
        stopping.set()
        if started_here:
            ray.shutdown()
    return runs


# ---------------------------------------------------------------- summary, report, entry point


def analysis_parts(runs: list[Run], takes_labels: bool) -> list[list[Run]]:
    """Runs analysed together: all of them when the analysis takes labels (the sweep's names);
    otherwise groups in which no card id repeats (such an analysis tells models apart by card id)."""
    if takes_labels:
        return [runs]
    parts: list[list[Run]] = []
    for run in runs:
        card = run.manifest["model_card"]["id"]
        part = next((p for p in parts if all(r.manifest["model_card"]["id"] != card for r in p)), None)
        if part is None:
            parts.append(part := [])
        part.append(run)
    return parts


def write_sweep_report(sweep: Sweep, runs: list[Run], out: Path) -> list[str]:
    """The report folder ``out`` (``<out>/report``, local; uploaded by the caller for object storage): each benchmark's ``analyze`` on its finished runs (``report/<benchmark id>/``),
    the combined tables and heatmaps, the provenance of every run and ``report.md``. Returns the
    report's problems (a benchmark whose analysis refused its runs: one sentence each)."""

    out.mkdir(parents=True, exist_ok=True)
    order = [m.name for m in sweep.models]
    sections, problems, notes, analyses = [], [], [], {}
    for bench in sweep.benchmarks:
        finished = [r for r in runs if r.bench is bench and r.status == "ok"]
        if not finished:
            notes.append(f"{bench.id}: no finished run, so no analysis.")
            continue
        cls = BENCHMARKS.get(bench.name)
        takes_labels = "labels" in {f.name for f in option_fields(cls.AnalyzeOptions)}
        groups = analysis_parts(finished, takes_labels)
        parts = []
        try:
            for k, group in enumerate(groups, start=1):
                folder = out / bench.id if len(groups) == 1 else out / bench.id / f"part{k}"
                values = {**bench.analyze, **({"labels": [r.model.name for r in group]} if takes_labels else {})}
                options = cls.AnalyzeOptions.from_values(values, owner=f"`glmscore analyze {cls.name}`")
                result = cls.analyze([r.cfg.out for r in group], str(folder), options)
                names = {(r.model.name if takes_labels else r.manifest["model_card"]["id"]): r.model.name for r in group}
                parts.append({"result": result, "dir": folder, "names": names})
                analyses.setdefault(bench.id, []).append(result["report"])
            if len(groups) > 1:
                notes.append(f"{bench.id}: models that share a card id were analysed in separate parts "
                             f"({', '.join(str(out / bench.id / f'part{k}') for k in range(1, len(groups) + 1))}).")
            sections += cls.combined_tables(parts, order, out, bench.id)
        except GlmscoreError as exc:
            problems.append(f"report for {bench.id}: {exc}")
            notes.append(f"{bench.id}: no analysis: {exc}")
    provenance = provenance_table([(r.model.name, r.bench.id, r.manifest) for r in runs if r.status == "ok"])
    write_combined_report(out, sections, provenance, summary_table(runs), notes, analyses)
    return problems


def summary_table(runs: list[Run]):
    rows = []
    for r in runs:
        m = r.manifest
        rows.append({"model": r.model.name, "benchmark": r.bench.id, "status": r.status,
                     "rows": m.get("rows_total"), "shards_computed": m.get("shards_computed"),
                     "shards_reused": m.get("shards_reused"), "seconds": round(r.seconds, 1),
                     "out": str(r.cfg.out), "error": r.error})
    table = pd.DataFrame(rows, columns=["model", "benchmark", "status", "rows", "shards_computed", "shards_reused",
                                        "seconds", "out", "error"])
    return table.astype({"rows": "Int64", "shards_computed": "Int64", "shards_reused": "Int64"})


def write_summary(sweep: Sweep, runs: list[Run], wall: float, local: Path, report_problems: list[str] = ()):
    """``sweep_summary.csv`` and ``.md`` in ``local`` (the output root, or its staging folder)."""
    table = summary_table(runs)
    local.mkdir(parents=True, exist_ok=True)
    table.to_csv(local / "sweep_summary.csv", index=False)
    failed = table[table["status"] != "ok"]
    lines = ["# Sweep summary", "", f"Sweep file: `{sweep.path.resolve()}`; {len(table)} runs, {len(table) - len(failed)} ok, "
             f"{len(failed)} failed; wall time {wall:.0f} s.", "", md_table(table, index=False), ""]
    if report_problems:
        lines += ["Report problems:", ""] + [f"- {p}" for p in report_problems] + [""]
    (local / "sweep_summary.md").write_text("\n".join(lines))
    return table


def check_sweep(sweep: Sweep, dry_run: bool = False) -> int:
    """``sweep --check``: the preflight each run makes before Ray starts (the model resolves, its folder
    has a tokenizer and weights, the options apply, the data is found and valid), nothing started; 0
    when every run passes, 2 (each failing run in a sentence) otherwise. ``--dry-run`` adds each run's
    own dry run (``glmscore score --dry-run``: units, rows, shards reused or computed, token limit,
    actors): what the sweep would compute, still with nothing started or written."""
    failed, pending, units = 0, 0, 0
    for run in sweep.runs():
        try:
            plan = resolve_job(run.cfg, stage=False)
            if not store.is_uri(run.cfg.data):  # object-store data is checked when each node stages it
                plan.benchmark.units(chunk_rows=run.cfg.chunk_rows, limit=run.cfg.limit, datasets=run.cfg.datasets)
            dry = run_score(replace(run.cfg, dry_run=True)) if dry_run and not store.is_uri(run.cfg.data) else None
        except GlmscoreError as exc:
            failed += 1
            say(f"error: {run.label}: {exc}")
            continue
        show(f"{run.label}: {run.model.spec} on {run.bench.data} -> {run.cfg.out}")
        if dry is not None:
            show("  " + dry["dry_run"].replace("\n", "\n  "))
            pending, units = pending + dry["pending"], units + dry["units"]
        elif dry_run:
            show("  (object-store data: its units are counted when each node stages it)")
    if failed:
        say(f"error: {failed} of {len(sweep.runs())} run(s) in {sweep.path.name} would fail; nothing was started.")
        return EXIT_INVALID
    show(f"{sweep.path.name} is valid: {len(sweep.models)} model(s) x {len(sweep.benchmarks)} benchmark(s)."
          + (f" The sweep would compute {pending} of {units} units; nothing was started or written." if dry_run else ""))
    return 0


def execute_sweep(sweep: Sweep) -> tuple[list[Run], pd.DataFrame, list[str]]:
    """Run a checked sweep: every run, then the summary and the combined report (written locally, uploaded to
    an object-store ``out``). Returns the runs, the summary table and the report's problems."""
    started = time.monotonic()
    remote = store.is_uri(sweep.out)
    # the sweep's own files are written locally: into the output root, or (object storage) a staging
    # folder uploaded after the summary and again after the report
    local = Path(tempfile.mkdtemp(prefix="glmscore-sweep-")) if remote else sweep.out
    try:
        local.mkdir(parents=True, exist_ok=True)
        (local / "_sweep.json").write_text(json.dumps({"file": str(sweep.path.resolve()), "text": sweep.path.read_text()}, indent=1))
        if remote:
            store.upload_folder(local, sweep.out)  # an unreachable store fails here, before Ray starts
        runs = run_sweep(sweep)
        write_summary(sweep, runs, time.monotonic() - started, local)  # before the report: a bug there leaves it written
        if remote:
            store.upload_folder(local, sweep.out)
        report_problems = write_sweep_report(sweep, runs, local / "report")
        table = write_summary(sweep, runs, time.monotonic() - started, local, report_problems)
        if remote:
            store.upload_folder(local, sweep.out)
    finally:
        if remote:
            shutil.rmtree(local, ignore_errors=True)
    return runs, table, report_problems


def main_sweep(file: str, check: bool = False, dry_run: bool = False, trust_remote_code: bool = False) -> int:
    """``glmscore sweep FILE``: 0 when every run and the report succeeded, 4 when a run (or a part of
    the report) failed, 2 when the file is invalid (nothing ran). ``trust_remote_code``: the person at the
    command line allows every model's repository code (a sweep file cannot)."""

    try:
        sweep = load_sweep(file)
    except SweepFileError as exc:
        for problem in exc.problems:
            say(f"error: {problem}")
        return EXIT_INVALID
    sweep = replace(sweep, trust_remote_code=True if trust_remote_code else None)
    if check or dry_run:
        return check_sweep(sweep, dry_run=dry_run)

    runs, table, report_problems = execute_sweep(sweep)
    with pd.option_context("display.max_colwidth", 120, "display.width", 200):
        shown = table.drop(columns=["out"])
        show(shown.astype(object).where(shown.notna(), "").to_string(index=False))
    for problem in report_problems:
        say(f"error: {problem}")
    show(f"summary: {store.join(sweep.out, 'sweep_summary.md')}\nreport: {store.join(sweep.out, 'report', 'report.md')}")
    bug = next((r.bug for r in runs if r.bug is not None), None)
    if bug is not None:
        raise bug
    return EXIT_RUNS_FAILED if report_problems or (table["status"] != "ok").any() else 0
