"""HF backends against hand-written forward passes on tiny models; alphabet, cards, k-mer baseline."""

import numpy as np
import pytest
import torch

from glmscore.models.alphabet import normalise
from glmscore.models.backends.kmer import fit_counts, logprob_table
from glmscore.models.base import resolve_card, rolling_windows
from glmscore.models.cards import shipped_cards
from glmscore.models.errors import GlmscoreError
from glmscore.models.loader import load_backend

SEQS = ["ACGTACGTTAGC", "GGGAAATTTCCCAGT", "AC", "TTGACATATAATAGGAGGATGAAATAA", "acgu"]


def _manual_causal(path, seq, bos=True):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tok(normalise(seq)[0], add_special_tokens=False)["input_ids"]
    if bos:
        ids = [tok.bos_token_id] + ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    vals = [lp[j, ids[j + 1]].item() for j in range(len(ids) - 1)]
    return sum(vals), len(vals)


def test_alphabet_policy():
    assert normalise("acgU") == ("ACGT", 0)
    assert normalise("ACGT", "RNA") == ("ACGU", 0)
    assert normalise("ACXNB-é") == ("ACNNNNN", 5)


def test_cards_and_unknown_model():
    cards = shipped_cards()
    assert {"hyenadna-small-32k", "nt-v1-500m-human-ref", "dnabert-2-117m", "generator-eukaryote-1.2b",
            "metagene-1", "caduceus-ph-131k", "evo-1-8k-base"} <= set(cards)
    assert not cards["metagene-1"].trust_remote_code and cards["evo-1-8k-base"].trust_remote_code
    assert resolve_card("kmer:4").order == 4
    with pytest.raises(GlmscoreError, match="unknown model"):
        resolve_card("no-such-model")
    with pytest.raises(GlmscoreError):
        resolve_card("kmer:x")


def test_every_card_says_what_it_was_verified_against_and_the_docs_show_the_zoo():
    """Each card names its seed model and what it was checked against; the docs' model zoo (docs/models.md) is
    ``glmscore models --table`` as it is now, put in at build time by docs/hooks/generated.py; the descriptive
    fields never enter a card's fingerprint."""
    from pathlib import Path

    from glmscore.models.cards import ModelCard, about, zoo_table

    for card_id in shipped_cards():
        info = about(card_id)
        assert info["seed"] and info["verified"].split(":")[0] in ("tiny real class", "stand-in", "none"), card_id
    assert "seed" not in ModelCard.__dataclass_fields__ and "verified" not in ModelCard.__dataclass_fields__
    root = Path(__file__).resolve().parents[2]
    hook = (root / "docs" / "hooks" / "generated.py").read_text()
    marker = hook.split('ZOO_MARKER = "', 1)[1].split('"', 1)[0]
    assert marker in (root / "docs" / "models.md").read_text(), "docs/models.md lost the zoo table's marker line"
    assert zoo_table().count("\n") > len(shipped_cards())  # a row per card (the built page: tests/core/test_docs.py)


def test_causal_matches_manual_forward_and_is_batch_invariant(tiny_llama):
    card = resolve_card(str(tiny_llama))
    assert not card.trust_remote_code
    scorer = load_backend(card)
    together = scorer.loglik_sequences(SEQS)
    for i, s in enumerate(SEQS):
        total, n = _manual_causal(tiny_llama, s)
        assert together.loglik_sum[i] == pytest.approx(total, abs=1e-4)
        assert together.n_scored[i] == n == len(s)  # BOS conditions the first base: every base scored
        alone = scorer.loglik_sequences([s])
        assert alone.loglik_sum[0] == pytest.approx(together.loglik_sum[i], abs=1e-5)
    # a tiny token budget forces one row per forward pass: same scores
    scorer.batch_tokens = 1
    assert np.allclose(scorer.loglik_sequences(SEQS).loglik_sum, together.loglik_sum, atol=1e-5)


