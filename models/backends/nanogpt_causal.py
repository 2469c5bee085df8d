"""nanoGPT checkpoints (GenerRNA's) scored as transformers' GPT2LMHeadModel, when every tensor maps exactly.

GenerRNA (pfnet/GenerRNA) ships no config.json and no transformers weights: its ``model.py`` is nanoGPT's ``GPT``
and its ``train.py`` saves ``torch.save({'model': state_dict, 'optimizer': ..., 'model_args': {...}, ...})``, the
state dict's keys prefixed ``_orig_mod.`` when the model was ``torch.compile``d (its ``sampling.py`` strips that
prefix). The original release splits the file into ``model.pt.part-aa``, ``-ab``... (``cat model.pt.part-* >
model.pt``); the authors' later README names one ``model_updated.pt``. nanoGPT's ``GPT`` is GPT-2's computation:
pre-LayerNorm blocks (eps 1e-5), exact GELU (``nn.GELU()``), learned positions, ``lm_head`` tied to ``wte``, the
same parameter names; its ``nn.Linear`` weights are GPT-2's ``Conv1D`` weights transposed, and where it was built
with ``bias=False`` (GenerRNA's configs) GPT-2's biases are zeros, which compute the same.

The checkpoint is read with ``torch.load(weights_only=True)`` (never unpickling arbitrary objects), split parts are
read as one file without joining them on disk, and the weights are converted in memory on every load (nothing is
written). Anything that does not map (a missing, extra or misshaped tensor, an untied head) is refused in one
sentence; then the model scores on the hf_causal path (``HFCausal.loglik``, ``HFBackend.embed``).

The source is a local folder holding the checkpoint and GenerRNA's tokenizer folder (``tokenizer/``,
``tokenizer_bpe_1024/`` or the folder itself), or a hub id, of which ``model_updated.pt`` and ``tokenizer/*`` are
downloaded (the file names the authors' README gives; not checked against the hub here).
"""

from __future__ import annotations

import io
import pickle
import re
from functools import lru_cache
from pathlib import Path

from huggingface_hub import snapshot_download

from glmscore.models.backends.hf_causal import HFCausal
from glmscore.models.base import Backend, Runtime, register_backend
from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError
from glmscore.models.hf_common import place, resolve_dtype
from glmscore.models.tokenization import card_tokenizer, check_protocol, fewest_tokens, token_policy

CHECKPOINTS = ("model_updated.pt", "model.pt")  # one file; else model.pt.part-* read in name order
PARTS = "model.pt.part-*"
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_bpe_1024", ".")
HUB_FILES = ("model_updated.pt", "tokenizer/*")
PREFIX = "_orig_mod."  # torch.compile's wrapper, in the keys of a compiled model's state dict
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class JoinedParts(io.RawIOBase):
    """Split parts (``split -b``) read as the one file they were cut from: seekable, nothing copied to disk."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.files = [open(p, "rb") for p in paths]
        self.starts = [0]
        for p in paths:
            self.starts.append(self.starts[-1] + p.stat().st_size)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.starts[-1]}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        if self.pos >= self.starts[-1]:
            return 0
        i = max(j for j, start in enumerate(self.starts[:-1]) if start <= self.pos)
        fh = self.files[i]
        fh.seek(self.pos - self.starts[i])
        n = fh.readinto(memoryview(buffer)[: min(len(buffer), self.starts[i + 1] - self.pos)])
        self.pos += n
        return n

    def close(self) -> None:
        for fh in self.files:
            fh.close()
        super().close()


def source_folder(card: ModelCard) -> Path:
    """The folder holding the card's checkpoint and tokenizer: a local folder, or the hub snapshot of HUB_FILES."""
    if Path(card.hf_id).is_dir():
        return Path(card.hf_id)
    return _snapshot(card.hf_id, card.revision)


@lru_cache(maxsize=4)
def _snapshot(hf_id: str, revision: str | None) -> Path:
    why = ""
    for local in (True, False):  # the Hugging Face cache first: no network when the files are there
        try:
            folder = Path(snapshot_download(hf_id, revision=revision, allow_patterns=list(HUB_FILES),
                                            local_files_only=local))
        except Exception as exc:  # huggingface_hub reports offline, missing and refused files in many classes
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            continue
        if (folder / HUB_FILES[0]).is_file():
            return folder
        why = f"the snapshot {folder} has no {HUB_FILES[0]}"
    raise GlmscoreError(f"could not get {' and '.join(HUB_FILES)} of {hf_id} at revision {revision or 'main'} ({why}); "
                        "download them where there is network and name the folder as the card's hf_id.")


def checkpoint_files(folder: Path) -> list[Path]:
    for name in CHECKPOINTS:
        if (folder / name).is_file():
            return [folder / name]
    parts = sorted(folder.glob(PARTS))
    if parts:
        return parts
    raise GlmscoreError(f"{folder} holds no nanoGPT checkpoint ({', '.join(CHECKPOINTS)} or {PARTS.replace('*', 'aa')}, "
                        "-ab...: GenerRNA's split release).")


