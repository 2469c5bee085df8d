"""The score job's per-unit cost, this checkout beside another commit (a script, not a timed test).

    .venv/bin/python -m tests.bench.bench_stages [--against af4e58a] [--limit 3] [--repeat 1]

Scores the real Nullsette slice (``--limit`` pairs per file of ``../shared/data/nullsette``: 76 units) with a
random tiny Llama (hidden 128 x 2 layers) and with ``kmer:5``, one score job per (checkout, model) on a new
local Ray cluster of 2 CPUs, the two checkouts one after the other, and prints a Markdown table of seconds
(``run_score`` only; ``ray.init`` apart) and ratios. The other commit is checked out into a temporary git
worktree and imported through PYTHONPATH (Ray's workers inherit it); the default is the commit before the
prepare and write stages became actor pools.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

ONE_JOB = """
import json, sys, time
import ray
from glmscore.pipelines.score import ScoreConfig, run_score
data, model, out, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import glmscore.pipelines as pipelines
assert pipelines.__file__.startswith(sys.argv[5]), pipelines.__file__
t = time.perf_counter()
ray.init(address="local", num_cpus=2, include_dashboard=False)
init = time.perf_counter() - t
t = time.perf_counter()
manifest = run_score(ScoreConfig(benchmark="nullsette", data=data, model=model, out=out, limit=limit))
print(json.dumps({"init_s": init, "score_s": time.perf_counter() - t, "rows": manifest["rows_total"]}))
"""


def one_job(checkout: Path, data: Path, model: str, out: Path, limit: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", ONE_JOB, str(data), model, str(out), str(limit), str(checkout)],
                          cwd=checkout, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"bench_stages: the job at {checkout} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", default="af4e58a", help="the commit to compare with (default: prepare/write as tasks)")
    ap.add_argument("--limit", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    from glmscore.pipelines.benchmarks.nullsette.source import build
    from tests.tiny_models import make_tiny_llama

    raw = ROOT.parent / "shared" / "data" / "nullsette"
    if not raw.is_dir():
        sys.exit(f"bench_stages: {raw} is absent")
    work = Path(tempfile.mkdtemp(prefix="bench_stages_"))
    other = work / "other"
    try:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(other), args.against],
                       check=True, capture_output=True)
        build(raw, work / "data")
        llama = make_tiny_llama(work / "tiny-llama")
        rows = []
        for model, name in ((str(llama), "tiny Llama (128 x 2)"), ("kmer:5", "kmer:5")):
            for rep in range(args.repeat):
                times = {}
                for label, checkout in (("here", ROOT), (args.against, other)):
                    out = work / f"out-{label}-{rep}-{Path(model).name}"
                    times[label] = one_job(checkout, work / "data", model, out, args.limit)
                rows.append((name, times["here"], times[args.against]))
        print(f"| model | rows | score s, this checkout | score s, {args.against} | ratio (speed-up) |")
        print("|---|---|---|---|---|")
        for name, here, there in rows:
            print(f"| {name} | {here['rows']} | {here['score_s']:.1f} | {there['score_s']:.1f} | "
                  f"{there['score_s'] / here['score_s']:.2f} x |")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
