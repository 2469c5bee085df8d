"""Causal LMs on vLLM: one engine per process (per Ray actor), scored by prompt log-probabilities.

Token ids come from the project's own ``TokenPolicy`` (``{"prompt_token_ids": ...}``), so BOS, k-mer
cutting and the alphabet are identical to the transformers backend; vLLM's tokenizer is never used
(``skip_tokenizer_init``). ``SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)`` returns
log p(token_j | tokens_<j) for every prompt token; prefix caching is off so every prompt is computed in
full. vLLM counts the generated token against ``max_model_len``, so prompts (and rolling windows, as
in ``hf_causal``) hold at most ``max_model_len - 1`` tokens.
Embeddings are not served from here: vLLM's pooling runner would need a second engine per actor, so
cards use the transformers backends for embeddings.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from models.base import Encoded, LoglikResult, causal_pieces, rows_from_pieces
from models.cards import ModelCard
from models.errors import GlmscoreError
from models.tokenization import TokenPolicy, load_tokenizer

ENGINE_KEYS = ("max_model_len", "max_num_batched_tokens", "max_num_seqs", "gpu_memory_utilization",
               "tensor_parallel_size", "enforce_eager")


def _on_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


class VLLMCausalScorer:
    def __init__(self, card: ModelCard, *, dtype: str | None = None, long: str = "error", device: str | None = None,
                 batch_tokens: int | None = None, mlm_mode: str | None = None, **engine):
        if card.objective != "clm":
            raise GlmscoreError(f"model {card.id} is a masked LM: vLLM scores causal models only.")
        settings = {**card.vllm_engine, **{k: v for k, v in engine.items() if v is not None}}
        unknown = set(settings) - set(ENGINE_KEYS)
        if unknown:
            raise GlmscoreError(f"unknown vLLM engine setting(s) {', '.join(sorted(unknown))}; known: {', '.join(ENGINE_KEYS)}.")
        gpu = _on_gpu() and device != "cpu"
        settings.setdefault("gpu_memory_utilization", 0.9 if gpu else 0.3)
        settings.setdefault("max_model_len", card.max_context)
        _check(settings)
        dtype = dtype or card.dtype
        if dtype == "auto":
            dtype = "bfloat16" if gpu else "float32"
        self.card = card
        self.long = long
        self.tokenizer = load_tokenizer(card.hf_id, card.revision, card.trust_remote_code)
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise GlmscoreError("vLLM is not installed: pip install 'glmscore[gpu]' (GPU) or 'glmscore[cpu]' (CPU).") from None
        if (settings.get("tensor_parallel_size") or 1) > 1:
            # workers go into the actor's placement group (pipelines.score.tensor_parallel_bundle)
            settings["distributed_executor_backend"] = "ray"
        try:
            self.llm = LLM(model=card.hf_id, revision=card.revision, skip_tokenizer_init=True, dtype=dtype,
                           trust_remote_code=card.trust_remote_code, enable_prefix_caching=False, seed=0,
                           **{k: v for k, v in settings.items() if v is not None})
        except Exception as exc:  # noqa: BLE001 - vLLM reports bad settings with many exception types
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise GlmscoreError(f"vLLM could not start an engine for {card.id} with {settings}: {detail}") from None
        self.params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        self.resolved_revision = card.revision
        # vLLM counts the one generated token against max_model_len, so a prompt holds one token less
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.policy = TokenPolicy(card, self.tokenizer, self.max_model_len - 1)

    def encode(self, seqs: Sequence[str], row_names=None) -> list[Encoded]:
        return self.policy.encode(seqs, long=self.long, row_names=row_names)

    def loglik(self, seqs: Sequence[str]) -> LoglikResult:
        return self.loglik_encoded(self.encode(seqs))

    def loglik_encoded(self, encoded: Sequence[Encoded], keep_positions: bool = False) -> LoglikResult:
        pieces, owners = causal_pieces(encoded, self.max_model_len - 1)
        # vLLM needs at least two tokens to give a prompt log-probability; one-token rows score nothing
        todo = [i for i, p in enumerate(pieces) if len(p) >= 2]
        outputs = self.llm.generate([{"prompt_token_ids": pieces[i].tolist()} for i in todo], self.params, use_tqdm=False)
        values = []
        for i, out in zip(todo, outputs):
            first, ids, lps = owners[i][1], pieces[i], out.prompt_logprobs
            values.append(np.array([lps[j][int(ids[j])].logprob for j in range(first, len(ids))], dtype=np.float64))
        per_row = rows_from_pieces([owners[i] for i in todo], values, len(encoded))
        return LoglikResult.from_positions(per_row, keep_positions)


def _check(s: dict) -> None:
    g = s.get("gpu_memory_utilization")
    if g is not None and not 0 < g <= 1:
        raise GlmscoreError(f"gpu_memory_utilization must be in (0, 1], not {g}.")
    for key in ("max_model_len", "max_num_batched_tokens", "max_num_seqs", "tensor_parallel_size"):
        v = s.get(key)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise GlmscoreError(f"{key} must be a positive integer, not {v!r}.")
