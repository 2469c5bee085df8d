"""A model whose package pins what glmscore cannot share runs in an environment of its own, for real:
enformer-pytorch (``transformers==4.56.2``), borzoi-pytorch (``transformers<5``) and alphagenome-pt score in one
``glmscore sweep`` beside vLLM while the driver keeps its vLLM-compatible transformers (>= 5.16). pip reaches
the package registry from this machine and from CI; each environment is built once per test session (1-15 s
here) in a temporary cache. Evo 2's package, which needs CUDA, is checked as far as a CPU allows."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import transformers

from glmscore.models.alphabet import normalise
from glmscore.models.backends.borzoi_pt import BorzoiPyTorch
from glmscore.models.base import resolve_card
from glmscore.models.errors import GlmscoreError
from glmscore.models.loader import load_backend
from glmscore.pipelines import environments
from glmscore.pipelines.benchmark import BENCHMARKS
from glmscore.pipelines.shards import MANIFEST, read_scores
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


def test_a_package_that_cannot_be_installed_is_one_sentence_naming_it(env_cache):
    with pytest.raises(GlmscoreError, match=r"^could not install the model's packages \(glmscore-no-such-package==9\): "
                                            r".*glmscore-no-such-package.*; pip's log is .*\.log\.$"):
        environments.local_python(("glmscore-no-such-package==9",))
    assert not (environments.env_dir(("glmscore-no-such-package==9",)) / environments.READY).exists()


BORZOI, ALPHAGENOME = "borzoi-pytorch==0.5.1", "alphagenome-pt==1.0.0"
S2F_WINDOW = 4096  # the tiny models' window; the nullsette rows are cut to it (--long truncate)

# Run by each environment's Python from the repository root: the package's own class at a tiny size, saved;
# its forward pass by hand on centred windows built here (the tracks a sweep asks for, the reverse
# complement's positions flipped back and averaged) and its trunk's embedding by hand, beside glmscore's
# backend object built from the saved folder in the same environment.
BY_HAND_COMMON = r"""
import json, sys
import numpy as np, torch
from glmscore.models.base import resolve_card
from glmscore.models.pooling import Pooling
path, window = sys.argv[1], int(sys.argv[2])
seqs = json.loads(sys.stdin.read())
torch.manual_seed(0)

