"""The score job's settings and plan: ``ScoreConfig`` (every option of ``glmscore score``/``embed``, declared
once with ``option()``), ``resolve_job`` (what the job names, checked on the driver before Ray starts: the
benchmark, the card, the backend and what each can do together) and ``plan_job`` (what the cluster decides:
runtime, actor pool, fingerprint). The stages (``pipelines/stages.py``) take a ``Plan`` and nothing beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, dataclass, field, replace
from pathlib import Path

from glmscore.models.base import BACKENDS, Backend, Runtime, resolve_card
from glmscore.models.cards import ModelCard, pin_revision
from glmscore.models.errors import GlmscoreError
from glmscore.models.noise import noise_record
from glmscore.models.options import Options, address_option, comma_list, option, option_fields, out_option
from glmscore.models.pooling import Pooling
from glmscore.pipelines import store
from glmscore.pipelines.benchmark import BENCHMARKS, Benchmark
from glmscore.pipelines.downloads import resolve_data
from glmscore.pipelines.pools import (
    Pool,
    size_pool,
)
from glmscore.pipelines.provenance import content_digest, glmscore_version

TASKS = ("score", "embed")
REDUCTIONS = ("mean", "sum", "focus")
RC_MODES = ("none", "mean", "both")
DEVICE_CHOICES = ("auto", "cpu", "gpu")  # what --device asks; models.base.TORCH_DEVICES is where a backend runs
DEFAULT_CHUNK_ROWS = 1024
ERROR = "error"  # the column a stage's user error travels in


@dataclass
class ScoreConfig(Options):
    """A score or embed job. Backend options (``--long``, ``--mlm-scoring``, vLLM engine flags...) go in
    ``options``, benchmark options (NABench ``--assays``...) in ``benchmark_options``: each is checked
    against the options its backend or benchmark declares."""

    # affects_result=False where the fingerprint covers a field in resolved form instead: the data by each
    # unit's CRC, the model by its card and weights, the options by the backend's and benchmark's fields
    benchmark: str = option(MISSING, group="input", choices=lambda: BENCHMARKS.names(), help="benchmark family")
    data: str = option(MISSING, affects_result=False, group="input", help="benchmark data folder")
    model: str = option(MISSING, affects_result=False, group="model", help="card id (glmscore models), local save_pretrained dir, hub id, kmer:K or onehot")
    out: str = out_option("output folder for Parquet shards and _manifest.json", group="output")
    task: str = option("score", choices=TASKS, cli=False, help="score (log-likelihoods) or embed")
    backend: str | None = option(None, affects_result=False, group="scoring", choices=lambda: BACKENDS.names(aliases=True), help="override the card's backend")
    reduction: str = option("mean", group="scoring", choices=REDUCTIONS, commands=("score",),
                            help="score = mean (default) or sum of token log-likelihoods; focus = the token at the benchmark's focus "
                                 "position only (variants: the variant's base; masked LMs)")
    pooling: str = option("mean", group="scoring", commands=("embed",), help="mean | cls | last | cls+mean | window:START-END (variants: tss, or a window relative to the window centre)")
    layer: int = option(-1, group="scoring", commands=("embed",), help="hidden-state layer (-1 = last, 0 = embeddings)")
    rc: str = option("none", group="scoring", choices=RC_MODES,
                     help="reverse-complement averaging: mean scores or embeds both strands and averages them (as Evo 2's "
                          "score_sequences_rc and gReLU's rc=True); both keeps each strand too (score: score_fwd and "
                          "score_rc beside their mean; embed: the two strands' embeddings side by side)")
    limit: int | None = option(None, group="input", minimum=1, affects_result=False, help="only the first N rows (pairs) of every file, for quick runs")
    datasets: list[str] | None = option(None, group="input", parse=comma_list, affects_result=False, help="comma-separated dataset names (default: all)")
    chunk_rows: int = option(DEFAULT_CHUNK_ROWS, group="output", minimum=1, help="rows per shard")
    revision: str | None = option(None, affects_result=False, group="revision and remote code",
                                  help="the hub commit (or branch, tag) to load; a card that runs its repository's code "
                                       "and pins no commit needs it (or --trust-remote-code)")
    trust_remote_code: bool | None = option(None, affects_result=False, group="revision and remote code", negatable=True,
                                            help="allow code from the model repository (default: only a card shipped with "
                                                 "glmscore allows it); --no-trust-remote-code refuses it even then")
    overwrite: bool = option(False, group="output", affects_result=False, help="discard shards of a different earlier run in --out")
    dry_run: bool = option(False, affects_result=False, group="output",
                           help="say what the job would do (units, rows, shards reused and to compute, token limit, "
                                "resources) and start nothing")
    address: str | None = address_option(group="cluster")
    min_actors: int = option(1, group="actors and resources", minimum=1, affects_result=False, help="smallest actor pool")
    max_actors: int | None = option(None, group="actors and resources", minimum=1, affects_result=False, help="largest actor pool (default: one per GPU, 1 on CPU)")
    device: str = option("auto", group="actors and resources", choices=DEVICE_CHOICES, affects_result=False,
                         help="gpu: GPU actors even when the cluster has no GPU node yet (an autoscaler adds them); "
                              "cpu: never; auto: GPU actors when the cluster has GPUs at start and the backend can use them")
    gpus_per_actor: float | None = option(None, group="actors and resources", minimum=0, affects_result=False,
                                          help="GPUs per actor, fractions to share a GPU (default: 1 on GPU, 0 on CPU; "
                                               "see --gpu-memory-gb)")
    gpu_memory_gb: float | None = option(None, group="actors and resources", minimum=1, affects_result=False,
                                         help="memory of one of the cluster's GPUs: a card whose gpu_memory_gb fits k >= 2 "
                                              "times gets 1/k GPU per actor, so k actors share a GPU (default: one per GPU)")
    threads_per_actor: int | None = option(None, group="actors and resources", minimum=1, affects_result=False, help="CPU threads per actor (torch's; on vLLM, its worker's OpenMP threads; default: CPUs / actors)")
    options: dict = option({}, cli=False, affects_result=False, help="backend options by field name")
    benchmark_options: dict = option({}, cli=False, affects_result=False, help="benchmark options by field name")
    config_file: str | None = option(None, cli=False, affects_result=False,
                                     help="the --config file the options were read from (kept in the manifest)")

    def __post_init__(self):
        super().__post_init__()
        if self.max_actors is not None and self.max_actors < self.min_actors:
            raise GlmscoreError("--max-actors must be at least --min-actors.")
        store.refuse_credentials(self.data, "--data")
        store.refuse_credentials(self.out, "--out")


@dataclass(frozen=True)
class Plan:
    """Everything the stages need, decided once on the driver: what the job names, checked before Ray
    starts (``resolve_job``: a user mistake fails in a second, not in an actor), then what the cluster
    decides (``plan_job``: runtime, pool, fingerprint). The stages take the plan and nothing beside it."""

    cfg: ScoreConfig
    benchmark: Benchmark
    backend: type[Backend]
    card: ModelCard
    options: Options
    pooling: str  # the embed pooling in generic form (``Benchmark.resolve_pooling``)
    staged: tuple[str, str, str] | None = None  # --data in object storage: (URI, version, copy root) per node
    runtime: Runtime | None = None
    fingerprint: str = ""
    identity: dict = field(default_factory=dict)  # what the fingerprint hashes (a refusal names what changed)
    provenance: dict = field(default_factory=dict)
    pool: Pool | None = None
    references: dict = field(default_factory=dict)  # per dataset: digest of a fitted backend's reference
    actor_env: dict = field(default_factory=dict)  # the model actors' Ray runtime env (pipelines/environments.py)

    @property
    def task(self) -> str:
        return self.cfg.task


def _option_names(backend: type[Backend]) -> set[str]:
    return {f.name for f in option_fields(backend.Options)}


def refuse_relative_in_job_copy(location: str, flag: str) -> None:
    """Under ``ray job submit --working-dir``, the job runs in Ray's copy of that directory
    (``.../working_dir_files/_ray_pkg_<hash>``), which the cluster deletes: a relative local output would land
    there, where nobody finds it. Refused in one sentence naming the folder it would have become."""
    cwd = os.getcwd()
    if location and not store.is_uri(location) and not Path(location).expanduser().is_absolute() \
            and "_ray_pkg_" in Path(cwd).name:
        raise GlmscoreError(f"{flag} {location} is relative, and this job runs in Ray's temporary copy of its working "
                            f"directory: it would have become {Path(cwd) / location}, which the cluster deletes; give an "
                            "absolute path on storage every node shares, or an s3:// location.")


def check_strands(backend: type[Backend], rc: str, options: dict) -> tuple[str, dict]:
    """``--rc`` on ``backend``: (the job's rc, the backend's options). Position-resolved outputs (tracks in bins)
    cannot be averaged as they are; a backend that flips the other strand's bins back itself (Enformer's
    ensembling) takes ``--rc mean`` as its own option, and the job's strand averaging stands aside."""
    if rc == "none" or backend.strand_symmetric:
        return rc, options
    if rc == "mean" and "rc" in _option_names(backend):
        return "none", {**options, "rc": True}
    raise GlmscoreError(f"--rc {rc}: backend {backend.name}'s outputs are position-resolved (a reverse-"
                        "complemented window's bins run backwards), so the strands cannot be kept or averaged "
                        "as they are; use --rc none" + (" or --rc mean (its own ensembling)."
                                                        if "rc" in _option_names(backend) else "."))


