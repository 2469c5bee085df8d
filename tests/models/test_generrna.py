"""GenerRNA's card (issue 41): a nanoGPT checkpoint converted to transformers' GPT2LMHeadModel.

The test writes a tiny model in GenerRNA's own layout: the classes of its model.py (nanoGPT's GPT), written here
from the published architecture with random weights, saved the way its train.py saves (a dict of model, optimizer,
model_args...; a torch.compile'd model's ``_orig_mod.`` keys) and split like its release (model.pt.part-aa...), with
a byte-level BPE tokenizer in its format (tokenizer.json, vocab.json, merges.txt, and a tokenizer_config.json that
says GPT2Tokenizer, add_prefix_space false, <|endoftext|> as BOS and EOS). Loaded through the card, the scores and
embeddings equal the module's own forward pass; checkpoints that do not map, or that hold pickled objects, are
refused in one sentence."""

import io
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from glmscore.models.base import BACKENDS
from glmscore.models.cards import UNCARDED, about, shipped_cards
from glmscore.models.errors import GlmscoreError
from glmscore.models.loader import load_backend
from glmscore.models.pooling import Pooling

SEQS = ["AUGGCCAGUUAGC", "GGGAAAUUUCCCAGUNAC", "ACGUAC", "UUGACAUAUAAUAGGAGGAUGAAAUAAGG", "ACGTTGCA"]  # T reads as U
LETTERS = "ABCDGHKMNRSUVWXYĊĠ"  # GenerRNA's vocab.json: <|endoftext|> 0, these letters 1-18, then its merges
MERGES = [("G", "G"), ("A", "A"), ("U", "U"), ("C", "C"), ("A", "G"), ("U", "G"), ("A", "C"), ("U", "GG"), ("AG", "C")]


# ---- GenerRNA's model.py (nanoGPT's GPT), written from the published architecture


class LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_attn = nn.Linear(cfg["n_embd"], 3 * cfg["n_embd"], bias=cfg["bias"])
        self.c_proj = nn.Linear(cfg["n_embd"], cfg["n_embd"], bias=cfg["bias"])
        self.n_head, self.n_embd = cfg["n_head"], cfg["n_embd"]

    def forward(self, x):  # model.py's manual (non-flash) attention
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf")).softmax(dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg["n_embd"], 4 * cfg["n_embd"], bias=cfg["bias"])
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg["n_embd"], cfg["n_embd"], bias=cfg["bias"])

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1, self.attn = LayerNorm(cfg["n_embd"], cfg["bias"]), CausalSelfAttention(cfg)
        self.ln_2, self.mlp = LayerNorm(cfg["n_embd"], cfg["bias"]), MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg["vocab_size"], cfg["n_embd"]), wpe=nn.Embedding(cfg["block_size"], cfg["n_embd"]),
            drop=nn.Dropout(0.0), h=nn.ModuleList([Block(cfg) for _ in range(cfg["n_layer"])]),
            ln_f=LayerNorm(cfg["n_embd"], cfg["bias"])))
        self.lm_head = nn.Linear(cfg["n_embd"], cfg["vocab_size"], bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied, as model.py ties them

    def hidden(self, idx):
        pos = torch.arange(idx.size(1))
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def forward(self, idx):  # all positions' logits (model.py's training path, targets given)
        return self.lm_head(self.hidden(idx))


def model_args(bias: bool, **changes) -> dict:
    return {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 64, "bias": bias, "vocab_size": 1 + len(LETTERS) + len(MERGES),
            "dropout": 0.0, **changes}


def tiny_gpt(args: dict) -> GPT:
    torch.manual_seed(1 + args["bias"])
    model = GPT(args)
    with torch.no_grad():  # nonzero LayerNorm weights and biases, so a mapping that drops or misplaces one shows
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.5) + (1.0 if name.endswith("ln_1.weight") else 0.0))
    return model.eval()


