"""Nullsette's commands beside its source: ``glmscore nullsette build`` (the released layout from component
tables) and its demo (``demo.py``)."""

from __future__ import annotations

from pathlib import Path

from glmscore.pipelines.benchmark import Command, register_command, register_demo
from glmscore.pipelines.benchmarks.nullsette.demo import run_demo
from glmscore.pipelines.benchmarks.nullsette.source import BuildOptions, build


def _run_build(o: BuildOptions) -> str:
    built = build(Path(o.spec), Path(o.out), tables=o.tables)
    return "\n".join(f"{name}: {n} cassettes" for name, n in built.items())


register_command("nullsette", "build", Command(BuildOptions, _run_build, "write the released layout from component tables"))
register_demo("nullsette", run_demo)
