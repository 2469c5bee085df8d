"""The ``glmscore`` command line (also the entrypoint of ``ray job submit --working-dir .``).

User mistakes raise ``GlmscoreError``: printed as one sentence, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.errors import GlmscoreError


def _add_score_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", required=True, choices=["nullsette", "nabench"], help="benchmark family")
    p.add_argument("--data", required=True, help="benchmark data folder (Nullsette: the released layout; NABench: metadata.csv + <DMS_ID>.csv)")
    p.add_argument("--assays", help="NABench: comma-separated DMS_IDs (default: all)")
    p.add_argument("--families", help="NABench: comma-separated families (case-insensitive RNA_TYPE)")
    p.add_argument("--model", required=True, help="card id (glmscore models), local save_pretrained dir, hub id, or kmer:K")
    p.add_argument("--out", required=True, help="output folder for Parquet shards and _manifest.json")
    p.add_argument("--backend", choices=["hf_causal", "hf_masked", "vllm_causal", "vllm", "kmer"], help="override the card's backend (vllm = vllm_causal)")
    p.add_argument("--reduction", default="mean", choices=["mean", "sum"], help="score = mean (default) or sum of token log-likelihoods")
    p.add_argument("--long", default="error", choices=["error", "truncate", "window"], help="sequences longer than the context")
    p.add_argument("--mlm-scoring", dest="mlm_mode", default="unmasked", choices=["unmasked", "pll"], help="masked LMs: one unmasked pass (default) or pseudo-log-likelihood")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="model dtype (default: the card's; auto = bf16 on GPU, fp32 on CPU)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per forward pass (default 4,096 on CPU, 32,768 on GPU)")
    p.add_argument("--min-actors", type=int, default=1)
    p.add_argument("--max-actors", type=int, help="default: one per GPU (1 on CPU)")
    p.add_argument("--gpus-per-actor", type=float, help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--threads-per-actor", type=int, help="torch CPU threads per actor (default: CPUs / actors)")
    p.add_argument("--limit", type=int, help="only the first N pairs (records) of every file, for quick runs")
    p.add_argument("--datasets", help="comma-separated dataset names (default: all)")
    p.add_argument("--chunk-rows", type=int, default=1024, help="records per shard")
    p.add_argument("--trust-remote-code", action="store_true", default=None, help="allow code from the model repository (off unless the card says so)")
    p.add_argument("--overwrite", action="store_true", help="discard shards of a different earlier run in --out")
    p.add_argument("--address", help="Ray address (default: the job's cluster, else a local one)")
    v = p.add_argument_group("vLLM engine (backend vllm_causal; defaults from the model card)")
    v.add_argument("--max-model-len", type=int)
    v.add_argument("--max-num-batched-tokens", type=int)
    v.add_argument("--max-num-seqs", type=int)
    v.add_argument("--gpu-memory-utilization", type=float, help="fraction of GPU memory (on CPU: of NUMA node 0's memory; default 0.3 there)")
    v.add_argument("--tensor-parallel-size", type=int, help="GPUs per engine; each actor gets a placement group of that many GPUs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glmscore", description="Batch scoring of genomic language models on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    ns = sub.add_parser("nullsette", help="Nullsette data tools")
    ns_sub = ns.add_subparsers(dest="action", required=True)
    b = ns_sub.add_parser("build", help="write the released layout from component tables")
    b.add_argument("--spec", required=True, help="folder with translocations.json and <dataset>.tsv tables")
    b.add_argument("--out", required=True)
    b.add_argument("--tables", help="comma-separated table names (default: all)")

    _add_score_flags(sub.add_parser("score", help="score a benchmark with a model on Ray"))
    e = sub.add_parser("embed", help="embed a benchmark's sequences on Ray (Parquet shards with an embedding column)")
    _add_score_flags(e)
    e.add_argument("--pooling", default="mean", help="mean | cls | last | cls+mean | window:START-END")
    e.add_argument("--layer", type=int, default=-1, help="hidden-state layer (-1 = last, 0 = embeddings)")

    pr = sub.add_parser("probe", help="few-shot or supervised probe sweep on embeddings (Ray Tune)")
    pr.add_argument("--embeddings", required=True)
    pr.add_argument("--setting", required=True, choices=["fewshot", "supervised"])
    pr.add_argument("--out", required=True)
    pr.add_argument("--probes", default="ridge,mlp", help="comma-separated: ridge, mlp, logistic")
    pr.add_argument("--repeats", type=int, default=5, help="few-shot repeats per k")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--address", help="Ray address")

    an = sub.add_parser("analyze", help="statistics, tables, plots and report from score folders")
    an_sub = an.add_subparsers(dest="benchmark", required=True)
    a = an_sub.add_parser("nullsette")
    a.add_argument("--scores", required=True, nargs="+", help="one or more score folders (one per model)")
    a.add_argument("--out", required=True)
    a.add_argument("--n-perm", type=int, default=10_000)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--correction", default="bh", choices=["bh", "bonferroni", "holm", "none"])
    a.add_argument("--estimator", default="plus_one", choices=["plus_one", "seed"], help="plus_one: (1+b)/(1+n); seed: b/n as the seed scripts")
    a.add_argument("--alpha", type=float, default=0.05)

    nb = an_sub.add_parser("nabench")
    nb.add_argument("--scores", required=True, nargs="+", help="one or more NABench score folders")
    nb.add_argument("--data", help="the NABench data folder (labels are read from the shards; kept for provenance)")
    nb.add_argument("--out", required=True)
    nb.add_argument("--cutoff", type=float, help="binarise fitness at this value instead of each assay's median")
    nb.add_argument("--n-boot", type=int, default=1000)
    nb.add_argument("--seed", type=int, default=0)

    d = sub.add_parser("demo", help="the whole chain on an embedded synthetic benchmark (no download, no GPU)")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--cassettes", type=int, default=300)

    sub.add_parser("models", help="list the model cards")
    return parser


def score_config_from_args(args) -> "ScoreConfig":
    from pipelines.score import ScoreConfig

    return ScoreConfig(
        benchmark=args.benchmark, data=args.data, model=args.model, out=args.out, backend=args.backend,
        reduction=args.reduction, long=args.long, mlm_mode=args.mlm_mode, dtype=args.dtype,
        batch_tokens=args.batch_tokens, min_actors=args.min_actors, max_actors=args.max_actors,
        gpus_per_actor=args.gpus_per_actor, threads_per_actor=args.threads_per_actor, limit=args.limit,
        datasets=args.datasets.split(",") if args.datasets else None, chunk_rows=args.chunk_rows,
        trust_remote_code=args.trust_remote_code, overwrite=args.overwrite, address=args.address,
        assays=args.assays.split(",") if args.assays else None,
        families=[f.strip().lower().replace(" ", "_") for f in args.families.split(",")] if args.families else None,
        task="embed" if args.command == "embed" else "score",
        pooling=getattr(args, "pooling", "mean"), layer=getattr(args, "layer", -1),
        vllm={k: getattr(args, k) for k in ("max_model_len", "max_num_batched_tokens", "max_num_seqs",
                                             "gpu_memory_utilization", "tensor_parallel_size")
              if getattr(args, k) is not None},
    )


def analyze_nullsette(score_dirs: list[str], out: str, *, n_perm=10_000, seed=0, correction="bh",
                      estimator="plus_one", alpha=0.05) -> dict:
    import pandas as pd

    from analysis.nullsette import nullsette_tests, success_rates
    from analysis.report import write_nullsette_report
    from pipelines.shards import MANIFEST, read_scores

    frames, provenance = [], {}
    for d in score_dirs:
        frame = read_scores(Path(d), columns=["model", "dataset", "group", "pair_index", "score"])
        frames.append(frame)
        manifest = json.loads((Path(d) / MANIFEST).read_text())
        for model in frame["model"].unique():
            provenance[model] = (f"{d}, card {manifest['model_card'].get('hf_id') or manifest['model_card']['id']}, "
                                 f"revision {manifest.get('resolved_revision')}, finished {manifest['finished']}")
    scores = pd.concat(frames, ignore_index=True)
    if scores.duplicated(["model", "dataset", "group", "pair_index"]).any():
        raise GlmscoreError("the score folders overlap: the same model scored the same rows twice; pass each model once.")
    tests = nullsette_tests(scores, n_perm=n_perm, seed=seed, correction=correction, estimator=estimator, alpha=alpha)
    success = success_rates(tests)
    settings = {"n_perm": n_perm, "seed": seed, "correction": correction, "estimator": estimator, "alpha": alpha,
                "alternative": "less (mutant < nonmutant)"}
    report = write_nullsette_report(scores, tests, success, Path(out), settings, provenance)
    return {"report": str(report), "success": success}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted; completed shards are kept and a rerun resumes from them.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - only user errors are turned into one line
        err = user_error(exc)
        if err is None:
            raise
        print(f"glmscore: error: {err}", file=sys.stderr)
        return 2


def user_error(exc: BaseException) -> str | None:
    """The one-sentence message of a GlmscoreError, also when Ray wrapped it in a task error.

    Ray Data re-raises a worker's exception as ``UserCodeException`` whose cause does not survive
    serialization; the worker's traceback text (kept in the message) still names the error, so it is
    read from there as a last resort.
    """
    import re

    text = str(exc)
    found = re.findall(r"GlmscoreError: (.+)", text)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if isinstance(exc, GlmscoreError) and not isinstance(cause, BaseException):
            return str(exc.args[0]) if exc.args else str(exc)
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
    return found[-1].strip() if found else None


def _dispatch(args) -> int:
    if args.command == "models":
        from models.cards import registry

        for card in registry().values():
            remote = "remote code" if card.trust_remote_code else "no remote code"
            print(f"{card.id:28s} {card.backend:12s} {card.objective}  {card.hf_id}  ({remote}; vLLM: {'yes' if card.vllm else 'no'})")
        return 0
    if args.command == "nullsette":
        from pipelines.nullsette import build

        built = build(Path(args.spec), Path(args.out), tables=args.tables.split(",") if args.tables else None)
        for name, n in built.items():
            print(f"{name}: {n} cassettes")
        return 0
    if args.command in ("score", "embed"):
        from pipelines.score import run_score

        manifest = run_score(score_config_from_args(args))
        print(f"{'scored' if args.command == 'score' else 'embedded'} {manifest['rows_total']} rows into {args.out} "
              f"({manifest['shards_computed']} shards computed, {manifest['shards_reused']} reused)")
        return 0
    if args.command == "probe":
        from pipelines.nabench_jobs import run_probes

        result = run_probes(args.embeddings, args.setting, args.out, probes=args.probes.split(","), seed=args.seed,
                            repeats=args.repeats, address=args.address)
        print(result["summary"].to_string(index=False))
        print(f"report: {result['report']}")
        return 0
    if args.command == "analyze" and args.benchmark == "nabench":
        from pipelines.nabench_jobs import analyze_nabench

        result = analyze_nabench(args.scores, args.out, cutoff=args.cutoff, n_boot=args.n_boot, seed=args.seed)
        print(result["summary"].to_string(index=False))
        print(f"report: {result['report']}")
        return 0
    if args.command == "analyze":
        result = analyze_nullsette(args.scores, args.out, n_perm=args.n_perm, seed=args.seed,
                                   correction=args.correction, estimator=args.estimator, alpha=args.alpha)
        print(result["success"].to_string(index=False))
        print(f"report: {result['report']}")
        return 0
    if args.command == "demo":
        from pipelines.demo import run_demo

        run_demo(Path(args.out), n_cassettes=args.cassettes)
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
