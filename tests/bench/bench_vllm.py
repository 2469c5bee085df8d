"""vLLM vs transformers throughput on the same model and sequences (a script, not a timed test).

    .venv/bin/python -m tests.bench.bench_vllm [--n 200] [--hidden 256 --layers 4] [--device cpu|cuda]

CPU (here): a random Llama (hidden 256, 4 layers) on Nullsette kosuri nonmutants, fp32.
GPU: `.venv/bin/python -m tests.bench.bench_vllm --device cuda --hidden 1024 --layers 16 --n 4000`
(a ~200M-parameter Llama, bf16); prints tokens/s and model-FLOP utilisation against --peak-tflops.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    ap.add_argument("--out", default="bench_out/vllm")
    args = ap.parse_args()
    import torch

    from glmscore.models.base import resolve_card
    from glmscore.models.loader import load_backend
    from tests.tiny_models import make_tiny_llama

    data = ROOT.parent / "shared" / "data" / "nullsette" / "kosuri.tsv"
    if data.exists():
        import csv

        rows = list(csv.DictReader(open(data), delimiter="\t"))
        cols = ["promoter", "rbs", "start_codon", "cds", "stop_codon", "terminator"]
        seqs = ["".join(r[c] for c in cols) for r in rows]
    else:
        from glmscore.pipelines.benchmarks.nullsette.demo import synthetic_cassettes

        seqs = ["".join(r[c] for c in ["promoter", "rbs", "start_codon", "cds", "stop_codon", "terminator"])
                for r in synthetic_cassettes(args.n)]
    seqs = (seqs * (args.n // len(seqs) + 1))[: args.n]
    model = make_tiny_llama(Path(args.out) / f"llama-{args.hidden}x{args.layers}", hidden=args.hidden,
                            layers=args.layers, heads=args.hidden // 64)
    card = resolve_card(str(model))
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model).parameters())
    hf = load_backend(card, device=args.device, dtype=dtype, batch_tokens=65536 if args.device == "cuda" else 4096)
    enc = hf.encode(seqs)
    tokens = sum(len(e.ids) for e in enc)
    hf.loglik(enc[:8])  # warm-up
    t = time.perf_counter()
    hf.loglik(enc)
    hf_s = time.perf_counter() - t
    del hf
    if args.device == "cuda":
        torch.cuda.empty_cache()
    t = time.perf_counter()
    v = load_backend(card.with_(backend="vllm_causal"), device=args.device, dtype=dtype, max_model_len=2048,
                    **({} if args.device == "cuda" else {"gpu_memory_utilization": 0.3}))
    start_s = time.perf_counter() - t
    v.loglik(enc[:8])
    t = time.perf_counter()
    v.loglik(enc)
    v_s = time.perf_counter() - t
    flops = 2 * n_params * tokens  # forward pass, ~2 FLOPs per parameter per token
    print(f"\nmodel: Llama hidden {args.hidden} x {args.layers} layers, {n_params / 1e6:.1f} M parameters, {dtype}, {args.device}")
    print(f"{len(seqs)} sequences, {tokens} tokens; vLLM engine start {start_s:.0f} s (not in the rates)\n")
    print("| backend | seq/s | tokens/s | ratio | model TFLOP/s |\n|---|---|---|---|---|")
    for name, s in (("transformers", hf_s), ("vLLM", v_s)):
        mfu = f"{flops / s / 1e12:.3f}" + (f" ({100 * flops / s / 1e12 / args.peak_tflops:.1f}% of peak)" if args.device == "cuda" else "")
        print(f"| {name} | {len(seqs) / s:.1f} | {tokens / s:.0f} | {hf_s / s:.2f} | {mfu} |")


if __name__ == "__main__":
    main()
