"""Run-to-run numerical noise of the CPU backends: the same rows scored twice with a different batch composition.

    .venv/bin/python -m tests.bench.bench_noise [--n 64] [--backends hf_causal,hf_masked] [--dtypes float32,bfloat16]

Each backend scores the real Nullsette kosuri cassettes (``/work/shared/data``; synthetic cassettes without it)
twice through glmscore's own backend classes (``load_backend`` -> ``encode`` -> ``loglik``, the code the score
actors run), on tiny random models (``tests/tiny_models.py``: a Llama for the causal backends, a BERT for the
masked one, both character-level). Run A scores every row alone (``batch_tokens=1``: a longer row still runs
alone); run B scores the rows in reverse order packed into large padded batches (``batch_tokens=65536``), so
every row meets different neighbours, padding and matrix shapes. The per-row score is the job's default
(mean log-likelihood over the scored tokens). Printed per backend and dtype: max and mean |A - B| over the rows,
as the Markdown rows of ``models/noise.py``'s table (whose CPU entries come from this script).

``--backends vllm_causal`` adds the vLLM CPU engine (about 150 s of start-up per run here, two runs, fp32 and
bfloat16 only where the CPU has the instructions); its batches are the engine's own, so run B passes the rows
in reverse order with a different ``max_num_seqs``.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PARTS = ["promoter", "rbs", "start_codon", "cds", "stop_codon", "terminator"]


def cassettes(n: int) -> list[str]:
    data = ROOT.parent / "shared" / "data" / "nullsette" / "kosuri.tsv"
    if data.exists():
        with open(data) as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    else:
        from glmscore.pipelines.benchmarks.nullsette.demo import synthetic_cassettes

        rows = synthetic_cassettes(n)
    return ["".join(r[c] for c in PARTS) for r in rows[:n]]


def scores(card, device: str, dtype: str, seqs: list[str], order: np.ndarray, **options) -> np.ndarray:
    from glmscore.models.loader import load_backend

    backend = load_backend(card, device=device, dtype=dtype, **options)
    encoded = backend.encode([seqs[i] for i in order])
    out = np.empty(len(seqs))
    out[order] = backend.loglik(encoded).mean
    return out


def measure(name: str, card, dtype: str, seqs: list[str]) -> tuple[float, float, float]:
    forward = np.arange(len(seqs))
    reverse = forward[::-1].copy()
    t = time.perf_counter()
    if name == "vllm_causal":
        engine = {"max_model_len": 2048, "gpu_memory_utilization": 0.3}
        a = scores(card, "cpu", dtype, seqs, forward, max_num_seqs=1, **engine)
        b = scores(card, "cpu", dtype, seqs, reverse, max_num_seqs=64, **engine)
    else:
        a = scores(card, "cpu", dtype, seqs, forward, batch_tokens=1)
        b = scores(card, "cpu", dtype, seqs, reverse, batch_tokens=65536)
    delta = np.abs(a - b)
    return float(delta.max()), float(delta.mean()), time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="rows (cassettes) scored in each run")
    ap.add_argument("--backends", default="hf_causal,hf_masked")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--out", default="bench_out/noise")
    args = ap.parse_args()
    import torch

    from glmscore.models.base import resolve_card
    from tests.tiny_models import make_tiny_bert, make_tiny_llama

    torch.set_num_threads(2)
    seqs = cassettes(args.n)
    out = Path(args.out)
    llama = make_tiny_llama(out / "llama", hidden=128, layers=2, heads=2)
    bert = make_tiny_bert(out / "bert", hidden=64, layers=2, max_positions=2048)
    print(f"{len(seqs)} Nullsette cassettes ({min(map(len, seqs))}-{max(map(len, seqs))} nt); run A: one row per batch, "
          "in order; run B: reverse order, large padded batches")
    print("\n| backend | device | dtype | max abs diff/row | mean abs diff/row | s |\n|---|---|---|---|---|---|")
    for name in args.backends.split(","):
        card = resolve_card(str(bert if name == "hf_masked" else llama)).with_(backend=name)
        for dtype in args.dtypes.split(","):
            worst, typical, seconds = measure(name, card, dtype, seqs)
            print(f"| {name} | cpu | {dtype} | {worst:.3g} | {typical:.3g} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