def tokenizer_card(card: ModelCard) -> ModelCard:
    """The card with its tokenizer's folder as ``tokenizer_id`` (GenerRNA keeps it in a subfolder)."""
    folder = source_folder(card)
    for name in TOKENIZER_FOLDERS:
        if any((folder / name).glob("tokenizer*.json")) or (folder / name / "vocab.json").is_file():
            return card.with_(tokenizer_id=str((folder / name).resolve()), tokenizer_revision=None)
    raise GlmscoreError(f"{folder} holds no tokenizer (looked in {', '.join(TOKENIZER_FOLDERS)} for tokenizer.json or "
                        "vocab.json); copy GenerRNA's tokenizer folder there.")


def load_checkpoint(files: list[Path], name: str) -> dict:
    """``torch.load(weights_only=True)`` of one file (memory-mapped) or of split parts read as one."""
    import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it

    try:
        if len(files) == 1:
            return torch.load(files[0], map_location="cpu", weights_only=True, mmap=True)
        with io.BufferedReader(JoinedParts(files), buffer_size=1 << 22) as fh:
            return torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a paragraph; what it refused ("GLOBAL module.name") is the news
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"the global {found.group(1)}" if found else "an object torch's weights-only unpickler refused"
        raise GlmscoreError(f"the {name} in {files[0].parent} holds more than tensors and plain data "
                            f"({what}), and glmscore reads checkpoints only with "
                            "torch.load(weights_only=True), never unpickling arbitrary objects; save its 'model' state "
                            "dict and 'model_args' alone.") from None
    except (RuntimeError, OSError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0][:300].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise GlmscoreError(f"the {name} in {files[0].parent} is damaged or incomplete ({first}); download it again "
                            "(all its parts).") from None


def _expected(n_layer: int, n_embd: int, vocab: int, block: int, bias: bool) -> dict[str, tuple[int, ...]]:
    """nanoGPT's ``GPT(GPTConfig(...)).state_dict()`` shapes (model.py), the causal-mask buffers aside."""
    e = n_embd
    shapes = {"transformer.wte.weight": (vocab, e), "transformer.wpe.weight": (block, e), "transformer.ln_f.weight": (e,),
              "lm_head.weight": (vocab, e)}
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        shapes.update({h + "ln_1.weight": (e,), h + "attn.c_attn.weight": (3 * e, e), h + "attn.c_proj.weight": (e, e),
                       h + "ln_2.weight": (e,), h + "mlp.c_fc.weight": (4 * e, e), h + "mlp.c_proj.weight": (e, 4 * e)})
    if bias:
        shapes.update({k[: -len("weight")] + "bias": (s[0],) for k, s in list(shapes.items())
                       if ".ln_" in k or k.endswith(CONV1D)})
    return shapes


def _names(keys, shown: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def to_gpt2(checkpoint, name: str = "checkpoint"):
    """(GPT2Config, GPT2LMHeadModel state dict) of a nanoGPT checkpoint that maps exactly; else one sentence."""
    import torch  # in here: torch loads where the model runs (actor, trial, worker); `glmscore --help` and the driver never pay for it
    from transformers import GPT2Config

    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict)
            and isinstance(checkpoint.get("model_args"), dict)):
        raise GlmscoreError(f"the {name} is not a nanoGPT checkpoint (a dict with 'model' and 'model_args', as GenerRNA's "
                            "train.py saves it).")
    args = checkpoint["model_args"]
    sizes = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
    bad = [k for k in sizes if not isinstance(args.get(k), int) or isinstance(args.get(k), bool) or args[k] <= 0]
    if bad or args["n_embd"] % args["n_head"]:
        raise GlmscoreError(f"the {name}'s model_args do not describe a nanoGPT model ({', '.join(bad) or 'n_embd'} "
                            f"{'missing or not a positive integer' if bad else 'not a multiple of n_head'}).")
    n_layer, n_head, n_embd, block, vocab = (args[k] for k in sizes)
    bias = bool(args.get("bias", True))  # GPTConfig's default
    state = {(k[len(PREFIX):] if isinstance(k, str) and k.startswith(PREFIX) else k): v
             for k, v in checkpoint["model"].items()}
    expected = _expected(n_layer, n_embd, vocab, block, bias)
    mask = torch.tril(torch.ones(block, block)).view(1, 1, block, block)
    extra = {str(k) for k, v in state.items() if k not in expected and not (  # torch < 2's causal-mask buffers
        isinstance(k, str) and k.endswith(".attn.bias") and k.removesuffix(".attn.bias") in
        {f"transformer.h.{i}" for i in range(n_layer)} and torch.is_tensor(v) and v.shape == mask.shape and torch.equal(v, mask))}
    missing = set(expected) - set(state)
    misshaped = {k: tuple(state[k].shape) if torch.is_tensor(state[k]) else type(state[k]).__name__
                 for k in set(expected) & set(state) if not torch.is_tensor(state[k]) or tuple(state[k].shape) != expected[k]}
    what = []
    if missing:
        what.append(f"{len(missing)} tensor(s) are missing ({_names(missing)})")
    if extra:
        what.append(f"{len(extra)} tensor(s) have no place in the model ({_names(extra)})")
    if misshaped:
        shown = sorted(misshaped)[:2]
        what.append(f"{len(misshaped)} tensor(s) have another shape ("
                    + ", ".join(f"{k}: {'x'.join(map(str, misshaped[k])) if isinstance(misshaped[k], tuple) else misshaped[k]}"
                                f" in the file, {'x'.join(map(str, expected[k]))} in the model" for k in shown)
                    + (f" and {len(misshaped) - 2} more" if len(misshaped) > 2 else "") + ")")
    if not what and not torch.equal(state["lm_head.weight"], state["transformer.wte.weight"]):
        what.append("lm_head.weight differs from transformer.wte.weight (nanoGPT's GPT and GPT2LMHeadModel tie them)")
    if what:
        raise GlmscoreError(f"the {name} does not map exactly onto GPT2LMHeadModel (its model_args: n_layer {n_layer}, "
                            f"n_head {n_head}, n_embd {n_embd}, vocab_size {vocab}, block_size {block}, bias {bias}): "
                            f"{'; '.join(what)}; glmscore loads a nanoGPT checkpoint only when every tensor maps.")
    dtype = state["transformer.wte.weight"].dtype
    gpt2 = {}
    for key, shape in _expected(n_layer, n_embd, vocab, block, True).items():
        if key in state:
            gpt2[key] = state[key].t().contiguous() if key.endswith(CONV1D) else state[key]
        else:  # bias=False: GPT-2's biases are zeros (a zero LayerNorm shift, a zero Linear bias)
            gpt2[key] = torch.zeros(shape, dtype=dtype)
    config = GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        n_inner=4 * n_embd, activation_function="gelu", layer_norm_epsilon=1e-5, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
                        architectures=["GPT2LMHeadModel"])
    return config, gpt2


