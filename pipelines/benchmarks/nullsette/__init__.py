"""The nullsette benchmark: its source, commands, learners and reports, all in this package.

Deleting this folder removes the benchmark; the registry and the CLI work without it."""

from glmscore.pipelines.benchmarks.nullsette import commands  # noqa: F401  (registers its commands and demo)
from glmscore.pipelines.benchmarks.nullsette.source import Nullsette  # noqa: F401  (importing the package registers it)
