"""Causal LMs through transformers (AutoModelForCausalLM).

Score = mean (or sum) of next-token log-probabilities over the real tokens; padding is masked, the
first real token is conditioned on BOS when the policy prepends one. Sequences longer than the token
limit are scored with rolling windows under ``--long window`` (lm-evaluation-harness's
``loglikelihood_rolling``: disjoint prediction chunks, each with as much preceding context as fits).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from glmscore.models.base import Context, Encoded, LoglikResult, causal_pieces, register_backend, rows_from_pieces
from glmscore.models.hf_common import HFBackend, card_for_architecture, token_logprobs


@register_backend("hf_causal")
class HFCausal(HFBackend):
    auto_class = "AutoModelForCausalLM"
    objectives = ("clm",)

    @classmethod
    def card_for(cls, spec):
        return card_for_architecture(spec, ("ForCausalLM", "LMHeadModel"), cls.name, "clm")

    def loglik(self, encoded: Sequence[Encoded], context: Context | None = None, keep_positions: bool = False) -> LoglikResult:
        pieces, owners = causal_pieces(encoded, self.runtime.token_limit)

        def forward(idx: list[int]) -> list[np.ndarray]:
            ids, mask = self.padded([pieces[i] for i in idx])
            logits = self.forward_pass(ids, mask).logits
            lp = token_logprobs(logits[:, :-1], ids[:, 1:]).cpu().numpy()
            # target position j+1 is predicted by logits[j]; keep targets from score_from to the row's end
            return [lp[b, owners[i][1] - 1 : len(pieces[i]) - 1].astype(np.float64) for b, i in enumerate(idx)]

        per_row = rows_from_pieces(owners, self.run_batches(pieces, forward), len(encoded))
        return LoglikResult.from_positions(per_row, keep_positions)
