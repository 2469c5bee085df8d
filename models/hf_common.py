"""What the transformers backends share: the model's config on the driver (card, token limit,
revision), dtype choice, loading, OOM-safe batched forward passes, pooled embeddings.

torch is imported inside functions: importing a backend module (the registry imports them all) stays
cheap, and baseline actors never load torch.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import os
import re
import socket
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open

from glmscore.models.base import Backend, Context, Encoded, LMOptions, Runtime, token_budget_batches
from glmscore.models.cards import ModelCard, import_package
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import option
from glmscore.models.pooling import pool
from glmscore.models.tokenization import (
    PROTOCOLS,
    TokenPolicy,
    card_tokenizer,
    check_hub,
    check_protocol,
    fewest_tokens,
    token_policy,
)

# Measured (tests/bench/bench_nullsette.py): on CPU, batches beyond a few sequences get slower
# (cache-bound) and ~4k tokens is best; GPUs want large batches.
CPU_BATCH_TOKENS = 4096
GPU_BATCH_TOKENS = 32768
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # namespace/name, as the hub spells repository ids


def _config_error(hf_id: str, exc: Exception) -> GlmscoreError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return GlmscoreError(f"could not read the config of model {hf_id}: {first}")


@lru_cache(maxsize=16)
def config_dict(hf_id: str, revision: str | None) -> dict:
    """A model's ``config.json`` as plain data: what glmscore decides from (architectures, remote code)
    without building a config class, so nothing from the model's repository runs to read it."""
    from transformers import PretrainedConfig  # in here: transformers loads only where a model or tokenizer is built

    check_hub(hf_id, revision)
    try:
        return PretrainedConfig.get_config_dict(hf_id, revision=revision)[0]
    except (OSError, ValueError) as exc:  # transformers reports missing files, network and bad JSON so
        raise _config_error(hf_id, exc) from None


def needs_remote_code(config: dict) -> bool:
    """transformers' own rule: the config maps AutoConfig to the repository's code and transformers has
    no class of its own for the model type (its built-in names: a class another package registered under
    the same name, multimolecule's ``hyenadna``, is not the repository's architecture)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return "AutoConfig" in (config.get("auto_map") or {}) and config.get("model_type") not in CONFIG_MAPPING_NAMES


# installed packages that register architectures with transformers' Auto classes when imported; a local
# folder or hub id whose model type only one of them knows gets that package on its card
# (gpn first: it imports in seconds, multimolecule in tens of seconds)
ARCHITECTURE_PACKAGES = ("gpn:register_auto_classes", "multimolecule")


def architecture_package(config: dict) -> str | None:
    """The package that registers ``config``'s model type (None: transformers' own, or remote code)."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if not model_type or model_type in CONFIG_MAPPING_NAMES or "AutoConfig" in (config.get("auto_map") or {}):
        return None
    for package in ARCHITECTURE_PACKAGES:
        module = package.partition(":")[0]
        if model_type not in CONFIG_MAPPING and importlib.util.find_spec(module) is not None:
            import_package(ModelCard(id=module, package=package))
        if model_type in CONFIG_MAPPING and CONFIG_MAPPING[model_type].__module__.split(".")[0] == module:
            return package
    return None


def check_remote_code(hf_id: str, revision: str | None, trust_remote_code: bool) -> None:
    """A model that needs its repository's code is refused in one sentence without the flag (before its
    tokenizer or config is built: transformers would otherwise warn, then fail, in its own words)."""
    if not trust_remote_code and needs_remote_code(config_dict(hf_id, revision)):
        raise GlmscoreError(f"model {hf_id} ships its own modelling code (config.json's auto_map) and transformers has no "
                            "class for it; glmscore runs such code only with --trust-remote-code (read it first: every "
                            "actor runs it).")


