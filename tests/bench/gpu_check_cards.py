"""The seed cards at their real configurations (random weights) on one GPU, through glmscore (a script, not a
test). NOT YET RUN ON A GPU: written and smoke-tested on CPU only; its GPU numbers are still to be measured.

    cluster/local/install.sh gpu && .venv/bin/python -m tests.bench.gpu_check_cards [--out gpu_cards_out] [--cards ...]
    .venv/bin/python -m tests.bench.gpu_check_cards --smoke    # the same code, tiny configurations, on CPU

For each card: the package's own class at the card's published configuration is written to a local folder
(no hub download; ``tests/bench/realsize.py``), then ``glmscore score`` (local Ray, one GPU actor) scores real
Nullsette cassettes (``../shared/data/nullsette``, every dataset, the first rows of each file) and, for the
language models, a real NABench assay (``Eilon_2012_dna_R1_promoter``). Prints and writes (table.md,
table.csv) per card and benchmark: rows or windows per second, tokens per second, peak GPU memory (nvidia-smi,
above what was in use before) beside the card's estimate, model-FLOP utilisation (2 x non-embedding
parameters x tokens/s over the card's dense bf16 peak) for the transformer language models, and for the
vLLM cards the agreement of vllm_causal with hf_causal (Pearson r, largest |difference| per row).

Row counts (``LIMITS``) are chosen for about 10 minutes on one H100/H200 with every card; that budget is an
estimate until the script has run on one. Cards whose model code cannot be built offline are listed with the
reason instead of a number (HyenaDNA, Caduceus: remote code from the hub; Evo 2: Vortex checkpoints).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from tests.bench.realsize import (
    ALPHAGENOME,
    BORZOI,
    DATA,
    ENFORMER,
    PEAK_BF16,
    Run,
    Spec,
    agreement,
    build,
    row,
    score,
    write_tables,
)

NABENCH_ASSAY = "Eilon_2012_dna_R1_promoter"
VLLM = ("--gpu-memory-utilization", "0.5", "--max-model-len", "4096")
CARDS = {
    "nt-v1-500m": Spec("NT v1 500M", "nt-v1-500m-human-ref", "esm_nt_v1"),
    "nt-v2-500m": Spec("NT v2 500M (stand-in)", "nt-v2-500m-multi-species", "esm_nt_v2",
                       note="transformers ESM with rotary positions at NT v2 500M's dimensions; v2's gated MLP is remote code"),
    "generator-1.2b": Spec("GENERator 1.2B", "generator-eukaryote-1.2b", "llama_generator_1.2b", ("--dtype", "bfloat16"),
                           ("--dtype", "float32"), vllm=True),
    "generator-3b": Spec("GENERator 3B", "generator-eukaryote-3b", "llama_generator_3b", ("--dtype", "bfloat16"),
                         ("--dtype", "float32"), vllm=True,
                         note="shape chosen for ~3B parameters (hidden 3072, 28 layers), not read from the hub's config"),
    "metagene-1": Spec("METAGENE-1 (7B)", "metagene-1", "llama_metagene", ("--dtype", "bfloat16", "--long", "truncate"),
                       ("--dtype", "float32", "--long", "truncate"), vllm=True,
                       note="Llama-2-7B shape; a 2-mer stand-in for its 1,024-word BPE; rows truncated to 512 tokens"),
    "hyenadna-large-1m": Spec("HyenaDNA large 1M", "hyenadna-large-1m", "", gpu_only="not built: its model code is "
                              "remote code in the hub repository, which this offline script cannot fetch"),
    "caduceus": Spec("Caduceus-Ph 131k", "caduceus-ph-131k", "", gpu_only="not built: remote code from the hub and "
                     "mamba-ssm (CUDA build)"),
    "evo2-1b": Spec("Evo 2 1B", "evo2-1b-base", "", gpu_only="not built: Vortex loads its own checkpoint format; a "
                    "random-weight Vortex checkpoint writer is not in this script"),
    "enformer": Spec("Enformer (196,608 bp)", "enformer-pytorch", "enformer", ("--window", "196608"), ("--window", "4096"),
                     package=ENFORMER, unit="window"),
    "borzoi": Spec("Borzoi (524,288 bp)", "borzoi-pytorch", "borzoi", ("--window", "524288"), ("--window", "4096"),
                   package=BORZOI, unit="window"),
    "flashzoi": Spec("Flashzoi (524,288 bp)", "flashzoi", "flashzoi", ("--window", "524288"), package=BORZOI, unit="window",
                     gpu_only="CUDA only (flash-attn)"),
    "alphagenome-131k": Spec("AlphaGenome (131,072 bp)", "alphagenome", "alphagenome", ("--window", "131072"),
                             ("--window", "4096"), package=ALPHAGENOME, unit="window"),
    "alphagenome-1m": Spec("AlphaGenome (1,048,576 bp)", "alphagenome", "alphagenome", ("--window", "1048576"),
                           ("--window", "4096"), package=ALPHAGENOME, unit="window"),
}
# rows of every Nullsette file (76 files over the 5 datasets) and of the NABench assay, on the GPU
LIMITS = {"row": (20, 1000), "window": (1, 0)}
SMOKE_LIMITS = {"row": (1, 4), "window": (1, 0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_cards_out")
    ap.add_argument("--cards", default=",".join(CARDS), help=f"comma-separated, of {', '.join(CARDS)}")
    ap.add_argument("--benchmarks", default="nullsette,nabench")
    ap.add_argument("--smoke", action="store_true", help="tiny configurations on CPU (checks the script, not the cards)")
    ap.add_argument("--no-vllm", action="store_true", help="transformers only")
    args = ap.parse_args()
    smoke = args.smoke
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    from glmscore.pipelines.benchmarks.nullsette.source import build as build_nullsette

    benchmarks = args.benchmarks.split(",")
    nullsette = out / "nullsette"
    # smoke: kosuri only (20 files); the GPU run: every dataset
    build_nullsette(DATA / "nullsette", nullsette, tables=["kosuri"] if smoke else None)
    peak, device = None, "CPU (smoke)"
    if not smoke:
        import torch

        device = torch.cuda.get_device_name(0)
        peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
    limits = SMOKE_LIMITS if smoke else LIMITS
    rows, started = [], time.perf_counter()
    for key in args.cards.split(","):
        spec = CARDS[key]
        if spec.gpu_only and (smoke or not spec.kind):
            rows.append(row(Run(spec, "-", error=spec.gpu_only), "-"))
            continue
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            folder = Path(tmp) / "model"
            try:
                info = build(spec, folder, "tiny" if smoke else "real")
            except RuntimeError as e:
                rows.append(row(Run(spec, "-", error=f"build failed: {e}"), "-"))
                continue
            print(f"{spec.name}: built {info['params'] / 1e6:,.1f}M parameters", flush=True)
            llm = spec.kind.startswith(("esm", "llama"))
            backends = [("hf_causal", ("--backend", "hf_causal"))] if spec.kind.startswith("llama") else [("default", ())]
            if spec.vllm and not args.no_vllm:
                backends.append(("vllm_causal", ("--backend", "vllm_causal", *(VLLM if not smoke else
                                                 ("--gpu-memory-utilization", "0.3", "--max-model-len", "2048")))))
            for bench in benchmarks:
                if bench == "nabench" and not llm:
                    continue  # the sequence-to-function models score Nullsette windows only here
                n_null, n_nab = limits[spec.unit]
                if bench == "nullsette":
                    data, flags = nullsette, ["--limit", str(n_null)]
                else:
                    data, flags = DATA / "nabench", ["--assays", NABENCH_ASSAY, "--limit", str(n_nab)]
                runs = []
                for name, bflags in backends:
                    run = Run(spec, name, params=info["params"], flops_params=info.get("flops_params", 0))
                    where = [*(spec.tiny_flags if smoke else spec.flags), *bflags, *flags,
                             "--device", "cpu" if smoke else "gpu"]
                    score(spec, folder, data, out / "scores" / f"{key}-{name}-{bench}", bench, where, not smoke, run,
                          timeout=600)
                    runs.append(run)
                    print(f"  {bench} {name}: {'ok' if run.loads else run.error} ({run.wall_s:.0f} s)", flush=True)
                agree = agreement(*runs) if len(runs) == 2 else ""
                rows += [row(r, bench, peak, agree if r.backend == "vllm_causal" else "") for r in runs]
        write_tables(rows, out, "GPU check of the cards (partial: the run goes on)")
    text = write_tables(rows, out, f"Cards at real configurations, random weights, on {device}: "
                                   f"{time.perf_counter() - started:.0f} s in all"
                                   + ("; smoke mode (tiny configurations): numbers check the script only" if smoke else ""))
    print("\n" + text)
    print(f"written: {out / 'table.md'}, {out / 'table.csv'}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
