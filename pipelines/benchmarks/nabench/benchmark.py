"""The registered NABench benchmark: its source (``source.py``: assays, units, zero-shot analysis) plus its
commands: probe sweeps on embeddings (``probe.py``, Ray Tune) and whole-model fine-tuning
(``finetune.py``, Ray Train), also reachable as ``glmscore probe`` and ``glmscore finetune``."""

from __future__ import annotations

from glmscore.pipelines.benchmark import Command, register_benchmark, result_text
from glmscore.pipelines.benchmarks.nabench.finetune import FinetuneConfig, run_finetune
from glmscore.pipelines.benchmarks.nabench.probe import ProbeConfig, run_probes
from glmscore.pipelines.benchmarks.nabench.source import NABenchSource


@register_benchmark("nabench")
class NABench(NABenchSource):
    @classmethod
    def commands(cls) -> dict[str, Command]:
        return {
            "probe": Command(ProbeConfig, lambda c: result_text(run_probes(c)),
                             "few-shot, supervised or transfer probe sweep on embeddings (Ray Tune)", alias=("probe",)),
            "finetune": Command(FinetuneConfig, lambda c: result_text(run_finetune(c)),
                                "fine-tune a whole model on NABench assays (Ray Train, Ray Tune for sweeps)",
                                alias=("finetune",)),
        }