@lru_cache(maxsize=16)
def load_config(hf_id: str, revision: str | None, trust_remote_code: bool):
    """A model's transformers config (from a local directory, the hub cache or the hub), read once."""
    from transformers import AutoConfig  # in here: transformers loads only where a model or tokenizer is built

    check_remote_code(hf_id, revision, trust_remote_code)
    try:
        return AutoConfig.from_pretrained(hf_id, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _config_error(hf_id, exc) from None


def base_architectures(config: dict, objective: str) -> set[str]:
    """transformers' base class (``LlamaModel``: no head) of ``config``'s model type when the type also has a
    head class for ``objective`` (clm: causal LM, mlm: masked LM). A local folder of one gets a card: its hidden
    states embed, and scoring it is refused in one sentence by the weights' check (no head) unless its head is
    tied to its embeddings."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    heads = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if objective == "clm" else MODEL_FOR_MASKED_LM_MAPPING_NAMES
    model_type = config.get("model_type")
    names = MODEL_MAPPING_NAMES.get(model_type) if model_type in heads else None
    return {names} if isinstance(names, str) else set(names or ())


def card_for_architecture(spec: str, suffixes: tuple[str, ...], backend: str, objective: str) -> ModelCard | None:
    """A card for a local ``save_pretrained`` directory or a hub id whose config names one of the
    architectures ``suffixes`` (``ForCausalLM``...); None when the config names another kind."""
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise GlmscoreError(f"model directory {spec} has no config.json: write it with save_pretrained.")
        hf_id, revision, note = str(path.resolve()), None, "card derived from a local directory's config.json"
    elif HUB_ID.fullmatch(spec):
        hf_id, revision, note = spec, "main", "card derived from a hub id"
    else:
        return None
    # the plain config.json: a model with code of its own is recognised whether or not --trust-remote-code
    # was given (its loading checks the flag)
    config = config_dict(hf_id, revision)
    bases = base_architectures(config, objective) if path.is_dir() else set()  # a hub model's weights are not checked
    if not any(a.endswith(suffixes) or a in bases for a in config.get("architectures") or []):
        return None
    package = architecture_package(config)
    # max_context stays None: the backend reads the limit from the config (one rule for every card
    # without a declared context, see HFBackend.token_limit). The published protocol's generic rule
    # (the tokenizer's own special tokens, every position scored) applies to any such model.
    return ModelCard(id=path.name if path.is_dir() else spec.replace("/", "__"), hf_id=hf_id, revision=revision,
                     backend=backend, objective=objective, vllm=objective == "clm" and package is None,
                     protocols=("glmscore", "paper"), package=package,
                     masks_padding=not (package or "").startswith("gpn"),
                     notes=note + (f"; architecture from {package}" if package else ""))


# model types whose learned positions count from padding_idx + 1 (RoBERTa's scheme, which ESM and NT keep;
# multimolecule's RNA-FM adds one more, its upstream's off-by-one): max_position_embeddings - padding_idx - this
# many tokens fit, and one more fails inside the embedding
OFFSET_POSITIONS = {"roberta": 1, "xlm-roberta": 1, "camembert": 1, "esm": 1, "rnafm": 2}


def config_context(card: ModelCard) -> int | None:
    """The card's context, else the config's position limit (None when neither says)."""
    if card.max_context:
        return card.max_context
    config = load_config(card.hf_id, card.revision, card.trust_remote_code)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            if key == "max_position_embeddings" and config.model_type in OFFSET_POSITIONS \
                    and getattr(config, "position_embedding_type", "absolute") in (None, "absolute"):
                value -= (config.pad_token_id or 0) + OFFSET_POSITIONS[config.model_type]
            return value
    return None


def hf_provenance(card: ModelCard) -> tuple[str | None, str | None]:
    """A local directory identifies the weights by its files; a hub model by the commit its config
    resolved to (so every actor then loads that commit, even if the branch moves during the job)."""
    if Path(card.hf_id).is_dir():
        return None, card.hf_id
    config = load_config(card.hf_id, card.revision, card.trust_remote_code)
    return getattr(config, "_commit_hash", None) or card.revision, None


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_weights(path: Path) -> None:
    """A local model's weight files are whole, checked on the driver before Ray starts (a truncated file
    otherwise failed in every actor, after a minute, in 68 lines): each safetensors file's header and
    size (``safe_open`` reads the header only), an index's shards present, a ``.bin`` a whole zip archive
    (its directory is at the end, so a cut file has none; it is never unpickled here)."""
    def damaged(f: Path, why: str):
        return GlmscoreError(f"the weights {f} are damaged or incomplete ({why}); save or download them again.")

    def readable(f: Path) -> Path:  # safetensors reports an unreadable file as "No such file or directory"
        if not os.access(f, os.R_OK):
            raise GlmscoreError(f"the weights {f} cannot be read: permission denied (ask its owner, or chmod a+r it).")
        return f

    files = []
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(readable(index).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise damaged(index, "not a readable weight index") from None
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise GlmscoreError(f"{index} lists {len(missing)} weight file(s) that {path} lacks ({missing[0]}...); "
                                    "download or save the model again.")
            files += [path / s for s in shards]
        elif (path / single).is_file():
            files.append(path / single)
    for f in map(readable, files):
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt"):
                    pass
            except (SafetensorError, OSError) as exc:
                raise damaged(f, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        elif not zipfile.is_zipfile(f):
            raise damaged(f, "not a whole PyTorch archive")


def _shape(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _names(keys, shown: int = 3) -> str:
    keys = sorted(keys, key=lambda k: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", k)])
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def check_weights_fit(path: Path, card: ModelCard, auto_class: str, task: str) -> None:
    """A local model's weights fit the model its config.json builds, decided on the driver before Ray starts from
    the safetensors headers alone: a config that declares more layers than the files hold, or another hidden size,
    otherwise loaded with random layers in silence (or failed in every actor in 190 lines). The model is built on
    the meta device (no memory) and compared the way transformers loads: checkpoint keys renamed by its own rules
    (base-model prefix, legacy names), weights tied to others (``all_tied_weights_keys``) and the class's
    ``_keys_to_ignore_on_load_missing`` are not missing, non-persistent buffers are not in the state dict.
    Refused: weights missing from the files, weights of another shape, and weights of layers the config does not
    declare (an index past the end of a layer list); any other extra weights (another class's head) are ignored,
    as transformers ignores them. A base model's folder (no head) is refused for scoring in its own sentence; its
    hidden states still embed. Models that run their repository's code, quantized checkpoints, and ``.bin``
    weights are left to loading."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        return
    raw = config_dict(card.hf_id, card.revision)
    if card.trust_remote_code or needs_remote_code(raw) or raw.get("quantization_config"):
        return  # the repository's code, or packed (quantized) weights whose shapes are not the model's
    import torch  # in here: only a local folder's check on the driver pays for it
    import transformers

    header: dict[str, tuple] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            header.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
    config = load_config(card.hf_id, card.revision, card.trust_remote_code)
    try:
        with torch.device("meta"):
            model = getattr(transformers, auto_class).from_config(config)
    except Exception:  # noqa: BLE001 - a model transformers cannot build on the meta device is left to loading
        return
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        mapping = get_model_conversion_mapping(model)
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
    except (ImportError, TypeError):  # another transformers: the base-model prefix alone
        rename_source_key, renamings, converters = None, [], []
    prefix = model.base_model_prefix
    found, misshaped, unexpected = set(), {}, set()
    for key, shape in header.items():
        if rename_source_key is not None:
            name, converted = rename_source_key(key, renamings, converters, prefix, expected)
            if name not in expected and key in expected:
                name, converted = key, None
        else:
            name, converted = key, None
            if key not in expected and prefix and f"{prefix}.{key}" in expected:
                name = f"{prefix}.{key}"
            elif key not in expected and prefix and key.startswith(f"{prefix}.") and key[len(prefix) + 1:] in expected:
                name = key[len(prefix) + 1:]
        if name in expected:
            found.add(name)
            if converted is None and shape != expected[name]:  # a converter (fused experts...) changes shapes
                misshaped[name] = shape
        else:
            unexpected.add(name)
    ignore = "|".join(f"({p})" for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or ()))
    if hasattr(model, "all_tied_weights_keys"):  # the ties this config makes (transformers 5)
        tied = set(model.all_tied_weights_keys)
    else:  # the class's declared ties, made when the config ties embeddings
        tied = set(getattr(model, "_tied_weights_keys", None) or ()) if getattr(config, "tie_word_embeddings", True) else set()
    by_tensor: dict[int, set[str]] = {}  # a module shared under two names is one tensor in the files
    for name, tensor in itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)):
        by_tensor.setdefault(id(tensor), set()).add(name)
    shared = {n for names in by_tensor.values() if names & found for n in names}
    missing = {k for k in expected if k not in found and k not in tied and k not in shared
               and not (ignore and re.search(ignore, k))}

    def past_the_end(key: str) -> bool:  # a layer the config does not declare: model.layers.2.* beside 2 layers
        parts = key.split(".")
        for i, part in enumerate(parts[1:], 1):
            if part.isdigit():
                try:
                    layers = model.get_submodule(".".join(parts[:i]))
                except AttributeError:
                    return False
                return isinstance(layers, torch.nn.ModuleList) and int(part) >= len(layers)
        return False

    extra = {k for k in unexpected if past_the_end(k)}
    arch = type(model).__name__
    head = {k for k in missing if prefix and not k.startswith(f"{prefix}.")}
    if head and head == missing and not misshaped and not extra and any(k.startswith(f"{prefix}.") for k in found):
        if task == "embed":
            return  # hidden states need no head
        saved = ", ".join(config.architectures or []) or "a base model"
        raise GlmscoreError(f"the weights in {path} have no language-model head ({_names(head)}; config.json's architectures: "
                            f"{saved}), so they give no scores as {arch}; score a folder saved with its head ({arch}), "
                            "or take its hidden states with `glmscore embed`.")
    if not (missing or misshaped or extra):
        return
    what = []
    if missing:
        what.append(f"{len(missing)} weight(s) the model needs are missing from the files ({_names(missing)})")
    if misshaped:
        shown = sorted(misshaped)[:2]
        what.append(f"{len(misshaped)} weight(s) have another shape ("
                    + ", ".join(f"{k}: {_shape(misshaped[k])} in the files, {_shape(expected[k])} in the config" for k in shown)
                    + (f" and {len(misshaped) - 2} more" if len(misshaped) > 2 else "") + ")")
    if extra:
        what.append(f"{len(extra)} weight(s) in the files belong to layers the config does not declare ({_names(extra)})")
    declared = ", ".join(f"{k} {getattr(config, k)}" for k in ("num_hidden_layers", "hidden_size")
                         if isinstance(getattr(config, k, None), int))
    raise GlmscoreError(f"the weights in {path} do not fit its config.json ({arch}{': ' + declared if declared else ''}): "
                        f"{'; '.join(what)}; transformers would fill them with random numbers, so fix config.json or "
                        "save the model again.")


