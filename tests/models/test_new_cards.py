"""Cards of issue 41: DNABERT v1 (overlapping k-mer words), Evo 1.5 and Evo 2 7B base on their siblings' paths,
BiRNA-BERT (a tokenizer kept in another repository), and the seed models without a card.

Tiny random configurations of the real classes (transformers' BertForMaskedLM, BertTokenizer), saved with
save_pretrained, loaded through the card's path and compared with a direct forward pass."""

import itertools

import numpy as np
import pytest
import torch

from glmscore.models.base import BACKENDS
from glmscore.models.cards import UNCARDED, about, shipped_cards, zoo_table
from glmscore.models.errors import GlmscoreError
from glmscore.models.loader import load_backend
from glmscore.models.pooling import Pooling

SEQS = ["ACGTACGTTAGC", "GGGAAATTTCCCAGTNAC", "ACGTAC", "TTGACATATAATAGGAGGATGAAATAA"]


def dnabert_tokenizer(path, k: int):
    """DNABERT's vocabulary: the five specials, then every k-mer; a BertTokenizer that keeps upper case."""
    from transformers import BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + ["".join(w) for w in itertools.product("ACGT", repeat=k)]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(path / "vocab.txt"), do_lower_case=False)
    tok.save_pretrained(path)
    return tok, {w: i for i, w in enumerate(words)}


def tiny_bert(vocab_size: int, pad_id: int = 0):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=64, pad_token_id=pad_id)).eval()


def test_dnabert_cards_read_overlapping_kmer_words(tmp_path):
    """Each DNABERT card (k = 3..6) turns a sequence into every position's k-mer, one vocabulary word each,
    between [CLS] and [SEP] (DNABERT's seq2kmer); N words are [UNK] and not real; a too-short sequence and a
    lower-casing tokenizer are refused in one sentence."""
    from transformers import AutoTokenizer

    from glmscore.models.tokenization import TokenPolicy

    cards = shipped_cards()
    for k in (3, 4, 5, 6):
        card = cards[f"dnabert-{k}"]
        assert (card.hf_id, card.overlapping_kmer, card.kmer, card.backend) == (f"zhihan1996/DNA_bert_{k}", k, 0, "hf_masked")
        assert about(card.id)["seed"] == "DNABERT"
        _, vocab = dnabert_tokenizer(tmp_path / str(k), k)
        policy = TokenPolicy(card, AutoTokenizer.from_pretrained(tmp_path / str(k)), card.max_context)
        for seq, enc in zip(SEQS, policy.encode(SEQS)):
            words = [seq[i : i + k] for i in range(len(seq) - k + 1)]
            assert enc.ids.tolist() == [vocab["[CLS]"]] + [vocab.get(w, vocab["[UNK]"]) for w in words] + [vocab["[SEP]"]]
            assert enc.real.tolist() == [False] + ["N" not in w for w in words] + [False]
        with pytest.raises(GlmscoreError, match=rf"1 sequence\(s\) are shorter than one {k}-mer word .*\(short\)"):
            policy.encode(["AC"], row_names=["short"])
    lower = TokenPolicy(cards["dnabert-3"], AutoTokenizer.from_pretrained(tmp_path / "3", do_lower_case=True), 512)
    with pytest.raises(GlmscoreError, match="does not read AAA as one word"):
        lower.encode(["ACGTACGT"])


