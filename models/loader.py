"""Build the scorer a card names (heavy imports happen here, in the process that scores)."""

from __future__ import annotations

from models.cards import ModelCard
from models.errors import GlmscoreError


def load_scorer(card: ModelCard, *, kmer_tables=None, **options):
    """A ready scorer for ``card``. Options: device, dtype, batch_tokens, long, mlm_mode, and the
    vLLM engine settings for ``vllm_causal``. ``kmer_tables`` carries fitted crossfit tables."""
    if card.backend == "kmer":
        from models.kmer import KmerScorer

        if kmer_tables is not None:
            return KmerScorer(card, kmer_tables)
        return KmerScorer.from_background(card)
    if card.backend == "onehot":
        from models.pooling import OneHotFeaturizer

        return OneHotFeaturizer(card)
    if card.backend == "hf_causal":
        from models.hf_causal import HFCausalScorer

        options.pop("mlm_mode", None)
        return HFCausalScorer(card, **_only(options, "device", "dtype", "batch_tokens", "long"))
    if card.backend == "hf_masked":
        from models.hf_masked import HFMaskedScorer

        return HFMaskedScorer(card, **_only(options, "device", "dtype", "batch_tokens", "long", "mlm_mode"))
    if card.backend == "vllm_causal":
        from models.vllm_causal import VLLMCausalScorer

        return VLLMCausalScorer(card, **{k: v for k, v in options.items() if v is not None})
    raise GlmscoreError(f"model card {card.id} names an unknown backend {card.backend!r}.")


def _only(options: dict, *names: str) -> dict:
    return {k: v for k, v in options.items() if k in names and v is not None}
