"""glmscore's Python API, re-exported as ``glmscore.score``, ``embed``, ``analyze``, ``sweep`` and ``processor``.

The CLI's options are the keyword arguments, by their field names (``--chunk-rows`` is ``chunk_rows``,
NABench's ``--assays`` is ``assays``, a backend's ``--long`` is ``long``): the same ``option()`` declarations
check them, with the same sentences (a mistake raises ``GlmscoreError``). Each call returns a result object
with the output location, the manifest and the data (``to_pandas()``, ``to_arrow()``). What glmscore prints
goes to stderr; ``glmscore.console.redirect(stream)`` (or ``silent=True``) sends it elsewhere.

    import glmscore
    result = glmscore.score(benchmark="nullsette", data="processed_data", model="kmer:3", out="scores/k3")
    result.to_pandas().groupby("dataset").score.mean()
    report = glmscore.analyze("nullsette", scores=["scores/k3"], out="report")
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import pyarrow as pa

from glmscore.models.base import BACKENDS
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import option_fields
from glmscore.pipelines import shards, store
from glmscore.pipelines.benchmark import BENCHMARKS
from glmscore.pipelines.processor import processor
from glmscore.pipelines.score import ScoreConfig, run_score
from glmscore.pipelines.shards import read_manifest
from glmscore.pipelines.sweep import SweepFileError, execute_sweep, load_sweep

__all__ = ["Result", "AnalysisResult", "SweepResult", "score", "embed", "analyze", "sweep", "processor"]


@dataclass
class Result:
    """A finished score or embed job: ``out`` (the folder or URI), its ``manifest`` and the shards' rows."""

    out: str
    manifest: dict

    @property
    def rows(self) -> int:
        return int(self.manifest.get("rows_total", 0))

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage of the run: start-up phases (model and options, input scan, Ray start, reference
        sequences and fit, output check, model environment) and the scoring itself (``run``)."""
        return dict(self.manifest.get("timings_s") or self.manifest.get("startup_s") or {})

    def to_arrow(self, columns: list[str] | None = None) -> pa.Table:
        """Every shard's rows (each verified against its checksum as it is read), ``dataset``/``group`` included."""
        return pa.Table.from_pandas(self.to_pandas(columns), preserve_index=False)

    def to_pandas(self, columns: list[str] | None = None) -> pd.DataFrame:
        return shards.read_scores(self.out, columns=columns)


@dataclass
class AnalysisResult:
    """A written report: ``report`` (report.md), ``out`` (its folder), ``table`` (what the CLI prints) and the rest
    of what the benchmark's analysis returned in ``details``."""

    out: str
    report: str
    table: pd.DataFrame
    details: dict = field(default_factory=dict)

    def to_pandas(self) -> pd.DataFrame:
        return self.table

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pandas(self.table, preserve_index=False)


@dataclass
class SweepResult:
    """A finished sweep: ``out``, the summary ``table`` (one row per run) and whether every run and the report
    succeeded (``ok``)."""

    out: str
    table: pd.DataFrame
    problems: list[str]
    ok: bool

    def to_pandas(self) -> pd.DataFrame:
        return self.table

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pandas(self.table, preserve_index=False)


def _score_config(task: str, benchmark: str, data: str, model: str, out: str, options: dict) -> ScoreConfig:
    """The CLI's split of options: the job's own fields, then a backend's, then a benchmark's (by field name)."""
    job = {f.name for f in option_fields(ScoreConfig) if f.metadata.get("cli", True)
           and task in (f.metadata.get("commands") or (task,))}
    backend = {f.name for cls in BACKENDS.classes() for f in option_fields(cls.Options)}
    bench = {f.name for cls in BENCHMARKS.classes() for f in option_fields(cls.Options)}
    unknown = sorted(set(options) - job - backend - bench)
    if unknown:
        raise GlmscoreError(f"{', '.join(unknown)}: not an option of `glmscore {task}` (see `glmscore {task} --help`; "
                            "options are keyword arguments by field name, e.g. chunk_rows).")
    return ScoreConfig(task=task, benchmark=benchmark, data=str(data), model=str(model), out=str(out),
                       options={k: v for k, v in options.items() if k in backend and k not in job},
                       benchmark_options={k: v for k, v in options.items() if k in bench and k not in job and k not in backend},
                       **{k: v for k, v in options.items() if k in job})


