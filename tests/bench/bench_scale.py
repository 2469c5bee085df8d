"""Scale benchmark (a script, not a timed test): rows/s and peak memory at 1x and 10x rows, side by side
in one run, with the ratios. Prints a Markdown table.

    .venv/bin/python -m tests.bench.bench_scale [--out bench_out/scale] [--nabench-rows 100000,1000000]
                                                [--nullsette-cassettes 500,5000] [--variant-sites 10000,100000]
                                                [--probe-rows 100000,500000]

- NABench: two SELEX-like assays (random 40-nt RNA, ``mutant,DMS_score,sequence``, seeded) of N rows each,
  ``glmscore score --model kmer:3`` (crossfit on every sequence of the assay), then
  ``glmscore analyze nabench`` on the scores.
- Probes: two random 64-nt assays of N rows, ``embed --model onehot`` (256 features a row), then
  ``probe --setting supervised --probes ridge`` (Ray Tune, the assay's folds).
- Nullsette: the demo grammar (``pipelines/benchmarks/nullsette/demo.py``) at N cassettes x 20 groups,
  ``score --model kmer:3`` then ``analyze nullsette``.
- Variants: N random SNVs on ``variants synth``'s genome, ``variants build`` (128-bp windows), ``score
  --model kmer:3@genome.fa`` (a chain fitted on the genome), ``analyze variants`` (AUROC, effect table, VCF).

Each command runs as its own process on its own local Ray cluster; memory is sampled every 0.2 s from
the driver (the command's process, or the child it forks to run Ray: whichever is larger) and the
command's process tree (the Ray session it started: GCS, raylet, workers), never from other Ray
processes on the machine. ``pipeline rows/s`` is the progress line's overall rate (from
the first unit's start: Ray start-up and data discovery excluded); ``end to end`` is the command's wall
time. Targets (issue: millions of rows at flat cost): pipeline rows/s at 10x >= 0.9 x the rate at 1x,
driver memory <= 1.1x.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[2]
OVERALL = re.compile(r"rows \(100%\), ([\d,.]+) rows/s overall")


def nabench_folder(folder: Path, rows: int, assays: int = 2, seed: int = 0, length: int = 40) -> Path:
    """``assays`` random ``length``-nt RNA assays of ``rows`` rows (a point mutant name, a normal score)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for a in range(assays):
        path = folder / f"Selex_2024_scale{a}.csv"
        with open(path, "wb") as fh:
            fh.write(b"mutant,DMS_score,sequence\n")
            for start in range(0, rows, 100_000):
                n = min(100_000, rows - start)
                seqs = np.frombuffer(b"ACGU", np.uint8)[rng.integers(0, 4, size=(n, length))].view(f"S{length}").ravel()
                scores = rng.normal(size=n)
                fh.write(b"".join(b"A%dG,%.4f,%s\n" % ((start + i) % 40 + 1, scores[i], seqs[i]) for i in range(n)))
    (folder / "metadata.csv").write_text("DMS_ID,RNA_TYPE\n" + "".join(f"Selex_2024_scale{a},aptamer\n" for a in range(assays)))
    return folder


def nullsette_folder(folder: Path, cassettes: int, seed: int = 0) -> Path:
    from glmscore.pipelines.benchmarks.nullsette.demo import write_spec
    from glmscore.pipelines.benchmarks.nullsette.source import build

    build(write_spec(folder / "spec", cassettes, seed=seed), folder / "processed_data")
    return folder / "processed_data"


