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
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np

from models.alphabet import normalise
from models.base import LONG_MODES, Encoded
from models.cards import ModelCard
from models.errors import GlmscoreError


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
    from huggingface_hub import try_to_load_from_cache

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
    from transformers import AutoTokenizer

    check_hub(hf_id, revision)
    try:
        return AutoTokenizer.from_pretrained(hf_id, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise GlmscoreError(f"could not load the tokenizer of {hf_id}: {str(exc).splitlines()[0]}") from None


def token_policy(card: ModelCard, options, runtime) -> "TokenPolicy":
    """The encoder of a tokenizer-based backend: the card's tokenizer, the runtime's token limit, the
    options' ``long`` mode (``Backend.make_encoder`` of the transformers and vLLM backends)."""
    tokenizer = load_tokenizer(card.hf_id, card.revision, card.trust_remote_code)
    return TokenPolicy(card, tokenizer, runtime.token_limit, options.long)


class TokenPolicy:
    """Encodes sequences for one card (see the module docstring for the rules)."""

    def __init__(self, card: ModelCard, tokenizer, max_context: int | None, long: str = "error"):
        if long not in LONG_MODES:
            raise GlmscoreError(f"--long must be one of {', '.join(LONG_MODES)}, not {long!r}.")
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

    def encode(self, seqs: Sequence[str], row_names: Sequence[str] | None = None) -> list[Encoded]:
        mapped = [normalise(s, self.card.alphabet) for s in seqs]
        texts = [self._kmer_cut(m[0]) for m in mapped]
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