def resolve_job(cfg: ScoreConfig, stage: bool = True) -> Plan:
    """The job's benchmark, card, backend and options, checked (``stage=False``: an object-store --data
    is not copied, for a check that starts nothing). A registered data name (``nullsette``) or a released archive
    becomes its cached, verified folder here, on the driver (``pipelines/downloads.py``)."""
    if (data := resolve_data(cfg.data)) != cfg.data:
        cfg = replace(cfg, data=data)
    staged, data = None, cfg.data
    if store.is_uri(cfg.data) and stage:  # an object-store folder: read from a local copy on each node (store.stage)
        staged = (cfg.data.rstrip("/"), store.data_version(cfg.data), str(store.cache_root()))
        data = str(store.stage(*staged))
    bench_cls = BENCHMARKS.get(cfg.benchmark)
    benchmark = bench_cls(data, bench_cls.Options.from_values(cfg.benchmark_options, owner=f"benchmark {bench_cls.name}"))
    card = pin_revision(resolve_card(cfg.model, backend=cfg.backend, trust_remote_code=cfg.trust_remote_code),
                        cfg.revision, cfg.trust_remote_code)
    backend = BACKENDS.get(card.backend)
    given = {k for k, v in cfg.options.items() if v is not None}
    if not cfg.backend and card.fallback_backend and not given <= _option_names(backend) \
            and given <= _option_names(BACKENDS.get(card.fallback_backend)):
        # options only the card's fallback backend has (``--protocol paper`` on a vLLM card) pick it
        card = card.with_(backend=card.fallback_backend)
        backend = BACKENDS.get(card.backend)
    benchmark.check_backend(backend, card, cfg.task, cfg.reduction)
    rc, options = check_strands(backend, cfg.rc, cfg.options)
    cfg = replace(cfg, rc=rc, options=options)
    backend.check_task(cfg.task, cfg.reduction)
    options = backend.Options.from_values(cfg.options, owner=f"backend {backend.name}")
    backend.preflight(card, options, cfg.task, cfg.layer)
    pooling = benchmark.resolve_pooling(cfg.pooling) if cfg.task == "embed" else cfg.pooling
    if cfg.task == "embed":
        Pooling.parse(pooling)
    return Plan(cfg, benchmark, backend, card, options, pooling, staged)


