"""AIDO.RNA (issue 41): modelgenerator's own RNABertForMaskedLM, in an environment of its own.

modelgenerator 0.1.3.post0 pins transformers==4.38.0 (its modelling file imports helpers transformers 5 removed), so
the class runs only in the card's environment. The test builds an environment with transformers 4.38.0 through
glmscore's own mechanism (``environments.local_python``) and puts modelgenerator, installed
without dependencies, on its path: the rnabert module needs only torch and transformers, and the package's other
pins (tiledbsoma, lamindb, wandb...) take minutes to resolve and install, too long for this test; the cards'
environment installs the package with all of them. In that environment a tiny random configuration of the class is
saved, loaded through the card's backend (``aido_rna``), and its scores (unmasked and pseudo-log-likelihood) and
embeddings (mean, CLS) of a padded batch are compared with the class's own forward pass one sequence at a time on
the ids of the package's RNABertTokenizer (version v2, as modelgenerator's GenBioBERT builds it). On the driver
(transformers 5, no modelgenerator) the card's preflight and encoder run without importing the package and give
the same ids; loading the model there is one sentence. The tests are skipped only if pip cannot fetch the packages.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from glmscore.models.backends.aido_rna import VOCAB, AidoRNA
from glmscore.models.base import BACKENDS, resolve_card
from glmscore.models.cards import UNCARDED, about, shipped_cards
from glmscore.models.errors import GlmscoreError
from glmscore.models.loader import load_backend
from glmscore.pipelines import environments
from tests.conftest import ROOT

PACKAGE = "modelgenerator==0.1.3.post0"
ENVIRONMENT = (PACKAGE, "pyarrow<23")  # modelgenerator's numpy<2 and a pyarrow the actor's Ray worker can import
TRANSFORMERS = "transformers==4.38.0"
# lengths differ (a padded batch); T is read as U, N is its own token, a lower-case letter is upper-cased
SEQS = ["ACGUACGUUAGC", "GGGAAATTTCCCAGTNAC", "acguac", "UUGACAUAUAAUAGGAGGAUGAAAUAA"]

BY_HAND = r"""
import json, os, sys
import numpy as np, torch, transformers
import modelgenerator.huggingface_models.rnabert.modeling_rnabert as modeling
from modelgenerator.huggingface_models.rnabert import RNABertConfig, RNABertForMaskedLM, RNABertTokenizer
from glmscore.models.cards import shipped_cards
from glmscore.models.loader import load_backend
from glmscore.models.pooling import Pooling

path = sys.argv[1]
seqs = json.loads(sys.stdin.read())
vocab_file = os.path.join(os.path.dirname(modeling.__file__), "vocab.txt")
tokenizer = RNABertTokenizer(vocab_file, version="v2")  # as modelgenerator's GenBioBERT.setup builds it
torch.manual_seed(0)
config = RNABertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                       max_position_embeddings=64)
model = RNABertForMaskedLM(config).eval()
with torch.no_grad():  # random, not unit, norms and a random LM-head bias: the scores then depend on them
    for name, p in model.named_parameters():
        if "LayerNorm" in name or ".ln." in name or name.endswith("predictions.bias"):
            p.normal_(1.0 if "bias" not in name else 0.0, 0.3)
model.save_pretrained(path)

card = shipped_cards()["aido-rna-1.6b"].with_(hf_id=path, revision=None)
scorer = load_backend(card, device="cpu", batch_tokens=64)  # a small budget: more than one batch
encoded = scorer.encode(seqs)
unmasked = scorer.loglik(encoded).loglik_sum.tolist()
pll = load_backend(card, device="cpu", mlm_mode="pll").loglik(encoded).loglik_sum.tolist()
mean = scorer.embed(encoded, Pooling.parse("mean")).tolist()
cls = scorer.embed(encoded, Pooling.parse("cls")).tolist()
layer1 = scorer.embed(encoded, Pooling.parse("mean"), layer=1).tolist()

direct = RNABertForMaskedLM.from_pretrained(path).eval()
ids_all, want = [], {"unmasked": [], "pll": [], "mean": [], "cls": [], "layer1": []}
for seq in seqs:
    rna = seq.upper().replace("T", "U")
    ids = tokenizer(rna)["input_ids"]
    ids_all.append(ids)
    x = torch.tensor([ids])
    with torch.no_grad():
        out = direct(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True)
        lp = torch.log_softmax(out.logits[0].double(), -1)
        want["unmasked"].append(sum(lp[j, ids[j]].item() for j in range(1, len(ids) - 1)))
        total = 0.0
        for j in range(1, len(ids) - 1):
            masked = x.clone()
            masked[0, j] = tokenizer.mask_token_id
            total += torch.log_softmax(direct(input_ids=masked).logits[0, j].double(), -1)[ids[j]].item()
        want["pll"].append(total)
    hidden = out.hidden_states[-1][0].numpy()
    want["mean"].append(hidden[1:-1].mean(axis=0).tolist())
    want["cls"].append(hidden[0].tolist())
    want["layer1"].append(out.hidden_states[1][0].numpy()[1:-1].mean(axis=0).tolist())
