"""GPU requests come from the model card and the flags, not from the GPUs a cluster has at start; actors
share a GPU only when the card says they fit (no GPU or Ray needed: these are the numbers handed to Ray)."""

import pytest

from glmscore.models.backends.vllm_causal import VLLMCausal, gpu_memory_utilization
from glmscore.models.base import Runtime
from glmscore.models.cards import shipped_cards
from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.pools import size_pool as _resources
from glmscore.pipelines.score import ScoreConfig

NO_GPU = {"CPU": 2.0}


def _cfg(**kw):
    return ScoreConfig(benchmark="nullsette", data="d", model="m", out="o", **kw)


def _card(gb: float):
    return next(c for c in shipped_cards().values() if c.backend == "vllm_causal").with_(gpu_memory_gb=gb)


def test_gpu_actors_are_requested_before_any_gpu_node_exists():
    gpus, lo, hi, threads = _resources(_cfg(device="gpu", max_actors=4), VLLMCausal, NO_GPU)
    assert (gpus, lo, hi, threads) == (1.0, 1, 4, None)
    assert _resources(_cfg(), VLLMCausal, NO_GPU)[0] == 0.0  # auto: no GPU now, none asked
    assert _resources(_cfg(), VLLMCausal, {"CPU": 8.0, "GPU": 2.0})[:3] == (1.0, 1, 2)
    assert _resources(_cfg(device="cpu"), VLLMCausal, {"CPU": 8.0, "GPU": 2.0})[0] == 0.0


def test_actors_share_a_gpu_only_when_the_card_says_they_fit():
    card = _card(12)
    # an 80 GB GPU holds six 12 GB actors: 1/6 GPU each, and the pool's default size follows
    gpus, _, hi, _ = _resources(_cfg(device="gpu", gpu_memory_gb=80), VLLMCausal, {"GPU": 2.0}, card)
    assert gpus == pytest.approx(1 / 6) and hi == 12
    # a 24 GB card on a 40 GB GPU fits once: a whole GPU
    assert _resources(_cfg(device="gpu", gpu_memory_gb=40), VLLMCausal, NO_GPU, _card(24))[0] == 1.0
    # a card that declares no memory never shares; neither does a job without --gpu-memory-gb
    assert _resources(_cfg(device="gpu", gpu_memory_gb=80), VLLMCausal, NO_GPU, _card(0))[0] == 1.0
    assert _resources(_cfg(device="gpu"), VLLMCausal, NO_GPU, card)[0] == 1.0
    # an explicit --gpus-per-actor wins
    assert _resources(_cfg(device="gpu", gpu_memory_gb=80, gpus_per_actor=0.5), VLLMCausal, NO_GPU, card)[0] == 0.5
    # vLLM then reserves only its share of the GPU's memory
    assert gpu_memory_utilization(Runtime(device="cuda", gpu_share=1 / 6)) == pytest.approx(0.9 / 6)
    assert gpu_memory_utilization(Runtime(device="cuda")) == pytest.approx(0.9)
    # on CPU, vLLM needs the fraction free at start: never more than half of what is free now (a second
    # engine beside the first one on a 24 GiB machine was refused at the fixed 0.3)
    import psutil

    memory = psutil.virtual_memory()
    cpu = gpu_memory_utilization(Runtime(device="cpu"))
    assert 0 < cpu <= 0.3 and cpu <= max(0.02, 0.5 * memory.available / memory.total) + 1e-3


def test_gpu_flags_that_contradict_each_other_are_one_sentence():
    from glmscore.models.base import BACKENDS

    kmer = BACKENDS.get("kmer")
    with pytest.raises(GlmscoreError, match="--device cpu asks for no GPU"):
        _resources(_cfg(device="cpu", gpus_per_actor=1), VLLMCausal, NO_GPU)
    with pytest.raises(GlmscoreError, match="runs on CPU only"):
        _resources(_cfg(device="gpu"), kmer, NO_GPU)
    with pytest.raises(GlmscoreError, match="needs --gpus-per-actor above 0"):
        _resources(_cfg(device="gpu", gpus_per_actor=0), VLLMCausal, NO_GPU)


def test_a_local_pool_leaves_cpus_for_its_prepare_and_write_tasks():
    """A pool holding every CPU of a cluster that cannot grow would starve the tasks beside it and hang
    without a word: it is capped, or refused when --min-actors asks for it."""
    from glmscore.pipelines.pools import Pool, check_fits

    pool = Pool(0.0, 1, 4, None)
    assert check_fits(pool, {"CPU": 2.0})[1:3] == (1, 1)  # 2 CPUs: one actor (1) + its tasks (0.6)
    assert check_fits(pool, {"CPU": 8.0})[1:3] == (1, 4)
    with pytest.raises(GlmscoreError, match="--min-actors 2 cannot start: this local cluster fits 1 actor"):
        check_fits(Pool(0.0, 2, 2, None), {"CPU": 2.0})


def test_vllm_on_cpu_runs_the_threads_the_pool_gives_its_actor():
    """vLLM's own binding ("auto") keeps one core of the node for its scheduler and binds the rest, whatever the
    pool gave the actor. An actor with the node's cores to itself binds a thread to each; actors sharing the node
    run their share unbound; the user's VLLM_CPU_OMP_THREADS_BIND wins; a GPU engine is left alone. The real
    engine's worker is checked in tests/models/test_vllm.py."""
    import os

    from glmscore.models.backends.vllm_causal import cpu_threads

    cores = sorted(os.sched_getaffinity(0))
    alone = {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)), "OMP_NUM_THREADS": str(len(cores))}
    assert cpu_threads(Runtime("cpu", "float32", 10, None), environ={}) == alone
    assert cpu_threads(Runtime("cpu", "float32", 10, len(cores)), environ={}) == alone
    if len(cores) > 1:
        share = len(cores) // 2
        assert cpu_threads(Runtime("cpu", "float32", 10, share), environ={}) == {
            "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(share)}
    assert cpu_threads(Runtime("cpu", "float32", 10, 1), environ={"VLLM_CPU_OMP_THREADS_BIND": "auto"}) == {}
    assert cpu_threads(Runtime("cuda", "bfloat16", 10, None), environ={}) == {}
