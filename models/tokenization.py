"""Tokenization policy: from a raw sequence to the token ids a model scores.

Shared by every backend of a card (transformers and vLLM see identical ids):

1. alphabet mapping (``models.alphabet``): uppercase, U<->T, other letters -> N (counted);
2. k-mer tokenizers (``card.kmer`` > 0): a causal model's sequence is cut to a multiple of k
   (``kmer_remainder: trim`` drops the first len % k bases so the 3' end, which is scored last, is kept;
   ``pad`` appends N up to a multiple of k);
3. overlapping k-mer cards (``overlapping_kmer`` = k, DNABERT v1): the sequence becomes every position's k-mer,
   space-separated words for the card's vocabulary (DNABERT's ``seq2kmer``); cards with a ``seq_type`` (LucaOne,
   LucaVirus) give it to their tokenizer, one sequence a call (``gene``: it rewrites the nucleotides as digit tokens);
4. the tokenizer, without its own special tokens for CLMs (then BOS is prepended when the card asks
   for it or, by default, when the tokenizer has one: the first real token is then conditioned on BOS;
   without BOS the first token is context only); MLMs keep the tokenizer's special tokens (CLS/SEP as in
   pre-training) and only real tokens are scored;
5. the context: longer than the token limit (decided once by the backend's ``runtime``) is an error
   naming the rows, unless ``truncate`` (keep the first ``limit`` tokens) or ``window`` (CLMs: rolling
   windows of ``limit`` tokens, scored by the backend).

``TokenPolicy`` is the encoder of the transformers and vLLM backends: it runs in the CPU prepare stage.

``--protocol paper`` (transformers backends, cards listing ``paper`` in ``protocols``) encodes as the
published GLM-Nullsette-Benchmark scripts did instead: the letters go to the tokenizer unchanged (no
alphabet mapping, no k-mer trimming; letters outside the alphabet are still counted in ``n_ambiguous``),
with the tokenizer's default special tokens (``add_special_tokens=True``: HyenaDNA's trailing [SEP],
GENERator's ``<s>``, ``<oov>`` remainder and ``</s>``, DNABERT-2's [CLS]/[SEP]), after the card's
``paper_prepend_id`` (Evo's end-of-document token) and, where the card says so, padded to the tokenizer's
``model_max_length`` (Nucleotide Transformer). Every position is then scored: a CLM's positions 1..n-1
(all but the first, which nothing predicts), an MLM's every position, special and protocol pad tokens
included. The published means over those positions are what this reproduces; glmscore's default scores
real nucleotide tokens only.
"""

from __future__ import annotations

import os
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np
from huggingface_hub import try_to_load_from_cache

from glmscore.models.alphabet import normalise
from glmscore.models.base import LONG_MODES, Encoded
from glmscore.models.cards import ModelCard, import_package
from glmscore.models.errors import GlmscoreError


@lru_cache(maxsize=1)
def _hub_reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


def check_hub(hf_id: str, revision: str | None) -> None:
    """A hub model that is not in the local cache needs the hub: without network, say so in one sentence
    at once instead of letting huggingface_hub retry for a minute."""
    if Path(hf_id).is_dir() or os.environ.get("HF_HUB_OFFLINE") == "1":
        return

    # config.json for a model's repository; tokenizer_config.json for a tokenizer's own (a card's tokenizer_id)
    if any(isinstance(try_to_load_from_cache(hf_id, name, revision=revision), str)
           for name in ("config.json", "tokenizer_config.json")):
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if not _hub_reachable(endpoint.hostname or "huggingface.co", port):
        raise GlmscoreError(f"model {hf_id} is not in the Hugging Face cache and {endpoint.hostname} cannot be reached; "
                            "download it where there is network (`hf download`) or pass a local directory.")


TOKENIZER_FILES = ("tokenizer*", "vocab*", "merges.txt", "*.model", "special_tokens_map.json")