def hf_preflight(card: ModelCard, task: str, layer: int = -1, auto_class: str = "") -> None:
    """The tokenizer loads, a local directory holds weights that fit its config (``auto_class``: the class the
    backend loads), and (embed) ``layer`` exists in the config."""
    import_package(card)
    check_remote_code(card.hf_id, card.revision, card.trust_remote_code)
    card_tokenizer(card)
    path = Path(card.hf_id)
    if path.is_dir() and not any((path / f).is_file() for f in WEIGHT_FILES):
        raise GlmscoreError(f"model directory {path} has no weights ({' or '.join(WEIGHT_FILES[::2])}): write them with save_pretrained.")
    if path.is_dir():
        check_weights(path)
        if auto_class:
            check_weights_fit(path, card, auto_class, task)
    if task == "embed":
        config = load_config(card.hf_id, card.revision, card.trust_remote_code)
        n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
        if isinstance(n, int) and not -(n + 1) <= layer <= n:
            raise GlmscoreError(f"--layer {layer} does not exist: model {card.id} has {n + 1} hidden-state layers "
                                f"(0 = embeddings, {n} or -1 = last).")


def check_cuda(torch) -> None:
    """An actor Ray placed on a GPU whose torch sees no CUDA device (a CPU build of torch on a GPU image,
    no driver in the container, Ray's fake GPU nodes) is one sentence naming the node, not a misleading
    error about the GPU's dtypes further on."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return
    build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    raise GlmscoreError(f"Ray gave this actor a GPU on node {socket.gethostname()}, but torch sees no CUDA device there "
                        f"({build}; CUDA_VISIBLE_DEVICES={visible}); install a CUDA torch on the GPU nodes "
                        "(cluster/local/install.sh gpu) or pass --device cpu.")


def place(runtime):
    """torch's threads, device and dtype for a model loaded in this process (an actor, a trial, a worker); a
    bfloat16 run on a GPU without it is one sentence."""
    import torch

    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    device = torch.device(runtime.device)
    if device.type == "cuda":
        check_cuda(torch)
    if runtime.dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GlmscoreError("this GPU has no bfloat16 support; pass --dtype float16 or --dtype float32.")
    return device, getattr(torch, runtime.dtype)


def resolve_dtype(requested: str | None, card: ModelCard, device: str) -> str:
    """``auto``: bf16 on a GPU (halves memory, same ranking accuracy), fp32 on CPU."""
    name = requested or card.dtype
    if name == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return name


@dataclass(frozen=True)
class HFOptions(LMOptions):
    """Language models (transformers backends)"""
    protocol: str = option("glmscore", choices=PROTOCOLS,
                           help="glmscore: score real nucleotide tokens (default); paper: the published Nullsette "
                                "scripts' tokenization and averaging, fp32 (cards say which support it)")

    def result_fields(self) -> dict:
        # the default protocol stays out of the fingerprint, so score folders written before the option
        # existed still resume and are not refused as another configuration
        fields = super().result_fields()
        if fields.get("protocol") == "glmscore":
            del fields["protocol"]
        return fields


class HFBackend(Backend):
    """Loads a card's tokenizer and model once; scores token-budget batches of encoded rows."""
    progress_step = 64  # rows per progress report at most (``Backend.progress_step``)

    @classmethod
    def batching(cls, card, options, runtime) -> dict:
        tokens = options.batch_tokens or (GPU_BATCH_TOKENS if runtime.device == "cuda" else CPU_BATCH_TOKENS)
        return {"batch_tokens": tokens, **super().batching(card, options, runtime)}
    auto_class: ClassVar[str] = ""
    Options = HFOptions
    embeds = True
    can_use_gpu = True

    @classmethod
    def preflight(cls, card, options, task, layer=-1) -> None:
        if options.protocol == "paper":
            check_protocol(card, options.protocol)
            if task != "score":
                raise GlmscoreError("--protocol paper reproduces the published scoring scripts; embeddings have no "
                                    "published protocol in glmscore (use --protocol glmscore).")
            if options.dtype not in (None, card.paper_dtype):
                raise GlmscoreError(f"--protocol paper runs model {card.id} in {card.paper_dtype}, as its published script did; "
                                    "drop --dtype.")
        hf_preflight(card, task, layer, cls.auto_class)

    @classmethod
    def runtime(cls, card, options, device, threads=None) -> Runtime:
        import_package(card)
        if options.protocol == "paper":  # the published script's precision and context
            return Runtime(device=device, dtype=card.paper_dtype, threads=threads,
                           token_limit=None if card.paper_uncapped else config_context(card))
        return Runtime(device=device, dtype=resolve_dtype(options.dtype, card, device), token_limit=config_context(card),
                       threads=threads)

    @classmethod
    def provenance(cls, card):
        return hf_provenance(card)

    @classmethod
    def fewest_tokens(cls, card, n_bases):
        return fewest_tokens(card, n_bases)

    @classmethod
    def make_encoder(cls, card, options, runtime) -> TokenPolicy:
        return token_policy(card, options, runtime)

    def __init__(self, card, options, runtime, fitted=None):
        super().__init__(card, options, runtime, fitted)
        import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it
        import transformers

        import_package(card)
        self.device, self.dtype = place(runtime)
        self.batch_tokens = self.configured_batch_tokens = (
            options.batch_tokens or (GPU_BATCH_TOKENS if self.device.type == "cuda" else CPU_BATCH_TOKENS))
        self.tokenizer = card_tokenizer(card)
        # parameters the published script kept in fp32 (Evo: poles and residues) load in fp32 and stay there
        keep = card.paper_keep_float32 if getattr(options, "protocol", "glmscore") == "paper" else ()
        try:
            model = getattr(transformers, self.auto_class).from_pretrained(
                card.hf_id, revision=card.revision, dtype=torch.float32 if keep else self.dtype,
                trust_remote_code=card.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise GlmscoreError(f"could not load model {card.hf_id}: {str(exc).splitlines()[0]}") from None
        if keep:
            for name, p in model.named_parameters():
                if not any(part in name for part in keep):
                    p.data = p.data.to(self.dtype)
        self.model = model.to(self.device).eval()
        # some ports take no attention mask (HyenaDNA's HF port: forward(input_ids, ...)); such a model is
        # given only the inputs it accepts, and only rows of one length share a pass, so it never reads a pad
        params = inspect.signature(self.model.forward).parameters.values()
        self.takes_mask = card.masks_padding and any(p.name == "attention_mask" or p.kind is p.VAR_KEYWORD for p in params)
        self.resolved_revision = getattr(model.config, "_commit_hash", None) or card.revision
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def shrink_batches(self, factor: int) -> str | None:
        self.batch_tokens = max(1, self.configured_batch_tokens // factor)  # a longer row still runs alone
        return f"{self.batch_tokens:,} tokens"

    def padded(self, rows: Sequence[np.ndarray]):
        """Right-padded ids and attention mask (right padding keeps causal positions unchanged).

        Under ``--protocol paper`` a masked LM also masks the pad tokens inside a row, as the published
        scripts' ``attention_mask = input_ids != pad_token_id`` does (Nucleotide Transformer's rows are
        padded to max_length by the protocol itself)."""
        import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it

        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        if self.card.objective == "mlm" and getattr(self.options, "protocol", "glmscore") == "paper":
            mask[ids == self.pad_id] = 0
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def forward_pass(self, ids, mask, **kwargs):
        """The model on a padded batch, with the attention mask when its ``forward`` takes one."""
        if self.takes_mask:
            kwargs["attention_mask"] = mask
        return self.model(input_ids=ids, **kwargs)

    def run_batches(self, rows: Sequence[np.ndarray], fn: Callable[[list[int]], list[np.ndarray]]) -> list[np.ndarray]:
        """Call ``fn`` on token-budget batches of row indices; halve a batch on CUDA out-of-memory."""
        import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it

        results: list[np.ndarray | None] = [None] * len(rows)

        def run(idx: list[int]):
            try:
                with torch.inference_mode():
                    for i, r in zip(idx, fn(idx)):
                        results[i] = r
            except torch.cuda.OutOfMemoryError:
                if len(idx) == 1:
                    raise GlmscoreError(
                        f"one sequence of {len(rows[idx[0]])} tokens does not fit in GPU memory; use --long truncate or a smaller model."
                    ) from None
                torch.cuda.empty_cache()
                half = len(idx) // 2
                run(idx[:half])
                run(idx[half:])

        lengths = [len(r) for r in rows]
        for batch in token_budget_batches(lengths, self.batch_tokens):
            if self.takes_mask:
                run([int(i) for i in batch])
            else:  # the batch is sorted by length: its runs of one length need no padding
                for _, same in itertools.groupby(batch, key=lambda i: lengths[i]):
                    run([int(i) for i in same])
        return results  # type: ignore[return-value]

    def embed(self, encoded: Sequence[Encoded], pooling, layer: int = -1, context: Context | None = None) -> np.ndarray:
        """Pooled hidden states of ``layer`` (default: last), float32 (rows x dim)."""

        k = max(1, self.card.kmer)
        if pooling.kind == "window" and getattr(self.tokenizer, "is_fast", False) and self.card.kmer == 0:
            # only character tokenizers map nucleotides to tokens 1:1; BPE vocabularies have no fixed span
            vocab_lengths = {len(t) for t in self.tokenizer.get_vocab() if t.isalpha()}
            if max(vocab_lengths, default=1) > 1:
                raise GlmscoreError("window pooling needs a character or fixed k-mer tokenizer.")
        rows = [e.ids for e in encoded]

        def forward(idx: list[int]) -> list[np.ndarray]:
            ids, mask = self.padded([rows[i] for i in idx])
            states = self.forward_pass(ids, mask, output_hidden_states=True).hidden_states
            if states is None:
                raise GlmscoreError(f"model {self.card.id} returns no hidden states, so it gives no embeddings here; score it instead.")
            if not -len(states) <= layer < len(states):
                raise GlmscoreError(f"layer {layer} does not exist: the model has {len(states)} hidden-state layers (0 = embeddings).")
            hidden = states[layer].float().cpu().numpy()
            return [pool(hidden[b, : len(rows[i])], encoded[i].real, pooling, k) for b, i in enumerate(idx)]

        return np.stack(self.run_batches(rows, forward)).astype(np.float32)


def token_logprobs(logits, targets):
    """log p(target) per position, computed in fp32 whatever the model's dtype."""
    import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it

    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
