"""Published protocols vs glmscore's defaults on the real Nullsette cassettes (a script, not a test).

    .venv/bin/python -m tests.bench.bench_protocols [--pairs 150] [--out bench_out/protocols]

(a) statistics: the k-mer baseline (kmer:3, crossfit) scored on all 7,500 real cassettes and their 71 mutant
    types on local Ray, then success rates under every estimator x correction, and how far the published
    estimator's p-values sit from plus-one's (how many are exactly 0);
(b) scoring: tiny random models with the published scripts' tokenizer shapes (Nucleotide Transformer padded
    to 1,000 tokens, HyenaDNA with [SEP], GENERator with <oov>) on the first --pairs real kosuri and zahm
    cassettes: --protocol paper vs glmscore, positions scored, Spearman between the two protocols' scores,
    the size of the paired differences (paper / glmscore) and success rates.
Reads ../shared/data/nullsette; builds everything else on the spot.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "nullsette"


def markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join((f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}") if isinstance(v, float) else str(v)
                                       for v in row) + " |")
    return "\n".join(lines)


def statistics(data: Path, out: Path, n_perm: int) -> None:
    import ray

    from glmscore.analysis.nullsette import nullsette_tests, success_rates
    from glmscore.pipelines.score import ScoreConfig, run_score
    from glmscore.pipelines.shards import read_scores

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    t = time.perf_counter()
    run_score(ScoreConfig(benchmark="nullsette", data=str(data), model="kmer:3", out=str(out / "kmer3")))
    print(f"kmer:3 on all real cassettes: {time.perf_counter() - t:.0f} s")
    ray.shutdown()
    scores = read_scores(out / "kmer3", columns=["model", "dataset", "group", "pair_index", "score"])
    rates, tests = {}, {}
    for estimator in ("plus_one", "paper"):
        for correction in ("bh", "holm", "bonferroni", "none"):
            t = time.perf_counter()
            table = nullsette_tests(scores, n_perm=n_perm, seed=0, estimator=estimator, correction=correction)
            seconds = time.perf_counter() - t
            tests[estimator] = table
            rates[f"{estimator}/{correction}"] = success_rates(table).set_index("dataset")["success_rate"]
            if correction == "bh":
                print(f"{estimator}: 71 tests in {seconds:.2f} s")
    print("\nSuccess rate of kmer:3 (fraction of mutant types with corrected p < 0.05), 10,000 permutations, seed 0:\n")
    print(markdown(pd.DataFrame(rates).reset_index()))
    a, b = tests["plus_one"]["p_value"].to_numpy(), tests["paper"]["p_value"].to_numpy()
    print(f"\np-values, paper vs plus_one over 71 tests: {int((b == 0).sum())} are exactly 0 under paper "
          f"(plus_one's floor is {1 / (n_perm + 1):.1e}); max |difference| {np.max(np.abs(a - b)):.4f}; "
          f"tests significant at 0.05 uncorrected: paper {int((b < 0.05).sum())}, plus_one {int((a < 0.05).sum())}.")


def tiny_models(data: Path, out: Path, pairs: int) -> None:
    from glmscore.analysis.nullsette import nullsette_tests, success_rates
    from glmscore.models.base import resolve_card
    from glmscore.models.loader import load_backend
    from glmscore.pipelines.fasta import read_all
    from tests.tiny_models import make_generator_like, make_hyena_like, make_nt_like

    models = {
        "NT-like (pads to 1,000)": (make_nt_like(out / "nt"), dict(paper_pad_to_max_length=True, kmer=6)),
        "HyenaDNA-like ([SEP])": (make_hyena_like(out / "hyena"), {}),
        "GENERator-like (<oov>)": (make_generator_like(out / "generator"), dict(kmer=6, add_bos=True)),
    }
    rows = []
    for name, (path, card_changes) in models.items():
        card = resolve_card(str(path)).with_(**card_changes)
        frames, scored = [], {}
        for protocol in ("glmscore", "paper"):
            scorer = load_backend(card, protocol=protocol, threads=2)
            for dataset in ("kosuri", "zahm"):
                for f in sorted((data / dataset).glob("*.txt")):
                    seqs = read_all(f)[1][:pairs]
                    res = scorer.loglik_sequences(seqs)
                    scored.setdefault(protocol, []).append(res.n_scored.mean())
                    frames.append(pd.DataFrame({"model": protocol, "dataset": dataset, "group": f.stem,
                                                "pair_index": np.arange(len(seqs)), "score": res.mean}))
        scores = pd.concat(frames, ignore_index=True)
        wide = scores.pivot_table(index=["dataset", "group", "pair_index"], columns="model", values="score")
        tests = nullsette_tests(scores, n_perm=2000, seed=0)
        diff = tests.pivot_table(index=["dataset", "group"], columns="model", values="mean_diff")
        success = success_rates(tests).pivot_table(index="dataset", columns="model", values="success_rate")
        rows.append({"model": name, "positions scored glmscore": np.mean(scored["glmscore"]),
                     "positions scored paper": np.mean(scored["paper"]),
                     "Spearman(paper, glmscore)": wide["paper"].corr(wide["glmscore"], method="spearman"),
                     "|mean diff| paper / glmscore": float(np.median(np.abs(diff["paper"]) / np.abs(diff["glmscore"]))),
                     "success kosuri glmscore / paper": f"{success.loc['kosuri', 'glmscore']:.2f} / {success.loc['kosuri', 'paper']:.2f}",
                     "success zahm glmscore / paper": f"{success.loc['zahm', 'glmscore']:.2f} / {success.loc['zahm', 'paper']:.2f}"})
    print(f"\nTiny random models, first {pairs} real kosuri and zahm cassettes, --protocol paper vs glmscore "
          "(median over mutant types of the |mean paired difference| ratio; BH, 2,000 permutations):\n")
    print(markdown(pd.DataFrame(rows)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=150)
    parser.add_argument("--n-perm", type=int, default=10_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: this benchmark reads the real Nullsette tables.")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_protocols_"))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    from glmscore.pipelines.benchmarks.nullsette.source import build

    build(SHARED, out / "pd")
    statistics(out / "pd", out, args.n_perm)
    tiny_models(out / "pd", out, args.pairs)


if __name__ == "__main__":
    main()