def test_a_gpt2_model_matches_its_own_forward_pass(tmp_path):
    """GPT-2 (Plant DNAGPT's architecture: absolute positions, no rotary) with a single-base tokenizer:
    scores equal a direct forward pass, batched with padding or one row at a time."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.tiny_models import dna_tokenizer

    tok = dna_tokenizer(with_bos=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    model.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    card = resolve_card(str(tmp_path / "gpt2"))
    assert (card.backend, card.objective, card.trust_remote_code) == ("hf_causal", "clm", False)
    scorer = load_backend(card)
    together = scorer.loglik_sequences(SEQS)
    for i, s in enumerate(SEQS):
        total, n = _manual_causal(tmp_path / "gpt2", s)
        assert together.loglik_sum[i] == pytest.approx(total, abs=1e-4) and together.n_scored[i] == n
    scorer.batch_tokens = 1
    assert np.allclose(scorer.loglik_sequences(SEQS).loglik_sum, together.loglik_sum, atol=1e-5)


def test_causal_without_bos_skips_first_token(tiny_llama_nobos):
    scorer = load_backend(resolve_card(str(tiny_llama_nobos)))
    res = scorer.loglik_sequences(SEQS[:2])
    for i, s in enumerate(SEQS[:2]):
        total, n = _manual_causal(tiny_llama_nobos, s, bos=False)
        assert res.n_scored[i] == n == len(s) - 1
        assert res.loglik_sum[i] == pytest.approx(total, abs=1e-4)


def test_long_sequences_error_truncate_window(tiny_llama):
    card = resolve_card(str(tiny_llama)).with_(max_context=9)
    seq = "ACGTTGCAACGTAGGCTA"  # 18 bases + BOS = 19 tokens
    with pytest.raises(GlmscoreError, match="exceed the model's context of 9 tokens"):
        load_backend(card).encode([seq], row_names=["cassette-7"])
    trunc = load_backend(card, long="truncate")
    enc = trunc.encode([seq])
    assert enc[0].truncated and len(enc[0].ids) == 9
    win = load_backend(card, long="window")
    res = win.loglik_sequences([seq])
    assert res.n_scored[0] == 18  # every base scored once
    # reference: the windows fed one by one to the hand-written forward pass
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    ids = win.encode([seq])[0].ids
    total = 0.0
    for start, end, score_from in rolling_windows(len(ids), 9):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids[start:end]])).logits[0].double(), -1)
        total += sum(lp[j - 1 - start, ids[j]].item() for j in range(score_from, end))
    assert res.loglik_sum[0] == pytest.approx(total, abs=1e-4)


def test_rolling_windows_cover_every_target_once():
    for n in (5, 9, 10, 30, 31):
        targets = []
        for start, end, score_from in rolling_windows(n, 9):
            assert end - start <= 9 and start < score_from
            targets += list(range(score_from, end))
        assert targets == list(range(1, n))


def test_masked_unmasked_and_pll_match_manual(tiny_bert):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForMaskedLM.from_pretrained(tiny_bert, dtype=torch.float32).eval()
    scorer = load_backend(resolve_card(str(tiny_bert)))
    res = scorer.loglik_sequences(SEQS)
    pll = load_backend(resolve_card(str(tiny_bert)), mlm_mode="pll").loglik_sequences(SEQS[:2])
    for i, s in enumerate(SEQS):
        ids = tok(normalise(s)[0])["input_ids"]  # [CLS] ... [SEP]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        vals = [lp[j, ids[j]].item() for j in range(1, len(ids) - 1)]
        assert res.n_scored[i] == len(s)
        assert res.loglik_sum[i] == pytest.approx(sum(vals), abs=1e-4)
        if i < 2:
            total = 0.0
            for j in range(1, len(ids) - 1):
                masked = list(ids)
                masked[j] = tok.mask_token_id
                with torch.no_grad():
                    lpm = torch.log_softmax(model(torch.tensor([masked])).logits[0].double(), -1)
                total += lpm[j, ids[j]].item()
            assert pll.loglik_sum[i] == pytest.approx(total, abs=1e-4)


def test_kmer_matches_explicit_counting():
    train = ["ACGTACGTAAC", "GGGTTTACGN", "ACGGGACCA"]
    order = 2
    counts = fit_counts(train, order)
    idx = {b: i for i, b in enumerate("ACGT")}
    loop = np.zeros((16, 4))
    for s in train:
        for i in range(order, len(s)):
            w = s[i - order : i + 1]
            if "N" not in w:
                loop[idx[w[0]] * 4 + idx[w[1]], idx[w[2]]] += 1
    assert np.array_equal(counts, loop)
    card = resolve_card("kmer:2")
    scorer = load_backend(card, fitted={None: logprob_table(counts)})
    res = scorer.loglik_sequences(["ACGTNAC"])
    expected = [np.log((loop[r, c] + 1) / (loop[r].sum() + 4)) for r, c in
                [(idx["A"] * 4 + idx["C"], idx["G"]), (idx["C"] * 4 + idx["G"], idx["T"])]]
    assert res.n_scored[0] == 2  # windows touching N are skipped
    assert res.loglik_sum[0] == pytest.approx(sum(expected))


def test_batch_halves_on_cuda_out_of_memory(tiny_llama):
    """No GPU here: the out-of-memory error is raised by a wrapper around the real forward pass."""
    scorer = load_backend(resolve_card(str(tiny_llama)), batch_tokens=10_000)
    expected = scorer.loglik_sequences(SEQS).loglik_sum
    real_forward = scorer.model.forward
    sizes = []

    def forward(*args, input_ids=None, **kw):
        sizes.append(len(input_ids))
        if len(input_ids) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(*args, input_ids=input_ids, **kw)

    scorer.model.forward = forward
    got = scorer.loglik_sequences(SEQS).loglik_sum
    assert sizes == [5, 2, 3, 1, 2]  # 5 fails -> 2 + 3; 3 fails -> 1 + 2
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_grouped_kmer_counts_equal_per_group_fits():
    seqs = ["ACGTACGGTA", "TTGACANNTATAAT", "GGGCCCAAAT", "ACGU", "CCGTA"]
    groups = np.array([0, 1, 0, 2, 1])
    by_group = fit_counts(seqs, 2, groups=groups, n_groups=3)
    for g in range(3):
        assert np.array_equal(by_group[g], fit_counts([s for s, x in zip(seqs, groups) if x == g], 2))


def test_kmer_counts_in_blocks_equal_one_pass(monkeypatch):
    from glmscore.models.backends import kmer

    rng = np.random.default_rng(3)
    seqs = ["".join(rng.choice(list("ACGTN"), size=rng.integers(1, 30))) for _ in range(101)]
    groups = rng.integers(0, 4, size=101)
    whole, whole_groups = fit_counts(seqs, 3), fit_counts(seqs, 3, groups=groups, n_groups=4)
    monkeypatch.setattr(kmer, "FIT_BASES", 100)  # blocks of about 100 bases, the last one short
    assert np.array_equal(fit_counts(seqs, 3), whole) and whole.sum() > 0
    assert np.array_equal(fit_counts(seqs, 3, groups=groups, n_groups=4), whole_groups)


def test_kmer_fit_on_streamed_blocks_equals_one_block():
    """The driver streams reference sequences to ``fit`` in blocks: the crossfit folds follow each row's
    pair_index across blocks, so the tables equal a fit on one block of every sequence."""
    from glmscore.models.backends.kmer import Kmer, KmerOptions
    from glmscore.models.base import resolve_card

    rng = np.random.default_rng(5)
    seqs = ["".join(rng.choice(list("ACGT"), size=rng.integers(5, 40))) for _ in range(103)]
    card, options = resolve_card("kmer:3"), KmerOptions()
    one = Kmer.fit(card, options, {"d": iter([seqs])})
    blocks = Kmer.fit(card, options, {"d": (seqs[i:i + 10] for i in range(0, 103, 10))})
    assert one.keys() == blocks.keys() and len(one) == options.kmer_folds
    for key in one:
        assert np.array_equal(one[key], blocks[key])
    background = Kmer.fit(card, options, {None: (seqs[i:i + 10] for i in range(0, 103, 10))})
    assert np.array_equal(background[None], logprob_table(fit_counts(seqs, 3)))


def test_a_gpu_actor_whose_torch_sees_no_cuda_says_so(tiny_llama, monkeypatch):
    """Ray placed the actor on a GPU, but torch there sees none (a CPU build on a GPU image, Ray's fake GPU
    nodes): the sentence says that, not "this GPU has no bfloat16 support". No GPU here: CUDA's absence
    is forced, so the test holds on a GPU machine too."""
    from glmscore.models.base import BACKENDS, Runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    card = resolve_card(str(tiny_llama))
    backend = BACKENDS.get(card.backend)
    with pytest.raises(GlmscoreError, match=r"Ray gave this actor a GPU on node .*, but torch sees no CUDA device "
                                            r"there .*install a CUDA torch on the GPU nodes"):
        backend(card, backend.Options(), Runtime(device="cuda", dtype="bfloat16"))
