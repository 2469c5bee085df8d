"""The backend interface, its registry, and what every backend shares.

One small interface, in the spirit of lm-evaluation-harness's ``LM`` + ``@register_model``: a backend
class declares what it can do (capability flags), decides on the driver what every actor must agree on
(``runtime``: dtype, device, the token limit), makes the encoder the CPU prepare stage tokenizes with
(``make_encoder``) and, once built in an actor, turns encoded rows into log-likelihoods (``loglik``) or
embeddings (``embed``). Per-row facts a backend may need (a k-mer crossfit key, a one-hot width) come
in one ``Context``. To add a backend, write one module in ``models/backends/`` (see docs/architecture.md).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Protocol, Sequence

import numpy as np

from glmscore.models.cards import ModelCard, shipped_cards
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import NoOptions, Options, option
from glmscore.models.registry import Registry

BACKENDS: Registry["Backend"] = Registry("backend", "glmscore.models.backends")
register_backend = BACKENDS.register

LONG_MODES = ("error", "truncate", "window")
DTYPES = ("auto", "float32", "bfloat16", "float16")
TORCH_DEVICES = ("cpu", "cuda")  # where a backend runs (Runtime.device); ScoreConfig.device is what the user asks


@dataclass
class Encoded:
    """One sequence as the model sees it.

    ``ids``: token ids, special tokens included. ``real``: True where the token is a real nucleotide
    token (scored), False for BOS/CLS/SEP/pad-like special tokens. ``truncated``: the sequence was cut
    to the context. ``n_ambiguous``: input letters that were mapped to N.
    """

    ids: np.ndarray
    real: np.ndarray
    n_ambiguous: int = 0
    truncated: bool = False


@dataclass
class LoglikResult:
    """Per-sequence log-likelihoods: the sum over scored tokens and their count."""
    loglik_sum: np.ndarray  # float64
    n_scored: np.ndarray  # int32
    per_position: list[np.ndarray] | None = None

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_scored > 0, self.loglik_sum / np.maximum(self.n_scored, 1), np.nan)

    def score(self, reduction: str = "mean") -> np.ndarray:
        return self.mean if reduction == "mean" else self.loglik_sum

    @classmethod
    def from_positions(cls, per_position: list[np.ndarray], keep_positions: bool = False) -> "LoglikResult":
        """Sums and counts from each row's scored log-probabilities."""
        return cls(
            loglik_sum=np.array([float(p.sum(dtype=np.float64)) for p in per_position], dtype=np.float64),
            n_scored=np.array([len(p) for p in per_position], dtype=np.int32),
            per_position=per_position if keep_positions else None,
        )


@dataclass
class Context:
    """What the benchmark knows about a unit's rows that a backend may need: the dataset they belong to,
    their pair indices (row keys within the dataset) and the dataset's longest sequence."""

    dataset: str = ""
    pair_index: np.ndarray | None = None
    dataset_max_len: int = 0
    focus: np.ndarray | None = None  # per row, a nucleotide offset to score alone (``--reduction focus``)
    region: np.ndarray | None = None  # per row, [start, end) of the bases a score reads (rows x 2; tracks models)

    def subset(self, rows: np.ndarray) -> "Context":
        """The context of some of the unit's rows (their positions in it)."""
        return replace(self, pair_index=None if self.pair_index is None else self.pair_index[rows],
                       focus=None if self.focus is None else self.focus[rows],
                       region=None if self.region is None else self.region[rows])


@dataclass(frozen=True)
class Runtime:
    """Decided once on the driver (``Backend.runtime``) and shared by every actor, so that all of them
    load the same dtype and enforce the same token limit as the prepare stage."""

    device: str = "cpu"  # cpu | cuda
    dtype: str = "float32"  # resolved, never "auto"
    token_limit: int | None = None  # tokens per sequence (or rolling window); None = no limit
    threads: int | None = None  # torch CPU threads per actor
    gpu_share: float = 1.0  # the fraction of a GPU each actor holds (below 1 when actors share one)


class Encoder(Protocol):
    def encode(self, seqs: Sequence[str], row_names: Sequence[str] | None = None) -> list[Encoded]: ...


