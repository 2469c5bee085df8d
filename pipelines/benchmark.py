"""The benchmark interface and its registry.

A benchmark turns a data folder into *units* (chunks of rows that become one Parquet shard each), reads
a unit's rows in a Ray task, says which extra columns its shards carry, gives the reference sequences
a baseline may be fitted on, declares its own CLI options, and analyses finished score folders. The
score job (``pipelines/score.py``) knows nothing else about it. To add a benchmark, write one module in
``pipelines/benchmarks/<name>/`` (see docs/architecture.md).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np
import pyarrow as pa

from glmscore.analysis.combined import generic_tables
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import NoOptions, Options
from glmscore.models.registry import Registry

REFERENCE_BLOCK = 50_000  # sequences per block of a benchmark's reference sequences (a few MB of text)

BENCHMARKS: Registry["Benchmark"] = Registry("benchmark", "glmscore.pipelines.benchmarks")
register_benchmark = BENCHMARKS.register


@dataclass(frozen=True)
class Unit:
    """A chunk of one (dataset, group): rows ``first_row .. first_row + n_rows``. ``crc`` identifies the
    input bytes (a finished shard is reused only if it matches); ``locator`` is the benchmark's own JSON
    (file, byte range...) that ``read`` uses."""

    dataset: str
    group: str
    chunk: int
    n_rows: int
    first_row: int
    crc: int
    dataset_max_len: int = 0
    locator: str = "{}"

    def where(self) -> dict:
        return json.loads(self.locator)


def locator(**fields_) -> str:
    return json.dumps(fields_, sort_keys=True)


class Command(NamedTuple):
    """A sub-command of a benchmark, ``glmscore <benchmark> <name>``: its options class, the function that
    runs it and returns what to print, one line of help, and optionally the words of a shorter name the CLI
    also gives it (``("probe",)`` -> ``glmscore probe``; commands of several benchmarks may share one:
    the first whose options accept the given values runs)."""

    options: type[Options]
    run: Callable[[Any], str]
    help: str
    alias: tuple[str, ...] = ()


# Beside the interface, not in it: a benchmark package's commands (``glmscore <benchmark> <name>``) and its demo
# register here from its own ``commands.py`` (which imports the package's learners; its source never does)
COMMANDS: dict[str, dict[str, Command]] = {}
DEMOS: dict[str, Callable[[Path, int], None]] = {}


def register_command(benchmark: str, name: str, command: Command) -> None:
    """``glmscore <benchmark> <name>`` runs ``command``."""
    COMMANDS.setdefault(benchmark, {})[name] = command


def register_demo(benchmark: str, run: Callable[[Path, int], None]) -> None:
    """``glmscore demo --benchmark <benchmark>`` calls ``run(out, cassettes)``: its whole chain on embedded data."""
    DEMOS[benchmark] = run


def commands_of(benchmark: str) -> dict[str, Command]:
    BENCHMARKS.get(benchmark)  # imports the benchmark packages, whose commands register as they load
    return dict(COMMANDS.get(benchmark, {}))


def demo_of(benchmark: str) -> Callable[[Path, int], None]:
    BENCHMARKS.get(benchmark)
    if benchmark not in DEMOS:
        raise GlmscoreError(f"benchmark {benchmark} has no demo.")
    return DEMOS[benchmark]


def result_text(result: dict) -> str:
    """What a learner command prints: its summary table and where its report is (or its dry run)."""
    if "dry_run" in result:
        return result["dry_run"]
    return f"{result['summary'].to_string(index=False)}\nreport: {result['report']}"


# extra columns of a benchmark whose rows score only a region of their sequence ([start, end) in its bases;
# the published alphagenome_infer.py's names)
REGION_COLUMNS = ("score_region_start", "score_region_end")


@dataclass
class Rows:
    """One unit's rows. ``seq_ids`` are unique within the benchmark; ``names`` are what an error
    message shows next to them; ``extra`` holds the values of the benchmark's ``extra_columns``."""

    seq_ids: list[str]
    names: list[str]
    sequences: list[str]
    pair_index: np.ndarray
    extra: dict[str, list] = field(default_factory=dict)


