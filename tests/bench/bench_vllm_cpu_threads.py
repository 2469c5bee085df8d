"""vLLM on CPU: how its worker's OpenMP threads are placed, side by side in one run (a script, not a timed test).

    .venv/bin/python -m tests.bench.bench_vllm_cpu_threads [--n 96] [--hidden 512 --layers 8]

Each setting starts its own engine in a fresh process (the worker reads its thread environment once) on
the same random Llama and real Kosuri cassettes (fp32), scores them twice and keeps the second pass:

- ``vLLM auto``: vLLM's own default binding (every core of NUMA node 0 but one, kept for the scheduler);
  what glmscore did before it chose.
- ``glmscore, alone on the node``: what the backend now does (``cpu_threads``) when the actor's threads are the
  node's cores: one thread bound to each core.
- ``glmscore, 2 actors (one's share)``: half the cores, unbound (``nobind``): what each of two actors runs.
- ``all cores, unbound``: every core's worth of threads, ``nobind``.
- ``glmscore, eager``: alone on the node with ``enforce_eager`` (no torch.compile): start-up against throughput.

Prints engine start-up, rows/s and the ratio to ``vLLM auto``. The compile cache is warmed first, so start-up
times are with the cache (the first engine on a fresh machine compiles for ~2 min).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cassettes(n: int) -> list[str]:
    import csv

    data = ROOT.parent / "shared" / "data" / "nullsette" / "kosuri.tsv"
    cols = ["promoter", "rbs", "start_codon", "cds", "stop_codon", "terminator"]
    if data.exists():
        rows = list(csv.DictReader(open(data), delimiter="\t"))
    else:
        from glmscore.pipelines.benchmarks.nullsette.demo import synthetic_cassettes

        rows = synthetic_cassettes(n)
    seqs = ["".join(r[c] for c in cols) for r in rows]
    return (seqs * (n // len(seqs) + 1))[:n]


def one(model: str, n: int, threads: int, eager: bool) -> dict:
    """Runs in the child: start the engine through the backend, score twice, time the second pass."""
    from glmscore.models.base import resolve_card
    from glmscore.models.loader import load_backend

    card = resolve_card(model).with_(backend="vllm_causal")
    seqs = cassettes(n)
    t = time.perf_counter()
    backend = load_backend(card, device="cpu", threads=threads, dtype="float32", max_model_len=2048,
                           **({"enforce_eager": True} if eager else {}))
    start = time.perf_counter() - t
    enc = backend.encode(seqs)
    backend.loglik(enc[: max(4, n // 8)])
    t = time.perf_counter()
    backend.loglik(enc)
    return {"start_s": start, "rows_s": n / (time.perf_counter() - t), "tokens": sum(len(e.ids) for e in enc)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--out", default="bench_out/vllm_cpu_threads")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        threads, eager = json.loads(args.child)
        print("RESULT " + json.dumps(one(str(Path(args.out) / "model"), args.n, threads, eager)), flush=True)
        return
    from tests.tiny_models import make_tiny_llama

    make_tiny_llama(Path(args.out) / "model", hidden=args.hidden, layers=args.layers, heads=args.hidden // 64)
    cores = len(os.sched_getaffinity(0))
    settings = [  # name, VLLM_CPU_OMP_THREADS_BIND (None: glmscore decides), threads, eager, OMP threads used
        ("vLLM auto", "auto", cores, False, max(1, cores - 1)),
        ("glmscore, alone on the node (bound)", None, cores, False, cores),
        ("glmscore, 2 actors (one's share, nobind)", None, max(1, cores // 2), False, max(1, cores // 2)),
        ("all cores, unbound (nobind)", "nobind", cores, False, cores),
        ("glmscore, eager", None, cores, True, cores),
    ]
    results = {}
    warm = True
    for name, bind, threads, eager, used in settings:
        env = {k: v for k, v in os.environ.items() if k not in ("VLLM_CPU_OMP_THREADS_BIND", "OMP_NUM_THREADS")}
        if bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = bind
        if bind == "nobind":
            env["OMP_NUM_THREADS"] = str(threads)
        for _ in range(2 if warm else 1):  # the first engine fills the compile cache: its start-up is not kept
            proc = subprocess.run([sys.executable, "-m", "tests.bench.bench_vllm_cpu_threads", "--n", str(args.n),
                                   "--out", args.out, "--child", json.dumps([threads, eager])],
                                  cwd=ROOT, env=env, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        warm = False
        results[name] = json.loads(lines[-1][7:]) | {"threads": used}
        print(f"{name}: {results[name]}", flush=True)
    base = results["vLLM auto"]["rows_s"]
    tokens = results["vLLM auto"]["tokens"]
    print(f"\nRandom Llama hidden {args.hidden} x {args.layers} layers, fp32, {args.n} Kosuri cassettes ({tokens} tokens), "
          f"{cores} cores\n")
    print("| setting | OMP threads | engine start (cached compile) | rows/s | vs vLLM auto |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['threads']} | {r['start_s']:.0f} s | {r['rows_s']:.2f} | {r['rows_s'] / base:.2f}x |")


if __name__ == "__main__":
    main()
