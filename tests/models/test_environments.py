"""A model whose package pins what glmscore cannot share runs in an environment of its own, for real:
enformer-pytorch (``transformers==4.56.2``) scores through ``glmscore score`` while the driver keeps its
vLLM-compatible transformers (>= 5.16). pip reaches the package registry from this machine and from CI;
the environment is built once per test session (about 15 s here) in a temporary cache."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import transformers

from models.alphabet import normalise
from models.backends.borzoi_pt import BorzoiPyTorch
from models.base import resolve_card
from models.errors import GlmscoreError
from pipelines import environments
from pipelines.benchmark import BENCHMARKS
from pipelines.shards import MANIFEST, read_scores
from tests.conftest import ROOT

PACKAGE = "enformer-pytorch==0.8.12"
WINDOW, BINS, BIN = 4096, 24, 128  # the tiny model: 32 bins of 128 bp in the window, the central 24 predicted

# run by the environment's Python: the package's own class, saved, then scored by hand on windows built here
BY_HAND = r"""
import json, sys
import numpy as np, torch, transformers, enformer_pytorch
path, window, bins, bin_bp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
seqs = json.loads(sys.stdin.read())
torch.manual_seed(0)
model = enformer_pytorch.Enformer.from_hparams(dim=48, depth=1, heads=2, output_heads=dict(human=6, mouse=3),
                                               target_length=bins, num_downsamples=7, dim_divisible_by=8)
