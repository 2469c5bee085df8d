"""Sequence-to-function models (Enformer, Borzoi) through the classes of the ``multimolecule`` package.

These models read a fixed DNA window (Enformer 196,608 bp, Borzoi 524,288 bp) and predict coverage tracks
in bins (128 / 32 bp) over the central part of it. A shorter sequence is centred in N padding (N is an
all-zero one-hot column, as in the models' training); a longer one is an error naming the rows, or cut to
the window under ``--long truncate``. What glmscore takes from them:

- ``score`` (objective ``tracks``): the chosen tracks' predicted coverage, averaged over the output bins
  that overlap the sequence and over the tracks. It is a predicted signal, not a log-likelihood; a paired
  test or an AUROC reads it the same way (for variants: alt - ref of that mean).
- ``embed``: the trunk's binned hidden states averaged over the same bins (the probes' features).
- ``--rc``: Enformer's own ensembling: the reverse complement's predictions, bins flipped back, averaged
  with the forward ones.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from glmscore.models.alphabet import codes, normalise
from glmscore.models.base import Backend, Context, Encoded, LoglikResult, Runtime, register_backend
from glmscore.models.cards import ModelCard, import_package
from glmscore.models.errors import GlmscoreError
from glmscore.models.hf_common import (
    HUB_ID,
    architecture_package,
    check_weights,
    config_dict,
    hf_provenance,
    load_config,
    resolve_dtype,
)
from glmscore.models.options import Options, option
from glmscore.models.tokenization import load_tokenizer

MODEL_TYPES = ("enformer", "borzoi")


def bin_size(config) -> int:
    """Base pairs per output bin: Enformer pools by 2 per downsampling; Borzoi pools 7 times and its
    U-net upsamples twice, so its bins are 2 ** (conv tower stages) = 32 bp."""
    if config.model_type == "enformer":
        return 2 ** int(config.num_downsamples)
    return 2 ** len(config.conv_tower_channels)


def read_tracks_file(path: str) -> str:
    """A tracks file -> ``i,j,k``: one index per line, or a table with a header whose ``index`` column (else its
    first, unnamed one, as in Basenji's and Borzoi's ``targets.txt``) holds them; filter the model's targets
    file (``grep -e RNA: -e index targets.txt``) to choose tracks by name."""
    rows = [line.rstrip("\r\n").split("\t") for line in Path(path).read_text().splitlines() if line.strip()]
    try:
        if all(len(r) == 1 for r in rows):
            indices = [int(r[0]) for r in rows]
        else:
            column = rows[0].index("index") if "index" in rows[0] else 0
            indices = [int(r[column]) for r in rows[1:]]
    except (ValueError, IndexError):
        raise GlmscoreError(f"--tracks {path}: a tracks file holds one track index per line, or a table with a header "
                            "and an index column (a model's targets.txt).") from None
    if not indices:
        raise GlmscoreError(f"--tracks {path} lists no track.")
    return ",".join(map(str, indices))


def parse_tracks(spec: str, n_tracks: int) -> np.ndarray:
    """``all`` | ``A:B`` (a half-open index range) | ``i,j,k``: the track indices to average."""
    try:
        if spec == "all":
            idx = np.arange(n_tracks)
        elif ":" in spec:
            a, b = spec.split(":")
            idx = np.arange(int(a or 0), int(b) if b else n_tracks)
        else:
            idx = np.array([int(t) for t in spec.split(",")])
    except ValueError:
        raise GlmscoreError(f"--tracks {spec!r} is not all, A:B or i,j,k (track indices).") from None
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= n_tracks:
        raise GlmscoreError(f"--tracks {spec!r} selects no track or one beyond the model's {n_tracks}.")
    return idx


@dataclass(frozen=True)
class TrackOptions(Options):
    """Sequence-to-function models (seq2func backend)"""
    dtype: str | None = option(None, choices=("auto", "float32", "bfloat16", "float16"),
                               help="model dtype (default auto: bf16 on GPU, fp32 on CPU)")
    long: str = option("error", choices=("error", "truncate"),
                       help="sequences longer than the model's window: error (naming the rows) or truncate")
    tracks: str = option("all", help="tracks models: the tracks a score averages: all, A:B (index range), i,j,k, or a "
                                     "file (an index per line, or a targets.txt table: its index column)")
    rc: bool = option(False, cli=False, help="average with the reverse complement's predictions, bins flipped back "
                                             "(Enformer's ensembling; set by --rc mean)")
    batch_rows: int = option(1, minimum=1, affects_result=False, help="seq2func: windows per forward pass")

    def __post_init__(self):
        super().__post_init__()
        if self.tracks not in ("all", "") and Path(self.tracks).is_file():  # read once, on the driver: the indices
            object.__setattr__(self, "tracks", read_tracks_file(self.tracks))  # travel to the actors and the fingerprint


class WindowEncoder:
    """DNA policy, then the model's own token ids (A C G T N; ``to_ids``: a normalised sequence -> ids); the
    window padding is added in the actor."""

    def __init__(self, to_ids, window: int, long: str):
        self.to_ids, self.window, self.long = to_ids, window, long

    def encode(self, seqs: Sequence[str], row_names: Sequence[str] | None = None) -> list[Encoded]:
        mapped = [normalise(s, "DNA") for s in seqs]
        too_long = [i for i, (s, _) in enumerate(mapped) if len(s) > self.window]
        if too_long and self.long == "error":
            names = [str(row_names[i]) if row_names is not None else f"row {i}" for i in too_long[:5]]
            raise GlmscoreError(f"{len(too_long)} sequence(s) are longer than the model's {self.window:,} bp window "
                                f"({', '.join(names)}); pass --long truncate to keep the first {self.window:,} bp.")
        out = []
        for seq, n_amb in mapped:
            ids = np.asarray(self.to_ids(seq[: self.window]), dtype=np.int64)
            out.append(Encoded(ids=ids, real=np.ones(len(ids), dtype=bool), n_ambiguous=n_amb, truncated=len(seq) > self.window))
        return out


@register_backend("seq2func")
class Seq2Func(Backend):
    Options = TrackOptions
    progress_step = 4  # rows per progress report at most (``Backend.progress_step``)

    @classmethod
    def batching(cls, card, options, runtime) -> dict:
        return {"batch_rows": options.batch_rows, **super().batching(card, options, runtime)}
    embeds = True
    can_use_gpu = True
    objectives = ("tracks",)
    strand_symmetric = False  # its tracks are position-resolved: a reverse-complemented window's bins run backwards
    scores_regions = True  # a score (embedding) of the bins a region of the sequence overlaps (Context.region)

    @classmethod
    def card_for(cls, spec: str) -> ModelCard | None:
        path = Path(spec)
        if path.is_dir() and (path / "config.json").is_file():
            hf_id, revision, name = str(path.resolve()), None, path.name
        elif HUB_ID.fullmatch(spec) and not path.exists():
            hf_id, revision, name = spec, "main", spec.replace("/", "__")
        else:
            return None
        config = config_dict(hf_id, revision)
        if config.get("model_type") not in MODEL_TYPES or {"output_heads", "bins_to_return"} & set(config):
            return None  # enformer-pytorch's (output_heads) and borzoi-pytorch's (bins_to_return) configs
        return ModelCard(id=name, hf_id=hf_id, revision=revision, backend=cls.name, objective="tracks",
                         package=architecture_package(config) or "multimolecule",
                         notes=f"{config['model_type']} from multimolecule, card derived from its config.json")

    @classmethod
    def preflight(cls, card, options, task, layer=-1) -> None:
        import_package(card)
        load_tokenizer(card.hf_id, card.revision, False)
        if Path(card.hf_id).is_dir():
            check_weights(Path(card.hf_id))
        config = load_config(card.hf_id, card.revision, False)
        parse_tracks(options.tracks, int(config.num_labels))
        if task == "embed" and layer != -1:
            raise GlmscoreError("seq2func models embed from the trunk's last layer only; drop --layer.")

    @classmethod
    def runtime(cls, card, options, device, threads=None) -> Runtime:
        import_package(card)
        config = load_config(card.hf_id, card.revision, False)
        return Runtime(device=device, dtype=resolve_dtype(options.dtype, card, device), token_limit=int(config.sequence_length),
                       threads=threads)

    @classmethod
    def provenance(cls, card):
        return hf_provenance(card)

    @classmethod
    def make_encoder(cls, card, options, runtime) -> WindowEncoder:
        import_package(card)
        tokenizer = load_tokenizer(card.hf_id, card.revision, False)
        return WindowEncoder(lambda seq: tokenizer(seq, add_special_tokens=False)["input_ids"], runtime.token_limit, options.long)

    def __init__(self, card, options, runtime, fitted=None):
        super().__init__(card, options, runtime, fitted)
        import torch  # in here: torch loads where the model runs
        import transformers

        import_package(card)
        if runtime.threads:
            torch.set_num_threads(runtime.threads)
        self.device = torch.device(runtime.device)
        config = load_config(card.hf_id, card.revision, False)
        head = next((a for a in config.architectures or [] if a.endswith("ForTokenPrediction")), None)
        module = importlib.import_module(card.package.partition(":")[0])
        try:
            cls = getattr(module, head or f"{type(config).__name__[:-len('Config')]}ForTokenPrediction")
            self.model = cls.from_pretrained(card.hf_id, revision=card.revision, dtype=getattr(torch, runtime.dtype))
        except (OSError, ValueError, AttributeError) as exc:
            raise GlmscoreError(f"could not load model {card.hf_id}: {str(exc).splitlines()[0]}") from None
        self.model = self.model.to(self.device).eval()
        transformers.logging.set_verbosity_error()
        tokenizer = load_tokenizer(card.hf_id, card.revision, False)
        vocab = tokenizer.get_vocab()
        self.n_id = vocab["N"]
        # reverse complement on ids: A<->T, C<->G, N stays
        self.complement = np.arange(max(vocab.values()) + 1)
        for a, b in ("AT", "TA", "CG", "GC"):
            self.complement[vocab[a]] = vocab[b]
        self.window, self.bin = int(config.sequence_length), bin_size(config)
        self.bins = int(config.target_length)
        self.crop = (self.window - self.bins * self.bin) // 2  # the first predicted base of the window
        self.tracks = parse_tracks(options.tracks, int(config.num_labels))
        self.resolved_revision = getattr(config, "_commit_hash", None) or card.revision
        self.batch_rows = options.batch_rows

    def shrink_batches(self, factor: int) -> str | None:
        self.batch_rows = max(1, self.options.batch_rows // factor)
        return f"{self.batch_rows} windows"

    def _layout(self, e: Encoded, region=None) -> tuple[int, int, int]:
        """(start of the sequence in the window, first bin, end bin) of the bins it overlaps, or the bins
        ``region`` ([start, end) in the sequence's bases) overlaps."""
        start = (self.window - len(e.ids)) // 2
        r0, r1 = (0, len(e.ids)) if region is None else (int(region[0]), min(int(region[1]), len(e.ids)))
        if r0 >= r1:
            raise GlmscoreError(f"a scored region ({int(region[0])}-{int(region[1])}) lies beyond the {len(e.ids):,} bases "
                                "the model's window kept of its sequence (--long truncate); use a longer --window.")
        lo = max(0, (start + r0 - self.crop) // self.bin)
        hi = min(self.bins, -(-(start + r1 - self.crop) // self.bin))
        return start, lo, max(hi, lo + 1)

    def _run(self, encoded: Sequence[Encoded], fn, regions=None) -> list[np.ndarray]:
        """``fn(model, ids)`` -> (rows, bins, features) on batches of centred windows (and their reverse
        complements under --rc); per row, the bins its sequence (or its region, ``regions``) overlaps."""
        import torch

        out = []
        for b0 in range(0, len(encoded), self.batch_rows):
            batch = encoded[b0 : b0 + self.batch_rows]
            ids = np.full((len(batch), self.window), self.n_id, dtype=np.int64)
            spans = []
            for i, e in enumerate(batch):
                start, lo, hi = self._layout(e, None if regions is None else regions[b0 + i])
                ids[i, start : start + len(e.ids)] = e.ids
                spans.append((lo, hi))
            with torch.inference_mode():
                pred = fn(torch.from_numpy(ids).to(self.device)).float().cpu().numpy()
                if self.options.rc:
                    flipped = torch.from_numpy(self.complement[ids[:, ::-1]].copy()).to(self.device)
                    pred = (pred + fn(flipped).float().cpu().numpy()[:, ::-1]) / 2
            out += [pred[i, lo:hi] for i, (lo, hi) in enumerate(spans)]
        return out

    def coverage(self, ids):
        """Predicted tracks of a batch of windows: (rows, bins, tracks)."""
        return self.model.postprocess(self.model(input_ids=ids))[0]

    def hidden(self, ids):
        """The trunk's binned hidden states of a batch of windows: (rows, bins, features)."""
        return self.model.base_model(input_ids=ids).last_hidden_state

    def loglik(self, encoded: Sequence[Encoded], context: Context | None = None, keep_positions: bool = False) -> LoglikResult:
        region = context.region if context is not None else None
        values = [p[:, self.tracks].astype(np.float64).ravel() for p in self._run(encoded, self.coverage, region)]
        return LoglikResult.from_positions(values, keep_positions)

    def embed(self, encoded: Sequence[Encoded], pooling, layer: int = -1, context: Context | None = None) -> np.ndarray:
        if pooling.kind not in ("mean", "window"):
            raise GlmscoreError(f"{self.name} models embed with --pooling mean (over the bins the sequence overlaps) or "
                                "window:START-END / tss (over the bins those bases overlap).")
        region = context.region if context is not None else None
        if pooling.kind == "window":  # the trunk's bins over these bases of every row (a TSS, a variant's surroundings)
            region = np.tile([pooling.start, pooling.end], (len(encoded), 1))
        return np.stack([h.mean(axis=0) for h in self._run(encoded, self.hidden, region)]).astype(np.float32)


COMPLEMENT = np.array([3, 2, 1, 0, 4])  # A C G T N -> T G C A N: the packages' own ids (N an all-zero one-hot column)


class PackagedTracks(Seq2Func):
    """A tracks model from a package that runs in an environment of its own (``environment:`` on its card):
    the driver reads the model's layout from its files as plain data (``layout``) and never imports the
    package; only ``__init__`` (in the model's actors) does, through ``load``. The window handling, the
    bins, ``--tracks``, ``--rc`` and regions are ``Seq2Func``'s; ids are A C G T N = 0-4."""

    @classmethod
    def folder_card(cls, spec: str, model_type: str | None, marker: str, environment: tuple[str, ...] = ()) -> ModelCard | None:
        """A card for a local folder the package saved: ``config.json`` with ``model_type`` and the package's
        own ``marker`` key (multimolecule's classes share the model types and go to ``seq2func``)."""
        path = Path(spec)
        if not (path.is_dir() and (path / "config.json").is_file()):
            return None
        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") != model_type or marker not in config:
            return None
        return ModelCard(id=path.name, hf_id=str(path.resolve()), backend=cls.name, objective="tracks",
                         environment=environment or cls.environment,
                         notes=f"{cls.environment[0].partition('==')[0]}, card derived from its config.json")

    @classmethod
    def layout(cls, card: ModelCard, options) -> tuple[int, int, int, int]:
        """(window, bp per bin, predicted bins, tracks of the chosen output), from the model's files."""
        raise NotImplementedError

    def load(self, card: ModelCard, runtime: Runtime):
        """The package's model, on the CPU (imports the package: actors only)."""
        raise NotImplementedError

    @classmethod
    def preflight(cls, card, options, task, layer=-1) -> None:
        if Path(card.hf_id).is_dir():
            check_weights(Path(card.hf_id))
        parse_tracks(options.tracks, cls.layout(card, options)[3])
        if task == "embed" and layer != -1:
            raise GlmscoreError(f"{cls.name} models embed from one fixed layer only; drop --layer.")

    @classmethod
    def runtime(cls, card, options, device, threads=None) -> Runtime:
        return Runtime(device=device, dtype=resolve_dtype(options.dtype, card, device),
                       token_limit=cls.layout(card, options)[0], threads=threads)

    @classmethod
    def make_encoder(cls, card, options, runtime) -> WindowEncoder:
        return WindowEncoder(codes, runtime.token_limit, options.long)

    def __init__(self, card, options, runtime, fitted=None):
        Backend.__init__(self, card, options, runtime, fitted)
        import torch  # in here: torch loads where the model runs

        if runtime.threads:
            torch.set_num_threads(runtime.threads)
        self.device = torch.device(runtime.device)
        try:
            model = self.load(card, runtime)
        except (OSError, ValueError) as exc:
            raise GlmscoreError(f"could not load model {card.hf_id}: {str(exc).splitlines()[0]}") from None
        self.model = model.to(self.device).eval()
        self.window, self.bin, self.bins, n_tracks = self.layout(card, options)
        self.crop = (self.window - self.bins * self.bin) // 2
        self.tracks = parse_tracks(options.tracks, n_tracks)
        self.n_id, self.complement = 4, COMPLEMENT
        self.resolved_revision = getattr(getattr(model, "config", None), "_commit_hash", None) or card.revision
        self.batch_rows = options.batch_rows