def checkpoint(model: GPT, args: dict, compiled: bool = True) -> dict:
    """What GenerRNA's train.py saves: the raw model's state dict (compiled: ``_orig_mod.`` keys), the AdamW state, the
    model_args, iter_num, best_val_loss (a tensor) and the config's plain globals."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[0, 1, 2]])).sum().backward()
    optimizer.step()
    prefix = "_orig_mod." if compiled else ""
    return {"model": {prefix + k: v for k, v in model.state_dict().items()}, "optimizer": optimizer.state_dict(),
            "model_args": args, "iter_num": 100000, "best_val_loss": torch.tensor(1.25),
            "config": {"block_size": args["block_size"], "bias": args["bias"], "dtype": "float32", "compile": compiled}}


def write_tokenizer(folder):
    """GenerRNA's tokenizer folder: a byte-level BPE whose <|endoftext|> is id 0, as its tokenizer/ holds it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    folder.mkdir(parents=True)
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(LETTERS)}}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # as in its tokenizer.json
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": True, "model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer"}))
    return vocab


def release(folder, ckpt, parts: int = 3, name: str = "model.pt.part-"):
    """The checkpoint as GenerRNA released it: torch.save'd, then cut into parts (split -b); parts=1 writes one file."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    data = buf.getvalue()
    if parts == 1:
        (folder / name).write_bytes(data)
        return
    size = -(-len(data) // parts)
    for i in range(parts):
        (folder / f"{name}a{'abcdefgh'[i]}").write_bytes(data[i * size : (i + 1) * size])


def card_at(folder):
    return shipped_cards()["generrna"].with_(hf_id=str(folder), revision=None)


def test_generrna_card_replaces_its_uncarded_row():
    card = shipped_cards()["generrna"]
    assert (card.hf_id, card.backend, card.objective, card.alphabet, card.add_bos, card.trust_remote_code) == \
        ("pfnet/GenerRNA", "nanogpt_causal", "clm", "RNA", True, False)
    assert about("generrna")["seed"] == "GenerRNA" and "test_generrna" in about("generrna")["verified"]
    assert "GenerRNA" not in [seed for seed, _, _ in UNCARDED]


@pytest.mark.parametrize("bias,split", [(False, True), (True, False)], ids=["bias-false-split", "bias-true-one-file"])
def test_a_checkpoint_in_generrnas_layout_scores_as_its_own_module(tmp_path, bias, split):
    """bias=False (GenerRNA's configs: zero biases in GPT-2) from split parts with _orig_mod. keys, and bias=True from
    one model_updated.pt without the prefix: per-sequence log-likelihoods (BOS = <|endoftext|>, as sampling.py starts)
    and mean embeddings equal the nanoGPT module's forward pass, in a padded batch."""
    from transformers import AutoTokenizer

    args = model_args(bias)
    model = tiny_gpt(args)
    vocab = write_tokenizer(tmp_path / "tokenizer")
    release(tmp_path, checkpoint(model, args, compiled=split), parts=3 if split else 1,
            name="model.pt.part-" if split else "model_updated.pt")
    assert len(list(tmp_path.glob("model.pt.part-*"))) == (3 if split else 0)
    card = card_at(tmp_path)
    backend = BACKENDS.get(card.backend)
    backend.preflight(card, backend.Options(), "score")
    scorer = load_backend(card, device="cpu")
    assert scorer.runtime.token_limit == args["block_size"]
    res = scorer.loglik(scorer.encode(SEQS), keep_positions=True)
    emb = scorer.embed(scorer.encode(SEQS), Pooling.parse("mean"))
    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tok.encode("AUGGCCAGU") == [vocab["A"], vocab["UGG"], vocab["CC"], vocab["AG"], vocab["U"]]  # no prefix space
    for i, seq in enumerate(SEQS):
        ids = [0] + tok.encode(seq.replace("T", "U"))  # <|endoftext|> first, as sampling.py's start
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0].double()
            hidden = model.hidden(torch.tensor([ids]))[0].numpy()
        lp = torch.log_softmax(logits, -1)
        per_position = [lp[j - 1, ids[j]].item() for j in range(1, len(ids))]
        np.testing.assert_allclose(res.per_position[i], per_position, rtol=1e-5, atol=1e-6)
        expected = sum(per_position)
        assert res.loglik_sum[i] == pytest.approx(expected, rel=1e-5)
        assert res.n_scored[i] == len(ids) - 1 and res.mean[i] == pytest.approx(expected / (len(ids) - 1), rel=1e-5)
        np.testing.assert_allclose(emb[i], hidden[1:].mean(axis=0), rtol=1e-5, atol=1e-5)


