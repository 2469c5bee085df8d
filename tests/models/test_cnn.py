"""The one-hot CNN baseline of the causal-variant benchmark: architecture, siamese encoder, one-hot, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from glmscore.models.cnn import CNNTrainConfig, VariantCNN, one_hot, predict_cnn, train_cnn

MOTIF = np.array([3, 0, 3, 0, 0, 0], dtype=np.int8)  # TATAAA
# Small enough for a fast CPU test. threads=1: two torch threads on a 2-core machine shared with other work
# oversubscribe badly. patience=12: the tiny model sits on a plateau for several epochs before it finds the motif.
TINY = CNNTrainConfig(
    filters=(8, 16, 16, 16), hidden=(16, 8), lr=3e-3, batch_size=16, max_epochs=40, patience=12, seed=0, threads=1
)


def _motif_task(n: int, length: int, n_tissues: int, seed: int):
    """Every ref window has TATAAA at the centre; y=1 when the alt SNV hits the motif, y=0 when it lies elsewhere."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 4, size=(n, length), dtype=np.int8)
    start = length // 2 - len(MOTIF) // 2
    ref[:, start:start + len(MOTIF)] = MOTIF
    y = rng.permutation(np.arange(n) % 2).astype(np.float32)
    outside = np.setdiff1d(np.arange(length), np.arange(start, start + len(MOTIF)))
    pos = np.where(y == 1, start + rng.integers(0, len(MOTIF), n), rng.choice(outside, n))
    alt = ref.copy()
    rows = np.arange(n)
    alt[rows, pos] = (ref[rows, pos] + rng.integers(1, 4, n)) % 4  # a real substitution, never the same base
    tissue = rng.integers(0, n_tissues, n)
    return ref, alt, tissue, y


def _windows(batch: int, length: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return one_hot(rng.integers(0, 5, size=(batch, length), dtype=np.int8))


def test_layer_shapes():
    model = VariantCNN(n_tissues=3)
    assert model.encoder_shapes(1500) == [(192, 750), (384, 375), (576, 187), (768, 93)]
    blocks = list(model.encoder)
    assert len(blocks) == 4
    assert blocks[0].spatial.in_channels == 4 and blocks[0].spatial.kernel_size == (7,)
    assert [b.spatial.kernel_size[0] for b in blocks] == [7, 3, 3, 5]
    assert [b.spatial.out_channels for b in blocks] == [192, 384, 576, 768]
    assert all(b.pointwise.kernel_size == (1,) and b.pointwise.in_channels == b.pointwise.out_channels for b in blocks)
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2 * 768 + 3, 256), (256, 64), (64, 1)]
    model.eval()
    with torch.inference_mode():
        out = model(_windows(2, 1500, 0), _windows(2, 1500, 1), torch.tensor([0, 2]))
    assert out.shape == (2,)


def test_siamese_encoder():
    torch.manual_seed(0)
    model = VariantCNN(n_tissues=2, filters=(8, 16, 16, 16), hidden=(16, 8)).eval()
    # One encoder only: 4 blocks x (spatial + pointwise) convolutions in the whole model.
    assert sum(isinstance(m, nn.Conv1d) for m in model.modules()) == 8
    ref, alt, tissue = _windows(3, 100, 0), _windows(3, 100, 1), torch.tensor([0, 1, 0])
    tissue_vec = nn.functional.one_hot(tissue, 2).float()
    seen: list[torch.Tensor] = []
    hook = model.encoder.register_forward_hook(lambda _m, _i, out: seen.append(out.mean(dim=-1)))
    with torch.inference_mode():
        model(ref, ref, tissue)
        hook.remove()
        # The same window gives the same representation in the ref and the alt slot, equal to encode().
        ref_slot, alt_slot = seen[-1].split(3)
        torch.testing.assert_close(ref_slot, alt_slot)
        torch.testing.assert_close(ref_slot, model.encode(ref))

        # forward wires ref into the first slot and alt into the second ...
        r, a = model.encode(ref), model.encode(alt)
        torch.testing.assert_close(model(ref, alt, tissue), model.head(torch.cat([r, a, tissue_vec], 1)).squeeze(-1))
        torch.testing.assert_close(model(alt, ref, tissue), model.head(torch.cat([a, r, tissue_vec], 1)).squeeze(-1))
        # ... and the head is not symmetric, so swapping them changes the score. (At initialisation the pooled
        # representations of two random windows differ by ~1e-4, so the asymmetry is shown on distinct vectors.)
        u, v = torch.randn(3, 16), torch.randn(3, 16)
        swapped_gap = model.head(torch.cat([u, v, tissue_vec], 1)) - model.head(torch.cat([v, u, tissue_vec], 1))
        assert swapped_gap.abs().min() > 1e-4