@dataclass(frozen=True)
class ActorResources:
    """What one model actor asks for: Ray remote arguments, the GPUs it holds with them, and optionally
    the bundles of a placement group made for each actor (``STRICT_PACK``: on one node), which its child
    tasks and actors join (a tensor-parallel engine's workers). The Ray session turns this into Ray's
    scheduling options (``pipelines/ray_session.py``: ``actor_remote_args``)."""

    remote_args: dict
    gpus: float
    bundles: tuple[dict, ...] = ()


@dataclass(frozen=True)
class LMOptions(Options):
    """Language models (transformers and vLLM backends)"""
    dtype: str | None = option(None, choices=DTYPES, help="model dtype (default: the card's; auto = bf16 on GPU, fp32 on CPU)")
    long: str = option("error", choices=LONG_MODES, help="sequences longer than the context: error (naming the rows), truncate, or window (causal models: rolling windows)")
    batch_tokens: int | None = option(None, minimum=1, affects_result=False,
                                      help="padded tokens per forward pass (default 4,096 on CPU, 32,768 on GPU)")


class Backend(ABC):
    """A way to run a model. Subclasses are registered with ``@register_backend(name)``."""
    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = NoOptions
    scores: ClassVar[bool] = True  # gives log-likelihoods (``glmscore score``)
    embeds: ClassVar[bool] = False  # gives embeddings (``glmscore embed``)
    can_use_gpu: ClassVar[bool] = False  # actors ask for a GPU when the cluster has them
    needs_gpu: ClassVar[bool] = False  # cannot run on CPU at all
    fits_on_reference: ClassVar[bool] = False  # fitted on the driver before scoring (``fit``)
    objectives: ClassVar[tuple[str, ...]] = ("clm",)  # card objectives this backend runs
    # pip requirements of a package that pins what glmscore's environment cannot share: every card of this
    # backend must run in an environment of its own (``environment:``), which ``check_card`` enforces
    environment: ClassVar[tuple[str, ...]] = ()
    scores_focus: ClassVar[bool] = False  # can score one position per row (``Context.focus``)
    # a reverse-complemented row's output means what the forward row's does (``--rc``); not so for
    # position-resolved outputs such as a sequence-to-function model's bins
    strand_symmetric: ClassVar[bool] = True
    scores_regions: ClassVar[bool] = False  # reads Context.region: a score (embedding) of part of each sequence
    # a model that takes seconds per row runs a unit in steps of at most this many rows (1, 2, 4, ... rows:
    # a fixed schedule, so a rerun batches the same rows together) and reports each step to the job's
    # progress line; None: the unit in one call (a k-mer table scores a unit in milliseconds)
    progress_step: ClassVar[int | None] = None

    # ------------------------------------------------------------ driver side: no model is loaded

    @classmethod
    def card_for(cls, spec: str) -> ModelCard | None:
        """A card for a model name that is not in cards.yaml (``kmer:5``, a local directory), or None."""
        return None

    @classmethod
    def available(cls) -> bool:
        """Whether this backend's packages are installed (cards fall back to ``fallback_backend``)."""
        return True

    @classmethod
    def check_card(cls, card: ModelCard) -> None:
        if card.objective not in cls.objectives:
            raise GlmscoreError(f"backend {cls.name} does not run {card.objective} models such as {card.id}.")
        if cls.environment and not card.environment:
            raise GlmscoreError(f"card {card.id} runs {cls.environment[0].partition('==')[0]}, which needs an environment of "
                                f"its own; give it environment: [{', '.join(cls.environment)}].")

    @classmethod
    def check_task(cls, task: str, reduction: str = "mean") -> None:
        """Whether this backend gives what ``task`` (score | embed) with ``reduction`` asks: one sentence if not."""
        if task == "embed" and not cls.embeds:
            raise GlmscoreError(f"backend {cls.name} gives no embeddings; use a transformers backend or onehot.")
        if task == "score" and not cls.scores:
            raise GlmscoreError(f"backend {cls.name} gives no scores (use it with `glmscore embed`).")
        if task == "score" and reduction == "focus" and not cls.scores_focus:
            raise GlmscoreError(f"backend {cls.name} cannot score one position (--reduction focus is for masked LMs).")

    @classmethod
    def preflight(cls, card: ModelCard, options: Options, task: str, layer: int = -1) -> None:
        """Check on the driver, before Ray starts, what an actor would otherwise find out late: that the
        tokenizer loads, the weights exist, ``layer`` exists. Raises a user error."""

    @classmethod
    def runtime(cls, card: ModelCard, options: Options, device: str, threads: int | None = None) -> Runtime:
        """Dtype and token limit for ``device``, decided once before any row is scored."""
        return Runtime(device=device, dtype="none", token_limit=None, threads=threads)

    @classmethod
    def batching(cls, card: ModelCard, options: Options, runtime: Runtime) -> dict:
        """The batch settings the actors will use, decided from what the driver knows (the manifest and the
        dry run state them: before, only worker logs did)."""
        return {"progress_step": cls.progress_step} if cls.progress_step else {}

    @classmethod
    def fewest_tokens(cls, card: ModelCard, n_bases: int) -> int | None:
        """The fewest tokens a sequence of ``n_bases`` can take under this backend's encoding (a lower
        bound, for the driver's context check before Ray starts); None when the backend cannot say."""
        return None

    @classmethod
    def provenance(cls, card: ModelCard) -> tuple[str | None, str | None]:
        """(resolved revision, local path whose content identifies the weights), for the fingerprint."""
        return None, None

    @classmethod
    def actor_resources(cls, card: ModelCard, options: Options, gpus_per_actor: float) -> ActorResources:
        """What one actor asks Ray for, given the GPUs per actor the job decided: by default those GPUs;
        a backend that places its actors otherwise (vLLM's tensor-parallel placement group) says so here,
        and how many GPUs an actor then holds (a sweep reserves that many per actor)."""
        return ActorResources({"num_gpus": gpus_per_actor}, gpus_per_actor)

    @classmethod
    def reference_file(cls, card: ModelCard) -> str | None:
        """A FASTA to fit on, instead of the benchmark's own reference sequences (``fits_on_reference``)."""
        return None

    @classmethod
    def fit(cls, card: ModelCard, options: Options, references: Mapping[str | None, Iterable[list[str]]]) -> Any:
        """Fit on reference sequences per dataset (key None: one background for all), each given as
        blocks of sequences read while the fit consumes them (the driver never holds them all); the
        i-th sequence over a dataset's blocks is its row with pair_index i. The result is given to every
        actor."""
        raise NotImplementedError

    @classmethod
    @abstractmethod
    def make_encoder(cls, card: ModelCard, options: Options, runtime: Runtime) -> Encoder:
        """What the CPU prepare stage tokenizes with; enforces ``runtime.token_limit`` under ``long``."""

    # ------------------------------------------------------------ actor side: the model is loaded

    def __init__(self, card: ModelCard, options: Options, runtime: Runtime, fitted: Any = None):
        self.card, self.options, self.runtime, self.fitted = card, options, runtime, fitted
        self.resolved_revision: str | None = None
        self._encoder: Encoder | None = None

    def encode(self, seqs: Sequence[str], row_names: Sequence[str] | None = None) -> list[Encoded]:
        """The prepare stage's encoding, in this process (for scripts and tests)."""
        if self._encoder is None:
            self._encoder = type(self).make_encoder(self.card, self.options, self.runtime)
        return self._encoder.encode(seqs, row_names)

    def loglik(self, encoded: Sequence[Encoded], context: Context | None = None,
               keep_positions: bool = False) -> LoglikResult:
        raise GlmscoreError(f"backend {self.name} gives no scores.")

    def embed(self, encoded: Sequence[Encoded], pooling, layer: int = -1, context: Context | None = None) -> np.ndarray:
        """Pooled embeddings, float32 (rows x dim)."""
        raise GlmscoreError(f"backend {self.name} gives no embeddings.")

    def loglik_sequences(self, seqs: Sequence[str]) -> LoglikResult:
        return self.loglik(self.encode(seqs))

    def shrink_batches(self, factor: int) -> str | None:
        """Run batches ``factor`` times smaller than configured (1: as configured), after a worker running
        this unit was killed, most often for memory. Returns the batch size now used, in words
        (``1,024 tokens``), or None where this backend has no batch size to shrink."""
        return None


