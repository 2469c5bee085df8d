"""The nabench benchmark: its source, commands, learners and reports, all in this package.

Deleting this folder removes the benchmark; the registry and the CLI work without it."""

from glmscore.pipelines.benchmarks.nabench import commands  # noqa: F401  (registers its commands)
from glmscore.pipelines.benchmarks.nabench.source import NABench  # noqa: F401  (importing the package registers it)
