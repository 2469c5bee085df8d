"""The causal-variant demo: the whole chain on the synthetic labelled set (``run_variants_demo``)."""

from __future__ import annotations

from pathlib import Path

from glmscore.pipelines.benchmarks.variants.learning import CNNOptions, VariantProbeConfig, run_cnn, run_variant_probes
from glmscore.pipelines.benchmarks.variants.source import BuildOptions, Variants, build_windows
from glmscore.pipelines.benchmarks.variants.synthetic import make_synthetic
from glmscore.pipelines.console import show
from glmscore.pipelines.score import ScoreConfig, run_score


def run_variants_demo(out: Path) -> None:
    """Synthetic genome + labelled variants (planted TSS element) -> 64 bp variant windows and 512 bp TSS
    windows -> one-hot TSS embeddings (Ray Data) -> probes and the one-hot CNN on chromosome folds (Ray
    Tune; test = chr9 + chr10) -> report. The CNN is the paper's architecture with fewer filters (16, 32,
    32, 48) so that it trains in a minute on 2 cores; the default command trains the full one."""
    src = make_synthetic(out / "synthetic")
    show(f"[1/4] synthetic set: {src['n_variants']} variants, {src['n_rows']} variant x tissue rows in {out / 'synthetic'}")
    for view, window in (("variant", 64), ("gene", 512)):
        build_windows(BuildOptions(genome=src["genome"], variants=src["variants"], annotation=src["tss"], view=view,
                                   window=window, orient="gene", out=str(out / f"windows_{view}")))
    run_score(ScoreConfig(task="embed", benchmark="variants", data=str(out / "windows_gene"), model="onehot",
                          pooling="tss", out=str(out / "emb_onehot"), overwrite=True))
    show(f"[2/4] built windows and embedded the 384 bp around each TSS into {out / 'emb_onehot'}")
    run_variant_probes(VariantProbeConfig(embeddings=str(out / "emb_onehot"), out=str(out / "probes")))
    run_cnn(CNNOptions(data=str(out / "windows_variant"), out=str(out / "cnn"), filters=[16, 32, 32, 48], hidden=[32, 16],
                       lr=3e-3, patience=10))
    show(f"[3/4] probes and CNN trained on chromosome folds: {out / 'probes'}, {out / 'cnn'}")
    result = Variants.analyze([], str(out / "report"), Variants.AnalyzeOptions(probes=[str(out / "probes")],
                                                                               cnn=[str(out / "cnn")]))
    show("[4/4] test AUROC (chr9, chr10):")
    show(result["table"].to_string(index=False))
    show(f"report: {result['report']}")


