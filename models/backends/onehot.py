"""The one-hot baseline: no model, features = one-hot bases (A, C, G, T; N and padding all-zero),
flattened to ``width`` x 4 where ``width`` is the longest sequence of the row's dataset (``Context``),
so every row of an assay has the same feature length whatever unit it was scored in. With
``--pooling window:START-END`` only those positions are kept (a TSS span: positions x 4 features)."""

from __future__ import annotations

import numpy as np

from glmscore.models.alphabet import BaseEncoder
from glmscore.models.base import Backend, Context, register_backend
from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError


@register_backend("onehot")
class OneHot(Backend):
    scores, embeds = False, True
    objectives = ("none",)

    @classmethod
    def card_for(cls, spec: str) -> ModelCard | None:
        if spec != "onehot":
            return None
        return ModelCard(id="onehot", backend=cls.name, objective="none",
                         notes="one-hot featurizer baseline for embeddings and probes (no model)")

    @classmethod
    def make_encoder(cls, card, options, runtime) -> BaseEncoder:
        return BaseEncoder()

    def embed(self, encoded, pooling=None, layer: int = -1, context: Context | None = None) -> np.ndarray:
        width = (context.dataset_max_len if context else 0) or max(len(e.ids) for e in encoded)
        codes = np.full((len(encoded), width), 4, dtype=np.int64)  # 4 = N / padding -> all-zero
        for i, e in enumerate(encoded):
            codes[i, : min(width, len(e.ids))] = e.ids[:width]
        if pooling is not None and pooling.kind == "window":  # the window's own positions (a TSS span, say)
            if pooling.end > width:
                raise GlmscoreError(f"window {pooling.start}-{pooling.end} lies outside sequences of {width} nucleotides.")
            codes, width = codes[:, pooling.start : pooling.end], pooling.end - pooling.start
        return np.eye(5, 4, dtype=np.float32)[codes].reshape(len(encoded), width * 4)
