"""Model cards: what glmscore knows about a model before it loads it.

A model is named on the command line by a card id (``models/cards.yaml``), a local directory written
by ``save_pretrained``, a Hugging Face hub id, or a baseline spec (``kmer:K``, ``onehot``: backends
claim their own names). ``resolve_card`` turns any of these into a ``ModelCard``; unknown names are a
user error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from models.errors import GlmscoreError


@dataclass(frozen=True)
class ModelCard:
    id: str
    hf_id: str = ""
    revision: str | None = None
    backend: str = "hf_causal"
    fallback_backend: str | None = None
    objective: str = "clm"  # clm | mlm (| markov, none for baselines)
    alphabet: str = "DNA"
    add_bos: bool | None = None  # None: prepend BOS when the tokenizer has one
    kmer: int = 0
    kmer_remainder: str = "trim"
    max_context: int | None = None
    dtype: str = "auto"
    gpu_memory_gb: float = 0.0
    trust_remote_code: bool = False
    vllm: bool = False
    requires: tuple[str, ...] = ()
    # scoring protocols the card supports: glmscore (the default) and, where the benchmark's published
    # scripts scored this model, paper (``--protocol paper``, see models/tokenization.py)
    protocols: tuple[str, ...] = ("glmscore",)
    paper_pad_to_max_length: bool = False  # paper: pad every sequence to tokenizer.model_max_length (NT.py)
    paper_prepend_id: int | None = None  # paper: a token id the script prepends (Evo's end-of-document, 0)
    notes: str = ""
    # k-mer Markov baseline only (crossfit | a background FASTA)
    order: int = 0
    fit: str = "crossfit"
    vllm_engine: dict = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_(self, **changes) -> "ModelCard":
        return dataclasses.replace(self, **changes)


@lru_cache(maxsize=1)
def registry() -> dict[str, ModelCard]:
    """All cards in ``models/cards.yaml``, keyed by id."""
    text = resources.files("models").joinpath("cards.yaml").read_text()
    raw = yaml.safe_load(text) or {}
    cards = {}
    for card_id, fields in raw.items():
        fields = dict(fields)
        fields["requires"] = tuple(fields.get("requires") or ())
        fields["protocols"] = tuple(fields.get("protocols") or ("glmscore",))
        cards[card_id] = ModelCard(id=card_id, **fields)
    return cards


def resolve_card(spec: str, *, backend: str | None = None, trust_remote_code: bool | None = None) -> ModelCard:
    """Turn a model name from the command line into a card.

    A card id from ``cards.yaml`` first; otherwise each registered backend may claim the name
    (``kmer:5``, ``onehot``, a local ``save_pretrained`` directory or a hub id whose architecture it
    runs). ``backend`` overrides the card's backend (e.g. ``vllm``); a card whose backend is not
    installed falls back to its ``fallback_backend``. ``trust_remote_code`` can only be turned on here
    by an explicit flag, never by a default.
    """
    from models.base import BACKENDS

    if spec in registry():
        card = registry()[spec]
    else:
        card = next((c for cls in BACKENDS.classes() if (c := cls.card_for(spec)) is not None), None)
        if card is None:
            known = ", ".join(sorted(registry()))
            what = "local directory whose architecture" if Path(spec).is_dir() else "name that"
            raise GlmscoreError(
                f"unknown model {spec!r}: give a card id ({known}), a local save_pretrained directory, a hub id, "
                f"or a {what} a backend ({', '.join(BACKENDS.names())}) runs."
            )
    if backend:
        cls = BACKENDS.get(backend)
        cls.check_card(card)
        card = card.with_(backend=cls.name)
    elif not BACKENDS.get(card.backend).available() and card.fallback_backend:
        card = card.with_(backend=card.fallback_backend)
    if trust_remote_code is not None:
        card = card.with_(trust_remote_code=trust_remote_code)
    return card
