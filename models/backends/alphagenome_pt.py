"""AlphaGenome through Rylie Weaver's ``alphagenome-pt`` package (a PyTorch port of DeepMind's JAX model, with
the converted official weights on the hub), in an environment of its own.

Why this port: the official ``alphagenome`` package is an API client, not a local model; lucidrains'
``alphagenome-pytorch`` (0.2.8 on the index here) re-implements the architecture for training and ships no
converted weights; ``alphagenome-pt`` (1.0.0) loads DeepMind's released parameters (``deepmind_model``, all
folds or one) into its classes and keeps DeepMind's precision policy (fp32 weights, bf16 compute). Its
pins do not clash with glmscore's, but its actors still get their own environment: the driver never
imports it (the window, heads and track counts are read from ``config.json`` / ``metadata.json`` as plain
data), and a user's upgrade of it cannot move glmscore's packages.

What glmscore takes from it: the chosen output type's (``--output-type``, default ``rna_seq``) 1 bp
predictions for one organism (``--organism``, default human), the chosen tracks (``--tracks``) averaged
over the sequence's own positions (1 bp bins: no rounding); ``embed`` is the 1 bp embedding (1,536 features)
averaged over them. A sequence is centred in N padding (all-zero one-hot columns) in a window of
``--window`` bp (default 16,384, the public API's smallest length; a power of two from 2,048 to the model's
1,048,576). ``--rc mean`` averages with the reverse complement's predictions, positions flipped back.
Precision: DeepMind's policy on a GPU (``--dtype`` default), fp32 throughout on a CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import hf_hub_download

from glmscore.models.backends.seq2func import PackagedTracks, TrackOptions
from glmscore.models.base import register_backend
from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import option
from glmscore.models.tokenization import check_hub

PACKAGE = "alphagenome-pt==1.0.0"
WINDOW = 16_384  # the public API's smallest supported length; cassettes and assay rows fit in it
MIN_WINDOW = 2_048  # the encoder's 7 halvings (128 bp) times the pair activations' 16
OFFICIAL_MAX = 1_048_576
METADATA = "metadata.json"  # a folder saved by AlphaGenome.save()
HUB_METADATA = "alphagenome_metadata.json"  # the converted official metadata in the package's hub repository
ONE_BP_OUTPUTS = ("atac", "cage", "dnase", "procap", "rna_seq")  # the heads with 1 bp predictions


@dataclass(frozen=True)
class AlphaGenomeOptions(TrackOptions):
    """AlphaGenome (alphagenome-pt)"""
    output_type: str = option("rna_seq", choices=ONE_BP_OUTPUTS,
                              help="alphagenome_pt: the output whose tracks are scored (1 bp predictions)")
    organism: str = option("human", help="alphagenome_pt: the organism whose tracks are predicted (human, mouse)")
    window: int | None = option(None, minimum=MIN_WINDOW, help="alphagenome_pt: the input window in bp, a power of two "
                                                              "(default 16,384)")


def _model_name(folder: str) -> str | None:
    try:
        return json.loads(Path(folder, "config.json").read_text()).get("model_name")
    except (OSError, ValueError):
        return None


def _read(card: ModelCard) -> tuple[dict, dict]:
    """(config, metadata) as plain data: a saved folder's files, or the official model's fixed config and
    the hub's converted metadata."""
    path = Path(card.hf_id)
    if path.is_dir():
        try:
            return json.loads((path / "config.json").read_text()), json.loads((path / METADATA).read_text())
        except (OSError, ValueError) as exc:
            raise GlmscoreError(f"could not read {path}'s AlphaGenome config.json and {METADATA}: {exc}") from None
    check_hub(card.hf_id, card.revision)
    try:
        metadata = json.loads(Path(hf_hub_download(card.hf_id, HUB_METADATA, revision=card.revision)).read_text())
    except (OSError, ValueError) as exc:
        raise GlmscoreError(f"could not read {HUB_METADATA} of {card.hf_id}: {str(exc).splitlines()[0]}") from None
    return {"model_name": "AlphaGenome", "max_seq_len": OFFICIAL_MAX}, metadata