def windows(seq, crop, bins, bin_bp):
    seq = seq[:window]
    ids = np.full(window, 4)
    start = (window - len(seq)) // 2
    ids[start : start + len(seq)] = ["ACGTN".index(c) for c in seq]
    covered = sorted({(p - crop) // bin_bp for p in range(start, start + len(seq)) if 0 <= (p - crop) // bin_bp < bins})
    one_hot = np.eye(5)[ids][:, :4]  # (window, 4); N: an all-zero row
    return torch.from_numpy(np.stack([one_hot, one_hot[::-1, ::-1].copy()])).float(), covered  # A C G T reversed = complement

def ours(cls, **options):
    card = resolve_card(path)
    opts = cls.Options(window=window, long="truncate", **options)
    backend = cls(card, opts, cls.runtime(card, opts, "cpu"))
    return backend.embed(cls.make_encoder(card, opts, backend.runtime).encode(seqs), Pooling.parse("mean")).tolist()
"""

BORZOI_BY_HAND = BY_HAND_COMMON + r"""
import borzoi_pytorch, transformers
from borzoi_pytorch.config_borzoi import BorzoiConfig
from glmscore.models.backends.borzoi_pt import BorzoiPyTorch
bins = 96  # of the window's 128 bins of 32 bp, the central 96 are predicted
config = BorzoiConfig(dim=32, depth=1, heads=2, attn_dim_key=8, attn_dim_value=16, bins_to_return=bins, enable_mouse_head=True)
borzoi_pytorch.Borzoi(config).eval().save_pretrained(path)
model = borzoi_pytorch.Borzoi.from_pretrained(path).eval()
scores, embeddings = [], []
for seq in seqs:
    x, covered = windows(seq, (window - bins * 32) // 2, bins, 32)
    with torch.no_grad():
        pred = model(x.transpose(1, 2), is_human=False).double().numpy()  # (2, tracks, bins)
        hidden = model.get_embs_after_crop(x[:1].transpose(1, 2))[0].double().numpy()
    both = (pred[0] + pred[1][:, ::-1]) / 2
    scores.append(float(both[2:5][:, covered].mean()))
    embeddings.append(hidden[:, covered].mean(axis=1).tolist())
print(json.dumps({"transformers": transformers.__version__, "scores": scores, "embeddings": embeddings,
                  "ours": ours(BorzoiPyTorch)}))
"""

ALPHAGENOME_BY_HAND = BY_HAND_COMMON + r"""
import alphagenome_pt as ag
from glmscore.models.backends.alphagenome_pt import AlphaGenomePT
metadata = ag.synthetic_metadata(heads=[ag.HeadName.RNA_SEQ, ag.HeadName.CAGE], organisms=["human", "mouse"], num_tracks=5)
ag.small_alphagenome(metadata, max_seq_len=window, num_channels=48, transformer_layers=1, dtype_policy="float32").eval().save(path)
model = ag.AlphaGenome.load(path).eval()
scores, embeddings = [], []
for seq in seqs:
    x, covered = windows(seq, 0, window, 1)  # 1 bp predictions over the whole window
    with torch.no_grad():
        pred = model.predict(x, torch.tensor([1, 1]))["rna_seq"]["predictions_1bp"].double().numpy()  # (2, window, tracks)
        hidden = model.embed(x[:1], torch.tensor([0])).embeddings_1bp[0].double().numpy()
    both = (pred[0] + pred[1][::-1]) / 2
    scores.append(float(both[covered][:, 1:4].mean()))
    embeddings.append(hidden[covered].mean(axis=0).tolist())
print(json.dumps({"scores": scores, "embeddings": embeddings, "ours": ours(AlphaGenomePT, organism="human")}))
"""


def _by_hand(package: str, script: str, model, seqs: list[str]) -> dict:
    python = environments.local_python((package,))
    ref = subprocess.run([str(python), "-c", script, str(model), str(S2F_WINDOW)], cwd=ROOT, input=json.dumps(seqs),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = json.loads(ref.stdout.splitlines()[-1])
    np.testing.assert_allclose(out["ours"], out["embeddings"], rtol=1e-5, atol=1e-6)  # embed = the trunk's, by hand
    return out


@pytest.mark.ray
def test_sequence_to_function_models_in_their_own_environments_beside_vllm_in_one_sweep(
        env_cache, small_nullsette, tiny_llama, tmp_path):
    """enformer-pytorch (``transformers==4.56.2``), borzoi-pytorch (``transformers<5``) and alphagenome-pt, each in
    its own environment, beside a vLLM run in the driver's (transformers 5) in one ``glmscore sweep``: each
    model's scores (its tracks; --rc mean for two) equal the package's forward pass by hand, and its
    embeddings the trunk's; the environments, built once, come from the cache; a Flashzoi checkpoint on a CPU
    is one sentence."""
    # the driver's environment: vLLM's transformers, and none of the model packages to import by mistake
    assert int(transformers.__version__.split(".")[0]) >= 5 and importlib.util.find_spec("vllm") is not None
    for module in ("enformer_pytorch", "borzoi_pytorch", "alphagenome_pt"):
        assert importlib.util.find_spec(module) is None
    python = environments.local_python((PACKAGE,))
    assert environments.local_python((PACKAGE,)) == python  # cached: the second call builds nothing

    # the rows `--limit 2` scores, read as the job reads them, and each package's model on them by hand
    bench = BENCHMARKS.get("nullsette")(str(small_nullsette))
    rows = [bench.read(u) for u in bench.units(chunk_rows=1024, limit=2, datasets=None)]
    seqs = {sid: normalise(s, "DNA")[0] for r in rows for sid, s in zip(r.seq_ids, r.sequences)}
    enformer, borzoi, alphagenome = tmp_path / "tiny-enformer", tmp_path / "tiny-borzoi", tmp_path / "tiny-alphagenome"
    ref = subprocess.run([str(python), "-c", BY_HAND, str(enformer), str(WINDOW), str(BINS), str(BIN)],
                         input=json.dumps(list(seqs.values())), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    want = {"tiny-enformer": json.loads(ref.stdout.splitlines()[-1]),
            "tiny-borzoi": _by_hand(BORZOI, BORZOI_BY_HAND, borzoi, list(seqs.values())),
            "tiny-alphagenome": _by_hand(ALPHAGENOME, ALPHAGENOME_BY_HAND, alphagenome, list(seqs.values()))}
    assert want["tiny-enformer"]["transformers"] == "4.56.2" and want["tiny-borzoi"]["transformers"].startswith("4.")
    assert [(resolve_card(str(m)).backend, resolve_card(str(m)).environment) for m in (enformer, borzoi, alphagenome)] == [
        ("enformer_pytorch", (PACKAGE,)), ("borzoi_pytorch", (BORZOI,)), ("alphagenome_pt", (ALPHAGENOME,))]

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(json.dumps({  # JSON is YAML
        # two runs at once, a thread each: the suite runs beside it
        "out": str(tmp_path / "out"), "max_parallel": 2, "local_cpus": 4, "defaults": {"threads_per_actor": 1},
        "models": [
            {"model": str(enformer), "window": WINDOW, "long": "truncate", "tracks": "1:4"},
            {"model": str(borzoi), "window": S2F_WINDOW, "long": "truncate", "head": "mouse", "tracks": "2:5", "rc": "mean"},
            {"model": str(alphagenome), "window": S2F_WINDOW, "long": "truncate", "organism": "mouse", "tracks": "1:4",
             "rc": "mean"},
            # eager: torch.compile's ~2 min is test_vllm.py's to test
            {"model": str(tiny_llama), "name": "vllm", "backend": "vllm", "max_model_len": 1024, "enforce_eager": True}],
        "benchmarks": [{"name": "nullsette", "data": str(small_nullsette), "limit": 2, "analyze": {"n_perm": 100}}]}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-m", "glmscore", "sweep", str(sweep)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "building the model's environment" not in run.stderr  # built above, found in the cache
    scores = tmp_path / "out" / "scores"
    for name, package in (("tiny-enformer", PACKAGE), ("tiny-borzoi", BORZOI), ("tiny-alphagenome", ALPHAGENOME)):
        folder = scores / name / "nullsette"
        installed = json.loads((folder / MANIFEST).read_text())["environment"]["installed"]
        assert installed[package.split("==")[0]] == package.split("==")[1]
        if name == "tiny-enformer":
            assert installed["transformers"] == "4.56.2"
        df = read_scores(folder)
        assert len(df) == len(seqs)
        by_hand = dict(zip(seqs, want[name]["scores"]))
        np.testing.assert_allclose(df["score"], [by_hand[s] for s in df["seq_id"]], rtol=1e-5, atol=1e-7, err_msg=name)
    # the vLLM run (the driver's environment) scores as transformers does in a direct call
    vllm = read_scores(scores / "vllm" / "nullsette")
    assert list(vllm.columns) == list(df.columns) and len(vllm) == len(seqs)
    hf = load_backend(resolve_card(str(tiny_llama))).loglik_sequences([seqs[s] for s in vllm["seq_id"]])
    assert (vllm["n_scored"].to_numpy() == hf.n_scored).all()
    np.testing.assert_allclose(vllm["score"], hf.mean, atol=1e-4)
    assert json.loads((scores / "vllm" / "nullsette" / MANIFEST).read_text()).get("environment") is None

    config = json.loads((borzoi / "config.json").read_text())
    (borzoi / "config.json").write_text(json.dumps({**config, "flashed": True}))
    flash = resolve_card(str(borzoi))
    assert "flash-attn>=2.6.3" in flash.environment
    with pytest.raises(GlmscoreError, match=r"^tiny-borzoi is a Flashzoi checkpoint: its flash-attn attention runs on "
                                            r"CUDA GPUs only, not on this run's CPU actors\.$"):
        BorzoiPyTorch.runtime(flash, BorzoiPyTorch.Options(), "cpu")


EVO2 = "evo2==0.6.0"

# Run by the evo2 environment's Python. Vortex (the package's model code) cannot run on a CPU: it imports
# flash-attn's CUDA extension at import time and its StripedHyena constructor places blocks with
# torch.cuda.device. So this script registers an empty module under the extension's name (the one mock
# here, for what needs a GPU) to import the package's own scoring function, and scores a stand-in causal
# model with StripedHyena's call shape (``model(ids) -> (logits, cache)``) both ways: through glmscore's
# backend (its model loading replaced by the stand-in) and through ``evo2.scoring.score_sequences``.
EVO2_BY_HAND = r"""
import json, sys, types
sys.modules["flash_attn_2_cuda"] = types.ModuleType("flash_attn_2_cuda")
import numpy as np, torch
from glmscore.models.backends.evo2_vortex import Evo2Vortex, import_evo2
import_evo2()  # as the backend imports it: from a temporary folder (Vortex opens a log file where it is imported)
from evo2.scoring import score_sequences
from vortex.model.tokenizer import CharLevelTokenizer
from glmscore.models.base import resolve_card

class StandIn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.mix, self.out = torch.nn.Embedding(512, 16), torch.nn.Conv1d(16, 16, 3), torch.nn.Linear(16, 512)
    def forward(self, ids):  # causal: position t sees t-2..t
        x = self.embed(ids).transpose(1, 2)
        x = self.mix(torch.nn.functional.pad(x, (2, 0))).transpose(1, 2)
        return self.out(torch.tanh(x)), None

class Backend(Evo2Vortex):
    def _load(self, card):
        return StandIn().eval()

seqs = json.loads(sys.stdin.read())
card = resolve_card("evo2-1b-base")
options = Evo2Vortex.Options()
backend = Backend(card, options, Evo2Vortex.runtime(card, options, "cpu"))
ours = backend.loglik(backend.encode(seqs)).mean.tolist()
model, tokenizer = backend.model, CharLevelTokenizer(512)
one = [float(s) for s in score_sequences(seqs, model, tokenizer, batch_size=1, device="cpu")]
batched = [float(s) for s in score_sequences(seqs, model, tokenizer, batch_size=len(seqs), device="cpu")]
print(json.dumps({"ours": ours, "package": one, "package_batched": batched}))
"""


def test_evo2_scores_as_its_package_and_needs_a_gpu(env_cache):
    """Evo 2's backend scores as ``evo2.scoring.score_sequences`` (bases 2..L, byte tokens) on a stand-in
    model in the package's own environment, and never scores a pad where the package's batches do; on a CPU
    cluster the card is refused in one sentence before Ray starts (Vortex needs CUDA)."""
    from glmscore.pipelines.score import ScoreConfig, plan_job, resolve_job

    seqs = ["ACGTACGTTAGCATTGACA", "GGGAAATTTCCC" * 4, "ACGTACGTTAGCATTGACT", "TTGACATATAATAGG"]
    python = environments.local_python((EVO2,))
    ref = subprocess.run([str(python), "-c", EVO2_BY_HAND], cwd=ROOT, input=json.dumps(seqs), capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert not (ROOT / "activations_debug.log").exists(), "importing evo2 left Vortex's log in the working directory"
    got = json.loads(ref.stdout.splitlines()[-1])
    np.testing.assert_allclose(got["ours"], got["package"], rtol=1e-5, atol=1e-6)
    # the package's padded batch scores one pad prediction for every row shorter than the longest
    longest = max(map(len, seqs))
    differs = [not np.isclose(a, b, rtol=1e-5) for a, b in zip(got["package_batched"], got["package"])]
    assert differs == [len(s) < longest for s in seqs]

    card = resolve_card("evo2-7b")
    assert (card.backend, card.environment[0]) == ("evo2", EVO2)
    cfg = ScoreConfig(benchmark="nullsette", data=str(ROOT / "tests"), model="evo2-7b", out="unused")
    with pytest.raises(GlmscoreError, match=r"^backend evo2 needs a GPU; pass --gpus-per-actor or use a cluster with GPUs\.$"):
        plan_job(cfg, {"CPU": 2.0, "GPU": 0.0}, resolve_job(cfg))
