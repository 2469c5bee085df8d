"""Fine-tuning throughput: Ray Train (1 and 2 workers) vs a plain torch loop, same tiny model, same data,
same recipe (AdamW, global batch 16, 3 epochs, mean pooling, linear head), side by side in one run.

    .venv/bin/python -m tests.bench.bench_finetune [--rows 500] [--hidden 128] [--device cpu|cuda]

One fit = ``glmscore finetune --setting fewshot --ks ROWS --repeats 1`` on a real assay (the training part
is ROWS rows, the rest is predicted). Training samples/s counts the epochs only (Ray Train: summed over
the workers, from each fit's own timings); the wall time adds worker start-up, model loading and the
checkpoints after every epoch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.conftest import shared_data

ASSAY = "Kobori_2015_ribozyme_tw"


def plain_loop(model_dir: Path, rows: int, threads: int, device: str, epochs: int = 3, batch: int = 16) -> float:
    """The same recipe without Ray: returns training samples/s."""
    import torch

    from glmscore.models.base import resolve_card
    from glmscore.models.hf_common import config_context
    from glmscore.models.regression import load_base, make_regressor, pad_batch
    from glmscore.models.tokenization import TokenPolicy, load_tokenizer
    from glmscore.pipelines.benchmarks.nabench.source import read_assay

    torch.set_num_threads(threads)
    card = resolve_card(str(model_dir))
    frame = read_assay(shared_data("nabench") / f"{ASSAY}.csv").dropna(subset=["DMS_score"]).iloc[:rows]
    enc = TokenPolicy(card, load_tokenizer(card.hf_id, None, False), config_context(card)).encode(frame["sequence"].tolist())
    y = torch.tensor(((frame["DMS_score"] - frame["DMS_score"].mean()) / frame["DMS_score"].std()).to_numpy(np.float32))
    model = make_regressor(load_base(card), "mean", "linear", 0).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0)
    total = epochs * -(-len(enc) // batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total))
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(enc), generator=g).tolist()
        for b in range(0, len(order), batch):
            idx = order[b : b + batch]
            t = [x.to(device) for x in pad_batch([enc[i].ids for i in idx], [enc[i].real for i in idx], 0)]
            loss = torch.nn.functional.mse_loss(model(*t), y[idx].to(device))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return epochs * len(enc) / (time.perf_counter() - start)


def ray_train(model_dir: Path, rows: int, workers: int, out: Path, use_gpu: bool) -> tuple[float, float]:
    """(training samples/s over all workers, wall seconds of the whole command)."""
    from glmscore.pipelines.benchmarks.nabench.finetune import FinetuneConfig, read_fit, run_finetune

    cfg = FinetuneConfig(data=str(shared_data("nabench")), model=str(model_dir), setting="fewshot", out=str(out),
                         assays=[ASSAY], ks=[rows], repeats=1, workers=workers, use_gpu=use_gpu)
    start = time.perf_counter()
    run_finetune(cfg)
    wall = time.perf_counter() - start
    (path,) = (out / "fits").glob("*.parquet")
    _, info = read_fit(path)
    samples = sum(h["samples"] for h in info["history"]) * info["workers"]
    return samples / sum(h["seconds"] for h in info["history"]), wall


def main() -> None:
    from tests.tiny_models import make_tiny_bert

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_bert(Path(tmp) / "bert", hidden=args.hidden, layers=args.layers)
        gpu = args.device == "cuda"
        results = {"plain torch loop, 1 thread": (plain_loop(model, args.rows, 1, args.device), None)}
        if not gpu:
            results["plain torch loop, 2 threads"] = (plain_loop(model, args.rows, 2, args.device), None)
        for workers in (1, 2) if not gpu else (1,):
            results[f"Ray Train, {workers} worker(s)"] = ray_train(model, args.rows, workers, Path(tmp) / f"w{workers}", gpu)
    base = results["plain torch loop, 1 thread"][0]
    print(f"\nBERT hidden {args.hidden} x {args.layers} layers, {args.rows} rows of {ASSAY}, 3 epochs, batch 16, {args.device}")
    print(f"{'run':32s} {'train samples/s':>16s} {'ratio':>6s} {'wall s':>7s}")
    for name, (rate, wall) in results.items():
        print(f"{name:32s} {rate:16.1f} {rate / base:6.2f} {'' if wall is None else f'{wall:7.1f}'}")
    print(json.dumps({k: v[0] for k, v in results.items()}))


if __name__ == "__main__":
    main()
