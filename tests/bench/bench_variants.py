"""Causal-variant benchmark timings (a script, not a timed test). Prints a Markdown table.

    .venv/bin/python -m tests.bench.bench_variants [--out bench_out/variants] [--sites 8]

1. ``variants build``: variants/s for the variant view (1,500 bp) and the gene view (131,072 bp) on a
   synthetic genome (12 x 1 Mb, 4,800 genes, 9,600 variants, 19,000 variant x tissue rows);
2. window extraction (what a unit's read does: genome index -> ref/alt windows), windows/s and bp/s;
3. scoring ``--sites`` gene-view site pairs (131,072 bp windows) with a tiny Llama (rolling 4,096-token
   windows, ``--long window``): the Ray Data job vs the same backend in one process, tokens/s and ratio.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out/variants")
    ap.add_argument("--sites", type=int, default=8, help="gene-view site pairs to score (2 windows of 131,072 bp each)")
    args = ap.parse_args()
    import ray

    from glmscore.models.base import resolve_card
    from glmscore.models.loader import load_backend
    from glmscore.pipelines.benchmarks.variants.source import BuildOptions, Variants, build_windows
    from glmscore.pipelines.benchmarks.variants.synthetic import make_synthetic
    from glmscore.pipelines.score import ScoreConfig, run_score
    from tests.bench.bench_nullsette import PeakRSS
    from tests.tiny_models import make_tiny_llama

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    src = make_synthetic(out / "src", chrom_len=1_000_000, genes_per_chrom=400)
    rows = []
    for view, window in (("variant", 1500), ("gene", 131_072)):
        with PeakRSS() as mem:
            t = time.perf_counter()
            r = build_windows(BuildOptions(genome=src["genome"], variants=src["variants"], out=str(out / view), view=view,
                                           annotation=src["tss"] if view == "gene" else None))
            secs = time.perf_counter() - t
        rows.append((f"variants build --view {view} ({src['n_rows']:,} rows -> {r['sites']:,} sites)",
                     f"{r['sites'] / secs:,.0f} sites/s", f"{secs:.1f} s, peak RSS {mem.peak / 2**20:,.0f} MiB"))
        bench = Variants(str(out / view))
        units = bench.units(chunk_rows=1024, limit=2048 if view == "variant" else 64, datasets=None)
        t = time.perf_counter()
        n = sum(len(bench.read(u).sequences) for u in units)
        secs = time.perf_counter() - t
        rows.append((f"window extraction, {view} view ({window:,} bp, {n:,} windows)", f"{n / secs:,.0f} windows/s",
                     f"{n * window / secs / 1e6:,.1f} Mbp/s"))

    model = make_tiny_llama(out / "tiny-llama", max_positions=4096)
    bench = Variants(str(out / "gene"))
    units = bench.units(chunk_rows=args.sites, limit=args.sites, datasets=None)
    seqs = [s for u in units for s in bench.read(u).sequences]
    tokens = sum(len(s) for s in seqs)
    backend = load_backend(resolve_card(str(model)), threads=2, long="window")
    t = time.perf_counter()
    backend.loglik(backend.encode(seqs))
    local = time.perf_counter() - t
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    t = time.perf_counter()
    run_score(ScoreConfig(benchmark="variants", data=str(out / "gene"), model=str(model), out=str(out / "scores"),
                          limit=args.sites, chunk_rows=args.sites, options={"long": "window"}, reduction="sum"))
    job = time.perf_counter() - t
    ray.shutdown()
    rows.append((f"score {len(seqs)} windows of 131,072 bp, tiny Llama, in-process loop", f"{tokens / local:,.0f} tokens/s",
                 f"{local:.1f} s"))
    rows.append((f"score {len(seqs)} windows of 131,072 bp, tiny Llama, Ray Data job (1 actor, 2 CPUs)",
                 f"{tokens / job:,.0f} tokens/s", f"{job:.1f} s; job / in-process = {job / local:.2f}x the time"))
    print("\n| measure | value | note |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
