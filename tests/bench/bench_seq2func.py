"""Sequence-to-function backends side by side on this CPU (a script, not a timed test): each package's own
class at a tiny random size (the conv towers' widths are the packages' own where the class fixes them:
borzoi-pytorch's 512-1,280 channels and 7,611-track head), built and scored in its own environment through
glmscore's backend, on the same 40 random 2,000 bp sequences centred in a 4,096 bp window. Prints windows/s,
sequence bp/s and window bp/s per backend, and each one's ratio to the fastest. Published sizes need a GPU
(``tests/bench/gpu_check.py``); these numbers are only the CPU cost of the code path around the model.

    .venv/bin/python -m tests.bench.bench_seq2func
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from glmscore.pipelines import environments
from tests.conftest import ROOT

WINDOW, LENGTH, ROWS = 4096, 2000, 40

TIMED = r"""
import json, sys, time
import numpy as np, torch
torch.manual_seed(0); torch.set_num_threads(2)
kind, path, window, length, rows = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
options = {"long": "truncate"}
if kind == "seq2func (multimolecule Enformer)":
    import multimolecule
    from multimolecule.tokenisers.dna.utils import get_alphabet
    config = multimolecule.EnformerConfig(sequence_length=window, hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
                                          attention_head_size=16, num_downsamples=7, dim_divisible_by=8, target_length=24, num_labels=8)
    multimolecule.EnformerForTokenPrediction(config).eval().save_pretrained(path)
    multimolecule.DnaTokenizer(alphabet=get_alphabet("streamline", prepend_tokens=[]), unk_token="N", pad_token="N",
                               model_max_length=window).save_pretrained(path)
elif kind == "enformer_pytorch":
    import enformer_pytorch
    enformer_pytorch.Enformer.from_hparams(dim=48, depth=1, heads=2, output_heads=dict(human=8, mouse=3), target_length=24,
                                           num_downsamples=7, dim_divisible_by=8).eval().save_pretrained(path, safe_serialization=False)
    options["window"] = window
elif kind == "borzoi_pytorch":
    import borzoi_pytorch
    from borzoi_pytorch.config_borzoi import BorzoiConfig
    borzoi_pytorch.Borzoi(BorzoiConfig(dim=32, depth=1, heads=2, attn_dim_key=8, attn_dim_value=16, bins_to_return=96)).eval().save_pretrained(path)
    options["window"] = window
else:
    import alphagenome_pt as ag
    metadata = ag.synthetic_metadata(heads=[ag.HeadName.RNA_SEQ], organisms=["human"], num_tracks=8)
    ag.small_alphagenome(metadata, max_seq_len=window, num_channels=48, transformer_layers=1, dtype_policy="float32").save(path)
    options["window"] = window
from glmscore.models.base import resolve_card
from glmscore.models.loader import load_backend
backend = load_backend(resolve_card(path), device="cpu", threads=2, **options)
rng = np.random.default_rng(0)
encoded = backend.encode(["".join(rng.choice(list("ACGT"), length)) for _ in range(rows)])
backend.loglik(encoded[:2])  # warm-up
t0 = time.perf_counter()
backend.loglik(encoded)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""

KINDS = {"seq2func (multimolecule Enformer)": None, "enformer_pytorch": "enformer-pytorch==0.8.12",
         "borzoi_pytorch": "borzoi-pytorch==0.5.1", "alphagenome_pt": "alphagenome-pt==1.0.0"}


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, package in KINDS.items():
            python = environments.local_python((package,)) if package else Path(sys.executable)
            run = subprocess.run([str(python), "-c", TIMED, kind, str(Path(tmp) / kind.split()[0]), str(WINDOW), str(LENGTH),
                                  str(ROWS)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
            if run.returncode:
                sys.exit(f"{kind}: {run.stderr[-2000:]}")
            results[kind] = json.loads(run.stdout.splitlines()[-1])["seconds"]
    best = min(results.values())
    print(f"{ROWS} sequences of {LENGTH:,} bp in a {WINDOW:,} bp window, 2 threads, tiny random weights:")
    print(f"{'backend':36} {'windows/s':>10} {'seq bp/s':>10} {'window bp/s':>12} {'x fastest':>10}")
    for kind, seconds in results.items():
        print(f"{kind:36} {ROWS / seconds:10.1f} {ROWS * LENGTH / seconds:10,.0f} {ROWS * WINDOW / seconds:12,.0f} "
              f"{seconds / best:10.2f}")


if __name__ == "__main__":
    main()
