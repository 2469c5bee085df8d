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
                    heads: int = 2, max_positions: int = 4096, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = dna_tokenizer(kmer=kmer, with_bos=with_bos)
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
