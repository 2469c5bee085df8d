"""glmscore's probe protocol vs the published NABench rules on real assays (a script, not a timed test).

    .venv/bin/python -m tests.bench.bench_probe_protocols [--assays A,B,...]

Features: position x base one-hot of each variant's sequence (U read as T, zero-padded to the assay's
longest sequence), a cheap stand-in for a model's embeddings. Wild type kept, rows with a NaN label left
out. For each assay: supervised random 5-fold CV and few-shot k = 20 and 100 (5 repeats), ridge, under

- glmscore: ``analysis.probes.run_supervised`` / ``run_fewshot`` (standardised features, inner 3-fold CV
  over 5 alphas, KFold(seed 0), mean of the folds' Spearman; few-shot Ridge(alpha=1) after scaling,
  default_rng([0, k, r]) draws, nanmean of the repeats);
- paper: ``analysis.published_probes`` (unscaled features, KFold(5, shuffle, 42) + RidgeCV(logspace(-3, 3, 7)),
  one Spearman of the pooled out-of-fold predictions; few-shot np.random.seed(42) draws, Ridge(alpha=1),
  mean ± SD of the repeats).

A third supervised column, "paper, fold mean", is the published estimator scored as glmscore scores it
(mean of the 5 folds' Spearman instead of the pooled one), to split the gap into estimator and pooling.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
ASSAYS = ["Pitt_2010_ribozyme", "Townshend_2015_5nt_aptamer", "Kobori_2015_ribozyme_tw", "Janzen_2022_fam1a1_ribozyme",
          "Tome_2014_NELFE_aptamer", "Domingo_2018_tRNA", "Ke_2017_mRNA"]


def onehot(seqs) -> np.ndarray:
    seqs = [s.upper().replace("U", "T") for s in seqs]
    width = max(map(len, seqs))
    X = np.zeros((len(seqs), width, 4), dtype=np.float32)
    lut = {c: i for i, c in enumerate("ACGT")}
    for r, s in enumerate(seqs):
        for j, c in enumerate(s):
            if c in lut:
                X[r, j, lut[c]] = 1.0
    return X.reshape(len(seqs), -1)


def paper_fold_mean(X, y) -> float:
    from scipy.stats import spearmanr
    from sklearn.linear_model import RidgeCV

    from glmscore.analysis.published_probes import paper_alphas, paper_random_folds

    return float(np.nanmean([spearmanr(RidgeCV(alphas=paper_alphas()).fit(X[tr], y[tr]).predict(X[te]), y[te])[0]
                             for tr, te in paper_random_folds(len(y))]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assays", default=",".join(ASSAYS))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from glmscore.analysis.probes import run_fewshot, run_supervised
    from glmscore.analysis.published_probes import paper_fewshot, paper_random
    from glmscore.pipelines.benchmarks.nabench.source import positions, read_assay

    data = ROOT.parent / "shared" / "data" / "nabench"
    rows, t0 = [], time.perf_counter()
    for assay in args.assays.split(","):
        frame = read_assay(data / f"{assay}.csv")
        frame = frame[frame["DMS_score"].notna()].reset_index(drop=True)
        X, y = onehot(frame["sequence"]), frame["DMS_score"].to_numpy(float)
        pos = [positions(m) for m in frame["mutant"]]
        base = {"assay": assay, "n": len(y), "features": X.shape[1]}
        g = run_supervised("ridge", X, y, pos, "random")["metric"]
        p = paper_random(X, y)["metric"]
        rows.append({**base, "setting": "supervised random", "glmscore": g, "paper": p, "paper_sd": np.nan,
                     "paper_fold_mean": paper_fold_mean(X, y)})
        for k in (20, 100):
            g = run_fewshot("ridge", X, y, k)["metric"]
            res = paper_fewshot(X, y, k)
            rows.append({**base, "setting": f"few-shot k={k}", "glmscore": g, "paper": res["metric"],
                         "paper_sd": res["metric_std"], "paper_fold_mean": np.nan})
        print(f"{assay}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    table = pd.DataFrame(rows)
    table["paper - glmscore"] = table["paper"] - table["glmscore"]
    table["paper / glmscore"] = table["paper"] / table["glmscore"]
    print(f"\nwall {time.perf_counter() - t0:.0f} s\n")
    print("| assay | n | setting | glmscore | paper (± SD over repeats) | paper, fold mean | paper − glmscore | paper / glmscore |")
    print("|---|---|---|---|---|---|---|---|")
    f = lambda v: "" if pd.isna(v) else f"{v:.3f}"  # noqa: E731
    for r in table.itertuples(index=False):
        paper = f(r.paper) + ("" if pd.isna(r.paper_sd) else f" ± {r.paper_sd:.3f}")
        print(f"| {r.assay} | {r.n} | {r.setting} | {f(r.glmscore)} | {paper} | {f(r.paper_fold_mean)} | "
              f"{r[-2]:+.3f} | {f(r[-1])} |")
    for setting, g in table.groupby("setting", sort=False):
        print(f"| mean of {len(g)} assays | | {setting} | {g['glmscore'].mean():.3f} | {g['paper'].mean():.3f} | "
              f"{f(g['paper_fold_mean'].mean())} | {g['paper - glmscore'].mean():+.3f} | |")


if __name__ == "__main__":
    main()
