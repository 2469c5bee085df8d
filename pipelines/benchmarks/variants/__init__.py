"""The variants benchmark: its source, commands, learners and reports, all in this package.

Deleting this folder removes the benchmark; the registry and the CLI work without it."""

from glmscore.pipelines.benchmarks.variants import commands  # noqa: F401  (registers its commands and demo)
from glmscore.pipelines.benchmarks.variants.source import Variants  # noqa: F401  (importing the package registers it)
