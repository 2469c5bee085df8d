"""AIDO.RNA (GenBio AI) through the ``modelgenerator`` package's own classes, in an environment of its own.

modelgenerator 0.1.3.post0 pins ``transformers==4.38.0`` (and numpy<2, peft<=0.13.2, tiledb==0.33.6...), and its
``RNABertForMaskedLM`` imports helpers transformers 5 removed (``find_pruneable_heads_and_indices``), so the class
cannot load beside glmscore's transformers: the cards list the package under ``environment:`` and only the model's
actors import it (``pipelines/environments.py``), with ``pyarrow<23`` (``ENVIRONMENT``). The hub repositories
(``genbio-ai/AIDO.RNA-*``) hold the weights and a ``config.json`` of model type ``rnabert`` but no tokenizer:
modelgenerator's ``GenBioBERT`` builds
``RNABertTokenizer(vocab.txt, version="v2")`` from the package's own vocabulary, one token per letter with [CLS]
before and [SEP] after. The driver never imports the package: the prepare stage encodes with that vocabulary,
written out here (``VOCAB``; tests/models/test_aido_rna.py checks the ids against the package's tokenizer), and the
context is read from ``config.json`` as plain data.

Scoring is ``hf_masked``'s (one unmasked pass by default, ``--mlm-scoring pll``, ``--reduction focus``) on the
class's MLM head; embeddings are the encoder's last hidden state (after its final norm, as ``GenBioBERT`` returns
it) or ``--layer``. The model was pre-trained on RNA: DNA is read with U for T (the card's alphabet).
"""

from __future__ import annotations

import json
from pathlib import Path

from glmscore.models.backends.hf_masked import HFMasked
from glmscore.models.base import Backend, Runtime, register_backend
from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError
from glmscore.models.hf_common import (
    CPU_BATCH_TOKENS,
    GPU_BATCH_TOKENS,
    WEIGHT_FILES,
    check_weights,
    config_dict,
    place,
    resolve_dtype,
)
from glmscore.models.tokenization import TokenPolicy, check_protocol

MODEL_TYPE = "rnabert"
PACKAGE = "modelgenerator==0.1.3.post0"
# the actor's Ray worker imports pyarrow (Ray Data): the driver's (26 here) needs NumPy 2, modelgenerator pins numpy<2,
# so the environment takes an older pyarrow (22.0.0 was checked with numpy 1.26.4; the bound is not bisected)
ENVIRONMENT = (PACKAGE, "pyarrow<23")
# modelgenerator/huggingface_models/rnabert/vocab.txt (0.1.3.post0), in order: a token's id is its place
VOCAB = ("[PAD]", "[MASK]", "[CLS]", "[SEP]", "[UNK]", "A", "G", "C", "T", "U", "N",
         "[BOS]", "[EOS]", "[UNUSED1]", "[UNUSED2]", "[UNUSED3]")


class AidoVocabulary:
    """``RNABertTokenizer(vocab.txt, version="v2")`` as the prepare stage needs it, without the package: each
    letter is its token ([UNK] for a letter outside the vocabulary), [CLS] ... [SEP] around a sequence."""

    def __init__(self):
        self.ids = {token: i for i, token in enumerate(VOCAB)}
        self.pad_token_id, self.mask_token_id = self.ids["[PAD]"], self.ids["[MASK]"]
        self.cls_token_id, self.sep_token_id, self.unk_token_id = self.ids["[CLS]"], self.ids["[SEP]"], self.ids["[UNK]"]
        self.bos_token_id = self.ids["[BOS]"]  # unused by v2 and by a masked LM's encoding
        # the tokenizer's special tokens: unk, cls, pad, mask, sep, bos, eos
        self.all_special_ids = sorted(self.ids[t] for t in VOCAB if t.startswith("[") and not t.startswith("[UNUSED"))

    def __call__(self, texts, add_special_tokens: bool = True) -> dict:
        one = isinstance(texts, str)
        rows = []
        for text in [texts] if one else texts:
            ids = [self.ids.get(c, self.unk_token_id) for c in text if not c.isspace()]
            rows.append([self.cls_token_id, *ids, self.sep_token_id] if add_special_tokens else ids)
        return {"input_ids": rows[0] if one else rows}

    def get_vocab(self) -> dict[str, int]:
        return dict(self.ids)


def _config(card: ModelCard) -> dict:
    """``config.json`` as plain data (a local folder read directly, a hub id through the hub cache)."""
    path = Path(card.hf_id)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GlmscoreError(f"model directory {path} has no config.json: write it with save_pretrained.")
        return json.loads((path / "config.json").read_text())
    return config_dict(card.hf_id, card.revision)


