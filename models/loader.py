"""Build a ready backend for a card in this process (scripts, tests, notebooks).

The Ray job builds its actors the same way, but decides the runtime once on the driver; here it is
decided on the spot. Heavy imports (torch, transformers, vllm) happen in the backend's constructor.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from glmscore.models.base import BACKENDS, Backend
from glmscore.models.cards import ModelCard


def default_device() -> str:
    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_backend(card: ModelCard, *, device: str | None = None, threads: int | None = None, fitted: Any = None,
                 **options) -> Backend:
    """A loaded backend for ``card``; ``options`` are its option fields (``long="window"``,
    ``mlm_mode="pll"``, ``max_model_len=512``...), unknown ones are a user error."""
    cls = BACKENDS.get(card.backend)
    opts = cls.Options.from_values(options, owner=f"backend {cls.name}")
    runtime = cls.runtime(card, opts, device or default_device(), threads)
    return cls(card, opts, runtime, fitted)
