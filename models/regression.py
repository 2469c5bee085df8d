"""A transformers gLM with a regression head on its pooled last hidden state, for fine-tuning.

The base model is the card's ``AutoModel`` (the backbone without its LM head); the head reads the
pooled last hidden state with the poolings of ``models.pooling`` (``mean``, ``cls``, ``last``,
``cls+mean``), here in torch so gradients reach every layer. Sequences are encoded by the card's
``TokenPolicy``, exactly as ``glmscore embed`` encodes them, so a fine-tuned model sees the tokens the
zero-shot and embedding runs saw.

torch is imported inside functions, as in ``models/hf_common.py``.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Sequence

import numpy as np

from glmscore.models.cards import ModelCard, import_package
from glmscore.models.errors import GlmscoreError

HEADS = ("linear", "mlp")
FINETUNE_POOLINGS = ("mean", "cls", "last", "cls+mean")
FINETUNE_BACKENDS = ("hf_masked", "hf_causal")


def check_finetunable(card: ModelCard, pooling: str) -> None:
    if card.backend not in FINETUNE_BACKENDS and card.fallback_backend not in FINETUNE_BACKENDS:
        raise GlmscoreError(f"model {card.id} (backend {card.backend}) has no weights to fine-tune; fine-tuning needs a "
                            "transformers model (for the one-hot or k-mer baselines use `glmscore embed` + `glmscore probe`).")
    if pooling not in FINETUNE_POOLINGS:
        raise GlmscoreError(f"--pooling {pooling} cannot be fine-tuned: choose {', '.join(FINETUNE_POOLINGS)}.")


def load_base(card: ModelCard):
    """The card's backbone in fp32 (``AutoModel``: a ``*ForMaskedLM``/``*ForCausalLM`` checkpoint loads
    without its LM head). A pooler the head never reads is removed, so data-parallel training finds no
    parameter without a gradient."""
    import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it
    import transformers

    transformers.logging.set_verbosity_error()  # "weights not used: lm_head..." is expected here
    import_package(card)
    try:
        model = transformers.AutoModel.from_pretrained(card.hf_id, revision=card.revision, dtype=torch.float32,
                                                       trust_remote_code=card.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise GlmscoreError(f"could not load model {card.hf_id}: {str(exc).splitlines()[0]}") from None
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def weights_sha256(module) -> str:
    """A checksum of a module's parameters and buffers (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def pool_torch(hidden, real, pooling: str):
    """``models.pooling.pool`` for a padded batch: ``hidden`` (B, T, D), ``real`` (B, T) bool marks real
    nucleotide tokens (not BOS/CLS/SEP/pad)."""
    import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it

    realf = real.to(hidden.dtype).unsqueeze(-1)
    mean = (hidden * realf).sum(1) / realf.sum(1).clamp(min=1.0)
    if pooling == "mean":
        return mean
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        positions = torch.arange(real.shape[1], device=real.device).expand_as(real)
        last = torch.where(real, positions, torch.zeros_like(positions)).amax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "cls+mean":
        return torch.cat([hidden[:, 0], mean], dim=-1)
    raise GlmscoreError(f"pooling {pooling} cannot be fine-tuned: choose {', '.join(FINETUNE_POOLINGS)}.")


def takes_mask(base, masks_padding: bool = True) -> bool:
    """Whether ``base.forward`` is told which positions are padding: it takes an ``attention_mask`` (or
    ``**kwargs``) and the card does not say it ignores one (GPN's convolutions read every position)."""
    params = inspect.signature(base.forward).parameters.values()
    return masks_padding and any(p.name == "attention_mask" or p.kind is p.VAR_KEYWORD for p in params)


def make_regressor(base, pooling: str, head: str, seed: int, masks_padding: bool = True):
    """``base`` + pooling + a regression head (``linear``: one layer; ``mlp``: 256 GELU units). A base that
    takes no attention mask (HyenaDNA's port) runs each padded batch as runs of rows of one length, cut
    to that length, so it never reads a pad; the outputs keep the batch's row order."""
    import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it
    from torch import nn

    masked = takes_mask(base, masks_padding)

    # the width's name varies with the port (HyenaDNA's config says d_model, GPT-2's n_embd)
    width = next((getattr(base.config, k) for k in ("hidden_size", "d_model", "n_embd", "dim") if hasattr(base.config, k)), None)
    if width is None:
        raise GlmscoreError(f"cannot tell the hidden size of {type(base).__name__} from its config (no hidden_size or d_model).")
    dim = int(width) * (2 if pooling == "cls+mean" else 1)
    torch.manual_seed(seed)  # the head starts the same on every worker and every rerun
    if head == "linear":
        top = nn.Linear(dim, 1)
    elif head == "mlp":
        top = nn.Sequential(nn.Linear(dim, 256), nn.GELU(), nn.Linear(256, 1))
    else:
        raise GlmscoreError(f"unknown head {head!r}: choose {', '.join(HEADS)}.")

    class Regressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.base, self.head = base, top

        def forward(self, input_ids, attention_mask, real):
            if masked:
                hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                return self.head(pool_torch(hidden, real, pooling)).squeeze(-1)
            lengths = attention_mask.sum(1)
            rows, pooled = [], []
            for length in lengths.unique().tolist():
                idx = (lengths == length).nonzero().squeeze(1)
                hidden = self.base(input_ids=input_ids[idx, :length]).last_hidden_state
                rows.append(idx)
                pooled.append(pool_torch(hidden, real[idx, :length], pooling))
            order = torch.argsort(torch.cat(rows))
            return self.head(torch.cat(pooled)[order]).squeeze(-1)

    return Regressor()


def pad_batch(ids: Sequence[np.ndarray], real: Sequence[np.ndarray], pad_id: int):
    """Right-padded (input_ids, attention_mask, real) tensors."""
    import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it

    width = max(len(r) for r in ids)
    out = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    keep = np.zeros((len(ids), width), dtype=bool)
    for i, (r, m) in enumerate(zip(ids, real)):
        out[i, : len(r)], mask[i, : len(r)], keep[i, : len(r)] = r, 1, m
    return torch.from_numpy(out), torch.from_numpy(mask), torch.from_numpy(keep)


def predict(model, ids: Sequence[np.ndarray], real: Sequence[np.ndarray], pad_id: int, device, batch: int = 64) -> np.ndarray:
    """The model's outputs for every row, in eval mode, in row order."""
    import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it

    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(ids), batch):
            t = [x.to(device) for x in pad_batch(ids[start : start + batch], real[start : start + batch], pad_id)]
            out.append(model(*t).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