print(json.dumps({"transformers": transformers.__version__, "vocab": tokenizer.all_tokens, "ids": ids_all,
                  "mask": tokenizer.mask_token_id, "pad": tokenizer.pad_token_id,
                  "ours": {"ids": [e.ids.tolist() for e in encoded], "unmasked": unmasked, "pll": pll, "mean": mean,
                           "cls": cls, "layer1": layer1}, "want": want}))
"""


@pytest.fixture(scope="module")
def aido_env(tmp_path_factory):
    """The environment's Python (transformers 4.38.0, built by glmscore: in ``$GLMSCORE_ENVS`` where set, so runs
    share it, else in a temporary cache; about 80 s to build on a loaded 2-core machine) and a folder with
    modelgenerator installed without dependencies."""
    target = tmp_path_factory.mktemp("modelgenerator")
    old = os.environ.get("GLMSCORE_ENVS")
    if old is None:
        os.environ["GLMSCORE_ENVS"] = str(tmp_path_factory.mktemp("envs"))
    try:
        try:
            python = environments.local_python((TRANSFORMERS,))
        except GlmscoreError as exc:
            pytest.skip(f"could not build an environment with {TRANSFORMERS}: {exc}")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                               "--target", str(target), PACKAGE], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"could not install {PACKAGE} from the package index: {done.stderr.strip()[-300:]}")
        yield python, target
    finally:
        if old is None:
            os.environ.pop("GLMSCORE_ENVS", None)


def test_aido_cards_run_modelgenerator_in_their_own_environment():
    cards = shipped_cards()
    for card_id, hf_id in (("aido-rna-1.6b", "genbio-ai/AIDO.RNA-1.6B"), ("aido-rna-650m", "genbio-ai/AIDO.RNA-650M")):
        card = cards[card_id]
        assert (card.hf_id, card.backend, card.objective, card.alphabet, card.environment, card.trust_remote_code,
                card.package, card.vllm) == (hf_id, "aido_rna", "mlm", "RNA", ENVIRONMENT, False, None, False)
        assert about(card_id)["seed"] == "AIDO.RNA" and about(card_id)["verified"].startswith("tiny real class: ")
        BACKENDS.get(card.backend).check_card(card)
    with pytest.raises(GlmscoreError, match=r"environment of its own; give it environment: \[modelgenerator==0\.1\.3\.post0, pyarrow<23\]"):
        AidoRNA.check_card(cards["aido-rna-1.6b"].with_(environment=()))
    assert "AIDO.RNA" not in [seed for seed, _, _ in UNCARDED]


def test_aido_card_scores_and_embeds_as_the_package_class(aido_env, tmp_path):
    python, target = aido_env
    folder = tmp_path / "tiny-aido-rna"
    env = {**os.environ, "PYTHONPATH": str(target)}
    ref = subprocess.run([str(python), "-c", BY_HAND, str(folder)], cwd=ROOT, env=env, input=json.dumps(SEQS),
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = json.loads(ref.stdout.splitlines()[-1])
    assert out["transformers"] == "4.38.0"
    assert tuple(out["vocab"]) == VOCAB and (out["mask"], out["pad"]) == (1, 0)  # the vocabulary written out in the backend
    ours, want = out["ours"], out["want"]
    assert ours["ids"] == out["ids"]  # the card's encoding (in the environment) is the package tokenizer's
    for key in ("unmasked", "pll"):
        np.testing.assert_allclose(ours[key], want[key], rtol=1e-5)
    for key in ("mean", "cls", "layer1"):
        np.testing.assert_allclose(ours[key], want[key], rtol=1e-5, atol=1e-6)

    # the driver (transformers 5, no modelgenerator): preflight and the prepare stage's encoder give the same ids
    # without importing the package; loading the model here is one sentence naming the card's environment
    card = shipped_cards()["aido-rna-1.6b"].with_(hf_id=str(folder), revision=None)
    folder_card = resolve_card(str(folder))  # the folder alone: modelgenerator's config gets this backend
    assert (folder_card.backend, folder_card.objective, folder_card.alphabet, folder_card.environment) == (
        "aido_rna", "mlm", "RNA", ENVIRONMENT)
    other = tmp_path / "multimolecule-rnabert"  # multimolecule's RNABERT shares the model type, not the config
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "rnabert", "architectures": ["RnaBertForMaskedLM"]}))
    assert AidoRNA.card_for(str(other)) is None
    backend = BACKENDS.get(card.backend)
    options = backend.Options()
    backend.preflight(card, options, "score")
    backend.preflight(card, options, "embed", layer=2)
    with pytest.raises(GlmscoreError, match="--layer 3 does not exist"):
        backend.preflight(card, options, "embed", layer=3)
    runtime = backend.runtime(card, options, "cpu")
    assert runtime.token_limit == 64  # the config's max_position_embeddings
    assert [e.ids.tolist() for e in backend.make_encoder(card, options, runtime).encode(SEQS)] == out["ids"]
    assert "modelgenerator" not in sys.modules
    with pytest.raises(GlmscoreError, match=r"needs modelgenerator's RNABertForMaskedLM, which did not import here .*"
                                            r"runs in the card's own environment \(modelgenerator==0\.1\.3\.post0, pyarrow<23\)"):
        load_backend(card, device="cpu")