def score(benchmark: str, data: str, model: str, out: str, **options) -> Result:
    """``glmscore score``: score a benchmark's sequences with a model into Parquet shards under ``out``.
    With ``dry_run=True`` nothing starts; the result's manifest then holds ``dry_run`` (the text the CLI prints)."""
    manifest = run_score(_score_config("score", benchmark, data, model, out, options))
    return Result(str(out), manifest)


def embed(benchmark: str, data: str, model: str, out: str, **options) -> Result:
    """``glmscore embed``: embeddings (an ``embedding`` column) instead of scores."""
    manifest = run_score(_score_config("embed", benchmark, data, model, out, options))
    return Result(str(out), manifest)


def analyze(benchmark: str, scores: list[str], out: str, **options) -> AnalysisResult:
    """``glmscore analyze BENCHMARK``: statistics, tables, plots and a report from finished score folders.
    The report is written whole or not at all: into a temporary folder beside ``out`` (an interrupted or failed
    analysis leaves no tables that look complete), then moved into ``out`` file by file (atomic renames); an
    object-store ``out`` is written locally and uploaded (plots and tables are written by libraries that need
    a local file)."""
    cls = BENCHMARKS.get(benchmark)
    scores = [str(s) for s in ([scores] if isinstance(scores, (str, Path)) else scores)]
    for location in scores:
        store.refuse_credentials(location, "--scores")
    store.refuse_credentials(str(out), "--out")
    analysis_options = cls.AnalyzeOptions(**options)
    _check_benchmark_of(cls, scores)
    out = str(out)
    if store.is_uri(out):
        with tempfile.TemporaryDirectory(prefix="glmscore-report-") as tmp:
            result = cls.analyze(scores, tmp, analysis_options)
            store.upload_folder(Path(tmp), out)
        return _analysis(out, result, tmp, out.rstrip("/"))
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise GlmscoreError(f"--out {target} is a file, not a folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        result = cls.analyze(scores, str(tmp), analysis_options)
        target.mkdir(exist_ok=True)
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            dest = target / f.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _analysis(out, result, str(tmp), str(target))


def _analysis(out: str, result: dict, tmp: str, final: str) -> AnalysisResult:
    details = {k: v for k, v in result.items() if k not in ("report", "table")}
    return AnalysisResult(out, str(result["report"]).replace(tmp, final), result["table"], details)


def _check_benchmark_of(cls, score_dirs: list[str]) -> None:
    """A score folder of another benchmark is named as such (its analysis would otherwise fail on a
    missing column or pairing, in that benchmark's terms)."""
    for d in score_dirs:
        try:
            made_by = read_manifest(d).get("config", {}).get("benchmark")
        except GlmscoreError:
            continue  # not a finished glmscore folder: the benchmark's own analysis says what it reads
        if made_by and made_by != cls.name:
            raise GlmscoreError(f"{d} is a {made_by} score folder; analyse it with `glmscore analyze {made_by}`.")


def sweep(file: str, *, trust_remote_code: bool = False) -> SweepResult:
    """``glmscore sweep FILE``: every model x benchmark run of a sweep file, then the combined report. An invalid
    file raises ``GlmscoreError`` listing its problems; a failed run is a row of the table (``ok`` False)."""
    try:
        spec = load_sweep(file)
    except SweepFileError as exc:
        raise GlmscoreError(f"{file}: " + "; ".join(exc.problems)) from None
    spec = replace(spec, trust_remote_code=True if trust_remote_code else None)
    runs, table, problems = execute_sweep(spec)
    bug = next((r.bug for r in runs if r.bug is not None), None)
    if bug is not None:
        raise bug
    ok = not problems and not (table["status"] != "ok").any()
    return SweepResult(str(spec.out), table, problems, ok)
