"""One ``glmscore sweep`` over one tiny model of each family the seeds' models come in (a script, not a
timed test: multimolecule's import alone is tens of seconds per actor pool, too dear for the suite):
a multimolecule RNA language model (RNA-FM's class), GPN (the gpn package), a multimolecule Enformer
(tracks), a Llama (the transformers path of the causal cards), borzoi-pytorch in its own environment, and a
vLLM run, x Nullsette (the synthetic demo cassettes) and NABench (two real assays from ../shared/data).
Prints each run's rows and seconds, and exits non-zero if any run failed. Evo 2 (CUDA only) and GenSLM
(weights off the hub) cannot run here.

    .venv/bin/python -m tests.bench.sweep_families
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from glmscore.pipelines.benchmarks.nullsette.demo import write_spec
from glmscore.pipelines.benchmarks.nullsette.source import build
from glmscore.pipelines.shards import read_scores
from tests.conftest import ROOT, shared_data
from tests.models.test_environments import BORZOI, BORZOI_BY_HAND, S2F_WINDOW
from tests.models.test_model_rules import _tiny_gpn, _tiny_multimolecule, _tiny_track_model
from tests.tiny_models import make_tiny_llama

ASSAYS = ["Andreasson_2020_ribozyme", "Tome_2014_GFP_aptamer"]


def main() -> None:
    from glmscore.pipelines import environments

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nullsette = tmp / "pd"
        build(write_spec(tmp / "spec", 12, seed=0), nullsette)
        _tiny_multimolecule(tmp / "rnafm", "RnaFm")
        _tiny_gpn(tmp / "gpn")
        _tiny_track_model("enformer", tmp / "enformer")
        make_tiny_llama(tmp / "llama", hidden=64, layers=1, heads=1)
        python = environments.local_python((BORZOI,))
        subprocess.run([str(python), "-c", BORZOI_BY_HAND, str(tmp / "borzoi"), str(S2F_WINDOW)], cwd=ROOT, check=True,
                       input=json.dumps(["ACGT" * 50]), capture_output=True, text=True)
        sweep = tmp / "sweep.yaml"
        sweep.write_text(json.dumps({
            "out": str(tmp / "out"), "max_parallel": 3, "local_cpus": 6, "defaults": {"threads_per_actor": 1},
            "models": [{"model": str(tmp / "rnafm"), "long": "truncate"},  # tiny: 126 tokens, shorter than a cassette
                       str(tmp / "gpn"), {"model": str(tmp / "enformer"), "long": "truncate"},
                       str(tmp / "llama"), {"model": str(tmp / "borzoi"), "window": S2F_WINDOW, "long": "truncate"},
                       {"model": str(tmp / "llama"), "name": "llama-vllm", "backend": "vllm", "max_model_len": 1024}],
            "benchmarks": [{"name": "nullsette", "data": str(nullsette), "limit": 4, "analyze": {"n_perm": 200}},
                           {"name": "nabench", "data": str(shared_data("nabench")), "datasets": ASSAYS, "limit": 40}]}))
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        t0 = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "glmscore", "sweep", str(sweep)], cwd=ROOT, env=env,
                             capture_output=True, text=True)
        wall = time.monotonic() - t0
        print(f"sweep of 6 models x Nullsette + NABench ({', '.join(ASSAYS)}): exit {run.returncode}, {wall:.0f} s")
        for folder in sorted((tmp / "out" / "scores").glob("*/*")):
            rows = len(read_scores(folder)) if (folder / "_manifest.json").exists() else 0
            print(f"  {folder.parent.name:12} {folder.name:10} {rows:5d} rows")
        if run.returncode:  # each run's outcome line, and what the failing ones said
            sys.exit("\n".join(line for line in run.stderr.splitlines()
                               if line.startswith(("glmscore: sweep:", "glmscore: error")) or "Error" in line))


if __name__ == "__main__":
    main()
