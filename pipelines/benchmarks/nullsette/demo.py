"""Nullsette's demo: a seeded grammar of prokaryotic expression cassettes (sigma70-like promoter with -35
TTGACA / -10 TATAAT boxes, Shine-Dalgarno RBS, ATG, a random stop-free CDS, TAA, a rho-independent
terminator hairpin followed by a poly-T tail), written as component tables with the real benchmark's 19
prokaryotic translocation orders, built into the released layout, scored on local Ray by two order-k
Markov baselines (crossfit on the nonmutants) and analysed. The scores test the machinery, not a gLM: the
baselines detect translocations from the unusual junctions they create.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from glmscore.pipelines.benchmarks.nullsette.source import Nullsette, build
from glmscore.pipelines.console import show
from glmscore.pipelines.score import ScoreConfig, run_score

DEMO_MODELS = ("kmer:3", "kmer:6")

COMPONENTS = ["promoter", "rbs", "start_codon", "cds", "stop_codon", "terminator"]
# The Nullsette benchmark's prokaryotic translocation orders (mutant type k = entry k-1).
PROKARYOTIC_MUTANTS = [
    "cds promoter rbs start_codon stop_codon terminator", "promoter cds rbs start_codon stop_codon terminator",
    "promoter rbs cds start_codon stop_codon terminator", "promoter rbs cds stop_codon start_codon terminator",
    "promoter rbs cds stop_codon terminator start_codon", "promoter rbs start_codon stop_codon cds terminator",
    "promoter rbs start_codon stop_codon terminator cds", "promoter rbs start_codon terminator cds stop_codon",
    "promoter rbs terminator start_codon cds stop_codon", "promoter start_codon cds rbs stop_codon terminator",
    "promoter start_codon cds stop_codon rbs terminator", "promoter start_codon cds stop_codon terminator rbs",
    "promoter start_codon rbs cds stop_codon terminator", "promoter terminator rbs start_codon cds stop_codon",
    "rbs promoter start_codon cds stop_codon terminator", "rbs start_codon cds promoter stop_codon terminator",
    "rbs start_codon cds stop_codon promoter terminator", "rbs start_codon promoter cds stop_codon terminator",
    "start_codon promoter rbs cds stop_codon terminator",
]
_STOPS = {"TAA", "TAG", "TGA"}
_COMP = str.maketrans("ACGT", "TGCA")


def _rand(rng, n, gc=0.5):
    p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
    return "".join(rng.choice(list("ACGT"), size=n, p=p))


def synthetic_cassettes(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    codons = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in _STOPS]
    rows = []
    for i in range(n):
        promoter = _rand(rng, 8, 0.35) + "TTGACA" + _rand(rng, 17, 0.4) + "TATAAT" + _rand(rng, 7, 0.4)
        rbs = _rand(rng, 6, 0.3) + "AGGAGG" + _rand(rng, 7, 0.3)
        cds = "".join(rng.choice(codons, size=int(rng.integers(60, 110))))
        stem = _rand(rng, 9, 0.8)
        terminator = _rand(rng, 6, 0.4) + stem + "GAAA" + stem[::-1].translate(_COMP) + "TTTTTTTT" + _rand(rng, 6, 0.4)
        rows.append({"cassette_id": f"syn{i:05d}", "expression": f"{rng.lognormal(6, 1):.2f}", "promoter": promoter,
                     "rbs": rbs, "start_codon": "ATG", "cds": cds, "stop_codon": "TAA", "terminator": terminator})
    return rows


def write_spec(folder: Path, n: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"prokaryotic": {"nonmutant": COMPONENTS, "mutants": [m.split() for m in PROKARYOTIC_MUTANTS]}}
    (folder / "translocations.json").write_text(json.dumps(spec, indent=1))
    header = ["cassette_id", "expression"] + COMPONENTS
    lines = ["\t".join(header)] + ["\t".join(r[h] for h in header) for r in synthetic_cassettes(n, seed)]
    (folder / "synthetic_ecoli.tsv").write_text("\n".join(lines) + "\n")
    return folder



def run_demo(out: Path, cassettes: int) -> None:
    spec = write_spec(out / "spec", cassettes)
    data = out / "processed_data"
    show(f"[1/3] built {build(spec, data)} in {data}")
    score_dirs = []
    for model in DEMO_MODELS:
        target = out / "scores" / model.replace(":", "")
        manifest = run_score(ScoreConfig(benchmark="nullsette", data=str(data), model=model, out=str(target),
                                         overwrite=True))
        show(f"[2/3] {model}: {manifest['rows_total']} rows scored into {target}")
        score_dirs.append(str(target))
    result = Nullsette.analyze(score_dirs, str(out / "report"), Nullsette.AnalyzeOptions())
    show("[3/3] success rates:")
    show(result["table"].to_string(index=False))
    show(f"report: {result['report']}")
