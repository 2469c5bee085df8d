"""Each backend's measured run-to-run numerical noise: the floor below which a score difference is not a result.

A backend does not give bit-identical scores for the same row in two runs: the rows it is batched with, the padding
and the kernels chosen for the batch's shape change the rounding (two identical bf16 vLLM runs differed by up to
0.003 per row). ``max_abs`` and ``typical_abs`` are the largest and the mean ``|score(run A) - score(run B)|`` per
row (the job's default score: mean log-likelihood per scored token) for the same rows scored twice with a different
batch composition; ``source`` says how it was measured (the command that gives the CPU numbers).

A score job records the entry that applies to it in its manifest (``noise_floor``); Nullsette's analysis marks a
test whose mean paired difference is at most the model's ``max_abs`` as within backend noise, and both reports show
each model's floor. The measured ``|A - B|`` is already the noise of a difference of two noisy evaluations, which
is what a paired difference (mutant - nonmutant, one model) is, so it is compared with the floor as it is.
A backend, device and dtype with no entry is "not measured": nothing is assumed for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

CPU_COMMAND = ".venv/bin/python -m tests.bench.bench_noise --n 32"
ANY_DEVICE = "any"


@dataclass(frozen=True)
class NoiseFloor:
    backend: str
    device: str  # cpu | cuda | any (measured on one, applied to both: bf16 rounding dominates)
    dtype: str
    max_abs: float  # largest |score A - score B| per row
    typical_abs: float | None  # mean |score A - score B| per row (None: the source gave only the largest)
    source: str  # how it was measured

    def to_dict(self) -> dict:
        return asdict(self)


ISSUE_40 = ("issue 40: GENERator 1.2B at its published configuration, random weights, two identical bf16 vLLM "
            "runs (the issue gives the largest difference only)")
CPU_SOURCE = (f"`{CPU_COMMAND}` (tests/bench/bench_noise.py): 32 Nullsette kosuri cassettes, tiny random "
              "model, each row alone vs reversed in 65,536-token batches; 2026-12-05, 2-core CPU")
VLLM_CPU_SOURCE = (f"`{CPU_COMMAND} --backends vllm_causal --dtypes float32` (tests/bench/bench_noise.py): 32 "
                   "Nullsette kosuri cassettes, tiny random Llama, max_num_seqs 1 vs reversed with 64; 2026-12-05, 2-core CPU")

FLOORS: tuple[NoiseFloor, ...] = (
    NoiseFloor("vllm_causal", ANY_DEVICE, "bfloat16", 0.003, None, ISSUE_40),
    NoiseFloor("vllm_causal", "cpu", "float32", 1.84e-08, 1.38e-09, VLLM_CPU_SOURCE),
    NoiseFloor("hf_causal", "cpu", "float32", 9.08e-09, 1.0e-09, CPU_SOURCE),
    NoiseFloor("hf_causal", "cpu", "bfloat16", 4.79e-06, 1.79e-07, CPU_SOURCE),
    NoiseFloor("hf_masked", "cpu", "float32", 5.09e-09, 2.21e-09, CPU_SOURCE),
    NoiseFloor("hf_masked", "cpu", "bfloat16", 4.33e-06, 6.06e-07, CPU_SOURCE),
)

# Two backends on one model: their scores differ by more than either's run-to-run noise (kernels, attention
# implementation). Keyed by the two backends (sorted) and dtype.
CROSS_FLOORS: dict[tuple[str, str, str], NoiseFloor] = {
    ("hf_causal", "vllm_causal", "bfloat16"): NoiseFloor(
        "hf_causal vs vllm_causal", ANY_DEVICE, "bfloat16", 0.005, None,
        "issue 40: GENERator 1.2B at its published configuration, random weights, transformers vs vLLM in bf16"),
}


def noise_floor(backend: str | None, device: str | None, dtype: str | None) -> NoiseFloor | None:
    """The measured floor for ``backend`` on ``device`` in ``dtype``; None where it was not measured."""
    for entry in FLOORS:
        if entry.backend == backend and entry.dtype == dtype and entry.device in (device, ANY_DEVICE):
            return entry
    return None


def cross_backend_floor(a: str, b: str, dtype: str | None) -> NoiseFloor | None:
    """How far two backends' scores of one model lie apart (measured); None where it was not measured."""
    first, second = sorted((a, b))
    return CROSS_FLOORS.get((first, second, dtype or ""))


def noise_record(backend: str | None, device: str | None, dtype: str | None) -> dict:
    """What a score job's manifest says of its backend's run-to-run noise (``noise_floor``): the measured entry
    that applies to this backend, device and dtype (``measured_on``: the device it was measured on), or that none
    was measured (``max_abs`` None)."""
    floor = noise_floor(backend, device, dtype)
    if floor is None:
        return {"backend": backend, "device": device, "dtype": dtype, "max_abs": None, "typical_abs": None,
                "source": "not measured for this backend, device and dtype"}
    return {**floor.to_dict(), "device": device, "measured_on": floor.device}