model.eval().save_pretrained(path, safe_serialization=False)  # the trunk shares tensors: no safetensors
model = enformer_pytorch.from_pretrained(path).eval()
crop = (window - bins * bin_bp) // 2
scores = []
for seq in seqs:
    seq = seq[:window]
    ids = np.full(window, 4)
    start = (window - len(seq)) // 2
    ids[start : start + len(seq)] = ["ACGTN".index(c) for c in seq]
    covered = sorted({(p - crop) // bin_bp for p in range(start, start + len(seq)) if 0 <= (p - crop) // bin_bp < bins})
    with torch.no_grad():
        pred = model(torch.from_numpy(ids)[None], head="human")[0].double().numpy()
    scores.append(float(pred[covered][:, 1:4].mean()))
print(json.dumps({"transformers": transformers.__version__, "scores": scores}))
"""


@pytest.fixture(scope="module")
def env_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("envs")
    old = os.environ.get("GLMSCORE_ENVS")
    os.environ["GLMSCORE_ENVS"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("GLMSCORE_ENVS")
    else:
        os.environ["GLMSCORE_ENVS"] = old


def test_a_model_package_with_conflicting_pins_scores_in_its_own_environment(env_cache, small_nullsette, tmp_path):
    # the driver's environment: vLLM's transformers, and no enformer-pytorch to import by mistake
    assert int(transformers.__version__.split(".")[0]) >= 5 and importlib.util.find_spec("vllm") is not None
    assert importlib.util.find_spec("enformer_pytorch") is None
    python = environments.local_python((PACKAGE,))
    assert environments.local_python((PACKAGE,)) == python  # cached: the second call builds nothing

    # the rows `--limit 2` scores, read as the job reads them, and the package's model on them by hand
    bench = BENCHMARKS.get("nullsette")(str(small_nullsette))
    rows = [bench.read(u) for u in bench.units(chunk_rows=1024, limit=2, datasets=None)]
    seqs = {sid: normalise(s, "DNA")[0] for r in rows for sid, s in zip(r.seq_ids, r.sequences)}
    model = tmp_path / "tiny-enformer"
    ref = subprocess.run([str(python), "-c", BY_HAND, str(model), str(WINDOW), str(BINS), str(BIN)],
                         input=json.dumps(list(seqs.values())), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    by_hand = json.loads(ref.stdout.splitlines()[-1])
    assert by_hand["transformers"] == "4.56.2"
    card = resolve_card(str(model))
    assert (card.backend, card.environment) == ("enformer_pytorch", (PACKAGE,))

    out = tmp_path / "scores"
    cmd = [sys.executable, "-m", "pipelines.cli", "score", "--benchmark", "nullsette", "--data", str(small_nullsette),
           "--model", str(model), "--window", str(WINDOW), "--long", "truncate", "--tracks", "1:4", "--limit", "2",
           "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "building the model's environment" not in run.stderr  # built above, found in the cache
    manifest = json.loads((out / MANIFEST).read_text())
    installed = manifest["environment"]["installed"]
    assert installed["transformers"] == "4.56.2" and installed["enformer-pytorch"] == "0.8.12"
    df = read_scores(out)
    assert len(df) == len(seqs)
    want = dict(zip(seqs, by_hand["scores"]))
    np.testing.assert_allclose(df["score"], [want[s] for s in df["seq_id"]], rtol=1e-5, atol=1e-7)


def test_a_package_that_cannot_be_installed_is_one_sentence_naming_it(env_cache):
    with pytest.raises(GlmscoreError, match=r"^could not install the model's packages \(glmscore-no-such-package==9\): "
                                            r".*glmscore-no-such-package.*; pip's log is .*\.log\.$"):
        environments.local_python(("glmscore-no-such-package==9",))
    assert not (environments.env_dir(("glmscore-no-such-package==9",)) / environments.READY).exists()


BORZOI = "borzoi-pytorch==0.5.1"
BORZOI_WINDOW, BORZOI_BINS = 4096, 96  # the tiny model: 128 bins of 32 bp in the window, the central 96 predicted

# run by the environment's Python from the repository root: the package's own class, saved; its forward pass
# by hand (mouse head, tracks 2..4, the reverse complement's bins flipped back and averaged) and the trunk's
# embedding by hand, beside glmscore's backend object built in the same environment
BORZOI_BY_HAND = r"""
import json, sys
import numpy as np, torch, transformers, borzoi_pytorch
from borzoi_pytorch.config_borzoi import BorzoiConfig
from models.base import resolve_card
from models.pooling import Pooling
from models.backends.borzoi_pt import BorzoiPyTorch
path, window, bins, bin_bp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
seqs = json.loads(sys.stdin.read())
torch.manual_seed(0)
config = BorzoiConfig(dim=32, depth=1, heads=2, attn_dim_key=8, attn_dim_value=16, bins_to_return=bins, enable_mouse_head=True)
borzoi_pytorch.Borzoi(config).eval().save_pretrained(path)
model = borzoi_pytorch.Borzoi.from_pretrained(path).eval()
crop = (window - bins * bin_bp) // 2
scores, embeddings = [], []
for seq in seqs:
    seq = seq[:window]
    ids = np.full(window, 4)
    start = (window - len(seq)) // 2
    ids[start : start + len(seq)] = ["ACGTN".index(c) for c in seq]
    covered = sorted({(p - crop) // bin_bp for p in range(start, start + len(seq)) if 0 <= (p - crop) // bin_bp < bins})
    one_hot = np.eye(5)[ids][:, :4].T  # N: an all-zero column
    rc = one_hot[::-1, ::-1].copy()  # A C G T reversed is the complement; positions reversed
    with torch.no_grad():
        x = torch.from_numpy(np.stack([one_hot, rc])).float()
        pred = model(x, is_human=False).double().numpy()
        hidden = model.get_embs_after_crop(x[:1])[0].double().numpy()
    both = (pred[0] + pred[1][:, ::-1]) / 2  # (tracks, bins)
    scores.append(float(both[2:5][:, covered].mean()))
    embeddings.append(hidden[:, covered].mean(axis=1).tolist())
card = resolve_card(path)
options = BorzoiPyTorch.Options(window=window, long="truncate")
backend = BorzoiPyTorch(card, options, BorzoiPyTorch.runtime(card, options, "cpu"))
encoded = BorzoiPyTorch.make_encoder(card, options, backend.runtime).encode(seqs)
ours = backend.embed(encoded, Pooling.parse("mean")).tolist()
print(json.dumps({"transformers": transformers.__version__, "scores": scores, "embeddings": embeddings, "ours": ours}))
"""


def test_borzoi_pytorch_scores_and_embeds_in_its_own_environment_as_its_forward_pass(env_cache, small_nullsette, tmp_path):
    """borzoi-pytorch (``transformers<5``) beside the driver's transformers 5: ``glmscore score`` through Ray
    on the mouse head with --rc equals the package's forward pass by hand; the backend's embeddings equal the
    trunk's (``get_embs_after_crop``) over the same bins; a Flashzoi checkpoint on CPU is one sentence."""
    assert importlib.util.find_spec("borzoi_pytorch") is None
    python = environments.local_python((BORZOI,))
    bench = BENCHMARKS.get("nullsette")(str(small_nullsette))
    rows = [bench.read(u) for u in bench.units(chunk_rows=1024, limit=2, datasets=None)]
    seqs = {sid: normalise(s, "DNA")[0] for r in rows for sid, s in zip(r.seq_ids, r.sequences)}
    model = tmp_path / "tiny-borzoi"
    ref = subprocess.run([str(python), "-c", BORZOI_BY_HAND, str(model), str(BORZOI_WINDOW), str(BORZOI_BINS), "32"],
                         cwd=ROOT, input=json.dumps(list(seqs.values())), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    by_hand = json.loads(ref.stdout.splitlines()[-1])
    assert by_hand["transformers"].startswith("4.")
    np.testing.assert_allclose(by_hand["ours"], by_hand["embeddings"], rtol=1e-5, atol=1e-6)
    card = resolve_card(str(model))
    assert (card.backend, card.environment) == ("borzoi_pytorch", (BORZOI,))

    out = tmp_path / "scores"
    cmd = [sys.executable, "-m", "pipelines.cli", "score", "--benchmark", "nullsette", "--data", str(small_nullsette),
           "--model", str(model), "--window", str(BORZOI_WINDOW), "--long", "truncate", "--head", "mouse",
           "--tracks", "2:5", "--rc", "mean", "--limit", "2", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((out / MANIFEST).read_text())["environment"]["installed"]["borzoi-pytorch"] == "0.5.1"
    df = read_scores(out)
    assert len(df) == len(seqs)
    want = dict(zip(seqs, by_hand["scores"]))
    np.testing.assert_allclose(df["score"], [want[s] for s in df["seq_id"]], rtol=1e-5, atol=1e-7)

    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "flashed": True}))
    flash = resolve_card(str(model))
    assert "flash-attn>=2.6.3" in flash.environment
    with pytest.raises(GlmscoreError, match=r"^tiny-borzoi is a Flashzoi checkpoint: its flash-attn attention runs on "
                                            r"CUDA GPUs only, not on this run's CPU actors\.$"):
        BorzoiPyTorch.runtime(flash, BorzoiPyTorch.Options(), "cpu")
