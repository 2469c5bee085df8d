"""The nullsette benchmark: its source, commands, learners and reports, all in this package.

Deleting this folder removes the benchmark; the registry and the CLI work without it."""

from glmscore.pipelines.benchmarks.nullsette.benchmark import Nullsette  # noqa: F401  (importing the package registers it)