@lru_cache(maxsize=4)
def load_tokenizer(hf_id: str, revision: str | None, trust_remote_code: bool):
    """The card's Hugging Face tokenizer, loaded once per process."""
    from transformers import AutoTokenizer  # in here: transformers loads only where a model or tokenizer is built

    check_hub(hf_id, revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(hf_id, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        # transformers' messages run over several lines ("... from one of: (1) ... (2) ..."): all of it, as one
        why = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()).rstrip(".")
        if Path(hf_id).is_dir() and not any(Path(hf_id).glob("tokenizer*")):
            why = f"the folder has no tokenizer files (save them there with tokenizer.save_pretrained); {why}"
        raise GlmscoreError(f"could not load the tokenizer of {hf_id}: {why[:600]}.") from None
    if Path(hf_id).is_dir() and not any(f for pattern in TOKENIZER_FILES for f in Path(hf_id).glob(pattern)):
        # transformers 5 builds an empty tokenizer (five specials, every letter [UNK]) for a BERT folder without one
        raise GlmscoreError(f"could not load the tokenizer of {hf_id}: the folder has no tokenizer files (save them there "
                            "with tokenizer.save_pretrained, or name the tokenizer's own folder in the card's tokenizer_id).")
    return tokenizer


def card_tokenizer(card: ModelCard):
    """The card's tokenizer: from ``tokenizer_id`` at ``tokenizer_revision`` where the card names a tokenizer kept
    in another repository (BiRNA-BERT), never with remote code then; else from the weights' repository."""
    if card.tokenizer_id:
        return load_tokenizer(card.tokenizer_id, card.tokenizer_revision, False)
    return load_tokenizer(card.hf_id, card.revision, card.trust_remote_code)


def overlapping_kmer_words(seq: str, k: int) -> str:
    """DNABERT's ``seq2kmer``: every position's k-mer (a window of stride 1), space-separated (a sequence shorter
    than k is one short word, which its vocabulary reads as [UNK])."""
    return " ".join(seq[i : i + k] for i in range(max(1, len(seq) - k + 1)))


PROTOCOLS = ("glmscore", "paper")


def fewest_tokens(card: ModelCard, n_bases: int) -> int:
    """The fewest tokens a sequence of ``n_bases`` can become (special tokens aside): a k-mer card's
    n/k, else n over the longest all-nucleotide token of the vocabulary (1 for one-letter vocabularies,
    the longest merge for BPE ones). A lower bound, so a driver check on it never refuses a row that fits."""
    if card.overlapping_kmer:  # one word per position but the last k - 1
        return max(1, n_bases - card.overlapping_kmer + 1)
    per_token = card.kmer if card.kmer > 1 else max(
        (len(t) for t in card_tokenizer(card).get_vocab()
         if re.fullmatch(r"[ACGTUNacgtun]+", t)), default=1)
    return -(-n_bases // per_token)


def token_policy(card: ModelCard, options, runtime) -> "TokenPolicy":
    """The encoder of a tokenizer-based backend: the card's tokenizer, the runtime's token limit, the
    options' ``long`` mode and protocol (``Backend.make_encoder`` of the transformers and vLLM backends)."""
    import_package(card)
    tokenizer = card_tokenizer(card)
    return TokenPolicy(card, tokenizer, runtime.token_limit, options.long, getattr(options, "protocol", "glmscore"))


def check_protocol(card: ModelCard, protocol: str) -> None:
    """A card scores under ``paper`` only where it says the published scripts covered it."""
    if protocol not in PROTOCOLS:
        raise GlmscoreError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}.")
    if protocol not in card.protocols:
        raise GlmscoreError(f"model card {card.id} has no published protocol (the published scripts did not score it); "
                            "use --protocol glmscore.")


class TokenPolicy:
    """Encodes sequences for one card (see the module docstring for the rules)."""
    def __init__(self, card: ModelCard, tokenizer, max_context: int | None, long: str = "error",
                 protocol: str = "glmscore"):
        if long not in LONG_MODES:
            raise GlmscoreError(f"--long must be one of {', '.join(LONG_MODES)}, not {long!r}.")
        check_protocol(card, protocol)
        self.protocol = protocol
        self.card = card
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.long = long
        bos = tokenizer.bos_token_id
        if card.objective == "clm":
            if card.add_bos and bos is None:
                raise GlmscoreError(f"model card {card.id} asks for a BOS token but its tokenizer has none.")
            self.bos_id = bos if (card.add_bos or (card.add_bos is None and bos is not None)) else None
        else:
            self.bos_id = None
        self.special_ids = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
        if card.letter_case not in ("upper", "lower"):
            raise GlmscoreError(f"model card {card.id}: letter_case must be upper or lower, not {card.letter_case!r}.")
        # tokens of the card's sequence prefix (gLM2's strand token), context only: never scored
        self.n_prefix = len(tokenizer(card.sequence_prefix, add_special_tokens=False)["input_ids"]) if card.sequence_prefix else 0

    def _overlapping_words(self, texts: list[str], row_names) -> list[str]:
        """DNABERT's words (see ``overlapping_kmer_words``); a sequence shorter than one word is refused, and a
        tokenizer that does not read an upper-case k-mer as itself (a BertTokenizer lower-casing it to [UNK]) too."""
        k = self.card.overlapping_kmer
        short = [i for i, t in enumerate(texts) if len(t) < k]
        if short:
            names = [str(row_names[i]) if row_names is not None else f"row {i}" for i in short[:5]]
            raise GlmscoreError(f"{len(short)} sequence(s) are shorter than one {k}-mer word of model card {self.card.id} "
                                f"({', '.join(names)}).")
        probe = self.tokenizer("A" * k, add_special_tokens=False)["input_ids"]
        if len(probe) != 1 or probe[0] == self.tokenizer.unk_token_id:
            raise GlmscoreError(f"model card {self.card.id} reads {k}-mer words, but its tokenizer does not read {'A' * k} "
                                "as one word (a BertTokenizer with do_lower_case lower-cases it to [UNK]).")
        return [overlapping_kmer_words(t, k) for t in texts]

    def _kmer_cut(self, seq: str) -> str:
        k = self.card.kmer
        if k <= 1 or self.card.objective != "clm":
            return seq
        rem = len(seq) % k
        if rem == 0:
            return seq
        if self.card.kmer_remainder == "pad":
            return seq + "N" * (k - rem)
        return seq[rem:]

    def _encode_paper(self, seqs: Sequence[str]) -> list[Encoded]:
        """The published scripts' ids: see the module docstring."""
        pad = self.card.paper_pad_to_max_length
        if pad and self.tokenizer.pad_token_id is None:
            raise GlmscoreError(f"model card {self.card.id} pads to max_length but its tokenizer has no pad token.")
        kwargs = {"padding": "max_length", "max_length": self.tokenizer.model_max_length} if pad else {}
        toks = self.tokenizer(list(seqs), add_special_tokens=True, **kwargs)["input_ids"]
        prefix = [] if self.card.paper_prepend_id is None else [self.card.paper_prepend_id]
        out = []
        for seq, ids in zip(seqs, toks):
            ids = np.asarray(prefix + list(ids), dtype=np.int64)
            real = np.ones(len(ids), dtype=bool)
            if self.card.objective == "clm":
                real[0] = False  # nothing predicts the first id; the causal backends score 1..n-1
            out.append(Encoded(ids=ids, real=real, n_ambiguous=normalise(seq, self.card.alphabet)[1]))
        return out

    def encode(self, seqs: Sequence[str], row_names: Sequence[str] | None = None) -> list[Encoded]:
        if self.protocol == "paper":
            return apply_context(self._encode_paper(seqs), self.max_context, self.long, self.card.objective == "clm", row_names)
        mapped = [normalise(s, self.card.alphabet) for s in seqs]
        texts = [self._kmer_cut(m[0]) for m in mapped]
        if self.card.overlapping_kmer:
            texts = self._overlapping_words(texts, row_names)
        if self.card.letter_case == "lower":
            texts = [t.lower() for t in texts]
        texts = [self.card.sequence_prefix + t for t in texts]
        clm = self.card.objective == "clm"
        if self.card.seq_type:  # LucaOne's tokenizer: told the sequence's type, one sequence a call (see ModelCard)
            toks = [self.tokenizer(t, add_special_tokens=not clm, seq_type=self.card.seq_type)["input_ids"] for t in texts]
        else:
            toks = self.tokenizer(texts, add_special_tokens=not clm)["input_ids"]
        out = []
        for (_, n_amb), ids in zip(mapped, toks):
            ids = np.asarray(ids, dtype=np.int64)
            if clm:
                if self.bos_id is not None:
                    ids = np.concatenate([[self.bos_id], ids])
                real = np.ones(len(ids), dtype=bool)
                if self.bos_id is not None:
                    real[0] = False
            else:
                real = ~np.isin(ids, self.special_ids)
            if self.n_prefix:  # the prefix's tokens follow any leading special token
                first = int(np.argmax(real)) if real.any() else 0
                real[first : first + self.n_prefix] = False
            out.append(Encoded(ids=ids, real=real, n_ambiguous=n_amb))
        return apply_context(out, self.max_context, self.long, clm, row_names)


def apply_context(encoded: list[Encoded], max_context: int | None, long: str, clm: bool, row_names=None) -> list[Encoded]:
    """Enforce the context length: error naming the rows, truncate, or leave for rolling windows."""
    if not max_context:
        return encoded
    too_long = [i for i, e in enumerate(encoded) if len(e.ids) > max_context]
    if not too_long:
        return encoded
    if long == "error":
        names = [str(row_names[i]) if row_names is not None else f"row {i}" for i in too_long[:5]]
        more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
        raise GlmscoreError(
            f"{len(too_long)} sequence(s) exceed the model's context of {max_context} tokens "
            f"({', '.join(names)}{more}); pass --long truncate or --long window."
        )
    if long == "window":
        if not clm:
            raise GlmscoreError("--long window is for causal models; use --long truncate for masked models.")
        return encoded
    for i in too_long:
        e = encoded[i]
        encoded[i] = Encoded(ids=e.ids[:max_context], real=e.real[:max_context], n_ambiguous=e.n_ambiguous, truncated=True)
    return encoded
