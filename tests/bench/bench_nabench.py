"""NABench pipeline benchmark (a script, not a timed test). Prints a Markdown table.

    .venv/bin/python -m tests.bench.bench_nabench [--out bench_out/nabench]

Rows/s through the score pipeline (k-mer baseline) and the embed pipeline (one-hot featurizer) over
all assays in ../shared/data/nabench, peak memory (driver + Ray), and the wall time of the supervised
Ray Tune sweep (ridge, all fold schemes) on the five largest assays' one-hot embeddings.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out/nabench")
    ap.add_argument("--chunk-rows", type=int, default=8192)
    args = ap.parse_args()
    import ray

    from glmscore.pipelines.benchmarks.nabench.probe import ProbeConfig, run_probes
    from glmscore.pipelines.benchmarks.nabench.source import discover
    from glmscore.pipelines.score import ScoreConfig, run_score
    from tests.bench.bench_nullsette import PeakRSS

    data = ROOT.parent / "shared" / "data" / "nabench"
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    assays = discover(data)
    total = sum(a.n_rows for a in assays)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    rows = []
    for task, model in (("score", "kmer:3"), ("embed", "onehot")):
        with PeakRSS() as mem:
            t = time.perf_counter()
            run_score(ScoreConfig(benchmark="nabench", data=str(data), model=model, task=task,
                                  out=str(out / task), chunk_rows=args.chunk_rows))
            secs = time.perf_counter() - t
        rows.append((f"{task} {model}, {len(assays)} assays, {total:,} rows", f"{total / secs:,.0f} rows/s",
                     f"{secs:.0f} s, peak RSS {mem.peak / 2**20:,.0f} MiB"))
    largest = sorted(assays, key=lambda a: -a.n_rows)[:5]
    emb = out / "emb5"
    run_score(ScoreConfig(benchmark="nabench", data=str(data), model="onehot", task="embed", out=str(emb),
                          benchmark_options={"assays": [a.dms_id for a in largest]}, chunk_rows=args.chunk_rows))
    with PeakRSS() as mem:
        t = time.perf_counter()
        run_probes(ProbeConfig(embeddings=str(emb), setting="supervised", out=str(out / "probes"), probes=["ridge"]))
        secs = time.perf_counter() - t
    rows.append((f"supervised Tune sweep, ridge, 5 largest assays ({sum(a.n_rows for a in largest):,} rows)",
                 f"{secs:.0f} s", f"peak RSS {mem.peak / 2**20:,.0f} MiB"))
    ray.shutdown()
    print("\n| measure | value | note |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
