"""The registered Nullsette benchmark: its source (``source.py``: released layout, units, analysis) plus
its commands (``glmscore nullsette build``) and its demo (``demo.py``)."""

from __future__ import annotations

from pathlib import Path

from glmscore.pipelines.benchmark import Command, register_benchmark
from glmscore.pipelines.benchmarks.nullsette.demo import run_demo
from glmscore.pipelines.benchmarks.nullsette.source import BuildOptions, NullsetteSource, build


def _run_build(o: BuildOptions) -> str:
    built = build(Path(o.spec), Path(o.out), tables=o.tables)
    return "\n".join(f"{name}: {n} cassettes" for name, n in built.items())


@register_benchmark("nullsette")
class Nullsette(NullsetteSource):
    @classmethod
    def commands(cls) -> dict[str, Command]:
        return {"build": Command(BuildOptions, _run_build, "write the released layout from component tables")}

    @classmethod
    def demo(cls, out: Path, cassettes: int) -> None:
        run_demo(out, cassettes)
