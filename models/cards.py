"""Model cards: what glmscore knows about a model before it loads it.

A model is named on the command line by a card id (``models/cards.yaml``), a local directory written
by ``save_pretrained``, a Hugging Face hub id, or a baseline spec (``kmer:K``, ``onehot``: backends
claim their own names). ``resolve_card`` turns any of these into a ``ModelCard``; unknown names are a
user error.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from glmscore.models.errors import GlmscoreError
from glmscore.models.package_compat import adapt


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
    # pip requirements the model's actors need in an environment of their own (pins that cannot share
    # glmscore's: enformer-pytorch's transformers==4.56.2); pipelines/environments.py builds it
    environment: tuple[str, ...] = ()
    # the package whose import registers the architecture and tokenizer with transformers' Auto classes
    # (multimolecule: RNA-FM, RiNALMo, RNAErnie...), ``module:function`` where a call registers them
    # (gpn:register_auto_classes); imported wherever the model or its tokenizer loads
    package: str | None = None
    # false where the model's forward ignores an attention mask (GPN's convolutions take **kwargs and read
    # every position): only rows of one length then share a pass
    masks_padding: bool = True
    # scoring protocols the card supports: glmscore (the default) and, where the benchmark's published
    # scripts scored this model, paper (``--protocol paper``, see models/tokenization.py)
    protocols: tuple[str, ...] = ("glmscore",)
    paper_pad_to_max_length: bool = False  # paper: pad every sequence to tokenizer.model_max_length (NT.py)
    paper_prepend_id: int | None = None  # paper: a token id the script prepends (Evo's end-of-document, 0)
    paper_dtype: str = "float32"  # paper: the precision the script ran the model in
    paper_keep_float32: tuple[str, ...] = ()  # paper: parameters (name parts) the script kept in fp32 (Evo's poles, residues)
    paper_uncapped: bool = False  # paper: the script set no context limit, so no sequence is refused or cut
    # what a model's vocabulary reads DNA as: gLM2 reads lowercase letters as nucleotides (uppercase ones are
    # amino acids) after a strand token; the prefix is text before each sequence, never scored
    letter_case: str = "upper"
    sequence_prefix: str = ""
    # a tokenizer kept in another repository than the weights (BiRNA-BERT's buetnlpbio/birna-tokenizer): loaded from
    # tokenizer_id at tokenizer_revision (never with remote code) wherever the card's tokenizer loads
    tokenizer_id: str = ""
    tokenizer_revision: str | None = None
    # DNABERT (v1): the sequence becomes every position's k-mer (a window of stride 1) as space-separated words;
    # masking one word leaves its bases in the k - 1 neighbours on each side, so these cards embed but do not score
    overlapping_kmer: int = 0
    # a tokenizer that takes the sequence's type as a keyword (LucaOne's and LucaVirus's seq_type: gene rewrites the
    # nucleotides as its digit tokens, prot reads amino acids): called one sequence at a time with seq_type=this
    seq_type: str = ""
    # the transformers class vLLM runs the model as, where config.json names a class of its own over a model_type
    # transformers builds (GENERator's GENERatorForCausalLM over llama): vLLM's native implementation, not its
    # generic Transformers fallback (models/backends/vllm_causal.py: vllm_architecture)
    vllm_architecture: str = ""
    notes: str = ""
    # k-mer Markov baseline only (crossfit | a background FASTA)
    order: int = 0
    fit: str = "crossfit"
    vllm_engine: dict = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict:
        """The card as data (what fingerprints hash): fields added later are left out at their defaults, so
        the fingerprints of cards that do not use them stay as they were."""
        data = dataclasses.asdict(self)
        for name in OMITTED_AT_DEFAULT:
            if data[name] == ModelCard.__dataclass_fields__[name].default:
                del data[name]
        return data

    def with_(self, **changes) -> "ModelCard":
        return dataclasses.replace(self, **changes)


OMITTED_AT_DEFAULT = ("letter_case", "sequence_prefix", "tokenizer_id", "tokenizer_revision", "overlapping_kmer",
                      "seq_type", "vllm_architecture")
ABOUT_FIELDS = ("seed", "verified")  # what a card says of itself, not of how it scores: never in a fingerprint


@lru_cache(maxsize=1)
def _read() -> tuple[dict[str, ModelCard], dict[str, dict[str, str]]]:
    text = resources.files("glmscore.models").joinpath("cards.yaml").read_text()
    raw = yaml.safe_load(text) or {}
    cards, about = {}, {}
    for card_id, fields in raw.items():
        fields = dict(fields)
        about[card_id] = {k: str(fields.pop(k, "") or "") for k in ABOUT_FIELDS}
        fields["requires"] = tuple(fields.get("requires") or ())
        fields["environment"] = tuple(fields.get("environment") or ())
        fields["protocols"] = tuple(fields.get("protocols") or ("glmscore",))
        fields["paper_keep_float32"] = tuple(fields.get("paper_keep_float32") or ())
        cards[card_id] = ModelCard(id=card_id, **fields)
    return cards, about


def shipped_cards() -> dict[str, ModelCard]:
    """The cards shipped with glmscore (``models/cards.yaml``), keyed by id. (``Registry`` is the class of
    the backend and benchmark registries; this is a plain table.)"""
    return _read()[0]


def about(card_id: str) -> dict[str, str]:
    """A card's ``seed`` (the model as the benchmarks' papers name it) and ``verified`` (what this card
    was checked against: a tiny configuration of the model's own class, a stand-in with its quirks, or
    nothing but the model's documentation). Kept out of ``ModelCard``, so out of every fingerprint."""
    return _read()[1].get(card_id, {k: "" for k in ABOUT_FIELDS})


# Seed models (named in the benchmarks' papers) that have no card, and why: printed by `glmscore models --table` under
# the zoo and pasted into the README (one list, kept equal by a test). PyPI was checked on 2026-12-05 with
# `pip index versions` / `pip download --no-deps` (the only registry reachable from the development machine).
UNCARDED: tuple[tuple[str, str, str], ...] = (
    ("GenSLM", "Globus downloads, no hub id",
     "weights are `.pt` files for its own genslm package (codon words, its own masked mean), not on the hub; "
     "genslm is not on PyPI (no distribution found)"),
    ("RESM", "none found",
     "no hub repository with a transformers class and no resm package on PyPI were found"),
    ("SPACE", "none found",
     "an Enformer with species-specific mixture-of-experts layers in custom code; no package or transformers class"),
    ("CRAFTS", "none found", "no public checkpoint was found"),
)


def uncarded_table() -> str:
    """The seed models without a card as a Markdown table (``UNCARDED``)."""
    rows = ["| seed model | where its weights are | why it has no card |", "|---|---|---|"]
    rows += [f"| {seed} | {where} | {why} |" for seed, where, why in UNCARDED]
    return "\n".join(rows)


def zoo_table() -> str:
    """The model zoo as a Markdown table, one row per card, then the seed models without a card and why (the
    README's, kept equal by a test)."""
    rows = ["| seed model | card id | backend | environment | verified against | protocols | GPU memory |",
            "|---|---|---|---|---|---|---|"]
    for card in shipped_cards().values():
        if card.environment:
            env = "own: " + ", ".join(card.environment)
        else:
            env = f"glmscore's + {card.package.partition(':')[0]}" if card.package else "glmscore's"
            env += "; " + ", ".join(card.requires) if card.requires else ""
        env += "; remote code" if card.trust_remote_code else ""
        info = about(card.id)
        rows.append(f"| {info['seed']} | `{card.id}` | {card.backend} | {env} | {info['verified'] or 'none'} | "
                    f"{', '.join(card.protocols)} | {card.gpu_memory_gb:g} GB |")
    return "\n".join(rows) + "\n\nSeed models without a card, and why:\n\n" + uncarded_table()


def import_package(card: ModelCard) -> None:
    """Import the card's architecture package (once per process), so transformers' Auto classes know its
    model and tokenizer classes; a package that is not installed is one sentence."""
    if card.package:
        _import(card.package)


@lru_cache(maxsize=None)
def _import(package: str) -> None:
    name, _, register = package.partition(":")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise GlmscoreError(f"this model's architecture comes from the {name} package, which cannot be imported here "
                            f"({exc}); install it (pip install {name}) on every node.") from None
    if register:
        getattr(module, register)()
    adapt(name, module)  # a package written for transformers 4 (LucaOne's): what it needs under transformers 5


COMMIT = re.compile(r"[0-9a-f]{40}")


def pin_revision(card: ModelCard, revision: str | None, trust_flag: bool | None) -> ModelCard:
    """The card at ``revision`` (``--revision``: a commit, branch or tag of its hub repository). A card whose own
    permission runs its repository's code must name a commit: a branch (``main``) runs whatever the repository
    holds that day. Such cards, whose commits cannot be verified here (no hub access), say so in their notes, and
    run remote code only with ``--revision <commit>`` or an explicit ``--trust-remote-code``."""
    if revision:
        if Path(card.hf_id).is_dir():
            raise GlmscoreError(f"--revision {revision}: {card.hf_id} is a local folder; --revision names a commit of a "
                                "hub repository.")
        return card.with_(revision=revision)
    if card.trust_remote_code and trust_flag is None and not COMMIT.fullmatch(card.revision or "") \
            and not Path(card.hf_id).is_dir():
        raise GlmscoreError(f"card {card.id} runs code from {card.hf_id} at revision {card.revision or 'main'}, which "
                            "changes whenever the repository does; pass --revision <commit> (the commit you reviewed), "
                            "or --trust-remote-code to run what it holds today.")
    return card
