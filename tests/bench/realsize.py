"""Seed models at their published configurations with random weights, scored through glmscore: the shared part
of ``bench_realsize.py`` (CPU, a few rows each) and ``gpu_check_cards.py`` (one GPU, every seed card it can build).

Each model is written by its own package's class (in the card's own environment where the card has one,
``pipelines/environments.py``) into a local folder, then scored by ``python -m glmscore score`` in a process of
its own (local Ray, the real score path). While it runs, a thread samples the memory of that process's Ray
actors (each actor with its children, e.g. a vLLM engine) and, on a GPU, the device's used memory.
``size="tiny"`` builds the same classes at a few MB (the scripts' ``--smoke`` mode).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from glmscore.models.cards import shipped_cards
from glmscore.pipelines import environments

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
ENFORMER, BORZOI, ALPHAGENOME = "enformer-pytorch==0.8.12", "borzoi-pytorch==0.5.1", "alphagenome-pt==1.0.0"
PROGRESS = re.compile(r"([\d,]+)/([\d,]+) rows \(\d+%\).*elapsed ([\d,.]+) s")
# dense bf16 peaks (no sparsity), FLOP/s, by a substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 125e12}

# Run by the model's Python (sys.argv: kind, folder, size). Real sizes: the published configurations as the
# packages' defaults or the model pages give them; tiny: the same classes at a few MB.
BUILD = r"""
import itertools, json, sys
import torch
kind, path, size = sys.argv[1], sys.argv[2], sys.argv[3]
real = size == "real"
torch.manual_seed(0)
info = {}
if kind in ("esm_nt_v1", "esm_nt_v2"):
    from transformers import EsmConfig, EsmForMaskedLM
    from tests.tiny_models import _fast
    words = ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"] + ["".join(w) for w in itertools.product("ACGT", repeat=6)] + list("ACGTN")
    vocab = {t: i for i, t in enumerate(words)}
    tok = _fast(vocab, "[ACGT]{6}|.", "<cls> $A", unk="<unk>", pad_token="<pad>", mask_token="<mask>", cls_token="<cls>",
                eos_token="<eos>", model_max_length=1000 if kind == "esm_nt_v1" else 2048)
    if kind == "esm_nt_v1":  # NT v1 500M: ESM, learnt absolute positions
        dims = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=24, num_attention_heads=20) if real else \
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
        extra = dict(max_position_embeddings=1002, position_embedding_type="absolute", layer_norm_eps=1e-12)
    else:  # NT v2 500M's dimensions on transformers' ESM with rotary positions (v2's gated MLP is remote code)
        dims = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=29, num_attention_heads=16) if real else \
            dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
        extra = dict(max_position_embeddings=2050, position_embedding_type="rotary", layer_norm_eps=1e-12)
    config = EsmConfig(vocab_size=len(vocab), pad_token_id=vocab["<pad>"], mask_token_id=vocab["<mask>"],
                       emb_layer_norm_before=False, token_dropout=False, **dims, **extra)
    model = EsmForMaskedLM(config)
    model.save_pretrained(path); tok.save_pretrained(path)
    info = {"params": sum(p.numel() for p in model.parameters()), "flops_params": sum(p.numel() for p in model.parameters()),
            **dims}