def test_dnabert_card_embeds_as_a_direct_forward_pass_and_refuses_to_score(tmp_path):
    """A tiny BertForMaskedLM with a 3-mer BertTokenizer, loaded through the dnabert-3 card: mean, cls and
    cls+mean embeddings equal a direct forward pass on the k-mer words (batched with padding); score is refused
    on the driver and in the actor."""
    tok, vocab = dnabert_tokenizer(tmp_path / "dnabert", 3)
    tiny_bert(len(vocab)).save_pretrained(tmp_path / "dnabert")
    card = shipped_cards()["dnabert-3"].with_(hf_id=str(tmp_path / "dnabert"))
    scorer = load_backend(card, device="cpu")
    encoded = scorer.encode(SEQS)
    got = {p: scorer.embed(encoded, Pooling.parse(p)) for p in ("mean", "cls", "cls+mean")}
    model = type(tiny_bert(len(vocab))).from_pretrained(tmp_path / "dnabert", dtype=torch.float32).eval()
    for i, seq in enumerate(SEQS):
        words = " ".join(seq[j : j + 3] for j in range(len(seq) - 2))
        ids = tok(words)["input_ids"]
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].numpy()
        real = [j for j in range(1, len(ids) - 1) if ids[j] != vocab["[UNK]"]]
        np.testing.assert_allclose(got["mean"][i], hidden[real].mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(got["cls"][i], hidden[0], atol=1e-5)
        np.testing.assert_allclose(got["cls+mean"][i], np.concatenate([hidden[0], hidden[real].mean(axis=0)]), atol=1e-5)
    backend = BACKENDS.get(card.backend)
    with pytest.raises(GlmscoreError, match="reads overlapping 3-mers: every base of a masked word .* embeds only"):
        backend.preflight(card, backend.Options(), "score")
    backend.preflight(card, backend.Options(), "embed")
    with pytest.raises(GlmscoreError, match="reads overlapping 3-mers"):
        scorer.loglik(encoded)
    with pytest.raises(GlmscoreError, match="window pooling needs a character or fixed k-mer tokenizer"):
        scorer.embed(encoded, Pooling.parse("window:0-4"))


def test_birna_bert_loads_its_tokenizer_from_another_repository(tmp_path):
    """birna-bert names its tokenizer's repository (tokenizer_id): a model folder without tokenizer files and a
    tokenizer folder, loaded through the card, score and embed as a direct forward pass; without the field the
    model folder alone is refused in one sentence."""
    from transformers import AutoModelForMaskedLM

    from tests.tiny_models import dna_tokenizer

    card = shipped_cards()["birna-bert"]
    assert (card.tokenizer_id, card.tokenizer_revision) == ("buetnlpbio/birna-tokenizer", "main")
    assert card.to_dict()["tokenizer_id"] == "buetnlpbio/birna-tokenizer"
    assert "tokenizer_id" not in shipped_cards()["dnabert-2-117m"].to_dict()  # other cards' fingerprints unchanged
    tok = dna_tokenizer(kmer=1, with_bos=False, mlm=True)
    tok.save_pretrained(tmp_path / "tokenizer")
    tiny_bert(len(tok), tok.pad_token_id).save_pretrained(tmp_path / "model")
    assert not list((tmp_path / "model").glob("tokenizer*"))
    local = card.with_(hf_id=str(tmp_path / "model"), revision=None, trust_remote_code=False,
                       tokenizer_id=str(tmp_path / "tokenizer"), tokenizer_revision=None)
    backend = BACKENDS.get(local.backend)
    backend.preflight(local, backend.Options(), "score")
    scorer = load_backend(local, device="cpu")
    res = scorer.loglik_sequences(SEQS)
    emb = scorer.embed(scorer.encode(SEQS), Pooling.parse("mean"))
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
    for i, seq in enumerate(SEQS):
        ids = tok(seq)["input_ids"]
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_hidden_states=True)
        lp = torch.log_softmax(out.logits[0].double(), -1)
        assert res.loglik_sum[i] == pytest.approx(sum(lp[j, ids[j]].item() for j in range(1, len(ids) - 1)), abs=1e-4)
        np.testing.assert_allclose(emb[i], out.hidden_states[-1][0, 1:-1].numpy().mean(axis=0), atol=1e-5)
    alone = local.with_(tokenizer_id="")
    with pytest.raises(GlmscoreError, match="the folder has no tokenizer files"):
        backend.preflight(alone, backend.Options(), "score")


def test_evo_1_5_and_evo_2_7b_base_cards_follow_their_siblings():
    """Evo 1.5 runs on Evo 1's path (StripedHyena remote code, Evo's published rules) with 8,192 positions;
    Evo 2 7B base on Evo 2's package path (the package knows its checkpoint name) with 8,192 bases."""
    from glmscore.models.backends.evo2_vortex import MODEL_NAMES

    cards = shipped_cards()
    evo15, evo1 = cards["evo-1.5-8k-base"], cards["evo-1-8k-base"]
    assert (evo15.hf_id, evo15.max_context, about(evo15.id)["seed"]) == ("evo-design/evo-1.5-8k-base", 8192, "Evo 1.5")
    same = ("backend", "objective", "alphabet", "add_bos", "dtype", "trust_remote_code", "requires", "protocols",
            "paper_prepend_id", "paper_dtype", "paper_keep_float32", "vllm")
    assert {f: getattr(evo15, f) for f in same} == {f: getattr(evo1, f) for f in same}
    base, evo2 = cards["evo2-7b-base"], cards["evo2-7b"]
    assert (base.hf_id, base.max_context, MODEL_NAMES[base.hf_id]) == ("arcinstitute/evo2_7b_base", 8192, "evo2_7b_base")
    assert {f: getattr(base, f) for f in same + ("environment",)} == {f: getattr(evo2, f) for f in same + ("environment",)}


def test_every_seed_model_has_a_card_or_a_reason():
    """`glmscore models --table` lists the seed models without a card with a reason each (one table, in
    models/cards.py); none of them also has a card, and the ones carded in issue 41 are off the list."""
    carded = {about(c)["seed"] for c in shipped_cards()}
    assert {"DNABERT", "Evo 1.5", "BiRNA-BERT"} <= carded
    seeds = [seed for seed, _, _ in UNCARDED]
    assert seeds == ["GenSLM", "RESM", "SPACE", "CRAFTS"]  # LucaOne, LucaVirus: test_luca_cards; GenerRNA: test_generrna; AIDO.RNA: test_aido_rna
    assert not set(seeds) & carded and all(why for _, _, why in UNCARDED)
    table = zoo_table()
    assert "Seed models without a card, and why:" in table
    assert all(f"| {seed} |" in table for seed in seeds)


def test_a_cached_tokenizer_repository_needs_no_hub(monkeypatch):
    """A tokenizer's own repository has no config.json: its cached tokenizer_config.json is enough offline."""
    from glmscore.models import tokenization

    cached = {("buetnlpbio/birna-tokenizer", "tokenizer_config.json")}
    monkeypatch.setattr(tokenization, "try_to_load_from_cache",
                        lambda repo, name, revision=None: "/cache/x" if (repo, name) in cached else None)
    monkeypatch.setattr(tokenization, "_hub_reachable", lambda host, port: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    tokenization.check_hub("buetnlpbio/birna-tokenizer", "main")
    with pytest.raises(GlmscoreError, match="is not in the Hugging Face cache"):
        tokenization.check_hub("buetnlpbio/birna-bert", "main")
