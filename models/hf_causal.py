"""Causal LMs through transformers (AutoModelForCausalLM).

Score = mean (or sum) of next-token log-probabilities over the real tokens; padding is masked, the
first real token is conditioned on BOS when the policy prepends one. Sequences longer than the context
are scored with rolling windows under ``long='window'`` (lm-evaluation-harness's
``loglikelihood_rolling``: disjoint prediction chunks, each with as much preceding context as fits).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from models.base import Encoded, LoglikResult
from models.hf_common import HFBackend, collect, token_logprobs


def rolling_windows(n_tokens: int, max_context: int) -> list[tuple[int, int, int]]:
    """Windows ``(start, end, score_from)`` over ids[0:n_tokens]: the window ids[start:end] is fed to
    the model and the targets at positions ``score_from .. end-1`` are kept. Targets are positions
    1..n-1; every target is scored exactly once, with up to ``max_context - 1`` tokens of context."""
    if n_tokens <= max_context:
        return [(0, n_tokens, 1)]
    windows = [(0, max_context, 1)]
    scored_to = max_context
    while scored_to < n_tokens:
        end = min(n_tokens, scored_to + max_context - 1)
        windows.append((end - max_context, end, scored_to))
        scored_to = end
    return windows


class HFCausalScorer(HFBackend):
    auto_class = "AutoModelForCausalLM"

    def loglik_encoded(self, encoded: Sequence[Encoded], keep_positions: bool = False) -> LoglikResult:
        ctx = self.policy.max_context
        # Expand each row into its windows (one window unless the row is longer than the context).
        pieces: list[np.ndarray] = []
        owners: list[tuple[int, int]] = []  # (row, score_from within the piece)
        for row, e in enumerate(encoded):
            for start, end, score_from in rolling_windows(len(e.ids), ctx) if ctx else [(0, len(e.ids), 1)]:
                pieces.append(e.ids[start:end])
                owners.append((row, score_from - start))

        def forward(idx: list[int]) -> list[np.ndarray]:
            ids, mask = self.padded([pieces[i] for i in idx])
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            lp = token_logprobs(logits[:, :-1], ids[:, 1:]).cpu().numpy()
            # target position j+1 is predicted by logits[j]; keep targets from score_from to the row's end
            return [lp[b, owners[i][1] - 1 : len(pieces[i]) - 1].astype(np.float64) for b, i in enumerate(idx)]

        piece_lp = self.run_batches(pieces, forward)
        per_row: list[list[np.ndarray]] = [[] for _ in encoded]
        for (row, _), lp in zip(owners, piece_lp):
            per_row[row].append(lp)
        return collect([np.concatenate(p) if p else np.zeros(0) for p in per_row], keep_positions=keep_positions)
