"""``--protocol paper``: the published Nullsette scripts' tokenization and averaging, per tokenizer shape.

Each tiny model is built with the shape of the tokenizer a published script used (no download):
HyenaDNA (characters, [SEP] appended), GENERator (<s>, 6-mers from the 5' end, the 1-5 base remainder as
one <oov>, </s>), Nucleotide Transformer (ESM, <cls>, 6-mers then single bases, padded to 1,000 tokens),
DNABERT-2 (BPE with [CLS]/[SEP]) and Evo (characters after a prepended end-of-document id). The reference
in every test is a hand-written forward pass of the published rule, batch size 1, fp32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glmscore.models.base import resolve_card
from glmscore.models.errors import GlmscoreError
from glmscore.models.loader import load_backend
from tests.tiny_models import make_dnabert2_like, make_generator_like, make_hyena_like, make_nt_like

# lengths 887..928 in kosuri: most are not a multiple of 6; one Zahm-style IUPAC letter (B) goes in unchanged
SEQS = ["ACGTTGCAACGTAGCTAGGATCCAT", "TTGACAATTAATCATCGGCTCGTATAATGTGTGG", "GGGCCCATGAAACGTTAA",
        "ACGTACGTBACGTTGCA", "ATGCATGCATGCAT"]


@pytest.fixture(scope="module")
def hyena_like(tmp_path_factory):
    return make_hyena_like(tmp_path_factory.mktemp("m") / "hyena-like")


@pytest.fixture(scope="module")
def generator_like(tmp_path_factory):
    return make_generator_like(tmp_path_factory.mktemp("m") / "generator-like")


@pytest.fixture(scope="module")
def nt_like(tmp_path_factory):
    return make_nt_like(tmp_path_factory.mktemp("m") / "nt-like")


@pytest.fixture(scope="module")
def dnabert2_like(tmp_path_factory):
    return make_dnabert2_like(tmp_path_factory.mktemp("m") / "dnabert2-like", SEQS)


# ---------------------------------------------------------------- the published rules, by hand


def _published_clm(path, seq, prepend=None):
    """compute_ll_clm: the tokenizer's ids with its default special tokens (after ``prepend``), one
    unpadded row, mean of log p(id_t | ids_<t) over t = 1..n-1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tok(seq, return_tensors="pt", add_special_tokens=True)["input_ids"]
    if prepend is not None:
        ids = torch.cat([torch.tensor([[prepend]]), ids], dim=1)
    with torch.no_grad():
        logits = model(ids).logits
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return lp.mean().item(), ids[0].tolist()


