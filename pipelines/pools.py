"""Actor pools: how many model actors a job runs, with how many GPUs and threads each (``size_pool``), whether
a cluster that cannot grow can place them (``check_fits``), and the Ray options of a backend's actors
(``actor_remote_args``). Pure decisions on Ray's resource totals: one sizing rule for the score job and
for a sweep's scheduler."""

from __future__ import annotations

from typing import NamedTuple

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from glmscore.models.base import ActorResources, Backend
from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.console import warn

# CPUs each stage's pool actors reserve: a model actor holds one (its torch threads use the cores it shares
# with the light stages); prepare and write are light beside a forward pass, and fractions let them run next
# to a model actor that holds a node's only whole CPU (a restarted actor plus whole-CPU writes stalled for minutes)
ACTOR_CPUS, PREPARE_CPUS, WRITE_CPUS = 1.0, 0.5, 0.1
TASK_CPUS = PREPARE_CPUS + WRITE_CPUS


class PoolRequest(NamedTuple):
    """What a caller asks of an actor pool (``ScoreConfig`` carries the same fields, from the CLI's flags)."""

    min_actors: int = 1
    max_actors: int | None = None
    device: str = "auto"
    gpus_per_actor: float | None = None
    gpu_memory_gb: float | None = None
    threads_per_actor: int | None = None


class Pool(NamedTuple):
    """An actor pool: GPUs per actor (fractions share a GPU), its smallest and largest size, and the torch
    threads per actor (None: the backend's default)."""

    gpus: float
    min_actors: int
    max_actors: int
    threads: int | None


def size_pool(cfg, backend: type[Backend], cluster: dict, card: ModelCard | None = None) -> Pool:
    """The actor pool of a job (``cfg``: a ``ScoreConfig`` or a ``PoolRequest``) on ``cluster`` (Ray's resource totals). Actors share a
    GPU only when the card says how much memory one needs and --gpu-memory-gb says it fits twice or more."""
    gpus = cfg.gpus_per_actor
    if cfg.device == "cpu":
        if gpus:
            raise GlmscoreError("--device cpu asks for no GPU; drop --gpus-per-actor.")
        gpus = 0.0
    elif cfg.device == "gpu" and not backend.can_use_gpu and not gpus:
        raise GlmscoreError(f"backend {backend.name} runs on CPU only; drop --device gpu.")
    elif gpus is None:
        # "gpu" asks for GPU actors whatever the cluster has now: on an autoscaling cluster whose GPU
        # workers are at zero, the pending actors are what make the autoscaler add GPU nodes
        gpus = 1.0 if cfg.device == "gpu" or (backend.can_use_gpu and cluster.get("GPU", 0) >= 1) else 0.0
    elif cfg.device == "gpu" and gpus == 0:
        raise GlmscoreError("--device gpu needs --gpus-per-actor above 0.")
    if cfg.gpus_per_actor is None and gpus and cfg.gpu_memory_gb and card is not None and card.gpu_memory_gb > 0:
        fits = int(cfg.gpu_memory_gb // card.gpu_memory_gb)
        if fits >= 2:
            gpus = 1.0 / fits
    max_actors = cfg.max_actors
    if max_actors is None:
        max_actors = max(cfg.min_actors, int(cluster.get("GPU", 0) / gpus + 1e-9) if gpus else 1)
    threads = cfg.threads_per_actor
    if threads is None and not gpus:
        # An actor reserves 1 CPU so the prepare/write actors can run beside it, but torch should use
        # the cores it shares with them: those tasks are light next to a forward pass.
        threads = max(1, int(cluster.get("CPU", 1)) // max_actors)
    return Pool(gpus, cfg.min_actors, max_actors, threads)


def check_fits(pool: Pool, cluster: dict) -> Pool:
    """On a cluster that cannot add nodes (the local one this job started), an actor pool that can never
    be placed is a user error, not a job that waits for ever; so is one that would hold every CPU, which
    leaves none for the prepare and write actors beside it (the job would hang without a word). Returns
    the pool with its largest size capped to what fits."""
    gpus, cpus = cluster.get("GPU", 0), cluster.get("CPU", 0)
    if pool.gpus > gpus:
        raise GlmscoreError(f"each actor asks for {pool.gpus:g} GPU(s) but this local cluster has {gpus:g}; "
                            "drop --gpus-per-actor or pass --address of a cluster with GPUs.")
    by_cpu = int((cpus - TASK_CPUS) / ACTOR_CPUS + 1e-9)
    fit = min(by_cpu, int(gpus / pool.gpus + 1e-9) if pool.gpus else by_cpu)
    if pool.min_actors > fit:
        raise GlmscoreError(f"--min-actors {pool.min_actors} cannot start: this local cluster fits {max(fit, 0)} actor(s) "
                            f"({cpus:g} CPUs, {gpus:g} GPUs; each actor takes {ACTOR_CPUS:g} CPU and {pool.gpus:g} GPU, "
                            f"and its prepare and write actors {TASK_CPUS:g} CPU beside them).")
    return pool._replace(max_actors=min(pool.max_actors, fit))


def warn_if_starved(pool: Pool, cluster: dict) -> None:
    """On a cluster this job joined, an autoscaler may still add nodes: a pool that leaves no CPU for the
    prepare and write actors beside it is a warning, not an error."""
    if cluster.get("CPU", 0) < pool.min_actors * ACTOR_CPUS + TASK_CPUS:
        warn(f"the cluster has {cluster.get('CPU', 0):g} CPUs now; {pool.min_actors} actor(s) and their "
              f"prepare/write actors need {pool.min_actors * ACTOR_CPUS + TASK_CPUS:g}: the job waits until nodes are added.")



def actor_remote_args(resources: ActorResources) -> dict:
    """Ray Data's arguments for a model actor pool: the backend's remote arguments, and for a backend that
    asks for a placement group per actor, a ``ray_remote_args_fn`` that makes one for each actor and puts
    the actor's children (vLLM's tensor-parallel workers) in it."""
    if not resources.bundles:
        return dict(resources.remote_args)
    bundles = [dict(b) for b in resources.bundles]

    def remote_args():
        pg = ray.util.placement_group(bundles, strategy="STRICT_PACK")
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)}

    return {**resources.remote_args, "ray_remote_args_fn": remote_args}