elif kind in ("llama_generator_1.2b", "llama_generator_3b", "llama_metagene"):
    from transformers import LlamaConfig, LlamaForCausalLM
    from tests.tiny_models import _fast
    if kind == "llama_metagene":  # Llama-2-7B shape, 1,024-word BPE vocabulary (here: bases and their pairs)
        words = ["<unk>", "<s>", "</s>", "<pad>"] + list("ACGTN") + ["".join(w) for w in itertools.product("ACGT", repeat=2)]
        vocab = {t: i for i, t in enumerate(words)}
        tok = _fast(vocab, "[ACGT]{2}|.", "<s> $A", unk="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")
        dims = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32, vocab_size=1024, max_position_embeddings=512)
    else:  # GENERator: <s>, 6-mers, Llama with grouped-query attention, 16,384 positions
        words = ["<pad>", "<s>", "</s>", "<oov>"] + ["".join(w) for w in itertools.product("ACGT", repeat=6)]
        vocab = {t: i for i, t in enumerate(words)}
        tok = _fast(vocab, ".{1,6}", "<s> $A </s>", unk="<oov>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")
        dims = (dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=26, num_attention_heads=32)
                if kind == "llama_generator_1.2b" else
                dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24))
        dims.update(num_key_value_heads=8, vocab_size=len(vocab), max_position_embeddings=16384)
    if not real:  # head_dim 64: vLLM's CPU attention accepts it
        dims.update(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
    config = LlamaConfig(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         tie_word_embeddings=False, head_dim=dims["hidden_size"] // dims["num_attention_heads"], **dims)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if real else torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)  # random weights predict nearly uniformly; let rows differ
    model.save_pretrained(path); tok.save_pretrained(path)
    n = sum(p.numel() for p in model.parameters())
    info = {"params": n, "flops_params": n - model.model.embed_tokens.weight.numel(), **dims}
elif kind == "enformer":
    import enformer_pytorch
    hp = {} if real else dict(dim=48, depth=1, heads=2, output_heads=dict(human=8, mouse=3), target_length=24, dim_divisible_by=8)
    model = enformer_pytorch.Enformer.from_hparams(**hp)  # the package's defaults: the published Enformer
    model.eval().save_pretrained(path, safe_serialization=False)  # the trunk shares tensors: no safetensors
    info = {"params": sum(p.numel() for p in model.parameters())}
elif kind in ("borzoi", "flashzoi"):
    import borzoi_pytorch
    from borzoi_pytorch.config_borzoi import BorzoiConfig
    hp = {} if real else dict(dim=32, depth=1, heads=2, attn_dim_key=8, attn_dim_value=16, bins_to_return=96)
    config = BorzoiConfig(**hp)  # the package's defaults: the published Borzoi
    if kind == "flashzoi":
        config.flashed = True
    model = borzoi_pytorch.Borzoi(config)
    model.eval().save_pretrained(path)
    info = {"params": sum(p.numel() for p in model.parameters())}
elif kind == "alphagenome":
    import alphagenome_pt as ag
    from alphagenome_pt.checkpoint import deepmind_config
    heads = [h for h in ag.HeadName if h.value != "masked_language_modeling"]
    if real:  # 734 tracks a head (the splice-junction head's real count); the backend enables only the scored head
        metadata = ag.synthetic_metadata(heads=heads, organisms=["human", "mouse"], num_tracks=734)
        model = ag.AlphaGenome(deepmind_config(metadata, dtype_policy="float32"))
    else:
        metadata = ag.synthetic_metadata(heads=[ag.HeadName.RNA_SEQ], organisms=["human"], num_tracks=8)
        model = ag.small_alphagenome(metadata, max_seq_len=4096, num_channels=48, transformer_layers=1, dtype_policy="float32")
    model.eval().save(path)
    info = {"params": sum(p.numel() for p in model.parameters())}
else:
    raise SystemExit(f"unknown kind {kind}")
print(json.dumps(info))
"""


@dataclass
class Spec:
    """One model of the table: how to build it, which card it stands for, how glmscore scores it."""

    name: str
    card: str  # the card whose memory estimate it is compared with
    kind: str  # BUILD's kind
    flags: tuple[str, ...] = ()  # glmscore score flags (real size)
    tiny_flags: tuple[str, ...] = ()  # glmscore score flags (tiny size)
    package: str | None = None  # the card's own environment
    unit: str = "row"  # row | window
    vllm: bool = False  # also score with vllm_causal and compare
    gpu_only: str = ""  # why it cannot run on a CPU (the row then says so)
    note: str = ""


@dataclass
class Run:
    spec: Spec
    backend: str
    loads: bool = False
    rows: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    run_s: float = 0.0
    s_per_unit: float | None = None  # steady: after the first row came back, else the whole run over the rows
    peak_actor_gb: float | None = None
    peak_gpu_gb: float | None = None
    params: int = 0
    flops_params: int = 0
    error: str = ""
    scores: object = None
    extra: dict = field(default_factory=dict)


def build(spec: Spec, folder: Path, size: str) -> dict:
    python = environments.local_python((spec.package,)) if spec.package else Path(sys.executable)
    done = subprocess.run([str(python), "-c", BUILD, spec.kind, str(folder), size], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"build exited {done.returncode}")
    return json.loads(done.stdout.splitlines()[-1])


class Sampler:
    """The most memory one Ray actor under ``pid`` held (with its children), and the GPU's used memory, sampled."""

    def __init__(self, pid: int, gpu: bool, every: float = 0.25):
        self.root, self.gpu, self.every = psutil.Process(pid), gpu, every
        self.actor = 0
        self.gpu_base = self._gpu_used() if gpu else 0
        self.gpu_peak = self.gpu_base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _gpu_used() -> int:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True).stdout.strip()
        return int(float(out.splitlines()[0]) * 2**20) if out else 0

    def _loop(self):
        while not self.stop.wait(self.every):
            try:
                procs = self.root.children(recursive=True)
            except psutil.Error:
                return
            for p in procs:
                try:
                    if not p.name().startswith("ray::") and not " ".join(p.cmdline()[:1]).startswith("ray::"):
                        continue
                    rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                except psutil.Error:
                    continue
                self.actor = max(self.actor, rss)
            if self.gpu:
                self.gpu_peak = max(self.gpu_peak, self._gpu_used())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def score(spec: Spec, model: Path, data: Path, out: Path, benchmark: str, flags: list[str], gpu: bool, run: Run,
          timeout: float) -> Run:
    """``glmscore score`` of ``model`` in its own process, with its memory sampled; fills ``run``."""
    cmd = [sys.executable, "-m", "glmscore", "score", "--benchmark", benchmark, "--data", str(data), "--model", str(model),
           "--out", str(out), "--overwrite", *flags]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with Sampler(proc.pid, gpu) as mem:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            stdout, stderr = proc.communicate()
            stderr += f"\ntimed out after {timeout:.0f} s"
    run.wall_s = time.perf_counter() - started
    run.peak_actor_gb = mem.actor / 2**30 if mem.actor else None
    run.peak_gpu_gb = (mem.gpu_peak - mem.gpu_base) / 2**30 if gpu else None
    if proc.returncode:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        run.error = (lines[-1] if lines else f"exit {proc.returncode}")[-300:]
        return run
    import pandas as pd

    from glmscore.pipelines.shards import read_scores

    manifest = json.loads((out / "_manifest.json").read_text())
    df = read_scores(out)
    keys = [c for c in ("dataset", "group", "pair_index", "seq_id") if c in df.columns]
    df = df.sort_values(keys).reset_index(drop=True)
    run.loads, run.rows = True, len(df)
    run.tokens = int(df["n_scored"].sum()) if "n_scored" in df.columns and run.spec.unit == "row" else 0
    run.run_s = float(manifest["timings_s"]["run"])
    run.scores = pd.Series(df["score"].to_numpy(), index=pd.MultiIndex.from_frame(df[keys].astype(str)))
    seen = [(int(a.replace(",", "")), float(t.replace(",", ""))) for a, _, t in PROGRESS.findall(stderr)]
    first = next(((r, t) for r, t in seen if r > 0), None)
    last = seen[-1] if seen else None
    if first and last and last[0] > first[0] and last[1] > first[1]:
        run.s_per_unit = (last[1] - first[1]) / (last[0] - first[0])
    else:  # every row came back at once: the whole run (actor start and model load included) over the rows
        run.s_per_unit = run.run_s / max(run.rows, 1)
        run.extra["whole_run"] = True
    return run


def estimate(card: str) -> float | None:
    c = shipped_cards().get(card)
    return float(c.gpu_memory_gb) if c is not None and c.gpu_memory_gb else None


COLUMNS = ["model", "card", "backend", "benchmark", "loads", "rows", "s_per_unit", "unit", "units_per_s", "tokens_per_s",
           "peak_actor_rss_gb", "peak_gpu_gb", "card_gpu_memory_gb_estimate", "params_m", "mfu", "vllm_agreement",
           "wall_s", "note"]


def row(run: Run, benchmark: str, peak_flops: float | None = None, agreement: str = "") -> dict:
    rate = 1 / run.s_per_unit if run.s_per_unit else None
    tps = run.tokens / run.rows * rate if (rate and run.tokens and run.rows) else None
    mfu = (2 * run.flops_params * tps / peak_flops) if (peak_flops and tps and run.flops_params) else None
    fmt = (lambda v, f: "" if v is None else format(v, f))
    return {"model": run.spec.name, "card": run.spec.card, "backend": run.backend, "benchmark": benchmark,
            "loads": "yes" if run.loads else "no", "rows": run.rows, "s_per_unit": fmt(run.s_per_unit, ".3g"),
            "unit": run.spec.unit, "units_per_s": fmt(rate, ".3g"), "tokens_per_s": fmt(tps, ",.0f"),
            "peak_actor_rss_gb": fmt(run.peak_actor_gb, ".1f"), "peak_gpu_gb": fmt(run.peak_gpu_gb, ".1f"),
            "card_gpu_memory_gb_estimate": fmt(estimate(run.spec.card), "g"),
            "params_m": fmt(run.params / 1e6 if run.params else None, ",.0f"), "mfu": fmt(mfu, ".1%"),
            "vllm_agreement": agreement, "wall_s": f"{run.wall_s:.0f}",
            "note": "; ".join(x for x in (run.error, "s/unit includes actor start and load" if run.extra.get("whole_run") else "",
                                          run.spec.note) if x)}


def agreement(a: Run, b: Run) -> str:
    """Pearson r and the largest |difference| of the per-row scores of two runs over the rows both scored."""
    if a.scores is None or b.scores is None:
        return ""
    both = a.scores.to_frame("a").join(b.scores.to_frame("b"), how="inner")
    if len(both) < 2:
        return ""
    diff = np.abs(both["a"] - both["b"])
    return f"r={np.corrcoef(both['a'], both['b'])[0, 1]:.5f}, max|d|={diff.max():.2e} ({len(both)} rows)"


def write_tables(rows: list[dict], out: Path, title: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "table.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    md = [f"{title}\n", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in COLUMNS) + " |" for r in rows]
    text = "\n".join(md) + "\n"
    (out / "table.md").write_text(text)
    return text
