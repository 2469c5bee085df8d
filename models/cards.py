"""Model cards: what glmscore knows about a model before it loads it.

A model is named on the command line by a card id (``models/cards.yaml``), a local directory written
by ``save_pretrained``, a Hugging Face hub id, or a baseline spec (``kmer:K``). ``resolve_card`` turns
any of these into a ``ModelCard``; unknown names are a user error.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from models.errors import GlmscoreError

BACKENDS = ("hf_causal", "hf_masked", "vllm_causal", "kmer", "onehot")


@dataclass(frozen=True)
class ModelCard:
    id: str
    hf_id: str = ""
    revision: str | None = None
    backend: str = "hf_causal"
    fallback_backend: str | None = None
    objective: str = "clm"  # clm | mlm
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
    notes: str = ""
    # k-mer Markov baseline only
    order: int = 0
    fit: str = "crossfit"  # crossfit | path to a background FASTA
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
        cards[card_id] = ModelCard(id=card_id, **fields)
    return cards


def _card_from_local_dir(path: Path) -> ModelCard:
    config = json.loads((path / "config.json").read_text())
    archs = config.get("architectures") or []
    if any(a.endswith("ForMaskedLM") for a in archs):
        backend, objective = "hf_masked", "mlm"
    elif any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        backend, objective = "hf_causal", "clm"
    else:
        raise GlmscoreError(
            f"model directory {path} has architectures {archs}: glmscore scores *ForCausalLM and *ForMaskedLM models."
        )
    max_ctx = config.get("max_position_embeddings") or config.get("n_positions")
    return ModelCard(
        id=path.name,
        hf_id=str(path.resolve()),
        revision=None,
        backend=backend,
        objective=objective,
        max_context=int(max_ctx) if max_ctx else None,
        vllm=objective == "clm",
        notes="card derived from a local directory's config.json",
    )


def resolve_card(spec: str, *, backend: str | None = None, trust_remote_code: bool | None = None) -> ModelCard:
    """Turn a model name from the command line into a card.

    ``backend`` overrides the card's backend (e.g. ``vllm_causal``); ``trust_remote_code`` can only be
    turned on here by an explicit flag, never by a default.
    """
    if spec == "onehot":
        card = ModelCard(id="onehot", backend="onehot", objective="none",
                         notes="one-hot featurizer baseline for embeddings and probes (no model)")
    elif spec.startswith("kmer"):
        order_text = spec.partition(":")[2] or "5"
        fit = "crossfit"
        if "@" in order_text:
            order_text, fit = order_text.split("@", 1)
        if not order_text.isdigit() or not 1 <= int(order_text) <= 12:
            raise GlmscoreError(f"bad k-mer model {spec!r}: write kmer:K with 1 <= K <= 12, optionally kmer:K@background.fasta.")
        card = ModelCard(
            id=f"kmer{order_text}" if fit == "crossfit" else f"kmer{order_text}-bg",
            backend="kmer",
            objective="clm",
            order=int(order_text),
            fit=fit,
            notes="order-K Markov chain baseline; crossfit = fitted on held-out folds of the benchmark's own nonmutant sequences (in-distribution, not a gLM)",
        )
    elif spec in registry():
        card = registry()[spec]
    elif Path(spec).is_dir():
        if not (Path(spec) / "config.json").is_file():
            raise GlmscoreError(f"model directory {spec} has no config.json: write it with save_pretrained.")
        card = _card_from_local_dir(Path(spec))
    elif "/" in spec and not spec.startswith((".", "/")):
        card = ModelCard(id=spec.replace("/", "__"), hf_id=spec, revision="main", notes="card derived from a hub id")
        card = card.with_(**_hub_kind(spec))
    else:
        known = ", ".join(sorted(registry()))
        raise GlmscoreError(
            f"unknown model {spec!r}: give a card id ({known}), a local save_pretrained directory, a hub id or kmer:K."
        )
    if backend:
        if backend not in BACKENDS:
            raise GlmscoreError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}.")
        if backend == "vllm_causal" and card.objective != "clm":
            raise GlmscoreError(f"model {card.id} is a masked LM: vLLM scores causal models only.")
        card = card.with_(backend=backend)
    elif card.backend == "vllm_causal":
        card = card.with_(backend=_vllm_or_fallback(card))
    if trust_remote_code is not None:
        card = card.with_(trust_remote_code=trust_remote_code)
    return card


def _vllm_or_fallback(card: ModelCard) -> str:
    """Cards that prefer vLLM fall back to transformers where vLLM is not installed."""
    try:
        import importlib.util

        if importlib.util.find_spec("vllm") is not None:
            return "vllm_causal"
    except ValueError:
        pass
    return card.fallback_backend or "hf_causal"


def _hub_kind(hub_id: str) -> dict:
    """Look a hub model's architecture up (needs network access to the hub)."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(hub_id)
    except Exception as exc:  # noqa: BLE001 - any failure here means the name cannot be used
        raise GlmscoreError(
            f"unknown model {hub_id!r}: it is not a card id or local directory, and the hub could not be read ({type(exc).__name__})."
        ) from None
    archs = getattr(config, "architectures", None) or []
    objective = "mlm" if any(a.endswith("ForMaskedLM") for a in archs) else "clm"
    return {"backend": "hf_masked" if objective == "mlm" else "hf_causal", "objective": objective}
