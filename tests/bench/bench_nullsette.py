"""Nullsette pipeline benchmark (a script, not a timed test). Prints a Markdown table of ratios.

    .venv/bin/python -m tests.bench.bench_nullsette [--pairs 40] [--out bench_out/nullsette]

(a) sequences/s of the Ray pipeline vs an in-process loop over the same backend and batches;
(b) vs a seed-style loop (one sequence per forward pass);
(c) padding overhead of the token-budget batches (padded tokens / real tokens) on all of Nullsette;
(d) peak memory (driver + Ray workers) when the input grows 10x (k-mer baseline, whole pipeline);
(e) seconds for the 71-test analysis of one model (1,500 pairs, 10,000 permutations).
Reads ../shared/data/nullsette; the model is a random Llama (hidden 256, 4 layers) built on the spot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


class PeakRSS:
    """Samples the summed RSS of this process and every Ray process on the machine."""

    def __init__(self, every: float = 0.2):
        import psutil

        self.psutil, self.every, self.peak, self._stop = psutil, every, 0, threading.Event()

    def _sample(self) -> int:
        total = 0
        for p in self.psutil.process_iter(["pid", "cmdline", "memory_info"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["pid"] == os.getpid() or "ray" in cmd or "raylet" in cmd or "gcs_server" in cmd:
                total += p.info["memory_info"].rss if p.info["memory_info"] else 0
        return total

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=40, help="cassettes per file for (a)/(b) (kosuri: x20 files)")
    ap.add_argument("--out", default="bench_out/nullsette")
    args = ap.parse_args()
    import ray
    import torch

    from glmscore.analysis.nullsette import nullsette_tests
    from glmscore.models.base import resolve_card, token_budget_batches
    from glmscore.models.loader import load_backend
    from glmscore.pipelines.benchmarks.nullsette.source import build, discover
    from glmscore.pipelines.fasta import read_all
    from glmscore.pipelines.score import ScoreConfig, run_score
    from tests.tiny_models import make_tiny_llama

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    data = out / "processed_data"
    build(ROOT.parent / "shared" / "data" / "nullsette", data)
    model = make_tiny_llama(out / "llama-256x4", hidden=256, layers=4, heads=4)
    rows = []

    # (a) / (b): the same sequences, backend and batches. The Ray pipeline runs twice (pairs/4 and pairs
    # per file): the difference is its steady-state rate, without cluster and actor start-up.
    seqs = []
    for g in discover(data, datasets=["kosuri"]):
        seqs += read_all(g.path)[1][: args.pairs]
    n = len(seqs)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    small = max(1, args.pairs // 4)
    t = time.perf_counter()
    run_score(ScoreConfig(benchmark="nullsette", data=str(data), model=str(model), out=str(out / "ray_small"),
                          datasets=["kosuri"], limit=small))
    small_s = time.perf_counter() - t
    t = time.perf_counter()
    run_score(ScoreConfig(benchmark="nullsette", data=str(data), model=str(model), out=str(out / "ray_scores"),
                          datasets=["kosuri"], limit=args.pairs))
    ray_s = time.perf_counter() - t
    steady = (n - 20 * small) / (ray_s - small_s)
    scorer = load_backend(resolve_card(str(model)), device="cpu")
    torch.set_num_threads(2)
    t = time.perf_counter()
    enc = scorer.encode(seqs)
    for g in range(0, n, args.pairs):  # one call per file chunk, as the pipeline's units
        scorer.loglik(enc[g : g + args.pairs])
    loop_s = time.perf_counter() - t
    scorer.batch_tokens = 1
    t = time.perf_counter()
    scorer.loglik(enc)
    seed_s = time.perf_counter() - t
    rows += [
        ("(a) Ray pipeline, steady state, seq/s", f"{steady:.1f}", f"{steady / (n / loop_s):.2f} x in-process loop"),
        (f"(a) Ray pipeline, whole run of {n} sequences incl. start-up, seq/s", f"{n / ray_s:.1f}", f"{loop_s / ray_s:.2f} x in-process loop"),
        ("(a) in-process loop, same backend + batches, seq/s", f"{n / loop_s:.1f}", "1.00"),
        ("(b) seed-style loop, 1 sequence per forward, seq/s", f"{n / seed_s:.1f}", f"{loop_s / seed_s:.2f} x in-process loop"),
    ]

    # (c) padding overhead on all of Nullsette (chunks of 1,024 records, 4,096-token batches)
    padded = real = 0
    for g in discover(data):
        lens = np.array([len(s) + 1 for s in read_all(g.path)[1]])  # +1: BOS
        for c in range(0, len(lens), 1024):
            chunk = lens[c : c + 1024]
            for b in token_budget_batches(chunk, 4096):
                padded += len(b) * chunk[b].max()
                real += chunk[b].sum()
    rows.append(("(c) padded tokens / real tokens, all 114,000 sequences", f"{padded / real:.4f}", "target <= 1.05"))

    # (d) peak memory, whole pipeline with the k-mer baseline, 150 vs 1,500 cassettes per file
    peaks = {}
    for limit in (150, 1500):
        with PeakRSS() as mem:
            t = time.perf_counter()
            run_score(ScoreConfig(benchmark="nullsette", data=str(data), model="kmer:5",
                                  out=str(out / f"kmer_{limit}"), limit=limit, chunk_rows=256))
            secs = time.perf_counter() - t
        peaks[limit] = mem.peak
        rows.append((f"(d) k-mer pipeline, {limit * 76:,} sequences: peak RSS (driver + Ray)",
                     f"{mem.peak / 2**20:.0f} MiB", f"{limit * 76 / secs:.0f} seq/s"))
    rows.append(("(d) peak memory ratio for 10x input", f"{peaks[1500] / peaks[150]:.2f}", "target <= 1.10"))
    ray.shutdown()

    # (e) the 71-test analysis of one model
    import pandas as pd

    rng = np.random.default_rng(0)
    frames = []
    for g in discover(data):
        frames.append(pd.DataFrame({"model": "m", "dataset": g.dataset, "group": g.group,
                                    "pair_index": np.arange(1500), "score": rng.normal(-1.3, 0.05, 1500)}))
    scores = pd.concat(frames, ignore_index=True)
    t = time.perf_counter()
    tests = nullsette_tests(scores, n_perm=10_000)
    rows.append((f"(e) {len(tests)}-test analysis, 1,500 pairs, 10,000 permutations", f"{time.perf_counter() - t:.2f} s", ""))

    print("\n| measure | value | ratio / note |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
