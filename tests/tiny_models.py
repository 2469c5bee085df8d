"""Tiny random gLMs written with ``save_pretrained`` (tests and benchmarks download nothing).

Character-level (or k-mer) DNA tokenizers built with the ``tokenizers`` library, and small Llama
(causal) and BERT (masked) models. head_dim is 64 so vLLM's CPU attention accepts the Llama models.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[CLS]", "[SEP]", "[MASK]"]


def dna_tokenizer(kmer: int = 1, with_bos: bool = True, mlm: bool = False):
    import itertools

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    letters = "ACGTN"
    for n in range(1, kmer + 1):  # all words up to k, so remainders are representable
        for word in itertools.product(letters, repeat=n):
            vocab.setdefault("".join(word), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f".{{1,{kmer}}}"), behavior="isolated")
    if mlm:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
    kwargs = dict(pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]", mask_token="[MASK]")
    if with_bos:
        kwargs["bos_token"] = "[BOS]"
    if mlm:
        kwargs.update(cls_token="[CLS]", sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def make_tiny_llama(path: Path, *, kmer: int = 1, with_bos: bool = True, hidden: int = 128, layers: int = 2,
                    heads: int = 2, max_positions: int = 4096, seed: int = 0, tokenizer=None) -> Path:
    """A random Llama with ``tokenizer`` (default: the character or k-mer DNA tokenizer above)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer if tokenizer is not None else dna_tokenizer(kmer=kmer, with_bos=with_bos)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads,
        max_position_embeddings=max_positions, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    # random weights give nearly uniform predictions; scale the head so scores differ between sequences
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_tiny_bert(path: Path, *, hidden: int = 64, layers: int = 2, max_positions: int = 512, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tok = dna_tokenizer(kmer=1, with_bos=False, mlm=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=2, max_position_embeddings=max_positions, pad_token_id=tok.pad_token_id,
    )
    model = BertForMaskedLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# ---------------------------------------------------------------- tokenizer shapes of the published scripts
# (tests/models/test_published_protocols.py; each builder writes a tiny random model with that tokenizer)


def _fast(vocab, pre, post=None, unk="[UNK]", **kw):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pre), behavior="isolated")
    if post:
        tok.post_processor = processors.TemplateProcessing(single=post, special_tokens=[
            (t, vocab[t]) for t in post.split() if t != "$A"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, **kw)


def make_hyena_like(path: Path) -> Path:
    """HyenaDNA's shape: one token per character, [SEP] appended by the tokenizer."""
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "A", "C", "G", "T", "N"])}
    tok = _fast(vocab, ".", "$A [SEP]", pad_token="[PAD]", sep_token="[SEP]", cls_token="[CLS]", mask_token="[MASK]")
    return make_tiny_llama(path, tokenizer=tok, hidden=64)


def make_generator_like(path: Path) -> Path:
    """GENERator's shape: <s>, 6-mers read from the 5' end, a 1-5 base remainder as one <oov>, </s>."""
    import itertools

    words = ["<pad>", "<s>", "</s>", "<oov>"] + ["".join(w) for w in itertools.product("ACGT", repeat=6)]
    vocab = {t: i for i, t in enumerate(words)}
    tok = _fast(vocab, ".{1,6}", "<s> $A </s>", unk="<oov>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    return make_tiny_llama(path, tokenizer=tok, hidden=64)


def make_nt_like(path: Path) -> Path:
    """Nucleotide Transformer's shape: ESM, <cls>, 6-mers then single bases, model_max_length 1,000."""
    import itertools

    import torch
    from transformers import EsmConfig, EsmForMaskedLM

    words = ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"] + \
        ["".join(w) for w in itertools.product("ACGT", repeat=6)] + list("ACGTN")
    vocab = {t: i for i, t in enumerate(words)}
    tok = _fast(vocab, "[ACGT]{6}|.", "<cls> $A", unk="<unk>", pad_token="<pad>", mask_token="<mask>",
                cls_token="<cls>", eos_token="<eos>", model_max_length=1000)
    torch.manual_seed(0)
    config = EsmConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=1026, pad_token_id=vocab["<pad>"],
                       mask_token_id=vocab["<mask>"], position_embedding_type="absolute")
    EsmForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_dnabert2_like(path: Path, extra_corpus=()) -> Path:
    """DNABERT-2's shape: a BPE vocabulary learnt on DNA, [CLS] ... [SEP]."""
    import numpy as np
    import torch
    from tokenizers import Tokenizer, models, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    rng = np.random.default_rng(0)
    corpus = ["".join(rng.choice(list("ACGT"), 200)) for _ in range(200)] + list(extra_corpus)
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=specials))
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", bpe.token_to_id("[CLS]")), ("[SEP]", bpe.token_to_id("[SEP]"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    BertForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path
