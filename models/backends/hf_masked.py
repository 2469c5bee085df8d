"""Masked LMs through transformers (AutoModelForMaskedLM).

Default (``--mlm-scoring unmasked``, the seeds' semantics): one forward pass on the unmasked sequence,
mean log-probability of the true token at each real nucleotide position (special and pad tokens
excluded). ``pll``: pseudo-log-likelihood, each real position masked in turn (one extra row per position).
``--reduction focus`` (benchmarks with a focus position, e.g. a variant): only the token covering it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from glmscore.models.base import Context, Encoded, LoglikResult, register_backend, rows_from_pieces
from glmscore.models.errors import GlmscoreError
from glmscore.models.hf_common import HFBackend, HFOptions, card_for_architecture, token_logprobs
from glmscore.models.options import option

MLM_MODES = ("unmasked", "pll")
# overlapping k-mer words (DNABERT v1): each base is in k words, so a masked word is read off its neighbours
OVERLAPPING_NO_SCORE = ("model card {card} reads overlapping {k}-mers: every base of a masked word is also in the "
                        "unmasked words beside it, so no masked-LM score hides the base it scores; this card embeds "
                        "only (glmscore embed).")


@dataclass(frozen=True)
class MaskedOptions(HFOptions):
    """Masked-LM scoring (backend hf_masked)"""
    mlm_mode: str = option("unmasked", flag="--mlm-scoring", choices=MLM_MODES,
                           help="masked LMs: one unmasked pass (default) or pseudo-log-likelihood")


@register_backend("hf_masked")
class HFMasked(HFBackend):
    scores_focus = True
    auto_class = "AutoModelForMaskedLM"
    objectives = ("mlm",)
    Options = MaskedOptions

    @classmethod
    def card_for(cls, spec):
        return card_for_architecture(spec, ("ForMaskedLM",), cls.name, "mlm")

    @classmethod
    def preflight(cls, card, options, task, layer=-1) -> None:
        if card.overlapping_kmer and task == "score":
            raise GlmscoreError(OVERLAPPING_NO_SCORE.format(card=card.id, k=card.overlapping_kmer))
        if options.protocol == "paper" and options.mlm_mode != "unmasked":
            raise GlmscoreError("--protocol paper is the published single unmasked pass; drop --mlm-scoring pll.")
        super().preflight(card, options, task, layer)

    def __init__(self, card, options, runtime, fitted=None):
        super().__init__(card, options, runtime, fitted)
        if options.mlm_mode == "pll" and self.tokenizer.mask_token_id is None:
            raise GlmscoreError(f"model {card.id} has no mask token, so pseudo-log-likelihood is undefined.")

    def loglik(self, encoded: Sequence[Encoded], context: Context | None = None, keep_positions: bool = False) -> LoglikResult:
        if self.card.overlapping_kmer:
            raise GlmscoreError(OVERLAPPING_NO_SCORE.format(card=self.card.id, k=self.card.overlapping_kmer))
        if context is not None and context.focus is not None:
            if self.options.protocol == "paper":
                raise GlmscoreError("--reduction focus has no published protocol; use --protocol glmscore.")
            return self._focus(encoded, context.focus, keep_positions)
        if self.options.mlm_mode == "pll":
            return self._pll(encoded, keep_positions)
        rows = [e.ids for e in encoded]

        def forward(idx: list[int]) -> list[np.ndarray]:
            ids, mask = self.padded([rows[i] for i in idx])
            lp = token_logprobs(self.forward_pass(ids, mask).logits, ids).cpu().numpy()
            return [lp[b, : len(rows[i])][encoded[i].real].astype(np.float64) for b, i in enumerate(idx)]

        return LoglikResult.from_positions(self.run_batches(rows, forward), keep_positions)

    def _focus(self, encoded: Sequence[Encoded], focus: np.ndarray, keep_positions: bool) -> LoglikResult:
        """log p(true token) at the token covering nucleotide ``focus[i]`` of each row only (a variant's
        base): from the unmasked pass, or with that token masked (``pll``). For a ref/alt pair the masked
        contexts are identical, so alt - ref is the masked-marginal score log p(alt) - log p(ref)."""
        import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it

        k = max(1, self.card.kmer)
        where = []
        for i, (e, f) in enumerate(zip(encoded, focus)):
            real = np.flatnonzero(e.real)
            if not 0 <= int(f) // k < len(real):
                raise GlmscoreError(f"row {i}: nucleotide {int(f)} is beyond the {len(real) * k} nucleotides the model sees; "
                                    "build shorter windows (variants build --window).")
            where.append(int(real[int(f) // k]))
        mask_id = self.tokenizer.mask_token_id if self.options.mlm_mode == "pll" else None
        rows = []
        for e, pos in zip(encoded, where):
            ids = e.ids.copy()
            if mask_id is not None:
                ids[pos] = mask_id
            rows.append(ids)

        def forward(idx: list[int]) -> list[np.ndarray]:
            ids, mask = self.padded([rows[i] for i in idx])
            b = torch.arange(len(idx), device=ids.device)
            pos = torch.tensor([where[i] for i in idx], device=ids.device)
            true = torch.tensor([int(encoded[i].ids[where[i]]) for i in idx], device=ids.device)
            lp = token_logprobs(self.forward_pass(ids, mask).logits[b, pos], true).cpu().numpy()
            return [np.array([v], dtype=np.float64) for v in lp]

        return LoglikResult.from_positions(self.run_batches(rows, forward), keep_positions)

    def _pll(self, encoded: Sequence[Encoded], keep_positions: bool) -> LoglikResult:
        import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it

        mask_id = self.tokenizer.mask_token_id
        pieces, owners = [], []
        for row, e in enumerate(encoded):
            for pos in np.flatnonzero(e.real):
                masked = e.ids.copy()
                masked[pos] = mask_id
                pieces.append(masked)
                owners.append((row, int(pos), int(e.ids[pos])))

        def forward(idx: list[int]) -> list[np.ndarray]:
            ids, mask = self.padded([pieces[i] for i in idx])
            logits = self.forward_pass(ids, mask).logits
            b = torch.arange(len(idx), device=ids.device)
            pos = torch.tensor([owners[i][1] for i in idx], device=ids.device)
            tgt = torch.tensor([owners[i][2] for i in idx], device=ids.device)
            lp = token_logprobs(logits[b, pos], tgt).cpu().numpy()
            return [np.array([v], dtype=np.float64) for v in lp]

        per_row = rows_from_pieces(owners, self.run_batches(pieces, forward), len(encoded))
        return LoglikResult.from_positions(per_row, keep_positions)
