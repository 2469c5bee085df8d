"""Causal LMs on vLLM: one engine per process (per Ray actor), scored by prompt log-probabilities.

Token ids come from the project's own ``TokenPolicy`` (``{"prompt_token_ids": ...}``), so BOS, k-mer
cutting and the alphabet are identical to the transformers backend; vLLM's tokenizer is never used
(``skip_tokenizer_init``). ``SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)`` returns
log p(token_j | tokens_<j) for every prompt token; prefix caching is off so every prompt is computed in
full. vLLM counts the generated token against ``max_model_len``, so the token limit that the prepare
stage enforces (and rolling windows use) is ``max_model_len - 1``, decided once in ``runtime``; the
engine is started with exactly that ``max_model_len``.
Embeddings are not served from here: vLLM's pooling runner would need a second engine per actor, so
cards use the transformers backends for embeddings.
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import psutil

from glmscore.models.base import (
    ActorResources,
    Backend,
    Context,
    Encoded,
    LMOptions,
    LoglikResult,
    Runtime,
    causal_pieces,
    register_backend,
    rows_from_pieces,
)
from glmscore.models.errors import GlmscoreError
from glmscore.models.hf_common import config_context, config_dict, hf_preflight, hf_provenance, resolve_dtype
from glmscore.models.options import option
from glmscore.models.tokenization import TokenPolicy, fewest_tokens, token_policy

# vLLM's own default (0.9) leaves room for other processes on a GPU; on CPU the value is the fraction of
# NUMA node 0's memory for the KV cache, where 0.3 was measured to start (0.92 is refused on 24 GiB).
GPU_MEMORY_UTILIZATION = {"cuda": 0.9, "cpu": 0.3}
ENGINE_OPTIONS = ("max_model_len", "max_num_batched_tokens", "max_num_seqs", "gpu_memory_utilization",
                  "tensor_parallel_size", "enforce_eager")


@dataclass(frozen=True)
class VLLMOptions(LMOptions):
    """vLLM engine (backend vllm_causal; defaults from the model card)"""
    max_model_len: int | None = option(None, minimum=2, help="vLLM: tokens per engine sequence; prompts hold one less (default: the card's context)")
    max_num_batched_tokens: int | None = option(None, minimum=1, affects_result=False, help="vLLM: tokens per engine step")
    max_num_seqs: int | None = option(None, minimum=1, affects_result=False, help="vLLM: sequences per engine step")
    gpu_memory_utilization: float | None = option(None, minimum=0.01, maximum=1.0, affects_result=False,
                                                  help="vLLM: fraction of GPU memory (on CPU: of NUMA node 0's memory; default 0.3 there)")
    tensor_parallel_size: int | None = option(None, minimum=1, affects_result=False,
                                              help="vLLM: GPUs per engine; each actor gets a placement group of that many GPUs")
    enforce_eager: bool | None = option(None, affects_result=False, help="vLLM: no CUDA graphs (less memory, slower)")


def gpu_memory_utilization(runtime) -> float:
    """vLLM reserves this fraction of the whole GPU: an actor that shares its GPU takes its share of it.
    On CPU it is a fraction of the node's memory that must be free when the engine starts (vLLM refuses to
    start otherwise): at most half of what is free now, so an engine beside other work (another engine, a
    busy machine) still starts; its KV cache is smaller, which only limits how many sequences run at once."""
    fraction = GPU_MEMORY_UTILIZATION[runtime.device] * min(1.0, runtime.gpu_share)
    if runtime.device == "cpu":
        memory = psutil.virtual_memory()
        fraction = min(fraction, max(0.02, 0.5 * memory.available / memory.total))
    return round(fraction, 4)


def cpu_threads(runtime, environ=os.environ) -> dict[str, str]:
    """The environment the engine's CPU worker starts with. vLLM binds its OpenMP threads itself, by default
    ("auto") to every core of NUMA node 0 but one, kept for its scheduler; that ignores the cores the pool gave
    the actor (``runtime.threads``: CPUs / actors): on the 2-core machine the model ran on one core, and two
    actors on one node would bind the same cores. An actor that has the node's cores to itself binds one
    thread to each of them (1.81x vLLM's default here, unbound threads 1.67x: tests/bench/bench_vllm_cpu_threads.py);
    actors that share the node cannot know which cores are the others', so each runs its share of threads and
    the OS places them (``nobind``). A VLLM_CPU_OMP_THREADS_BIND the user set is theirs to keep."""
    if runtime.device != "cpu" or "VLLM_CPU_OMP_THREADS_BIND" in environ:
        return {}
    cores = sorted(os.sched_getaffinity(0))
    threads = runtime.threads or len(cores)
    if threads >= len(cores):
        return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)), "OMP_NUM_THREADS": str(len(cores))}
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}


@contextmanager
def environment(changes: dict[str, str]):
    """``changes`` in os.environ while the block runs (processes started in it inherit them), then as before:
    a library caller's own process keeps its environment."""
    before = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def engine_settings(card, options: VLLMOptions) -> dict:
    """The card's engine settings overridden by the flags that were given."""
    settings = dict(card.vllm_engine)
    unknown = set(settings) - set(ENGINE_OPTIONS)
    if unknown:
        raise GlmscoreError(f"model card {card.id} has unknown vLLM engine setting(s) {', '.join(sorted(unknown))}.")
    settings.update({k: getattr(options, k) for k in ENGINE_OPTIONS if getattr(options, k) is not None})
    return settings


def vllm_architecture(card) -> tuple[str | None, dict]:
    """The architecture vLLM runs the card as (what config.json names, unless the card maps it), and the
    ``hf_overrides`` that make it so. A card's ``vllm_architecture`` maps a config that names a class of its
    own (GENERator's hub config names GENERatorForCausalLM, whose code is in the repository) onto the
    transformers class its model_type builds (LlamaForCausalLM): vLLM then runs its native implementation
    on the same weights instead of its generic Transformers fallback. Decided from config.json alone (no
    vLLM import, nothing from the repository runs); refused when that model_type builds another class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = config_dict(card.hf_id, card.revision)
    named = (config.get("architectures") or [None])[0]
    wanted = card.vllm_architecture
    if not wanted or named == wanted:
        return named, {}
    builds = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type"))
    if wanted not in (builds if isinstance(builds, tuple) else (builds,)):
        raise GlmscoreError(f"model card {card.id} runs {card.hf_id} on vLLM as {wanted}, but its config.json's model_type "
                            f"({config.get('model_type')}) builds {builds or 'no transformers causal LM'}, so the weights are "
                            f"not {wanted}'s; use --backend hf_causal.")
    return wanted, {"architectures": [wanted]}


@register_backend("vllm_causal", aliases=("vllm",))
class VLLMCausal(Backend):
    Options = VLLMOptions
    progress_step = 256  # rows per progress report at most (``Backend.progress_step``)
    can_use_gpu = True
    objectives = ("clm",)

    @classmethod
    def available(cls) -> bool:
        return importlib.util.find_spec("vllm") is not None

    @classmethod
    def preflight(cls, card, options, task, layer=-1) -> None:
        hf_preflight(card, task, layer)
        vllm_architecture(card)

    @classmethod
    def runtime(cls, card, options, device, threads=None) -> Runtime:
        max_model_len = engine_settings(card, options).get("max_model_len") or config_context(card)
        if not max_model_len:
            raise GlmscoreError(f"model {card.id} declares no context length; pass --max-model-len.")
        return Runtime(device=device, dtype=resolve_dtype(options.dtype, card, device),
                       token_limit=max_model_len - 1, threads=threads)

    @classmethod
    def provenance(cls, card):
        return hf_provenance(card)

    @classmethod
    def actor_resources(cls, card, options, gpus_per_actor):
        tp = engine_settings(card, options).get("tensor_parallel_size") or 1
        if tp > 1:
            # the actor takes no GPU itself; vLLM's Ray executor starts its tp workers inside a placement
            # group of tp GPUs on one node (size a cluster as actors x tp GPUs)
            return ActorResources({"num_gpus": 0}, float(tp) if gpus_per_actor else 0.0,
                                  bundles=({"GPU": 1, "CPU": 1},) * tp)
        return super().actor_resources(card, options, gpus_per_actor)

    @classmethod
    def fewest_tokens(cls, card, n_bases):
        return fewest_tokens(card, n_bases)

    @staticmethod
    def engine(card, options, runtime) -> dict:
        """The engine settings every actor passes to ``vllm.LLM`` (and the manifest records)."""
        settings = engine_settings(card, options)
        settings["max_model_len"] = runtime.token_limit + 1  # the limit the prepare stage enforced
        settings.setdefault("gpu_memory_utilization", gpu_memory_utilization(runtime))
        return settings

    @classmethod
    def batching(cls, card, options, runtime) -> dict:
        # unset engine settings are vLLM's own defaults (they depend on its version and the device)
        architecture, overrides = vllm_architecture(card)
        named = f" (config.json names {(config_dict(card.hf_id, card.revision).get('architectures') or ['none'])[0]})"
        env = cpu_threads(runtime)
        threads = ({"cpu_threads": int(env["OMP_NUM_THREADS"]), "cpu_binding": env["VLLM_CPU_OMP_THREADS_BIND"]} if env else
                   {"cpu_binding": os.environ["VLLM_CPU_OMP_THREADS_BIND"]} if runtime.device == "cpu" else {})
        return {"architecture": f"{architecture}{named if overrides else ''}", **cls.engine(card, options, runtime),
                **threads, **super().batching(card, options, runtime)}

    @classmethod
    def make_encoder(cls, card, options, runtime) -> TokenPolicy:
        return token_policy(card, options, runtime)

    def __init__(self, card, options, runtime, fitted=None):
        super().__init__(card, options, runtime, fitted)
        if not self.available():
            raise GlmscoreError("vLLM is not installed: pip install 'glmscore[gpu]' (GPU) or 'glmscore[cpu]' (CPU).")
        from vllm import LLM, SamplingParams  # in here: vLLM is optional and loads only in its actor

        settings = self.engine(card, options, runtime)
        overrides = vllm_architecture(card)[1]
        if overrides:
            settings["hf_overrides"] = overrides
        if (settings.get("tensor_parallel_size") or 1) > 1:
            # workers go into the actor's placement group (ActorResources.bundles)
            settings["distributed_executor_backend"] = "ray"
        try:
            with environment(cpu_threads(runtime)):  # read by the engine's worker process, which LLM() starts
                self.llm = LLM(model=card.hf_id, revision=card.revision, skip_tokenizer_init=True, dtype=runtime.dtype,
                               trust_remote_code=card.trust_remote_code, enable_prefix_caching=False, seed=0, **settings)
        except ValueError as exc:  # vLLM reports bad settings (too long a context, too little memory) so
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise GlmscoreError(f"vLLM could not start an engine for {card.id} with {settings}: {detail}") from None
        self.params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        self.resolved_revision = card.revision

    def loglik(self, encoded: Sequence[Encoded], context: Context | None = None, keep_positions: bool = False) -> LoglikResult:
        pieces, owners = causal_pieces(encoded, self.runtime.token_limit)
        # vLLM needs at least two tokens to give a prompt log-probability; one-token rows score nothing
        todo = [i for i, p in enumerate(pieces) if len(p) >= 2]
        outputs = self.llm.generate([{"prompt_token_ids": pieces[i].tolist()} for i in todo], self.params, use_tqdm=False)
        values = []
        for i, out in zip(todo, outputs):
            first, ids, lps = owners[i][1], pieces[i], out.prompt_logprobs
            values.append(np.array([lps[j][int(ids[j])].logprob for j in range(first, len(ids))], dtype=np.float64))
        per_row = rows_from_pieces([owners[i] for i in todo], values, len(encoded))
        return LoglikResult.from_positions(per_row, keep_positions)