def _check_model_path(spec: str) -> None:
    """A ``--model`` that is written as a path (absolute, ``./``, ``../``, ``~``) or that names a file: one
    sentence saying what the path is and what is wrong with it (not "unknown model")."""
    path = Path(spec).expanduser()
    as_path = spec.startswith(("/", "./", "../", "~")) or path.is_absolute()
    if path.is_file():
        raise GlmscoreError(f"--model {spec} is a file ({path.resolve()}); give the folder save_pretrained wrote "
                            "(config.json and the weights), a card id or a hub id.")
    if as_path and not path.exists():
        parent = next((p for p in path.resolve().parents if p.exists()), None)
        raise GlmscoreError(f"--model {spec}: no such folder ({path.resolve()}"
                            + (f"; {parent} exists, the rest of the path does not" if parent and parent != Path("/") else "")
                            + "); give the folder save_pretrained wrote, a card id or a hub id.")
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise GlmscoreError(f"--model {spec}: permission denied reading the folder {path.resolve()}.")


def resolve_card(spec: str, *, backend: str | None = None, trust_remote_code: bool | None = None) -> ModelCard:
    """Turn a model name from the command line into a card.

    A card id from ``cards.yaml`` first, then a card's hub id; otherwise each registered backend may claim the name
    (``kmer:5``, ``onehot``, a local ``save_pretrained`` directory or a hub id whose architecture it
    runs). ``backend`` overrides the card's backend (e.g. ``vllm``); a card whose backend is not
    installed falls back to its ``fallback_backend``. ``trust_remote_code`` can only be turned on here
    by an explicit flag, never by a default.
    """
    by_hub_id = {c.hf_id: c for c in shipped_cards().values()}
    if spec in shipped_cards() or spec in by_hub_id:  # a model's usual hub id gets its card (and its published rules)
        card = shipped_cards()[spec] if spec in shipped_cards() else by_hub_id[spec]
        if "/" in card.hf_id and not Path(card.hf_id).is_absolute() and Path(card.hf_id).exists():
            # transformers (and every model package) loads a local folder of that name before the hub: a folder
            # in the working directory would then be run as the card's model, with the card's remote code
            raise GlmscoreError(f"card {card.id} means the hub repository {card.hf_id}, but the working directory holds "
                                f"{card.hf_id!s} ({Path(card.hf_id).resolve()}), which would be loaded instead; run from "
                                "another directory, or give that folder's absolute path as --model to score it as a "
                                "local model (without the card's permissions).")
    else:
        _check_model_path(spec)
        card = next((c for cls in BACKENDS.classes() if (c := cls.card_for(spec)) is not None), None)
        if card is None:
            known = ", ".join(sorted(shipped_cards()))
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