def read_gpt2(card: ModelCard):
    """The card's checkpoint as (GPT2Config, state dict), converted in memory."""
    files = checkpoint_files(source_folder(card))
    name = f"checkpoint {files[0].name}" + (f" ({len(files)} parts)" if len(files) > 1 else "")
    return to_gpt2(load_checkpoint(files, name), name)


@lru_cache(maxsize=4)
def _config(hf_id: str, revision: str | None, stats: tuple):
    return read_gpt2(ModelCard(id="nanogpt", hf_id=hf_id, revision=revision))[0]


def gpt2_config(card: ModelCard):
    """The card's GPT2Config (the whole checkpoint is read and checked once per process and version of its files)."""
    files = checkpoint_files(source_folder(card))
    return _config(card.hf_id, card.revision, tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@register_backend("nanogpt_causal")
class NanoGPTCausal(HFCausal):
    """A nanoGPT checkpoint converted to GPT2LMHeadModel in memory, then scored and embedded as hf_causal does."""

    @classmethod
    def card_for(cls, spec):
        return None  # only cards name this format (a folder of .pt files says nothing of its architecture)

    @classmethod
    def preflight(cls, card, options, task, layer=-1) -> None:
        check_protocol(card, options.protocol)
        card_tokenizer(tokenizer_card(card))
        n = gpt2_config(card).n_layer
        if task == "embed" and not -(n + 1) <= layer <= n:
            raise GlmscoreError(f"--layer {layer} does not exist: model {card.id} has {n + 1} hidden-state layers "
                                f"(0 = embeddings, {n} or -1 = last).")

    @classmethod
    def runtime(cls, card, options, device, threads=None) -> Runtime:
        return Runtime(device=device, dtype=resolve_dtype(options.dtype, card, device),
                       token_limit=card.max_context or gpt2_config(card).n_positions, threads=threads)

    @classmethod
    def provenance(cls, card):
        if Path(card.hf_id).is_dir():
            return None, card.hf_id
        return source_folder(card).name, None  # the hub snapshot's folder is named by its commit

    @classmethod
    def fewest_tokens(cls, card, n_bases):
        return fewest_tokens(tokenizer_card(card), n_bases)

    @classmethod
    def make_encoder(cls, card, options, runtime):
        return token_policy(tokenizer_card(card), options, runtime)

    def __init__(self, card, options, runtime, fitted=None):
        Backend.__init__(self, card, options, runtime, fitted)
        from transformers import GPT2LMHeadModel  # in here: the driver and `glmscore --help` never load torch

        self.device, self.dtype = place(runtime)
        self.batch_tokens = self.configured_batch_tokens = options.batch_tokens or type(self).batching(
            card, options, runtime)["batch_tokens"]
        self.tokenizer = card_tokenizer(tokenizer_card(card))
        config, state = read_gpt2(card)
        model = GPT2LMHeadModel(config)
        model.load_state_dict(state, strict=True)  # every key, every shape: checked in to_gpt2, asserted here
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.takes_mask = True
        self.resolved_revision = self.provenance(card)[0] or card.revision
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
