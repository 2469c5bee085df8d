"""One-hot CNN baseline of the causal-variant benchmark (variant-centred view).

Follows the baseline specified in the gene-centric causal-variant paper: a siamese convolutional
encoder reads the reference and the alternative window (default 1500 bp, one-hot, N = all-zero
column); each of its 4 blocks is a spatial convolution followed by a pointwise (kernel 1)
convolution, Enformer-style, with kernels (7, 3, 3, 5) and filters (192, 384, 576, 768). The two
window representations and a one-hot tissue vector are concatenated and fed to an MLP head
(256 -> 64 -> 1 logit) trained with binary cross-entropy on the logit.

Choices the paper leaves open, made here:

* activation: GELU after every convolution and every hidden linear layer;
* down-sampling: ``MaxPool1d(2)`` at the end of every block (1500 -> 750 -> 375 -> 187 -> 93);
* convolutions use ``padding="same"`` and have biases; no normalisation layers;
* window representation: global average pooling over positions after the last block;
* one encoder pass on ``cat([ref, alt])`` (same weights, so the same result as two passes);
* dropout (default 0.1) only in the head, after each hidden activation;
* optimiser: AdamW (lr 1e-3, weight decay 0 by default), mini-batches of 64, up to 30 epochs;
* early stopping on validation AUROC with patience 4, restoring the best epoch's weights; when the
  validation split holds a single class, validation BCE is the stopping metric instead.

Pure torch + numpy: no Ray, no files. Integer codes are turned into one-hot per mini-batch so a
large data set is never expanded 4x (x4 bytes) in memory at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

# Row k is the one-hot column of base code k (0=A, 1=C, 2=G, 3=T); row 4 (N) is all zero.
_ONE_HOT_TABLE = np.concatenate([np.eye(4, dtype=np.float32), np.zeros((1, 4), dtype=np.float32)])


def one_hot(codes: np.ndarray) -> torch.Tensor:
    """Integer base codes [B, L] (0=A, 1=C, 2=G, 3=T, 4=N) -> float32 one-hot [B, 4, L]; N is a zero column."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"one_hot expects base codes of shape [B, L], got shape {codes.shape}.")
    if codes.size and (codes.min() < 0 or codes.max() > 4):
        raise ValueError(f"base codes must lie in 0..4 (A, C, G, T, N), got values {codes.min()}..{codes.max()}.")
    # Table lookup gives [B, L, 4]; the conv layers want channels first.
    return torch.from_numpy(np.ascontiguousarray(_ONE_HOT_TABLE[codes.astype(np.intp)].transpose(0, 2, 1)))


class ConvBlock(nn.Module):
    """Spatial conv -> GELU -> pointwise conv -> GELU -> max-pool 2."""
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.spatial = nn.Conv1d(in_channels, out_channels, kernel_size=kernel_size, padding="same")
        self.pointwise = nn.Conv1d(out_channels, out_channels, kernel_size=1)
        self.act = nn.GELU()
        self.pool = nn.MaxPool1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.pointwise(self.act(self.spatial(x)))))


