"""NABench's commands beside its source: probe sweeps on embeddings (``probe.py``, Ray Tune) and whole-model
fine-tuning (``finetune.py``, Ray Train), also reachable as ``glmscore probe`` and ``glmscore finetune``."""

from __future__ import annotations

from glmscore.pipelines.benchmark import Command, register_command, result_text
from glmscore.pipelines.benchmarks.nabench.finetune import FinetuneConfig, run_finetune
from glmscore.pipelines.benchmarks.nabench.probe import ProbeConfig, run_probes

register_command("nabench", "probe", Command(ProbeConfig, lambda c: result_text(run_probes(c)),
                                             "few-shot, supervised or transfer probe sweep on embeddings (Ray Tune)",
                                             alias=("probe",)))
register_command("nabench", "finetune", Command(FinetuneConfig, lambda c: result_text(run_finetune(c)),
                                                "fine-tune a whole model on NABench assays (Ray Train, Ray Tune for sweeps)",
                                                alias=("finetune",)))
