"""AlphaGenome at its real configuration (random weights, 16,384 bp): a score computed with every head enabled
(what ``predict`` did before) against only the scored output's head (what ``AlphaGenomePT.load`` enables now).
A script, not a test: it runs in the card's own environment (alphagenome-pt), minutes on a CPU.

    .venv/bin/python -m tests.bench.bench_alphagenome_heads [--window 16384]

Prints seconds and peak RSS per window for each, their ratio, and that the rna_seq predictions are equal.
"""

from __future__ import annotations

import argparse
import json
import subprocess

from glmscore.pipelines import environments
from tests.conftest import ROOT

SCRIPT = r"""
import json, resource, sys, time, torch
import alphagenome_pt as ag
from alphagenome_pt.checkpoint import deepmind_config
window, only = int(sys.argv[1]), sys.argv[2] == "one"
torch.manual_seed(0)
heads = [h for h in ag.HeadName if h.value != "masked_language_modeling"]
# 734 tracks a head: the splice-junction head's real count (its (512, 512, 734) tensors are what cost)
metadata = ag.synthetic_metadata(heads=heads, organisms=["human", "mouse"], num_tracks=734)
model = ag.AlphaGenome(deepmind_config(metadata, dtype_policy="float32")).eval()
model.set_sync_bn(False)
if only:  # what AlphaGenomePT.load does
    for name, head in model.metadata.metadata["heads"].items():
        head["enabled"] = name == "rna_seq"
x = torch.nn.functional.one_hot(torch.randint(0, 4, (1, window)), 4).float()
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
with torch.no_grad():
    predictions = model.predict(x, torch.tensor([0]))
seconds = time.perf_counter() - start
print(json.dumps({"s": seconds, "peak_growth_gb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - loaded) / 2**20,
                  "heads": len(predictions), "pred": predictions["rna_seq"]["predictions_1bp"].double().sum().item()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=int, default=16_384)
    args = ap.parse_args()
    python = environments.local_python(("alphagenome-pt==1.0.0",))
    res = {}
    for label, mode in (("every head (before)", "all"), ("the scored head only (now)", "one")):
        done = subprocess.run([str(python), "-c", SCRIPT, str(args.window), mode], cwd=ROOT, capture_output=True,
                              text=True, timeout=3600)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        res[label] = json.loads(done.stdout.splitlines()[-1])
    every, one = res.values()
    print(f"| AlphaGenome, real configuration, random weights, {args.window:,} bp | heads run | s/window | "
          "peak memory growth (GB) |")
    print("|---|---|---|---|")
    for label, r in res.items():
        print(f"| {label} | {r['heads']} | {r['s']:.1f} | {r['peak_growth_gb']:.1f} |")
    same = abs(every["pred"] - one["pred"]) <= 1e-6 * abs(every["pred"])
    print(f"\nspeed-up {every['s'] / one['s']:.1f}x, memory {every['peak_growth_gb'] / max(one['peak_growth_gb'], 1e-3):.1f}x "
          f"less; rna_seq predictions equal: {same}")

if __name__ == "__main__":
    main()