class Benchmark(ABC):
    """A benchmark family. Subclasses are registered with ``@register_benchmark(name)``."""
    name: ClassVar[str] = ""
    data_help: ClassVar[str] = "benchmark data folder"
    scores_help: ClassVar[str] = "one or more score folders (one per model)"  # what `analyze --scores` reads
    Options: ClassVar[type[Options]] = NoOptions  # flags of `glmscore score/embed --benchmark <name>`
    AnalyzeOptions: ClassVar[type[Options]] = NoOptions  # flags of `glmscore analyze <name>`
    extra_columns: ClassVar[dict[str, pa.DataType]] = {}  # shard columns beyond the shared contract
    focus_column: ClassVar[str | None] = None  # an extra column with the nucleotide offset ``--reduction focus`` scores
    has_regions: ClassVar[bool] = False  # rows carry REGION_COLUMNS: the part of each sequence a score reads

    def __init__(self, data: str, options: Options | None = None):
        self.data = data
        self.options = options if options is not None else type(self).Options()
        self.warnings: list[str] = []  # what ``units`` found usable but suspicious: printed and kept in the manifest

    @abstractmethod
    def units(self, *, chunk_rows: int, limit: int | None, datasets: list[str] | None) -> list[Unit]:
        """Find and validate the data (on the driver); ``limit``: first N rows of every (dataset, group)."""

    @abstractmethod
    def read(self, unit: Unit) -> Rows:
        """A unit's rows (in a Ray task). Must raise a user error if the input changed since ``units``."""

    def reference_sequences(self, units: list[Unit], dataset: str) -> Iterator[list[str]]:
        """Sequences a baseline may be fitted on for ``dataset`` (all of them, not only the --limit
        slice), in blocks of at most ``REFERENCE_BLOCK`` (streamed: the driver never holds them all);
        the i-th sequence over the blocks is the row with pair_index i. Labels are never part of it."""
        raise GlmscoreError(f"benchmark {self.name} has no reference sequences to fit a baseline on.")

    def check_backend(self, backend, card, task: str, reduction: str) -> None:
        """Whether ``backend`` (a ``Backend`` class, loading ``card``) can run on this benchmark's rows for ``task`` with
        ``reduction``: one sentence if not. The default covers what the interface declares (reference
        sequences for a fitted baseline, regions for tracks models, a focus position for ``--reduction focus``)."""
        if backend.fits_on_reference and not backend.reference_file(card) \
                and type(self).reference_sequences is Benchmark.reference_sequences:
            raise GlmscoreError(f"backend {backend.name} fits on a benchmark's reference sequences, and benchmark "
                                f"{self.name} has none; use a model that needs no fitting.")
        if self.has_regions and not backend.scores_regions:
            raise GlmscoreError(f"benchmark {self.name} is set to score a region of each sequence (--score-subsequence, "
                                f"--track-region centre), which only sequence-to-function models read; backend {backend.name} "
                                "scores whole sequences.")
        if task == "score" and reduction == "focus" and not self.focus_column:
            raise GlmscoreError(f"--reduction focus needs a benchmark with a focus position; {self.name} has none.")

    def resolve_pooling(self, pooling: str) -> str:
        """``--pooling`` in the benchmark's own terms (a TSS-relative window, say) -> the generic form
        of ``models/pooling.py``; the default leaves it unchanged."""
        return pooling

    @classmethod
    def analyze(cls, score_dirs: list[str], out: str, options: Options) -> dict:
        """Statistics, tables, plots and a report from finished score folders; returns at least
        ``{"report": path, "table": DataFrame to print}``."""
        raise GlmscoreError(f"benchmark {cls.name} has no analysis.")

    @classmethod
    def combined_tables(cls, parts: list[dict], order: list[str], out: Path, bid: str) -> list[tuple[str, Any, list[Path]]]:
        """This benchmark's sections of a sweep's combined report, from its ``analyze`` results (``parts``,
        see ``analysis/combined.py``): (title, table, files) each, models in ``order``. The default sets the
        analysis tables side by side."""
        return generic_tables(parts, order, out, bid)