class VariantCNN(nn.Module):
    """Siamese one-hot CNN over (ref, alt) windows plus a tissue one-hot -> one logit per example."""
    def __init__(
        self,
        n_tissues: int,
        filters: tuple[int, ...] = (192, 384, 576, 768),
        kernels: tuple[int, ...] = (7, 3, 3, 5),
        hidden: tuple[int, ...] = (256, 64),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(filters) != len(kernels):
            raise ValueError(f"filters and kernels need one entry per block, got {len(filters)} and {len(kernels)}.")
        if n_tissues < 1:
            raise ValueError(f"n_tissues must be at least 1, got {n_tissues}.")
        self.n_tissues = n_tissues
        in_channels = [4, *filters[:-1]]
        # One encoder for both windows: ref and alt share every weight.
        blocks = [ConvBlock(c_in, c_out, k) for c_in, c_out, k in zip(in_channels, filters, kernels, strict=True)]
        self.encoder = nn.Sequential(*blocks)
        layers: list[nn.Module] = []
        width = 2 * filters[-1] + n_tissues
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """One-hot windows [B, 4, L] -> representations [B, filters[-1]] (global average over positions)."""
        return self.encoder(x).mean(dim=-1)

    def forward(self, ref: torch.Tensor, alt: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
        """ref, alt: float one-hot [B, 4, L]; tissue: long [B] -> logits [B]."""
        if ref.shape != alt.shape:
            raise ValueError(f"ref and alt windows must have the same shape, got {tuple(ref.shape)} and {tuple(alt.shape)}.")
        # A single pass over both windows: same weights, half the kernel launches.
        reps = self.encode(torch.cat([ref, alt], dim=0))
        ref_repr, alt_repr = reps.split(ref.shape[0], dim=0)
        tissue_vec = F.one_hot(tissue.long(), self.n_tissues).to(reps.dtype)
        return self.head(torch.cat([ref_repr, alt_repr, tissue_vec], dim=1)).squeeze(-1)

    @torch.no_grad()
    def encoder_shapes(self, length: int) -> list[tuple[int, int]]:
        """(channels, positions) after each encoder block for a window of ``length`` bp (measured, not derived)."""
        param = next(self.parameters())
        x = torch.zeros(1, 4, length, dtype=param.dtype, device=param.device)
        shapes = []
        for block in self.encoder:
            x = block(x)
            shapes.append((int(x.shape[1]), int(x.shape[2])))
        return shapes


@dataclass(frozen=True)
class CNNTrainConfig:
    """Architecture and training settings of :func:`train_cnn` (defaults: the paper's architecture)."""
    filters: tuple[int, ...] = (192, 384, 576, 768)
    kernels: tuple[int, ...] = (7, 3, 3, 5)
    hidden: tuple[int, ...] = (256, 64)
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 30
    patience: int = 4
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"  # "cuda" in a trial that holds a GPU


def _batch(
    ref_codes: np.ndarray, alt_codes: np.ndarray, tissue: np.ndarray, idx: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-hot ref/alt and tissue tensors for the examples ``idx`` (one-hot per batch keeps memory flat)."""
    ref = one_hot(ref_codes[idx]).to(device)
    alt = one_hot(alt_codes[idx]).to(device)
    t = torch.as_tensor(np.asarray(tissue)[idx], dtype=torch.long, device=device)
    return ref, alt, t


def _predict_logits(
    model: VariantCNN, ref_codes: np.ndarray, alt_codes: np.ndarray, tissue: np.ndarray, idx: np.ndarray, batch_size: int
) -> np.ndarray:
    device = next(model.parameters()).device
    model.eval()
    out = np.empty(len(idx), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(idx), batch_size):
            b = idx[start:start + batch_size]
            out[start:start + len(b)] = model(*_batch(ref_codes, alt_codes, tissue, b, device)).float().cpu().numpy()
    return out


def predict_cnn(
    model: VariantCNN,
    ref_codes: np.ndarray,
    alt_codes: np.ndarray,
    tissue: np.ndarray,
    idx: np.ndarray | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Probabilities (sigmoid of the logit) for the examples ``idx`` (default: all), in batches; leaves the model in eval mode."""
    idx = np.arange(len(ref_codes)) if idx is None else np.asarray(idx, dtype=np.int64)
    logits = _predict_logits(model, ref_codes, alt_codes, tissue, idx, batch_size)
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def train_cnn(
    ref_codes: np.ndarray,
    alt_codes: np.ndarray,
    tissue: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    n_tissues: int,
    config: CNNTrainConfig = CNNTrainConfig(),
) -> tuple[VariantCNN, dict]:
    """Train a :class:`VariantCNN` on ``train_idx`` with early stopping on ``val_idx``.

    Returns the model with the best validation epoch's weights, in eval mode, and a history
    ``{"epochs_run", "best_epoch", "val_auroc", "train_loss"}`` (``val_auroc`` is NaN per epoch when the
    validation split has one class; BCE then drives the early stopping). ``best_epoch`` is 0-based.
    """
    train_idx = np.asarray(train_idx, dtype=np.int64)
    val_idx = np.asarray(val_idx, dtype=np.int64)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(f"train_idx and val_idx must both be non-empty, got {len(train_idx)} and {len(val_idx)} examples.")
    overlap = np.intersect1d(train_idx, val_idx)
    if overlap.size:
        raise ValueError(
            f"train_idx and val_idx overlap in {overlap.size} examples (e.g. index {int(overlap[0])}); "
            "the validation split must be disjoint from the training split."
        )
    if ref_codes.shape != alt_codes.shape:
        raise ValueError(f"ref_codes and alt_codes must have the same shape, got {ref_codes.shape} and {alt_codes.shape}.")
    y = np.asarray(y, dtype=np.float32)

    if config.threads is not None:
        torch.set_num_threads(config.threads)  # process-wide: torch has no per-model thread setting
    torch.manual_seed(config.seed)  # weight init and dropout
    rng = np.random.default_rng(config.seed)  # epoch shuffles, independent of torch's stream
    model = VariantCNN(n_tissues, config.filters, config.kernels, config.hidden, config.dropout).to(config.device)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    y_val = y[val_idx]
    use_auroc = len(np.unique(y_val)) == 2

    history: dict = {"epochs_run": 0, "best_epoch": -1, "val_auroc": [], "train_loss": []}
    best_score, best_state, stale = -math.inf, None, 0
    for epoch in range(config.max_epochs):
        model.train()
        order = rng.permutation(train_idx)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            b = order[start:start + config.batch_size]
            logits = model(*_batch(ref_codes, alt_codes, tissue, b, device))
            loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(y[b]).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(b)
        history["train_loss"].append(total / len(order))

        val_logits = _predict_logits(model, ref_codes, alt_codes, tissue, val_idx, batch_size=256)
        if use_auroc:
            auroc = float(roc_auc_score(y_val, val_logits))
            score = auroc
        else:
            auroc = math.nan
            score = -float(F.binary_cross_entropy_with_logits(torch.from_numpy(val_logits), torch.from_numpy(y_val)))
        history["val_auroc"].append(auroc)
        history["epochs_run"] = epoch + 1

        if score > best_score:
            best_score, stale, history["best_epoch"] = score, 0, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break

    if best_state is None:  # every epoch's validation score was NaN: the weights diverged
        raise RuntimeError("training diverged: the validation metric was NaN in every epoch; lower the learning rate.")
    model.load_state_dict(best_state)
    model.eval()
    return model, history