def variants_folder(folder: Path, sites: int, seed: int = 0) -> tuple[Path, Path]:
    """A synthetic genome (``glmscore variants synth``: 12 chromosomes x 200 kb) and ``sites`` random SNVs
    on it (chrom,pos,ref,alt,label,tissue; labels random: the benchmark's cost, not its AUROC, is measured)."""
    import pysam

    subprocess.run([sys.executable, "-m", "glmscore", "variants", "synth", "--out", str(folder)], cwd=ROOT,
                   check=True, capture_output=True)
    rng = np.random.default_rng(seed)
    fasta = pysam.FastaFile(str(folder / "genome.fa"))
    rows = ["chrom,pos,ref,alt,label,tissue"]
    for chrom in fasta.references:
        n = sites // len(fasta.references) + (chrom == fasta.references[0]) * (sites % len(fasta.references))
        seq = fasta.fetch(chrom).upper()
        for pos in rng.choice(np.arange(1_000, len(seq) - 1_000), size=n, replace=False) + 1:
            ref = seq[pos - 1]
            alt = "ACGT"[("ACGT".index(ref) + int(rng.integers(1, 4))) % 4]
            rows.append(f"{chrom},{pos},{ref},{alt},{int(rng.integers(0, 2))},Whole_Blood")
    (folder / "scale_variants.csv").write_text("\n".join(rows) + "\n")
    return folder / "genome.fa", folder / "scale_variants.csv"


