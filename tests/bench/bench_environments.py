"""A model's own environment, both ways, side by side (a script, not a timed test): a tiny enformer-pytorch
model scored by ``glmscore score`` on a new local cluster (the cached virtualenv, ``py_executable``), then
on a Ray head started here and joined with ``--address`` (Ray's ``pip`` runtime environment, which clones
the driver's virtualenv), with a cold and a warm cache for the local path. Prints seconds end to end, the
size of what each built, and the largest score difference between the paths (needs network to PyPI).

    .venv/bin/python -m tests.bench.bench_environments
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from glmscore.pipelines import environments
from glmscore.pipelines.benchmarks.nullsette.demo import write_spec
from glmscore.pipelines.benchmarks.nullsette.source import build
from glmscore.pipelines.shards import read_scores
from tests.conftest import ROOT
from tests.models.test_environments import BY_HAND, PACKAGE
from tests.ray_procs import ray_head


def du(path: Path) -> str:
    return subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True).stdout.split("\t")[0]


def score(args: list[str], env: dict) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "glmscore", "score", *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="glmscore-envs-"))
    cache = base / "cache"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"GLMSCORE_ENVS": str(cache)}
    os.environ["GLMSCORE_ENVS"] = str(cache)
    data = base / "data"
    build(write_spec(base / "spec", 12, seed=3), data)
    t0 = time.monotonic()
    python = environments.local_python((PACKAGE,))
    built = time.monotonic() - t0
    model = base / "tiny-enformer"
    subprocess.run([str(python), "-c", BY_HAND, str(model), "4096", "24", "128"], input="[]", text=True, check=True,
                   capture_output=True)
    common = ["--benchmark", "nullsette", "--data", str(data), "--model", str(model), "--window", "4096",
              "--long", "truncate", "--limit", "2", "--datasets", "synthetic_ecoli"]
    local = score([*common, "--out", str(base / "local")], env)
    auth = env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    with ray_head(base, auth, temp_dir=str(base / "r")) as (port, _, _):
        joined = score([*common, "--address", f"127.0.0.1:{port}", "--out", str(base / "joined")], auth)
        ray_env = du(next((base / "r").glob("session_*/runtime_resources/pip")))
    a = read_scores(base / "local").sort_values("seq_id")["score"].to_numpy()
    b = read_scores(base / "joined").sort_values("seq_id")["score"].to_numpy()
    print("\n| path | environment built | size | score run end to end |\n|---|---|---|---|")
    print(f"| local cluster, cached virtualenv (py_executable) | {built:.0f} s, once | {du(cache)} | {local:.0f} s |")
    print(f"| joined cluster, Ray's pip runtime env | inside the run, per Ray session | {ray_env} | {joined:.0f} s |")
    print(f"\njoined / local run time: {joined / local:.2f}x; largest score difference: {np.abs(a - b).max():.3g} "
          f"({len(a)} rows); installed: {json.dumps(environments.installed((PACKAGE,)))}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
