"""Per-model rules: a model with code of its own in its folder (``auto_map``), shaped like HyenaDNA's Hugging Face port:
``forward(input_ids, ...)`` takes no attention mask, so it can never be told which positions are padding.

The stand-in below is written into the model folder as transformers' remote code is; it raises when it is
given an attention mask or a pad token, as the real port does (TypeError) or would silently read (a pad
scored like a base). Then the published scripts' precision and context per card, and cards by hub id."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from glmscore.models.base import resolve_card
from glmscore.models.errors import GlmscoreError
from glmscore.models.loader import load_backend
from glmscore.models.pooling import Pooling
from tests.conftest import ROOT
from tests.tiny_models import dna_tokenizer

MODELING = textwrap.dedent('''
    import torch
    from transformers import PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput


    class HyenaStandInConfig(PretrainedConfig):
        model_type = "hyena_standin"

        def __init__(self, vocab_size=16, d_model=32, max_seq_len=1024, **kwargs):
            self.vocab_size, self.d_model, self.max_seq_len = vocab_size, d_model, max_seq_len
            super().__init__(**kwargs)


    class HyenaStandInForCausalLM(PreTrainedModel):
        config_class = HyenaStandInConfig

        def __init__(self, config):
            super().__init__(config)
            self.embed = torch.nn.Embedding(config.vocab_size, config.d_model)
            self.conv = torch.nn.Conv1d(config.d_model, config.d_model, 4)
            self.head = torch.nn.Linear(config.d_model, config.vocab_size)
            self.poles = torch.nn.Parameter(torch.linspace(0.5, 1.5, config.d_model))  # named as Evo's filters are
            self.post_init()

        def _init_weights(self, module):
            pass  # torch's own initialisation; the weights are then loaded from the folder

        def forward(self, input_ids, inputs_embeds=None, labels=None, output_hidden_states=None, return_dict=None):
            if (input_ids == self.config.pad_token_id).any():
                raise ValueError("a pad token reached a model that cannot mask it")
            x = self.embed(input_ids)
            h = torch.tanh(self.conv(torch.nn.functional.pad(x.transpose(1, 2), (3, 0)))).transpose(1, 2)
            h = h * self.poles.to(h.dtype)
            return CausalLMOutput(logits=4 * self.head(h), hidden_states=(x, h) if output_hidden_states else None)


    class HyenaStandInModel(HyenaStandInForCausalLM):
        """The backbone (AutoModel, as the port's HyenaDNAModel): the same weights, hidden states out."""

        def forward(self, input_ids, inputs_embeds=None, output_hidden_states=None, return_dict=None):
            out = super().forward(input_ids, output_hidden_states=True)
            return BaseModelOutput(last_hidden_state=out.hidden_states[-1])
''')


@pytest.fixture(scope="module")
def maskless_model(tmp_path_factory):
    """A folder as `hf download` leaves a remote-code model: config.json with auto_map, the modelling
    file, weights and a character tokenizer whose only model input is input_ids."""
    import importlib.util

    import torch

    path = tmp_path_factory.mktemp("models") / "hyena-standin"
    path.mkdir()
    (path / "modeling_standin.py").write_text(MODELING)
    spec = importlib.util.spec_from_file_location("modeling_standin_test", path / "modeling_standin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tok = dna_tokenizer(with_bos=False)
    tok.model_input_names = ["input_ids"]
    torch.manual_seed(0)
    model = module.HyenaStandInForCausalLM(module.HyenaStandInConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config.update(architectures=["HyenaStandInForCausalLM"], model_type="hyena_standin",
                  auto_map={"AutoConfig": "modeling_standin.HyenaStandInConfig",
                            "AutoModel": "modeling_standin.HyenaStandInModel",
                            "AutoModelForCausalLM": "modeling_standin.HyenaStandInForCausalLM"})
    (path / "config.json").write_text(json.dumps(config))
    return path


SEQS = ["ACGTACGTAA", "GGGCCCAT", "ACGTACGTAT", "TTAGC", "acgtnacgta", "CCCCGGGGTTAA"]


def test_a_model_without_attention_mask_is_scored_without_padding(maskless_model):
    import torch
    from transformers import AutoModelForCausalLM

    scorer = load_backend(resolve_card(str(maskless_model), trust_remote_code=True), batch_tokens=1000)
    assert not scorer.takes_mask
    got = scorer.loglik_sequences(SEQS).mean
    reference = AutoModelForCausalLM.from_pretrained(maskless_model, trust_remote_code=True).eval()
    want = []
    for e in scorer.encode(SEQS):  # one sequence per pass, no mask: the port's own way
        ids = torch.from_numpy(e.ids[None])
        with torch.no_grad():
            logits = reference(ids).logits[0, :-1].double()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0].numpy()
        want.append(lp[e.real[1:]].mean())  # no BOS: the first real token has no context and is not scored
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    emb = scorer.embed(scorer.encode(SEQS), Pooling.parse("mean"))
    assert emb.shape == (len(SEQS), 32) and np.isfinite(emb).all()


def test_a_model_without_attention_mask_fine_tunes_without_padding(maskless_model):
    """Fine-tuning's regressor on the maskless stand-in (which raises on a pad): a padded batch of mixed
    lengths runs as runs of one length, equal row by row to the plain forward pass, and gradients reach
    the backbone."""
    import torch

    from glmscore.models.regression import load_base, make_regressor, pad_batch
    from glmscore.models.tokenization import TokenPolicy, load_tokenizer

    card = resolve_card(str(maskless_model), trust_remote_code=True)
    tok = load_tokenizer(card.hf_id, card.revision, True)
    enc = TokenPolicy(card, tok, 1000).encode(SEQS)
    assert len({len(e.ids) for e in enc}) > 1  # a batch of mixed lengths: padded, then cut per run
    model = make_regressor(load_base(card), "mean", "linear", seed=3, masks_padding=card.masks_padding)
    ids, mask, real = pad_batch([e.ids for e in enc], [e.real for e in enc], tok.pad_token_id)
    got = model(ids, mask, real)
    with torch.no_grad():
        want = [model.head(model.base(input_ids=torch.from_numpy(e.ids[None])).last_hidden_state[0][torch.from_numpy(e.real)]
                           .mean(0)).item() for e in enc]
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-5, atol=1e-6)
    got.pow(2).sum().backward()
    assert model.base.conv.weight.grad is not None and model.base.conv.weight.grad.abs().sum() > 0


def test_remote_code_needs_the_flag_in_one_sentence(maskless_model, tmp_path, small_nullsette):
    card = resolve_card(str(maskless_model))  # recognised from config.json alone, nothing run
    assert card.backend == "hf_causal" and not card.trust_remote_code
    with pytest.raises(GlmscoreError, match="--trust-remote-code"):
        load_backend(card)
    base = [sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data", str(small_nullsette),
            "--model", str(maskless_model), "--out", str(tmp_path / "s"), "--limit", "2", "--dry-run"]
    refused = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--trust-remote-code" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    allowed = subprocess.run([*base, "--trust-remote-code"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert allowed.returncode == 0, allowed.stderr[-3000:]


def test_paper_protocol_keeps_the_scripts_precision_and_context(maskless_model, tiny_llama):
    import torch

    from glmscore.models.cards import shipped_cards

    # Evo's rule (evo.models.load_checkpoint): bf16 except the poles and residues
    evo = shipped_cards()["evo-1-131k-base"]
    assert (evo.paper_dtype, evo.paper_keep_float32) == ("bfloat16", ("poles", "residues"))
    card = resolve_card(str(maskless_model), trust_remote_code=True).with_(
        paper_dtype="bfloat16", paper_keep_float32=("poles", "residues"))
    paper = load_backend(card, protocol="paper")
    dtypes = {name: p.dtype for name, p in paper.model.named_parameters()}
    assert dtypes.pop("poles") == torch.float32 and set(dtypes.values()) == {torch.bfloat16}, dtypes
    fp32 = load_backend(card).loglik_sequences(SEQS[:3]).mean
    np.testing.assert_allclose(paper.loglik_sequences(SEQS[:3]).mean, fp32, atol=0.05)  # bf16, not another model
    backend = type(paper)
    with pytest.raises(GlmscoreError, match="in bfloat16, as its published script did"):
        backend.preflight(card, backend.Options.from_values({"protocol": "paper", "dtype": "float32"}, owner="test"), "score")
    # METAGENE-1's script set no context cap: refused under glmscore, scored whole under paper
    assert shipped_cards()["metagene-1"].paper_uncapped
    short = resolve_card(str(tiny_llama)).with_(max_context=9, paper_uncapped=True)
    long_seq = "ACGT" * 5
    with pytest.raises(GlmscoreError, match="exceed the model's context of 9 tokens"):
        load_backend(short).encode([long_seq])
    assert len(load_backend(short, protocol="paper").encode([long_seq])[0].ids) > 9
    with pytest.raises(GlmscoreError, match="exceed"):
        load_backend(short.with_(paper_uncapped=False), protocol="paper").encode([long_seq])


def test_a_cards_hub_id_gets_the_card():
    from glmscore.models.cards import shipped_cards

    for card in shipped_cards().values():
        if card.hf_id:
            assert resolve_card(card.hf_id) == card
    nt2 = resolve_card("InstaDeepAI/nucleotide-transformer-v2-500m-multi-species")
    assert nt2.paper_pad_to_max_length and nt2.trust_remote_code and nt2.kmer == 6
    assert resolve_card("GenerTeam/GENERator-eukaryote-3b-base").id == "generator-eukaryote-3b"


def _tiny_multimolecule(path, arch: str):
    """A tiny random ``<arch>ForMaskedLM`` of multimolecule (RnaFm, RiNALMo, RnaErnie, ErnieRna, SpliceBert:
    the architectures of the RNA cards) with the package's RNA tokenizer."""
    import multimolecule
    import torch

    tok = multimolecule.RnaTokenizer()
    torch.manual_seed(0)
    model_class = getattr(multimolecule, f"{arch}ForMaskedLM")
    model = model_class(getattr(multimolecule, f"{arch}Config")(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model_class, ["ACGUACGUAA", "GGGCCCAU", "UUAGCACGU"]


def _tiny_gpn(path):
    import gpn
    import torch

    gpn.register_auto_classes()
    from gpn.model import GPNConfig, GPNForMaskedLM

    tok = dna_tokenizer(with_bos=False, mlm=True)
    torch.manual_seed(0)
    model = GPNForMaskedLM(GPNConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     pad_token_id=tok.pad_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return GPNForMaskedLM, ["ACGTACGTAA", "GGGCCCAT", "TTAGCACGT", "ACGTAC"]


@pytest.mark.parametrize("package,arch", [("multimolecule", a) for a in ("RnaFm", "RiNALMo", "RnaErnie", "ErnieRna", "SpliceBert")]
                         + [("gpn:register_auto_classes", "GPN")])
def test_an_architecture_from_its_package_matches_the_packages_own_forward_pass(package, arch, tmp_path, small_nullsette):
    """The RNA cards' architectures (multimolecule) and GPN (gpn) at tiny random sizes, written with the
    packages' own classes: the folder gets a card naming the package (so actors import it), and scores
    equal the class's own forward pass, one sequence at a time. GPN's convolutions ignore an attention
    mask, so its card batches rows of one length only."""
    import torch

    path = tmp_path / "tiny"
    model_class, seqs = (_tiny_multimolecule(path, arch) if package == "multimolecule" else _tiny_gpn(path))
    card = resolve_card(str(path))
    assert (card.backend, card.package, card.trust_remote_code, card.vllm) == ("hf_masked", package, False, False)
    scorer = load_backend(card, batch_tokens=1000)
    assert scorer.takes_mask == (package == "multimolecule")
    got = scorer.loglik_sequences(seqs).mean
    reference = model_class.from_pretrained(path).eval()
    want = []
    for e in scorer.encode(seqs):  # one sequence per pass: the package's class on the tokenizer's ids
        with torch.no_grad():
            logits = reference(input_ids=torch.from_numpy(e.ids[None])).logits[0].double()
        lp = torch.log_softmax(logits, -1).gather(-1, torch.from_numpy(e.ids)[:, None])[:, 0].numpy()
        want.append(lp[e.real].mean())  # the real nucleotide tokens, not the special ones
    assert all(e.real.sum() == len(s) for e, s in zip(scorer.encode(seqs), seqs))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if package == "multimolecule":
        return  # a fresh driver importing multimolecule: the seq2func test's dry run below
    # a fresh process (as an actor is) finds the architecture through the card
    dry = subprocess.run([sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data",
                          str(small_nullsette), "--model", str(path), "--out", str(tmp_path / "s"), "--limit", "2",
                          "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]


def test_the_packages_cards_by_their_hub_ids():
    assert resolve_card("multimolecule/rnafm").id == "rna-fm" and resolve_card("rna-fm").package == "multimolecule"
    gpn = resolve_card("songlab/gpn-animal-promoter")
    assert gpn.id == "gpn-animal-promoter" and gpn.package == "gpn:register_auto_classes" and not gpn.masks_padding


def _tiny_track_model(kind: str, path):
    """A tiny random Enformer or Borzoi from multimolecule's classes, with the tokenizer its conversion
    script writes (A C G T N as ids 0-4, N the pad), cropped so that some bins fall outside the output."""
    import multimolecule
    import torch
    from multimolecule.tokenisers.dna.utils import get_alphabet

    torch.manual_seed(0)
    if kind == "enformer":  # 8 bp bins: 256 bp -> 32 bins, cropped to the central 24
        config = multimolecule.EnformerConfig(sequence_length=256, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                                              attention_head_size=4, num_downsamples=3, dim_divisible_by=2, target_length=24,
                                              num_labels=4)
        model = multimolecule.EnformerForTokenPrediction(config)
    else:  # 32 bp bins: 512 bp -> 16 bins, cropped to the central 12
        config = multimolecule.BorzoiConfig(sequence_length=512, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            attention_head_size=4, attention_value_size=8, num_rel_pos_features=8, stem_channels=8,
                                            conv_tower_channels=[8, 8, 12, 12, 16], head_hidden_size=8, target_length=12, num_labels=4)
        model = multimolecule.BorzoiForTokenPrediction(config)
    model.eval().save_pretrained(path)
    multimolecule.DnaTokenizer(alphabet=get_alphabet("streamline", prepend_tokens=[]), unk_token="N", pad_token="N",
                               model_max_length=config.sequence_length).save_pretrained(path)
    return type(model), config


@pytest.mark.parametrize("kind", ["enformer", "borzoi"])
def test_sequence_to_function_tracks_match_the_models_own_forward_pass(kind, tmp_path, small_nullsette):
    import torch

    path = tmp_path / kind
    model_class, config = _tiny_track_model(kind, path)
    card = resolve_card(str(path))
    assert (card.backend, card.objective, card.package) == ("seq2func", "tracks", "multimolecule")
    window, bins = config.sequence_length, config.target_length
    bin_bp = {"enformer": 8, "borzoi": 32}[kind]
    crop = (window - bins * bin_bp) // 2
    rng = np.random.default_rng(1)
    seqs = ["".join(rng.choice(list("ACGT"), n)) for n in (20, 77, 150, window)] + ["ACGTNNACGTAC" * 5]
    reference = model_class.from_pretrained(path).eval()
    comp = np.array([3, 2, 1, 0, 4])  # A C G T N -> T G C A N

    def by_hand(seq: str, tracks, rc=False, hidden=False):
        """The model on one window built here: the sequence centred in N (id 4), the bins covering its bases."""
        ids = np.full(window, 4)
        start = (window - len(seq)) // 2
        ids[start : start + len(seq)] = ["ACGTN".index(c) for c in seq]
        covered = sorted({(p - crop) // bin_bp for p in range(start, start + len(seq)) if 0 <= (p - crop) // bin_bp < bins})

        def run(x):
            with torch.no_grad():
                x = torch.from_numpy(x[None].copy())
                out = reference.model(input_ids=x).last_hidden_state if hidden else reference.postprocess(reference(input_ids=x))[0]
            return out[0].double().numpy()

        pred = run(ids)
        if rc:
            pred = (pred + run(comp[ids[::-1]])[::-1]) / 2
        return pred[covered].mean(axis=0) if hidden else pred[covered][:, tracks].mean()

    got = load_backend(card, batch_rows=2).loglik_sequences(seqs).mean
    np.testing.assert_allclose(got, [by_hand(s, slice(None)) for s in seqs], rtol=1e-5, atol=1e-6)
    rc = load_backend(card, rc=True, tracks="1:3").loglik_sequences(seqs).mean
    np.testing.assert_allclose(rc, [by_hand(s, slice(1, 3), rc=True) for s in seqs], rtol=1e-5, atol=1e-6)
    scorer = load_backend(card)
    emb = scorer.embed(scorer.encode(seqs[:3]), Pooling.parse("mean"))
    np.testing.assert_allclose(emb, [by_hand(s, None, hidden=True) for s in seqs[:3]], rtol=1e-4, atol=1e-5)
    with pytest.raises(GlmscoreError, match=f"longer than the model's {window} bp window .*cassette-9"):
        scorer.encode(["A" * (window + 1)], row_names=["cassette-9"])
    assert load_backend(card, long="truncate").encode(["A" * (window + 1)])[0].truncated
    with pytest.raises(GlmscoreError, match="--tracks"):
        load_backend(card, tracks="2:9")
    if kind == "borzoi":
        return  # the driver's path below is the same for both
    dry = subprocess.run([sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data",
                          str(small_nullsette), "--model", str(path), "--out", str(tmp_path / "s"), "--limit", "2",
                          "--long", "truncate", "--tracks", "0:2", "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]


def test_tracks_file_lists_indices_or_a_targets_table(tmp_path):
    """--tracks FILE: one index per line, or a targets.txt table (Borzoi's, with its unnamed first index
    column), read once into i,j,k (what the actors and the fingerprint see); anything else is one sentence."""
    from glmscore.models.backends.seq2func import TrackOptions

    plain = tmp_path / "tracks.txt"
    plain.write_text("3\n5\n\n8\n")
    assert TrackOptions(tracks=str(plain)).tracks == "3,5,8"
    targets = tmp_path / "targets.txt"  # the header and rows of borzoi-pytorch's precomputed/targets.txt, filtered
    targets.write_text("\tidentifier\tfile\tclip\tclip_soft\tscale\tsum_stat\tstrand_pair\tdescription\n"
                       "7\tCNhs11250+\t/x.w5\t768\t384\t1.0\tsum\t8\tCAGE:K562\n"
                       "2070\tENCFF194XTD+\t/y.w5\t384\t320\t0.3\tsum_sqrt\t2071\tRNA:K562\n")
    assert TrackOptions(tracks=str(targets)).tracks == "7,2070"
    bad = tmp_path / "bad.txt"
    bad.write_text("RNA:K562\n")
    with pytest.raises(GlmscoreError, match=r"a tracks file holds one track index per line"):
        TrackOptions(tracks=str(bad))
    assert TrackOptions(tracks="1:3").tracks == "1:3"


def test_glm2_card_scores_lowercase_nucleotides_after_its_strand_token(tmp_path):
    """gLM2's vocabulary reads lowercase letters as nucleotides and uppercase ones as amino acids, after a
    strand token. A stand-in with that vocabulary (a tiny BERT: gLM2's own code is remote and not on this
    machine) scored under the ``glm2-150m`` card's rules equals a direct forward pass on ``<+>`` + the
    lowercase sequence with the strand token left unscored; upper-cased, the same rows would be read as
    protein. Cards that do not use these fields keep their fingerprints (the fields are left out of to_dict)."""
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    from glmscore.models.cards import shipped_cards

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + ["<+>", "<->"] + list("acgtn") + list("ACDEFGHIKLMNPQRSTVWY"))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"<[+-]>|."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                        sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, pad_token_id=0)).eval()
    path = tmp_path / "glm2-like"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)

    card = shipped_cards()["glm2-150m"].with_(hf_id=str(path), revision=None, trust_remote_code=False)
    seqs = ["ACGTTGCA", "acgtnNAC", "GATTACAGATTACA"]
    scorer = load_backend(card)
    encoded = scorer.encode(seqs)
    got = scorer.loglik(encoded).mean
    for seq, e, score in zip(seqs, encoded, got):
        ids = tokenizer("<+>" + seq.upper().lower())["input_ids"]
        assert e.ids.tolist() == ids and ids[1] == vocab["<+>"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        scored = range(2, len(ids) - 1)  # not [CLS], not the strand token, not [SEP]
        assert score == pytest.approx(float(np.mean([logp[i, ids[i]] for i in scored])), abs=1e-6)
    upper = load_backend(card.with_(letter_case="upper", sequence_prefix="")).encode(seqs[:1])[0]
    assert set(upper.ids[1:-1].tolist()) <= {vocab[c] for c in "ACGT"}  # amino acids A, C, G, T: protein
    assert "letter_case" not in shipped_cards()["hyenadna-small-32k"].to_dict() and card.to_dict()["letter_case"] == "lower"


def test_token_limit_of_models_whose_positions_start_after_the_pad(tmp_path):
    """RNA-FM (as RoBERTa, ESM, NT) counts learned positions from padding_idx + 1, so a folder whose config
    says 128 positions fits 126 tokens; the limit derived from its config says so, and a longer row is cut
    (--long truncate) instead of failing inside the embedding (IndexError, found by tests/bench/sweep_families)."""
    from glmscore.models.hf_common import config_context

    _tiny_multimolecule(tmp_path / "rnafm", "RnaFm")
    _tiny_multimolecule(tmp_path / "splicebert", "SpliceBert")
    rnafm, splicebert = resolve_card(str(tmp_path / "rnafm")), resolve_card(str(tmp_path / "splicebert"))
    assert (config_context(rnafm), config_context(splicebert)) == (126, 128)
    scorer = load_backend(rnafm, long="truncate")
    encoded = scorer.encode(["ACGU" * 60])
    assert encoded[0].truncated and len(encoded[0].ids) == 126
    assert np.isfinite(scorer.loglik(encoded).mean).all()


def test_enformer_with_tf_gamma_refuses_another_window_before_ray(tmp_path, small_nullsette):
    """enformer-pytorch turns use_tf_gamma on for the official weights and then asserts the full 196,608 bp
    input: before, any --window else died inside the actor with ~150 traceback lines. Now the driver says it
    in one sentence; without TF gamma (a folder of one's own) the same --window plans."""
    import json

    from glmscore.models.backends.enformer_pt import OFFICIAL, uses_tf_gamma
    from glmscore.models.cards import ModelCard

    assert uses_tf_gamma(ModelCard(id="e", hf_id=OFFICIAL, backend="enformer_pytorch", objective="tracks"), {})
    folder = tmp_path / "enformer"
    folder.mkdir()
    config = {"model_type": "enformer", "dim": 32, "depth": 1, "heads": 2, "output_heads": {"human": 8},
              "target_length": -1, "num_downsamples": 7}
    args = ["score", "--benchmark", "nullsette", "--data", str(small_nullsette), "--model", str(folder),
            "--window", "131072", "--out", str(tmp_path / "s"), "--dry-run"]
    for tf_gamma in (True, False):
        (folder / "config.json").write_text(json.dumps({**config, **({"use_tf_gamma": True} if tf_gamma else {})}))
        proc = subprocess.run([sys.executable, "-m", "glmscore", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        if tf_gamma:
            assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
            assert "TensorFlow's gamma position features" in proc.stderr and "drop --window 131,072" in proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "s").exists()


def test_every_backend_that_needs_its_own_environment_refuses_a_card_without_one():
    """One rule, in the base class: a backend naming the pip requirements it pins (``Backend.environment``)
    refuses a card that would run it in glmscore's environment, and every shipped card of it has one."""
    from glmscore.models.base import BACKENDS
    from glmscore.models.cards import shipped_cards

    needing = {name: BACKENDS.get(name) for name in BACKENDS.names() if BACKENDS.get(name).environment}
    assert {"aido_rna", "evo2", "enformer_pytorch", "borzoi_pytorch", "alphagenome_pt"} <= set(needing)
    cards = {c.backend: c for c in shipped_cards().values() if c.backend in needing}
    assert set(cards) == set(needing)
    for name, cls in needing.items():
        assert all(c.environment for c in shipped_cards().values() if c.backend == name)
        cls.check_card(cards[name])
        bare = cards[name].with_(environment=())
        package = cls.environment[0].partition("==")[0]
        with pytest.raises(GlmscoreError, match=rf"^card {bare.id} runs {package}, which needs an environment of its own; "
                                                rf"give it environment: \[{re.escape(', '.join(cls.environment))}\]\.$"):
            cls.check_card(bare)