def run(args: list[str]) -> dict:
    """One glmscore command in its own process; its wall time, overall pipeline rate and memory peaks."""
    proc = subprocess.Popen([sys.executable, "-m", "glmscore", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    top = psutil.Process(proc.pid)
    peaks = {"driver": 0, "session": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                # glmscore forks before Ray starts (the parent only supervises): the driver is whichever of
                # the command's process and its forked child (same command line) holds more memory.
                cmd = top.cmdline()
                forks = [c for c in top.children() if c.cmdline() == cmd]
                driver = max(p.memory_info().rss for p in [top, *forks])
                tree = top.memory_info().rss + sum(c.memory_info().rss for c in top.children(recursive=True)
                                                   if c.is_running())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                tree = driver = 0
            peaks["driver"], peaks["session"] = max(peaks["driver"], driver), max(peaks["session"], tree)
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    t = time.perf_counter()
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"glmscore {' '.join(args)} failed ({proc.returncode}):\n{err[-3000:]}")
    hit = OVERALL.findall(err)
    return {"wall": wall, "rate": float(hit[-1].replace(",", "")) if hit else float("nan"), **peaks}


def startup(scores: Path) -> str:
    """The score job's start-up phases, from its manifest (``startup_s``)."""
    laps = json.loads((scores / "_manifest.json").read_text()).get("startup_s", {})
    return f"{sum(laps.values()):.1f} s: " + ", ".join(f"{k} {v:.1f} s" for k, v in laps.items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out/scale")
    ap.add_argument("--nabench-rows", default="100000,1000000", help="rows per assay at 1x, 10x (...)")
    ap.add_argument("--nullsette-cassettes", default="500,5000", help="cassettes at 1x, 10x (...); 0 to skip")
    ap.add_argument("--probe-rows", default="100000,500000", help="rows per assay of 256-feature embeddings to "
                    "probe at 1x, 5x (...); 0 to skip")
    ap.add_argument("--variant-sites", default="10000,100000", help="variant sites at 1x, 10x (...); 0 to skip")
    ap.add_argument("--chunk-rows", type=int, default=16384)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    table: list[tuple[str, int, dict]] = []
    for n in [int(x) for x in args.nabench_rows.split(",") if int(x)]:
        data = nabench_folder(out / f"nabench_{n}", n)
        scores = out / f"nabench_{n}_k3"
        score = run(["score", "--benchmark", "nabench", "--data", str(data), "--model", "kmer:3", "--out", str(scores),
                     "--chunk-rows", str(args.chunk_rows)])
        score["startup"] = startup(scores)
        table.append((f"NABench 2 x {n:,} rows, score kmer:3", 2 * n, score))
        analyze = run(["analyze", "nabench", "--scores", str(scores), "--out", str(out / f"nabench_{n}_report"),
                       "--n-boot", "100"])
        table.append((f"NABench 2 x {n:,} rows, analyze", 2 * n, analyze))
        shutil.rmtree(data)
        shutil.rmtree(scores)
    for n in [int(x) for x in args.probe_rows.split(",") if int(x)]:
        # 64-nt rows, one-hot: 256 float32 features a row (2 x 500,000 rows: 1M x 256 embeddings)
        data = nabench_folder(out / f"probe_{n}", n, length=64)
        emb = out / f"probe_{n}_onehot"
        embed = run(["embed", "--benchmark", "nabench", "--data", str(data), "--model", "onehot", "--out", str(emb),
                     "--chunk-rows", str(args.chunk_rows)])
        table.append((f"NABench 2 x {n:,} rows x 256 features, embed onehot", 2 * n, embed))
        probe = run(["probe", "--embeddings", str(emb), "--setting", "supervised", "--probes", "ridge",
                     "--out", str(out / f"probe_{n}_ridge")])
        table.append((f"NABench 2 x {n:,} rows x 256 features, probe ridge (supervised)", 2 * n, probe))
        shutil.rmtree(data)
        shutil.rmtree(emb)
    for n in [int(x) for x in args.nullsette_cassettes.split(",") if int(x)]:
        data = nullsette_folder(out / f"nullsette_{n}", n)
        score = run(["score", "--benchmark", "nullsette", "--data", str(data), "--model", "kmer:3", "--out",
                     str(out / f"nullsette_{n}_k3"), "--chunk-rows", str(args.chunk_rows)])
        score["startup"] = startup(out / f"nullsette_{n}_k3")
        table.append((f"Nullsette {n:,} cassettes x 20 groups, score kmer:3", 20 * n, score))
        analyze = run(["analyze", "nullsette", "--scores", str(out / f"nullsette_{n}_k3"), "--out",
                       str(out / f"nullsette_{n}_report"), "--n-perm", "1000"])
        table.append((f"Nullsette {n:,} cassettes x 20 groups, analyze", 20 * n, analyze))
        shutil.rmtree(out / f"nullsette_{n}")
        shutil.rmtree(out / f"nullsette_{n}_k3")
    for n in [int(x) for x in args.variant_sites.split(",") if int(x)]:
        genome, variants = variants_folder(out / f"variants_{n}", n)
        windows, scores = out / f"variants_{n}_windows", out / f"variants_{n}_k3"
        build = run(["variants", "build", "--genome", str(genome), "--variants", str(variants), "--window", "128",
                     "--out", str(windows)])
        table.append((f"Variants {n:,} sites, build (128-bp windows)", n, build))
        # a k-mer chain fitted on the genome itself (the benchmark has no reference sequences of its own)
        score = run(["score", "--benchmark", "variants", "--data", str(windows), "--model", f"kmer:3@{genome}",
                     "--out", str(scores), "--chunk-rows", str(args.chunk_rows)])
        score["startup"] = startup(scores)
        table.append((f"Variants {n:,} sites (ref + alt), score kmer:3", 2 * n, score))
        analyze = run(["analyze", "variants", "--scores", str(scores), "--out", str(out / f"variants_{n}_report"),
                       "--n-boot", "100"])
        table.append((f"Variants {n:,} sites, analyze", n, analyze))
        for folder in (genome.parent, windows, scores):
            shutil.rmtree(folder)
    print("\n| run | rows | pipeline rows/s | end to end | driver peak RSS | Ray session peak RSS | vs the first size |")
    print("|---|---|---|---|---|---|---|")
    first: dict[str, dict] = {}
    for name, rows, r in table:
        r["rows"] = rows
        kind = name.split(" ")[0] + name.rsplit(",", 1)[-1]
        base = first.setdefault(kind, r)
        speed = (lambda x: x["rate"]) if r["rate"] == r["rate"] else (lambda x: x["rows"] / x["wall"])
        r["rows"] = rows
        ratio = ("-" if base is r else
                 f"rows/s {speed(r) / speed(base):.2f}x, driver memory {r['driver'] / base['driver']:.2f}x, "
                 f"session memory {r['session'] / base['session']:.2f}x")
        rate = f"{r['rate']:,.0f}" if r["rate"] == r["rate"] else "-"
        print(f"| {name} | {rows:,} | {rate} | {r['wall']:.1f} s ({rows / r['wall']:,.0f} rows/s) | "
              f"{r['driver'] / 2**20:,.0f} MiB | {r['session'] / 2**20:,.0f} MiB | {ratio} |")
    print("\n| score run | start-up before the first row (manifest `startup_s`) |\n|---|---|")
    for name, _, r in table:
        if "startup" in r:
            print(f"| {name} | {r['startup']} |")


if __name__ == "__main__":
    main()