def test_one_hot():
    codes = np.array([[0, 1, 2, 3, 4], [4, 3, 3, 0, 1]], dtype=np.uint8)
    expected = torch.tensor(
        [
            [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0]],
            [[0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 1, 1, 0, 0]],
        ],
        dtype=torch.float32,
    )
    got = one_hot(codes)
    assert got.dtype == torch.float32 and got.shape == (2, 4, 5)
    torch.testing.assert_close(got, expected)
    assert got.permute(0, 2, 1)[torch.from_numpy(codes == 4)].abs().sum() == 0  # every N is an all-zero column
    with pytest.raises(ValueError, match="0..4"):
        one_hot(np.array([[0, 5]], dtype=np.int8))


def _fit_and_test(ref, alt, tissue, y, n_tissues):
    n = len(y)
    train_idx, val_idx, test_idx = np.arange(0, n * 3 // 5), np.arange(n * 3 // 5, n * 4 // 5), np.arange(n * 4 // 5, n)
    model, history = train_cnn(ref, alt, tissue, y, train_idx, val_idx, n_tissues, TINY)
    assert history["epochs_run"] == len(history["val_auroc"]) == len(history["train_loss"])
    assert 0 <= history["best_epoch"] < history["epochs_run"]
    p = predict_cnn(model, ref, alt, tissue, test_idx, batch_size=37)  # odd batch size exercises the last partial batch
    assert p.shape == (len(test_idx),) and np.all((p >= 0) & (p <= 1))
    return roc_auc_score(y[test_idx], p), history


@pytest.fixture
def restore_threads():
    """train_cnn's ``threads`` is process-wide; give the other tests their thread count back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_learns_motif_disruption(restore_threads):
    # 800 examples (480 train / 160 val / 160 test): with ~400 the tiny model often stops on its initial plateau.
    ref, alt, tissue, y = _motif_task(n=800, length=64, n_tissues=3, seed=0)
    auroc, history = _fit_and_test(ref, alt, tissue, y, 3)
    assert auroc > 0.8, (auroc, history)

    shuffled = np.random.default_rng(1).permutation(y)
    control, history = _fit_and_test(ref, alt, tissue, shuffled, 3)
    assert abs(control - 0.5) < 0.15, (control, history)


def test_training_is_deterministic(restore_threads):
    ref, alt, tissue, y = _motif_task(n=120, length=32, n_tissues=2, seed=3)
    cfg = CNNTrainConfig(filters=(4, 8, 8, 8), hidden=(8, 4), max_epochs=2, batch_size=32, seed=5, threads=1)
    runs = [train_cnn(ref, alt, tissue, y, np.arange(80), np.arange(80, 120), 2, cfg) for _ in range(2)]
    assert runs[0][1] == runs[1][1]
    for a, b in zip(runs[0][0].state_dict().values(), runs[1][0].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_overlapping_splits_rejected():
    ref, alt, tissue, y = _motif_task(n=20, length=16, n_tissues=2, seed=0)
    with pytest.raises(ValueError, match="overlap"):
        train_cnn(ref, alt, tissue, y, np.arange(0, 12), np.arange(10, 20), 2, CNNTrainConfig(filters=(4, 4, 4, 4), hidden=(4,)))
