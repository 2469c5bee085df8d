"""Evo 2 through the Arc Institute's ``evo2`` package (Vortex / StripedHyena 2), in an environment of its own.

The package is not transformers: ``evo2.Evo2(name)`` downloads the checkpoint and builds Vortex's
``StripedHyena``, whose constructor places every block on a CUDA device and whose attention imports
flash-attn's CUDA extension (and, for the 1B/20B/40B checkpoints, Transformer Engine's FP8 projections on
Hopper). So this backend needs a GPU (``needs_gpu``: a CPU run is refused in one sentence before Ray starts)
and its cards list the packages under ``environment:``; the driver never imports it.

Scoring follows the package's ``evo2.scoring.score_sequences`` (``prepend_bos=False``, ``reduce_method``
mean): byte-level tokens (``CharLevelTokenizer``: a letter's byte value), one forward pass, the
log-probability of each base given the ones before it, so bases 2..L are scored and the first is context
only. Unlike the package's batches, only rows of one length share a pass, so no pad is ever scored (the
package's ``[:seq_len]`` slice of a padded row's shifted log-probabilities includes one pad prediction).
``--rc mean`` is its ``score_sequences_rc``. Embeddings are not offered here (the package takes them from a
named block's hook, which could not be checked without a GPU).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import defaultdict
from typing import Sequence

import numpy as np

from glmscore.models.alphabet import normalise
from glmscore.models.base import Backend, Context, Encoded, LMOptions, LoglikResult, Runtime, register_backend
from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError
from glmscore.models.hf_common import resolve_dtype

PACKAGE = "evo2==0.6.0"
# the package's own names of the hub checkpoints (evo2.utils.HF_MODEL_NAME_MAP, inverted)
MODEL_NAMES = {"arcinstitute/evo2_40b": "evo2_40b", "arcinstitute/evo2_7b": "evo2_7b", "arcinstitute/evo2_20b": "evo2_20b",
               "arcinstitute/evo2_40b_base": "evo2_40b_base", "arcinstitute/evo2_7b_base": "evo2_7b_base",
               "arcinstitute/evo2_1b_base": "evo2_1b_base", "arcinstitute/evo2_7b_262k": "evo2_7b_262k"}


class ByteEncoder:
    """DNA policy (uppercase, other letters -> N), then one byte-valued token per base, as CharLevelTokenizer."""

    def __init__(self, limit: int | None, long: str):
        self.limit, self.long = limit, long

    def encode(self, seqs: Sequence[str], row_names: Sequence[str] | None = None) -> list[Encoded]:
        out = []
        for i, seq in enumerate(seqs):
            seq, n_amb = normalise(seq, "DNA")
            cut = self.limit is not None and len(seq) > self.limit
            if cut and self.long != "truncate":
                name = str(row_names[i]) if row_names is not None else f"row {i}"
                raise GlmscoreError(f"{name} is {len(seq):,} bases, longer than the model's context of {self.limit:,}; "
                                    "pass --long truncate to keep the first bases.")
            ids = np.frombuffer(seq[: self.limit].encode("ascii"), dtype=np.uint8).astype(np.int64)
            out.append(Encoded(ids=ids, real=np.ones(len(ids), dtype=bool), n_ambiguous=n_amb, truncated=cut))
        return out


def import_evo2():
    """The ``evo2`` package, imported from a temporary working directory: its Vortex opens
    ``activations_debug.log`` in the working directory at import, which would leave a file in the user's folder
    (or the job's working directory). Only the model's actors, in the card's own environment, have it."""
    with tempfile.TemporaryDirectory(prefix="glmscore-evo2-") as tmp, contextlib.chdir(tmp):
        import evo2
    return evo2


@register_backend("evo2")
class Evo2Vortex(Backend):
    Options = LMOptions
    progress_step = 64  # rows per progress report at most (``Backend.progress_step``)
    can_use_gpu = True
    needs_gpu = True
    objectives = ("clm",)
    environment = (PACKAGE,)

    @classmethod
    def check_card(cls, card: ModelCard) -> None:
        super().check_card(card)
        if card.hf_id not in MODEL_NAMES:
            raise GlmscoreError(f"card {card.id}: {card.hf_id} is not one of the evo2 package's checkpoints "
                                f"({', '.join(MODEL_NAMES)}).")

    @classmethod
    def preflight(cls, card, options, task, layer=-1) -> None:
        cls.check_card(card)
        if options.long == "window":
            raise GlmscoreError("--long window is not offered for evo2 models; use error or truncate.")

    @classmethod
    def runtime(cls, card, options, device, threads=None) -> Runtime:
        return Runtime(device=device, dtype=resolve_dtype(options.dtype, card, device), token_limit=card.max_context,
                       threads=threads)

    @classmethod
    def provenance(cls, card):
        return card.revision, None

    @classmethod
    def make_encoder(cls, card, options, runtime) -> ByteEncoder:
        return ByteEncoder(runtime.token_limit, options.long)

    def __init__(self, card, options, runtime, fitted=None):
        super().__init__(card, options, runtime, fitted)
        self.model = self._load(card)
        self.resolved_revision = card.revision

    def _load(self, card):
        """The package's model (its loader chooses the checkpoint's precision and places it on the GPUs)."""
        return import_evo2().Evo2(MODEL_NAMES[card.hf_id]).model

    def loglik(self, encoded: Sequence[Encoded], context: Context | None = None, keep_positions: bool = False) -> LoglikResult:
        import torch

        by_length = defaultdict(list)
        for i, e in enumerate(encoded):
            by_length[len(e.ids)].append(i)
        per_row: list[np.ndarray] = [np.zeros(0)] * len(encoded)
        device = next(self.model.parameters()).device
        for rows in by_length.values():  # rows of one length per pass: nothing is padded
            ids = torch.from_numpy(np.stack([encoded[i].ids for i in rows])).to(device)
            with torch.inference_mode():
                logits, _ = self.model(ids)
                logprobs = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
                scored = logprobs.gather(2, ids[:, 1:, None])[..., 0].double().cpu().numpy()
            for k, i in enumerate(rows):
                per_row[i] = scored[k]
        return LoglikResult.from_positions(per_row, keep_positions)