def token_budget_batches(lengths: Sequence[int], budget: int) -> list[np.ndarray]:
    """Group row indices into batches whose padded size (rows x longest row) stays within ``budget``.

    Rows are sorted by length (longest first, so the first batch shows the worst-case memory at once);
    a row longer than the budget gets a batch of its own.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        n = max(1, budget // longest)
        batches.append(order[start : start + n])
        start += n
    return batches


def rolling_windows(n_tokens: int, max_context: int) -> list[tuple[int, int, int]]:
    """Windows ``(start, end, score_from)`` over ids[0:n_tokens]: the window ids[start:end] is fed to
    the model and the targets at positions ``score_from .. end-1`` are kept. Targets are positions
    1..n-1; every target is scored exactly once, with up to ``max_context - 1`` tokens of context
    (lm-evaluation-harness's ``loglikelihood_rolling``: disjoint prediction chunks)."""
    if n_tokens <= max_context:
        return [(0, n_tokens, 1)]
    windows = [(0, max_context, 1)]
    scored_to = max_context
    while scored_to < n_tokens:
        end = min(n_tokens, scored_to + max_context - 1)
        windows.append((end - max_context, end, scored_to))
        scored_to = end
    return windows


def causal_pieces(encoded: Sequence[Encoded], max_context: int | None) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Every row cut into its rolling windows (one piece unless it is longer than ``max_context``), with
    (row, first scored position within the piece) for each piece. Shared by the causal backends."""
    pieces, owners = [], []
    for row, e in enumerate(encoded):
        for start, end, score_from in rolling_windows(len(e.ids), max_context) if max_context else [(0, len(e.ids), 1)]:
            pieces.append(e.ids[start:end])
            owners.append((row, score_from - start))
    return pieces, owners


def rows_from_pieces(owners: Sequence[tuple[int, ...]], values: Sequence[np.ndarray], n_rows: int) -> list[np.ndarray]:
    """Concatenate per-piece log-probabilities back into one array per row, in piece order."""
    per_row: list[list[np.ndarray]] = [[] for _ in range(n_rows)]
    for owner, v in zip(owners, values):
        per_row[owner[0]].append(np.atleast_1d(v))
    return [np.concatenate(p) if p else np.zeros(0) for p in per_row]