@register_backend("alphagenome_pt")
class AlphaGenomePT(PackagedTracks):
    Options = AlphaGenomeOptions
    environment = (PACKAGE,)

    @classmethod
    def card_for(cls, spec: str) -> ModelCard | None:
        """A folder saved by ``AlphaGenome.save()`` (config.json naming the model, metadata.json beside it)."""
        if not Path(spec, METADATA).is_file() or _model_name(spec) != "AlphaGenome":
            return None
        return cls.folder_card(spec, None, "max_seq_len")  # its config.json has no model_type

    @classmethod
    def _organism_and_tracks(cls, card: ModelCard, options) -> tuple[int, int, int]:
        """(window, organism index, tracks of the output for that organism) from config and metadata."""
        config, metadata = _read(card)
        window = options.window or WINDOW
        top = int(config.get("max_seq_len", OFFICIAL_MAX))
        if window & (window - 1) or not MIN_WINDOW <= window <= top:
            raise GlmscoreError(f"--window {window:,} must be a power of two from {MIN_WINDOW:,} to the model's "
                                f"{top:,} bp.")
        organisms = list(metadata.get("organisms") or [])
        if options.organism not in organisms:
            raise GlmscoreError(f"--organism {options.organism} is not one of the model's ({', '.join(organisms)}).")
        head = (metadata.get("heads") or {}).get(options.output_type)
        if not head or head.get("enabled") is False:
            raise GlmscoreError(f"--output-type {options.output_type} is not one of the model's outputs "
                                f"({', '.join(h for h in metadata.get('heads', {}) if h in ONE_BP_OUTPUTS)}).")
        org = organisms.index(options.organism)
        return window, org, int(head["num_tracks"][org])

    @classmethod
    def layout(cls, card: ModelCard, options) -> tuple[int, int, int, int]:
        window, _, n_tracks = cls._organism_and_tracks(card, options)
        return window, 1, window, n_tracks  # 1 bp predictions over the whole window

    @classmethod
    def provenance(cls, card):
        return (None, card.hf_id) if Path(card.hf_id).is_dir() else (card.revision, None)

    def load(self, card, runtime):
        import alphagenome_pt  # in here: only the model's actors, in the card's own environment, have it

        if Path(card.hf_id).is_dir():
            model = alphagenome_pt.AlphaGenome.load(card.hf_id)
        else:  # DeepMind's released parameters, converted (all folds' model)
            model = alphagenome_pt.deepmind_model(load_state=True, repo_id=card.hf_id)
        # DeepMind's policy (fp32 weights, bf16 compute) for a 16-bit dtype; fp32 throughout otherwise
        model.dtype_policy = alphagenome_pt.get_dtype_policy("float32" if runtime.dtype == "float32" else "deepmind")
        model.set_sync_bn(False)  # one process: no batch-norm statistics to gather (eval uses the running ones)
        self.organism = self._organism_and_tracks(card, self.options)[1]
        # predict() runs every enabled head, and a score needs one output's (all heads, the splice-junction
        # head's (512, 512, 734) tensors among them, were 37 s and +5.3 GB per 16 kb window at the real
        # configuration against 9 s for the trunk); embed() runs no head at all
        for name, head in model.metadata.metadata["heads"].items():
            head["enabled"] = name == self.options.output_type
        return model

    def _inputs(self, ids):
        """ids (rows, window) in A C G T N -> (one-hot (rows, window, 4) with N all zero, organism indices)."""
        import torch

        one_hot = torch.nn.functional.one_hot(ids, 5)[..., :4].float()
        return one_hot, torch.full((len(ids),), self.organism, dtype=torch.long, device=ids.device)

    def coverage(self, ids):
        predictions = self.model.predict(*self._inputs(ids))
        return predictions[self.options.output_type]["predictions_1bp"]

    def hidden(self, ids):
        return self.model.embed(*self._inputs(ids)).embeddings_1bp
