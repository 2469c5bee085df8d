"""``glmscore demo``: a benchmark's whole chain on embedded synthetic data, no download and no GPU.

Each benchmark package brings its own demo (``register_demo`` in its ``commands.py``): Nullsette's (the default) builds a
synthetic cassette benchmark and scores it with two k-mer baselines; the causal-variant one trains probes
and the one-hot CNN on a synthetic labelled set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glmscore.models.options import Options, option
from glmscore.pipelines.benchmark import BENCHMARKS, demo_of

DEMO_CASSETTES = 300  # ~1 minute on 2 cores, enough pairs for the permutation tests to separate


@dataclass(frozen=True)
class DemoOptions(Options):
    out: str = option("demo_out", help="output folder")
    cassettes: int = option(DEMO_CASSETTES, minimum=2, help="synthetic cassettes to generate (nullsette)")
    benchmark: str = option("nullsette", choices=lambda: BENCHMARKS.names(),
                            help="nullsette (default), or variants: the causal-variant chain on the synthetic labelled set")


def run_demo(options: DemoOptions = DemoOptions()) -> None:
    """The chosen benchmark's demo (``demo_of``), into ``options.out``."""
    demo_of(options.benchmark)(Path(options.out), options.cassettes)