def _published_mlm(path, seq, pad_to_max_length=False):
    """compute_llr_mlm: one unmasked pass, attention_mask = ids != pad, mean of log p(id) over every
    position of input_ids (special tokens and the protocol's own padding included)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForMaskedLM.from_pretrained(path, dtype=torch.float32).eval()
    kw = {"padding": "max_length", "max_length": tok.model_max_length} if pad_to_max_length else {}
    ids = tok([seq], return_tensors="pt", **kw)["input_ids"]  # NT.py: batch_encode_plus (gone in transformers 5)
    with torch.no_grad():
        logits = model(ids, attention_mask=ids != tok.pad_token_id).logits
    return torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1).mean().item(), ids[0].tolist()


def _check(scorer, expected: list[float]):
    together = scorer.loglik_sequences(SEQS).mean
    np.testing.assert_allclose(together, expected, rtol=0, atol=2e-5)
    # batch-exact: one row per forward pass gives the same scores as mixed-length batches
    scorer.batch_tokens = 1
    np.testing.assert_allclose(scorer.loglik_sequences(SEQS).mean, together, rtol=0, atol=2e-5)


def test_hyenadna_shape_scores_every_base_after_the_first_and_the_appended_sep(hyena_like):
    card = resolve_card(str(hyena_like))
    scorer = load_backend(card, protocol="paper")
    expected = [_published_clm(hyena_like, s)[0] for s in SEQS]
    _check(scorer, expected)
    enc = scorer.encode(SEQS[:1])[0]
    assert enc.ids[-1] == scorer.tokenizer.sep_token_id and len(enc.ids) == len(SEQS[0]) + 1
    assert scorer.loglik_sequences(SEQS[:1]).n_scored[0] == len(SEQS[0])  # bases 2..L and [SEP]
    # the IUPAC letter reaches the tokenizer unchanged (its unknown token), and is still counted
    b = scorer.encode([SEQS[3]])[0]
    assert b.ids[SEQS[3].index("B")] == scorer.tokenizer.unk_token_id and b.n_ambiguous == 1
    # glmscore's default maps B to N and scores no [SEP]: a different number
    default = load_backend(card).loglik_sequences(SEQS).mean
    assert not np.allclose(default, expected, atol=1e-3)


def test_generator_shape_keeps_the_5prime_kmers_and_the_oov_remainder(generator_like):
    card = resolve_card(str(generator_like)).with_(kmer=6, add_bos=True)
    scorer = load_backend(card, protocol="paper")
    expected, ids = zip(*[_published_clm(generator_like, s) for s in SEQS])
    _check(scorer, list(expected))
    tok = scorer.tokenizer
    for s, e, ref in zip(SEQS, scorer.encode(SEQS), ids):
        assert e.ids.tolist() == ref
        assert ref[0] == tok.bos_token_id and ref[-1] == tok.eos_token_id
        # 6-mers read from the 5' end; a 1-5 base remainder (or a word with B) is one <oov>
        assert tok.convert_ids_to_tokens(ref[1])  == s[:6] or "B" in s[:6]
        assert (ref[-2] == tok.convert_tokens_to_ids("<oov>")) == (len(s) % 6 != 0 or "B" in s[-6:])
    # glmscore's default trims the 5' remainder instead: every 6-mer moves, so the tokens differ
    default = load_backend(card).encode(SEQS[:1])[0]
    assert default.ids.tolist() != ids[0]


def test_nucleotide_transformer_shape_averages_over_1000_padded_positions(nt_like):
    card = resolve_card(str(nt_like)).with_(paper_pad_to_max_length=True, kmer=6)
    scorer = load_backend(card, protocol="paper")
    expected = [_published_mlm(nt_like, s, pad_to_max_length=True)[0] for s in SEQS]
    _check(scorer, expected)
    res = scorer.loglik_sequences(SEQS)
    assert (res.n_scored == 1000).all()  # <cls>, the real tokens and the pad positions
    # the pads are masked from attention but scored: unpadded, the same rule gives another number
    unpadded = [_published_mlm(nt_like, s)[0] for s in SEQS]
    assert not np.allclose(unpadded, expected, atol=1e-3)
    # glmscore's default: real tokens only, no protocol padding
    default = load_backend(card).loglik_sequences(SEQS)
    assert (default.n_scored < 20).all()


def test_dnabert2_shape_includes_cls_and_sep_in_the_mean(dnabert2_like):
    card = resolve_card(str(dnabert2_like))
    scorer = load_backend(card, protocol="paper")
    expected, ids = zip(*[_published_mlm(dnabert2_like, s) for s in SEQS])
    _check(scorer, list(expected))
    res = scorer.loglik_sequences(SEQS)
    assert res.n_scored.tolist() == [len(i) for i in ids]
    # glmscore's default leaves out [CLS] and [SEP] (and the [UNK] that B becomes in row 3)
    default = load_backend(card).loglik_sequences(SEQS).n_scored
    assert (default == res.n_scored - 2 - np.array([0, 0, 0, 1, 0])).all()


def test_evo_shape_prepends_the_end_of_document_id_and_scores_all_bases(tiny_llama_nobos):
    eod = 3  # the tiny tokenizer's [EOS] stands in for Evo's end-of-document id (0 in the real card)
    card = resolve_card(str(tiny_llama_nobos)).with_(paper_prepend_id=eod)
    scorer = load_backend(card, protocol="paper")
    expected = [_published_clm(tiny_llama_nobos, s, prepend=eod)[0] for s in SEQS]
    _check(scorer, expected)
    assert scorer.loglik_sequences(SEQS).n_scored.tolist() == [len(s) for s in SEQS]


def test_protocol_user_errors_are_one_sentence(tiny_bert):
    from glmscore.models.backends.hf_masked import HFMasked

    with pytest.raises(GlmscoreError, match="no published protocol"):
        HFMasked.preflight(resolve_card("caduceus-ph-131k"), HFMasked.Options(protocol="paper"), "score")
    card = resolve_card(str(tiny_bert))
    with pytest.raises(GlmscoreError, match="float32"):
        HFMasked.preflight(card, HFMasked.Options(protocol="paper", dtype="bfloat16"), "score")
    with pytest.raises(GlmscoreError, match="pll"):
        HFMasked.preflight(card, HFMasked.Options(protocol="paper", mlm_mode="pll"), "score")
    with pytest.raises(GlmscoreError, match="embeddings have no published protocol"):
        HFMasked.preflight(card, HFMasked.Options(protocol="paper"), "embed")
    with pytest.raises(GlmscoreError, match="does not apply to backend kmer"):
        load_backend(resolve_card("kmer:3"), protocol="paper")
    # the default protocol leaves the fingerprint of existing score folders unchanged; paper changes it
    assert "protocol" not in HFMasked.Options().result_fields()
    assert HFMasked.Options(protocol="paper").result_fields()["protocol"] == "paper"
    # paper always runs in fp32, whatever the card's dtype
    assert HFMasked.runtime(card.with_(dtype="bfloat16"), HFMasked.Options(protocol="paper"), "cuda").dtype == "float32"


def test_score_job_under_the_published_protocol(ray_cluster, small_nullsette, hyena_like, tmp_path, capsys):
    """`glmscore score --protocol paper` on Ray: the shards hold the published rule's numbers, the manifest
    and the fingerprint record the protocol, and the default's shards are not reused for it."""
    import json

    import pyarrow.dataset as pads

    from glmscore.pipelines.cli import main
    from glmscore.pipelines.fasta import read_all

    args = ["score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", str(hyena_like),
            "--limit", "3", "--datasets", "synthetic_ecoli"]
    assert main(args + ["--out", str(tmp_path / "paper"), "--protocol", "paper"]) == 0
    assert main(args + ["--out", str(tmp_path / "default")]) == 0
    paper = pads.dataset(tmp_path / "paper", partitioning="hive").to_table().to_pandas()
    default = pads.dataset(tmp_path / "default", partitioning="hive").to_table().to_pandas()
    assert len(paper) == 3 * 20
    for group in ("nonmutant", "mutant_translocation7"):
        seqs = read_all(small_nullsette / "synthetic_ecoli" / f"{group}.txt")[1][:3]
        got = paper[paper["group"] == group].sort_values("pair_index")["score"].to_numpy()
        np.testing.assert_allclose(got, [_published_clm(hyena_like, s)[0] for s in seqs], rtol=0, atol=2e-5)
    assert not np.allclose(paper["score"].sort_values(), default["score"].sort_values(), atol=1e-4)
    manifest = json.loads((tmp_path / "paper" / "_manifest.json").read_text())
    assert manifest["config"]["options"]["protocol"] == "paper"
    assert json.loads((tmp_path / "default" / "_manifest.json").read_text())["config"]["fingerprint"] != manifest["config"]["fingerprint"]
    # a backend without the protocol: one sentence, exit 2, no traceback
    capsys.readouterr()
    assert main(args[:5] + ["--model", "kmer:3", "--out", str(tmp_path / "k"), "--protocol", "paper"]) == 2
    err = capsys.readouterr().err
    assert "--protocol does not apply to backend kmer" in err and "Traceback" not in err


def test_paper_on_a_vllm_card_runs_on_its_transformers_fallback(tiny_llama, small_nullsette, monkeypatch):
    """GENERator and METAGENE-1 cards default to vLLM, which has no published protocol: ``--protocol paper``
    picks the card's fallback backend (hf_causal) instead of refusing the flag."""
    from glmscore.models import base as cards  # resolve_card reads the card registry through models.base
    from glmscore.pipelines.score import ScoreConfig, resolve_job

    vllm_card = resolve_card(str(tiny_llama)).with_(id="vllm-card", backend="vllm_causal", fallback_backend="hf_causal")
    monkeypatch.setattr(cards, "shipped_cards", lambda: {"vllm-card": vllm_card})
    cfg = dict(benchmark="nullsette", data=str(small_nullsette), model="vllm-card", out="unused")
    assert resolve_job(ScoreConfig(**cfg, options={"protocol": "paper"})).backend.name == "hf_causal"
    assert resolve_job(ScoreConfig(**cfg)).backend.name == "vllm_causal"
    with pytest.raises(GlmscoreError, match="--protocol does not apply to backend vllm_causal"):
        resolve_job(ScoreConfig(**cfg, backend="vllm_causal", options={"protocol": "paper"}))