def plan_job(cfg: ScoreConfig, cluster: dict, resolved: Plan | None = None) -> Plan:
    """The backend's runtime on ``cluster`` (Ray's resource totals), the weights' identity and the
    fingerprint: everything that changes a score is in the fingerprint."""
    r = resolved or resolve_job(cfg)
    cfg = r.cfg  # as resolved (--rc mean on a tracks model is the backend's own option)
    benchmark, backend, card, options = r.benchmark, r.backend, r.card, r.options
    pool = size_pool(cfg, backend, cluster, card)
    gpus, threads = pool.gpus, pool.threads
    device = "cuda" if gpus and backend.can_use_gpu else "cpu"  # a CPU-only backend holding a GPU still runs on CPU
    if backend.needs_gpu and device == "cpu":
        raise GlmscoreError(f"backend {backend.name} needs a GPU; pass --gpus-per-actor or use a cluster with GPUs.")
    revision, local = backend.provenance(card)
    if revision:
        card = card.with_(revision=revision)  # every actor loads the commit resolved here
    runtime = backend.runtime(card, options, device, threads)
    if 0 < gpus < 1:
        runtime = replace(runtime, gpu_share=gpus)
    version = glmscore_version()
    provenance = {"weights": content_digest(local) if local else None, "device": device, "dtype": runtime.dtype,
                  "token_limit": runtime.token_limit, "batching": backend.batching(card, options, runtime),
                  "noise_floor": noise_record(backend.name, device, runtime.dtype), "glmscore": version}
    job = {f.name: getattr(cfg, f.name) for f in option_fields(ScoreConfig)
           if f.metadata["affects_result"] and cfg.task in (f.metadata["commands"] or TASKS)}
    if job.get("rc") == "none":
        del job["rc"]  # the default: folders written before --rc existed keep their fingerprint
    blob = json.dumps({"job": job, "pooling": r.pooling if cfg.task == "embed" else None, "card": card.to_dict(), "backend": backend.name, "options": options.result_fields(),
                       "benchmark_options": benchmark.options.result_fields(),
                       "runtime": {"device": device, "dtype": runtime.dtype, "token_limit": runtime.token_limit},
                       "weights": provenance["weights"], "glmscore": version["version"]}, sort_keys=True, default=str)
    fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return replace(r, card=card, runtime=runtime, fingerprint=fingerprint, identity=json.loads(blob), provenance=provenance,
                   pool=pool)



def local_plan(plan: Plan) -> Plan:
    """The plan on the cluster a local run would start here (this machine's CPUs and GPUs), without Ray."""
    return plan_job(plan.cfg, {"CPU": float(os.cpu_count() or 1), "GPU": float(local_gpus())}, plan)


def local_gpus() -> int:
    """The GPUs a local Ray cluster would find here (``CUDA_VISIBLE_DEVICES``, else the NVIDIA device
    files), without starting it. A wrong guess costs only a Ray start-up."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


