"""The prepared GPU check (a script, not a test): run it on a GPU machine, in under 8 minutes on one H200.

    cluster/local/install.sh gpu && .venv/bin/python -m tests.bench.gpu_check [--out gpu_check_out]
    .venv/bin/python -m tests.bench.gpu_check --cpu-smoke     # the same steps, tiny, on CPU (checks the script)

1. A random Llama of ~210M parameters (hidden 1024, 20 layers, the character DNA tokenizer of
   ``tests/tiny_models.py``), saved as a local model folder: no hub download.
2. ``glmscore score`` of the same Nullsette cassettes (the demo grammar) with the transformers backend
   (``hf_causal``, bf16) and with vLLM (``vllm_causal``), each on the real pipeline (local Ray, one GPU
   actor): rows/s, tokens/s, and model-FLOP utilisation = 2 x parameters x tokens / s over the card's
   dense bf16 peak (inference forward passes only; ``-`` for an unknown card).
3. Their agreement: Pearson r and the largest |difference| of the per-row mean log-likelihood (bf16 in
   both, so a few 1e-3 is expected).
4. Two actors sharing the GPU (``--gpus-per-actor 0.5 --min-actors 2``): rows/s beside one actor.

Prints one Markdown table; put its numbers in docs/performance.md with the card's name. The seed cards at
their real configurations (random weights, real Nullsette and NABench rows) are ``tests/bench/gpu_check_cards.py``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

ROOT = Path(__file__).resolve().parents[2]
OVERALL = re.compile(r"rows \(100%\), ([\d,.]+) rows/s overall")
# dense bf16 peaks (no sparsity), FLOP/s, by a substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12}


def score(data: Path, model: Path, out: Path, *flags: str) -> dict:
    """One ``glmscore score`` in its own process; its wall time, overall rate and the tokens it scored."""
    cmd = [sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data", str(data),
           "--model", str(model), "--out", str(out), "--chunk-rows", "256", *flags]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    table = pads.dataset(out, format="parquet", partitioning="hive").to_table(
        columns=["dataset", "group", "pair_index", "score", "n_scored"]).to_pandas()
    rate = OVERALL.findall(proc.stderr)
    return {"wall": wall, "rows": len(table), "tokens": int(table["n_scored"].sum()),
            "rate": float(rate[-1].replace(",", "")) if rate else len(table) / wall,
            "scores": table.sort_values(["dataset", "group", "pair_index"])["score"].to_numpy()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_check_out")
    ap.add_argument("--cassettes", type=int, default=500, help="demo cassettes (x 20 groups = rows)")
    ap.add_argument("--cpu-smoke", action="store_true", help="a tiny model and data on CPU: checks the script only")
    args = ap.parse_args()
    from glmscore.pipelines.benchmarks.nullsette.demo import write_spec
    from glmscore.pipelines.benchmarks.nullsette.source import build
    from tests.tiny_models import make_tiny_llama

    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    smoke = args.cpu_smoke
    cassettes = 10 if smoke else args.cassettes
    data = out / "processed_data"
    build(write_spec(out / "spec", cassettes, seed=1), data)
    size = dict(hidden=64, layers=2, heads=2) if smoke else dict(hidden=1024, layers=20, heads=16)
    model = make_tiny_llama(out / "llama", max_positions=4096, **size)
    config = json.loads((model / "config.json").read_text())
    h, n_layers, inter, vocab = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"], config["vocab_size"]
    params = n_layers * (4 * h * h + 3 * h * inter) + 2 * vocab * h
    device = ["--device", "cpu"] if smoke else ["--device", "gpu"]
    card, peak = "CPU (smoke)", None
    if not smoke:
        import torch

        card = torch.cuda.get_device_name(0)
        peak = next((v for k, v in PEAK_BF16.items() if k in card), None)

    rows = []
    hf = score(data, model, out / "hf", "--backend", "hf_causal", *device)
    vl = score(data, model, out / "vllm", "--backend", "vllm_causal", *device)
    for name, r in (("transformers (hf_causal)", hf), ("vLLM (vllm_causal)", vl)):
        tps = r["tokens"] * r["rate"] / r["rows"]
        mfu = f"{2 * params * tps / peak:.1%}" if peak else "-"
        rows.append((name, f"{r['rate']:,.1f} rows/s", f"{tps:,.0f} tokens/s", mfu, f"{r['wall']:.0f} s end to end"))
    diff = np.abs(hf["scores"] - vl["scores"])
    rows.append(("agreement (per-row mean log-likelihood)", f"Pearson r {np.corrcoef(hf['scores'], vl['scores'])[0, 1]:.6f}",
                 f"max |diff| {diff.max():.2e}", f"median {np.median(diff):.2e}", f"{len(diff):,} rows"))
    if not smoke:
        two = score(data, model, out / "hf_shared", "--backend", "hf_causal", "--device", "gpu",
                    "--gpus-per-actor", "0.5", "--min-actors", "2", "--max-actors", "2")
        rows.append(("two transformers actors sharing the GPU (0.5 each)", f"{two['rate']:,.1f} rows/s",
                     f"{two['rate'] / hf['rate']:.2f}x one actor", "-", f"{two['wall']:.0f} s end to end"))
    print(f"\nGPU check on {card}: random Llama, {params / 1e6:,.0f}M parameters, {hf['rows']:,} rows, "
          f"{hf['tokens']:,} tokens\n")
    print("| measure | value | | | |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
