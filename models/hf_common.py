"""What the transformers backends share: device and dtype choice, loading, OOM-safe batched forward."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from models.base import Encoded, LoglikResult, token_budget_batches
from models.cards import ModelCard
from models.errors import GlmscoreError
from models.tokenization import TokenPolicy, load_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU that supports it (halves memory, same accuracy for ranking), fp32 on CPU."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise GlmscoreError(f"unknown dtype {name!r}: choose auto, float32, bfloat16 or float16.")
    return _DTYPES[name]


class HFBackend:
    """Loads a card's tokenizer and model once; scores token-budget batches of encoded rows."""

    auto_class: str = ""

    def __init__(self, card: ModelCard, *, device: str | None = None, dtype: str | None = None,
                 batch_tokens: int | None = None, long: str = "error"):
        import transformers

        self.card = card
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype or card.dtype, self.device)
        # Measured (tests/benchmarks): on CPU, batches beyond a few sequences get slower (cache-bound),
        # ~4k tokens is best; GPUs want large batches.
        self.batch_tokens = batch_tokens or (32768 if self.device.type == "cuda" else 4096)
        self.long = long
        self.tokenizer = load_tokenizer(card.hf_id, card.revision, card.trust_remote_code)
        cls = getattr(transformers, self.auto_class)
        try:
            model = cls.from_pretrained(
                card.hf_id, revision=card.revision, dtype=self.dtype, trust_remote_code=card.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise GlmscoreError(f"could not load model {card.hf_id}: {str(exc).splitlines()[0]}") from None
        self.model = model.to(self.device).eval()
        self.resolved_revision = getattr(model.config, "_commit_hash", None) or card.revision
        config_ctx = getattr(model.config, "max_position_embeddings", None)
        self.policy = TokenPolicy(card, self.tokenizer, card.max_context or config_ctx)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def encode(self, seqs: Sequence[str], row_names: Sequence[str] | None = None) -> list[Encoded]:
        return self.policy.encode(seqs, long=self.long, row_names=row_names)

    def loglik(self, seqs: Sequence[str]) -> LoglikResult:
        return self.loglik_encoded(self.encode(seqs))

    def embed_encoded(self, encoded: Sequence[Encoded], pooling, layer: int = -1) -> np.ndarray:
        return embed_with(self, encoded, pooling, layer)

    def embed(self, seqs: Sequence[str], pooling, layer: int = -1) -> np.ndarray:
        return self.embed_encoded(self.encode(seqs), pooling, layer)

    def padded(self, rows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and attention mask (right padding keeps causal positions unchanged)."""
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def run_batches(self, rows: Sequence[np.ndarray], fn: Callable[[list[int]], list[np.ndarray]]) -> list[np.ndarray]:
        """Call ``fn`` on token-budget batches of row indices; halve a batch on CUDA out-of-memory."""
        results: list[np.ndarray | None] = [None] * len(rows)

        def run(idx: list[int]):
            try:
                with torch.inference_mode():
                    for i, r in zip(idx, fn(idx)):
                        results[i] = r
            except torch.cuda.OutOfMemoryError:
                if len(idx) == 1:
                    raise GlmscoreError(
                        f"one sequence of {len(rows[idx[0]])} tokens does not fit in GPU memory; use --long truncate or a smaller model."
                    ) from None
                torch.cuda.empty_cache()
                half = len(idx) // 2
                run(idx[:half])
                run(idx[half:])

        for batch in token_budget_batches([len(r) for r in rows], self.batch_tokens):
            run([int(i) for i in batch])
        return results  # type: ignore[return-value]


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position, computed in fp32 whatever the model's dtype."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def embed_with(backend: "HFBackend", encoded, pooling, layer: int = -1) -> np.ndarray:
    """Pooled hidden states of ``layer`` (default: last) for encoded rows, float32 (rows x dim)."""
    from models.pooling import pool

    k = max(1, backend.card.kmer)
    if pooling.kind == "window" and getattr(backend.tokenizer, "is_fast", False) and backend.card.kmer == 0:
        # only character tokenizers map nucleotides to tokens 1:1; BPE vocabularies have no fixed span
        vocab_lengths = {len(t) for t in backend.tokenizer.get_vocab() if t.isalpha()}
        if max(vocab_lengths, default=1) > 1:
            raise GlmscoreError("window pooling needs a character or fixed k-mer tokenizer.")
    rows = [e.ids for e in encoded]

    def forward(idx: list[int]) -> list[np.ndarray]:
        ids, mask = backend.padded([rows[i] for i in idx])
        out = backend.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        states = out.hidden_states
        if not -len(states) <= layer < len(states):
            raise GlmscoreError(f"layer {layer} does not exist: the model has {len(states)} hidden-state layers (0 = embeddings).")
        hidden = states[layer].float().cpu().numpy()
        return [pool(hidden[b, : len(rows[i])], encoded[i].real, pooling, k) for b, i in enumerate(idx)]

    return np.stack(backend.run_batches(rows, forward)).astype(np.float32)