def refusal(tmp_path, ckpt, match, name="model.pt"):
    write_tokenizer(tmp_path / "tokenizer")
    release(tmp_path, ckpt, parts=1, name=name)
    card = card_at(tmp_path)
    backend = BACKENDS.get(card.backend)
    with pytest.raises(GlmscoreError, match=match) as err:
        backend.preflight(card, backend.Options(), "score")
    assert "\n" not in str(err.value) and str(err.value).count(". ") == 0, str(err.value)
    return str(err.value)


def test_a_checkpoint_that_does_not_map_is_one_sentence(tmp_path):
    """An extra tensor, a model_args n_embd the tensors do not have, a missing layer, an untied head: refused, naming
    the tensors; nothing is loaded with random weights."""
    args = model_args(False)
    ckpt = checkpoint(tiny_gpt(args), args)
    extra = {**ckpt, "model": {**ckpt["model"], "_orig_mod.transformer.h.0.attn.rotary.inv_freq": torch.ones(4)}}
    refusal(tmp_path / "extra", extra, r"does not map exactly onto GPT2LMHeadModel .*1 tensor\(s\) have no place in the "
                                       r"model \(transformer\.h\.0\.attn\.rotary\.inv_freq\)")
    wider = {**ckpt, "model_args": {**args, "n_embd": 32}}
    refusal(tmp_path / "wider", wider, r"n_embd 32.*tensor\(s\) have another shape \(lm_head\.weight: 28x16 in the file, "
                                       r"28x32 in the model")
    fewer = {**ckpt, "model_args": {**args, "n_layer": 3}}
    refusal(tmp_path / "fewer", fewer, r"tensor\(s\) are missing \(transformer\.h\.2\.attn\.c_attn\.weight")
    untied = {**ckpt, "model": {**ckpt["model"], "_orig_mod.lm_head.weight": torch.zeros(28, 16)}}
    refusal(tmp_path / "untied", untied, "lm_head.weight differs from transformer.wte.weight")
    refusal(tmp_path / "plain", {"state_dict": ckpt["model"]}, "is not a nanoGPT checkpoint")


class Payload:
    """An arbitrary object in a checkpoint: unpickling it would call ``touch`` (it must never run)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (touch, (self.path,))


def touch(path):
    open(path, "w").close()


def test_a_pickled_object_is_refused_by_weights_only_and_never_runs(tmp_path):
    args = model_args(False)
    ckpt = checkpoint(tiny_gpt(args), args)
    ran = tmp_path / "ran"
    message = refusal(tmp_path / "pickled", {**ckpt, "config": Payload(str(ran))},
                      r"holds more than tensors and plain data .*weights_only=True\), never unpickling arbitrary objects")
    assert not ran.exists() and "touch" in message
    # a release missing its last part is damaged, not a pickle error
    release(tmp_path / "cut", ckpt, parts=3)
    (tmp_path / "cut" / "model.pt.part-ac").unlink()
    write_tokenizer(tmp_path / "cut" / "tokenizer")
    card = card_at(tmp_path / "cut")
    with pytest.raises(GlmscoreError, match=r"checkpoint model\.pt\.part-aa \(2 parts\).* is damaged or incomplete"):
        BACKENDS.get(card.backend).preflight(card, BACKENDS.get(card.backend).Options(), "score")