@register_backend("aido_rna")
class AidoRNA(HFMasked):
    """modelgenerator's ``RNABertForMaskedLM`` in the card's own environment; ``hf_masked``'s scoring."""

    environment = ENVIRONMENT  # modelgenerator pins transformers==4.38.0 and numpy<2

    @classmethod
    def card_for(cls, spec):
        """A local folder modelgenerator's ``RNABertConfig`` wrote (model type ``rnabert`` with its own
        ``normalization_type`` key: multimolecule's RNABERT shares the model type, not the key)."""
        path = Path(spec)
        if not (path.is_dir() and (path / "config.json").is_file()):
            return None
        config = json.loads((path / "config.json").read_text())
        if config.get("model_type") != MODEL_TYPE or "normalization_type" not in config:
            return None
        return ModelCard(id=path.name, hf_id=str(path.resolve()), backend=cls.name, objective="mlm", alphabet="RNA",
                         environment=ENVIRONMENT, notes="modelgenerator, card derived from its config.json")

    @classmethod
    def preflight(cls, card, options, task, layer=-1) -> None:
        check_protocol(card, options.protocol)
        if options.protocol == "paper" and options.mlm_mode != "unmasked":
            raise GlmscoreError("--protocol paper is the published single unmasked pass; drop --mlm-scoring pll.")
        config = _config(card)
        if config.get("model_type") != MODEL_TYPE:
            raise GlmscoreError(f"model {card.hf_id} is not an AIDO.RNA checkpoint (config.json's model_type is "
                                f"{config.get('model_type')!r}, not {MODEL_TYPE!r}).")
        path = Path(card.hf_id)
        if path.is_dir():
            if not any((path / f).is_file() for f in WEIGHT_FILES):
                raise GlmscoreError(f"model directory {path} has no weights ({' or '.join(WEIGHT_FILES[::2])}): "
                                    "write them with save_pretrained.")
            check_weights(path)
        n = config.get("num_hidden_layers")
        if task == "embed" and isinstance(n, int) and not -(n + 1) <= layer <= n:
            raise GlmscoreError(f"--layer {layer} does not exist: model {card.id} has {n + 1} hidden-state layers "
                                f"(0 = embeddings, {n} or -1 = last).")

    @classmethod
    def runtime(cls, card, options, device, threads=None) -> Runtime:
        limit = card.max_context or _config(card).get("max_position_embeddings") or None
        return Runtime(device=device, dtype=resolve_dtype(options.dtype, card, device), token_limit=limit, threads=threads)

    @classmethod
    def provenance(cls, card):
        if Path(card.hf_id).is_dir():
            return None, card.hf_id
        return _config(card).get("_commit_hash") or card.revision, None

    @classmethod
    def fewest_tokens(cls, card, n_bases):
        return n_bases

    @classmethod
    def make_encoder(cls, card, options, runtime) -> TokenPolicy:
        return TokenPolicy(card, AidoVocabulary(), runtime.token_limit, options.long, options.protocol)

    def __init__(self, card, options, runtime, fitted=None):
        Backend.__init__(self, card, options, runtime, fitted)
        try:  # in here: torch, transformers 4.38 and modelgenerator load in the model's actors only
            from modelgenerator.huggingface_models.rnabert import RNABertForMaskedLM
        except ImportError as exc:
            raise GlmscoreError(f"model {card.id} needs modelgenerator's RNABertForMaskedLM, which did not import here "
                                f"({exc}); it runs in the card's own environment ({', '.join(card.environment)}).") from None
        self.device, self.dtype = place(runtime)
        self.batch_tokens = self.configured_batch_tokens = (
            options.batch_tokens or (GPU_BATCH_TOKENS if self.device.type == "cuda" else CPU_BATCH_TOKENS))
        self.tokenizer = AidoVocabulary()
        try:  # the package's class, as GenBioBERT loads it (torch_dtype: transformers 4.38's name)
            model = RNABertForMaskedLM.from_pretrained(card.hf_id, revision=card.revision, torch_dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise GlmscoreError(f"could not load model {card.hf_id}: {str(exc).splitlines()[0]}") from None
        if model.config.vocab_size != len(VOCAB):
            raise GlmscoreError(f"model {card.hf_id} has a vocabulary of {model.config.vocab_size} tokens, not "
                                f"modelgenerator's {len(VOCAB)}; it is not an AIDO.RNA checkpoint.")
        self.model = model.to(self.device).eval()
        self.takes_mask = True
        self.resolved_revision = getattr(model.config, "_commit_hash", None) or card.revision
        self.pad_id = self.tokenizer.pad_token_id
