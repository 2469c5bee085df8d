"""Shared fixtures: tiny models (save_pretrained, no download), small Nullsette data, local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


# The order in which the two pytest-xdist workers take modules (README: `pytest -n 2`): heaviest first, as
# measured with --durations on the 2-core machine, so that the last modules are short and both workers
# finish together (xdist hands a worker its next module when its current one has two tests left).
# Modules not listed follow in collection order; the order of tests inside a module is kept.
HEAVIEST_FIRST = [
    "tests/benchmarks/nabench/test_finetune.py",
    "tests/models/test_vllm.py",
    "tests/core/test_job_submit.py",
    "tests/benchmarks/nullsette/test_sources.py",
    "tests/core/test_pipeline.py",
    "tests/core/test_faults.py",
    "tests/benchmarks/variants/test_variants.py",
    "tests/core/test_node_loss.py",
    "tests/core/test_autoscaling.py",
    "tests/core/test_user_mistakes.py",
    "tests/core/test_object_store.py",
    "tests/core/test_docs.py",
    "tests/benchmarks/nabench/test_nabench.py",
    "tests/models/test_environments.py",
    "tests/models/test_published_protocols.py",
    "tests/core/test_sweep.py",
    "tests/models/test_model_rules.py",
    "tests/core/test_trust.py",
    "tests/core/test_api.py",
    "tests/core/test_layout.py",
    "tests/benchmarks/nabench/test_published_probes.py",
    "tests/core/test_core.py",
    "tests/core/test_trials.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {module: i for i, module in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: keeps the rest's order


def shared_data(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(f"real benchmark data {path} is absent (it sits beside the checkout in CI)")
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from tests.tiny_models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_llama_nobos(tmp_path_factory) -> Path:
    from tests.tiny_models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama-nobos", with_bos=False, seed=1)


@pytest.fixture(scope="session")
def tiny_llama_6mer(tmp_path_factory) -> Path:
    from tests.tiny_models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama-6mer", kmer=6, seed=2)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    from tests.tiny_models import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def small_nullsette(tmp_path_factory) -> Path:
    """12 synthetic prokaryotic cassettes (19 mutant types) in the released layout."""
    from glmscore.pipelines.benchmarks.nullsette.demo import write_spec
    from glmscore.pipelines.benchmarks.nullsette.source import build

    base = tmp_path_factory.mktemp("nullsette")
    build(write_spec(base / "spec", 12, seed=3), base / "processed_data")
    return base / "processed_data"


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster for one test module (module scope keeps one cluster per test module)."""
    import ray

    # address="local": a new cluster, never one somebody started with `ray start` on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()
