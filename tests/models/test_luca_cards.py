"""LucaOne and LucaVirus (issue 41): the authors' packages (lucaone, lucavirus 1.1.1) under glmscore's transformers.

A tiny random configuration of each package's own masked-LM class, saved with its own tokenizer by save_pretrained,
loaded through the card (preflight, then load_backend), scores and embeds a padded batch as a direct forward pass
of the class does, one sequence at a time, on the ids the package's tokenizer gives a gene sequence. The packages
are not glmscore dependencies of the test environment: when they are not importable they are installed (no
dependencies: they need only torch and transformers) into a temporary folder put on sys.path; the tests are skipped
only if pip cannot fetch them."""

import importlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from glmscore.models.base import BACKENDS
from glmscore.models.cards import UNCARDED, about, import_package, shipped_cards
from glmscore.models.loader import load_backend
from glmscore.models.pooling import Pooling

PINS = {"lucaone": "lucaone==1.1.1", "lucavirus": "lucavirus==1.1.1"}
CLASSES = {"lucaone": ("LucaGPLMConfig", "LucaGPLMForMaskedLM", "LucaGPLMTokenizer", "lucaone"),
           "lucavirus": ("LucaVirusConfig", "LucaVirusForMaskedLM", "LucaVirusTokenizer", "lucavirus")}
# lengths differ, so the card's batch is padded; N and U are read as the tokenizer's own digits
SEQS = ["ACGTACGTTAGC", "GGGAAATTTCCCAGTNAC", "ACGUAC", "TTGACATATAATAGGAGGATGAAATAA"]
DIGIT_IDS = {"A": 5, "T": 6, "U": 6, "C": 7, "G": 8, "N": 9}  # the tokenizer's gene digits 1-5 in its vocabulary
CLS, SEP = 2, 3


@pytest.fixture(scope="module")
def luca_packages(tmp_path_factory):
    missing = [pin for name, pin in PINS.items() if importlib.util.find_spec(name) is None]
    if missing:
        target = tmp_path_factory.mktemp("luca_packages")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                               "--target", str(target), *missing], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"could not install {' '.join(missing)} from the package index: {done.stderr.strip()[-300:]}")
        sys.path.insert(0, str(target))
        importlib.invalidate_caches()
    yield
    if missing:
        sys.path.remove(str(target))


def test_luca_cards_name_their_package_and_sequence_type():
    cards = shipped_cards()
    for card_id, seed, hf_id in (("lucaone", "LucaOne", "LucaGroup/LucaOne-default-step36M"),
                                 ("lucavirus", "LucaVirus", "LucaGroup/LucaVirus-default-step3.8M")):
        card = cards[card_id]
        assert (card.hf_id, card.backend, card.objective, card.package, card.seq_type, card.trust_remote_code) == (
            hf_id, "hf_masked", "mlm", card_id, "gene", False)
        assert about(card_id)["seed"] == seed and about(card_id)["verified"].startswith("tiny real class: ")
        assert card.to_dict()["seq_type"] == "gene"
    assert "seq_type" not in cards["rna-fm"].to_dict()  # other cards' fingerprints unchanged
    assert not {"LucaOne", "LucaVirus"} & {seed for seed, _, _ in UNCARDED}


@pytest.mark.parametrize("card_id", ["lucaone", "lucavirus"])
def test_luca_card_scores_and_embeds_as_the_package_class(card_id, luca_packages, tmp_path):
    """The card's path (the package imported and adapted, its tokenizer through AutoTokenizer, a padded batch,
    no token type ids) against the class's own forward pass on the tokenizer's ids with token type 0 (gene)."""
    card = shipped_cards()[card_id]
    import_package(card)  # imports the package and applies models/package_compat.py, as every actor does
    module = importlib.import_module(card_id)
    config_name, masked_name, tokenizer_name, prefix = CLASSES[card_id]
    config = getattr(module, config_name)(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          max_position_embeddings=64)
    torch.manual_seed(0)
    model = getattr(module, masked_name)(config).eval()
    with torch.no_grad():  # a random, not zero, LM-head bias: the scores then depend on it
        model.lm_head.bias.normal_()
    assert model.lm_head.decoder.weight is getattr(model, prefix).embeddings.embed_tokens.weight  # the tie, restated
    tokenizer = getattr(module, tokenizer_name)()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    local = card.with_(hf_id=str(tmp_path), revision=None)
    backend = BACKENDS.get(local.backend)
    backend.preflight(local, backend.Options(), "score")
    scorer = load_backend(local, device="cpu")
    assert type(scorer.tokenizer).__name__ == tokenizer_name and type(scorer.model).__name__ == masked_name
    encoded = scorer.encode(SEQS)
    result = scorer.loglik_sequences(SEQS)
    mean = scorer.embed(encoded, Pooling.parse("mean"))
    cls = scorer.embed(encoded, Pooling.parse("cls"))

    direct = getattr(module, masked_name).from_pretrained(tmp_path, dtype=torch.float32).eval()
    for i, seq in enumerate(SEQS):
        inputs = tokenizer(seq, seq_type="gene", return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        assert ids == [CLS] + [DIGIT_IDS[c] for c in seq] + [SEP]
        assert encoded[i].ids.tolist() == ids and encoded[i].real.tolist() == [False] + [True] * len(seq) + [False]
        with torch.no_grad():
            out = direct(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         token_type_ids=inputs["token_type_ids"], output_hidden_states=True)
        lp = torch.log_softmax(out.logits[0].double(), -1)
        expected = sum(lp[j, ids[j]].item() for j in range(1, len(ids) - 1))
        assert result.loglik_sum[i] == pytest.approx(expected, rel=1e-5)
        hidden = out.hidden_states[-1][0].numpy()
        np.testing.assert_allclose(mean[i], hidden[1:-1].mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cls[i], hidden[0], rtol=1e-5, atol=1e-6)
