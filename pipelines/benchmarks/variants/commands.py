"""The causal-variant benchmark's commands beside its source: ``build`` and ``synth`` (data), ``probe`` (probes
on TSS embeddings, also ``glmscore probe --setting variants``) and ``cnn`` (the one-hot CNN, also ``glmscore
baseline cnn``), both Ray Tune sweeps over chromosome folds (``learning.py``), and its demo."""

from __future__ import annotations

from glmscore.pipelines.benchmark import Command, register_command, register_demo, result_text
from glmscore.pipelines.benchmarks.variants.demo import run_variants_demo
from glmscore.pipelines.benchmarks.variants.learning import CNNOptions, VariantProbeConfig, run_cnn, run_variant_probes
from glmscore.pipelines.benchmarks.variants.source import BuildOptions, build_windows
from glmscore.pipelines.benchmarks.variants.synthetic import SyntheticOptions, run_synthetic


def _run_build(o: BuildOptions) -> str:
    r = build_windows(o)
    dropped = "; ".join(f"{k}: {v}" for k, v in r["dropped"].items() if v) or "none"
    rows = (f"{r['rows']} variant x tissue rows, {r['labelled_rows']} labelled" if r["rows"] else
            "unlabelled: the variants carry no tissue or label column, so they serve zero-shot scores")
    return (f"{r['sites']} {r['view']}-view window pairs of {r['window']} bp ({rows}) in {o.out}\n"
            f"windows padded with N at a chromosome end: {r['sites_with_padding']}\ndropped: {dropped}")


register_command("variants", "build", Command(BuildOptions, _run_build,
                                               "write ref/alt windows (sites.parquet + build.json) from a genome and variants"))
register_command("variants", "synth", Command(SyntheticOptions, run_synthetic,
                                              "write a synthetic genome, TSS table and labelled variants (planted mechanism)"))
register_command("variants", "probe", Command(VariantProbeConfig, lambda c: result_text(run_variant_probes(c)),
                                              "probes on TSS embeddings, chromosome-held-out AUROC (Ray Tune)", alias=("probe",)))
register_command("variants", "cnn", Command(CNNOptions, lambda c: result_text(run_cnn(c)),
                                            "train the one-hot CNN (variant-centred) on chromosome folds in Ray Tune trials",
                                            alias=("baseline", "cnn")))
register_demo("variants", lambda out, cassettes: run_variants_demo(out))
