"""Tokenization policy: from a raw sequence to the token ids a model scores.

Shared by every backend of a card (transformers and vLLM see identical ids):

1. alphabet mapping (``models.alphabet``): uppercase, U<->T, other letters -> N (counted);
2. k-mer tokenizers (``card.kmer`` > 0): a causal model's sequence is cut to a multiple of k
   (``kmer_remainder: trim`` drops the first len % k bases so the 3' end, which is scored last, is kept;
   ``pad`` appends N up to a multiple of k);
3. the tokenizer, without its own special tokens for CLMs (then BOS is prepended when the card asks
   for it or, by default, when the tokenizer has one: the first real token is then conditioned on BOS;
   without BOS the first token is context only); MLMs keep the tokenizer's special tokens (CLS/SEP as in
   pre-training) and only real tokens are scored;
4. the context: longer than the token limit (decided once by the backend's ``runtime``) is an error
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

    if isinstance(try_to_load_from_cache(hf_id, "config.json", revision=revision), str):
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if not _hub_reachable(endpoint.hostname or "huggingface.co", port):
        raise GlmscoreError(f"model {hf_id} is not in the Hugging Face cache and {endpoint.hostname} cannot be reached; "
                            "download it where there is network (`hf download`) or pass a local directory.")


@lru_cache(maxsize=4)
def load_tokenizer(hf_id: str, revision: str | None, trust_remote_code: bool):
    """The card's Hugging Face tokenizer, loaded once per process."""
    from transformers import AutoTokenizer  # in here: transformers loads only where a model or tokenizer is built

    check_hub(hf_id, revision)
    try:
        return AutoTokenizer.from_pretrained(hf_id, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        # transformers' messages run over several lines ("... from one of: (1) ... (2) ..."): all of it, as one
        why = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()).rstrip(".")
        if Path(hf_id).is_dir() and not any(Path(hf_id).glob("tokenizer*")):
            why = f"the folder has no tokenizer files (save them there with tokenizer.save_pretrained); {why}"
        raise GlmscoreError(f"could not load the tokenizer of {hf_id}: {why[:600]}.") from None


PROTOCOLS = ("glmscore", "paper")


def fewest_tokens(card: ModelCard, n_bases: int) -> int:
    """The fewest tokens a sequence of ``n_bases`` can become (special tokens aside): a k-mer card's
    n/k, else n over the longest all-nucleotide token of the vocabulary (1 for one-letter vocabularies,
    the longest merge for BPE ones). A lower bound, so a driver check on it never refuses a row that fits."""
    per_token = card.kmer if card.kmer > 1 else max(
        (len(t) for t in load_tokenizer(card.hf_id, card.revision, card.trust_remote_code).get_vocab()
         if re.fullmatch(r"[ACGTUNacgtun]+", t)), default=1)
    return -(-n_bases // per_token)


def token_policy(card: ModelCard, options, runtime) -> "TokenPolicy":
    """The encoder of a tokenizer-based backend: the card's tokenizer, the runtime's token limit, the
    options' ``long`` mode and protocol (``Backend.make_encoder`` of the transformers and vLLM backends)."""
    import_package(card)
    tokenizer = load_tokenizer(card.hf_id, card.revision, card.trust_remote_code)
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
        if self.card.letter_case == "lower":
            texts = [t.lower() for t in texts]
        texts = [self.card.sequence_prefix + t for t in texts]
        clm = self.card.objective == "clm"
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
