"""The score job: benchmark units -> Ray Data -> model actor pool -> Parquet shards + manifest.

Flow (each Ray Data row is one *unit*: a chunk of rows that becomes one shard)::
    from_items(pending units)
      -> prepare   (CPU tasks: the benchmark reads the unit, the backend's encoder tokenizes it and
                    enforces the token limit)
      -> score     (actor pool, ActorPoolStrategy(min, max); one backend per actor, num_gpus per actor)
      -> write     (CPU tasks: one Parquet shard per unit, written atomically)

This module is generic: the benchmark and the backend come from their registries and everything
specific to them is behind their interfaces (``pipelines/benchmark.py``, ``models/base.py``).
Memory is bounded by the units in flight (Ray Data's streaming executor applies backpressure), not by
the number of sequences. Units whose shard is complete are not even read, so a rerun resumes.
User errors inside a stage (a malformed file, a sequence over the token limit) travel to the driver
as data (an ``error`` column), because Ray Data does not keep a worker exception's type; the driver
stops the job at the first one and raises it, so no manifest is written.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path

import ray
from ray.data import ActorPoolStrategy

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines import attempts, environments, shards, store
from glmscore.pipelines.benchmark import REFERENCE_BLOCK, Unit
from glmscore.pipelines.console import Laps, Progress, say, warn
from glmscore.pipelines.fasta import sequence_blocks
from glmscore.pipelines.plan import Plan, ScoreConfig, local_plan, plan_job, refuse_relative_in_job_copy, resolve_job
from glmscore.pipelines.pools import (
    ACTOR_CPUS,
    PREPARE_CPUS,
    WRITE_CPUS,
    actor_remote_args,
    check_fits,
    warn_if_starved,
)
from glmscore.pipelines.ray_session import (
    JOB_RUNTIME_ENV,
    cluster_words,
    ray_address,
    start_ray,
    started_local,
    watch_cluster,
    will_own_cluster,
)
from glmscore.pipelines.stages import ERROR, PrepareActor, ProgressBoard, ScoreActor, WriteActor


def _references(plan: Plan, units: list[Unit]) -> dict[str | None, Iterator[list[str]]]:
    """What a fitted backend learns from, as blocks of sequences read lazily: its own reference FASTA
    (key None), or the benchmark's reference sequences per dataset."""
    path = plan.backend.reference_file(plan.card)
    if path:
        return {None: sequence_blocks(Path(path), REFERENCE_BLOCK)}
    return {d: plan.benchmark.reference_sequences(units, d) for d in sorted({u.dataset for u in units})}


def _digesting(blocks: Iterator[list[str]], h) -> Iterator[list[str]]:
    for block in blocks:
        for seq in block:
            h.update(seq.encode() + b"\n")
        yield block


def _fitted(plan: Plan, units: list[Unit], fit: bool = False) -> tuple[object, dict[str, str]]:
    """A fitted backend's table (with ``fit``) and, per dataset, a digest of the sequences it came from;
    (None, {}) for other backends. A shard's scores depend on every reference sequence, not only on its
    own chunk (editing one nonmutant changes every k-mer crossfit score of that dataset), so resume
    compares the digest too. One streaming pass does both: the sequences are read block by block and
    never held whole on the driver."""
    if not plan.backend.fits_on_reference:
        return None, {}
    references = _references(plan, units)
    hashes = {key: hashlib.blake2b(digest_size=12) for key in references}
    streams = {key: _digesting(blocks, hashes[key]) for key, blocks in references.items()}
    fitted = plan.backend.fit(plan.card, plan.options, streams) if fit else None
    for stream in streams.values():
        for _ in stream:  # whatever the fit left unread still belongs in the digest
            pass
    digests = {key: h.hexdigest() for key, h in hashes.items()}
    return fitted, {u.dataset: digests.get(u.dataset, digests.get(None)) for u in units}


def run_score(cfg: ScoreConfig) -> dict:
    started, laps = shards.now(), Laps()
    refuse_relative_in_job_copy(cfg.out, "--out")
    plan = resolve_job(cfg)
    laps.lap("model and options")
    units = plan.benchmark.units(chunk_rows=cfg.chunk_rows, limit=cfg.limit, datasets=cfg.datasets)
    for unit in units:  # names from the data become folders: checked before anything starts or is written
        shards.shard_rel(unit.dataset, unit.group, unit.chunk)
    laps.lap("input scan")
    out = shards.OutputFolder(cfg.out)
    address = ray_address(cfg.address)
    if cfg.dry_run:
        return dry_run(plan, units, out, address)
    try:
        predicted = local_plan(plan)  # the plan on this machine's devices, decided without Ray
    except GlmscoreError:
        predicted = None  # the guess of the local devices was wrong for this job: Ray's own count decides
    refuse_over_context(plan, predicted, units)
    out.create()
    fixed_size = will_own_cluster(address)
    held = ExitStack()
    try:
        held.enter_context(out.lock())  # before Ray starts: a folder another run is writing is refused in a second
    except shards.ReadOnlyFolder:
        done = _finished_read_only(plan, predicted, units, out) if fixed_size and predicted is not None else None
        if done is None:
            raise
        return done
    with held:
        if fixed_size and predicted is not None:
            done = _complete_without_ray(plan, predicted, units, out, started, laps)
            if done is not None:
                return done
        say(f"{cfg.task} on {cluster_words(address)}; output {out}")  # the first line
        for warning in plan.benchmark.warnings:
            warn(f"{warning}")
        start_ray(address, out.out, runtime_env=JOB_RUNTIME_ENV)
        done = watch_cluster()
        laps.lap("Ray start")
        try:
            cluster = ray.cluster_resources()
            plan = plan_job(cfg, cluster, plan)
            if fixed_size:
                plan = replace(plan, pool=check_fits(plan.pool, cluster))
            else:
                warn_if_starved(plan.pool, cluster)
            return _score(plan, units, out, started, laps)
        finally:
            done.set()


def refuse_over_context(plan: Plan, predicted: Plan | None, units: list[Unit]) -> None:
    """``--long error``: a dataset whose longest sequence cannot fit the model's context, however it is
    tokenized, is refused on the driver before Ray starts (before: by the first actor, 20-45 s later).
    Only for whole datasets (no ``--limit``: the longest sequence may lie outside a slice), and only when
    the backend bounds its token count (``Backend.fewest_tokens``); the actors still check each row.
    ``predicted``: the plan on this machine's devices (``local_plan``; None: another cluster's decide)."""
    if plan.cfg.limit or getattr(plan.options, "long", None) != "error" or not units or predicted is None:
        return
    limit = predicted.runtime.token_limit  # the limit is the model's, whatever devices run it
    if not limit:
        return
    longest: dict[str, int] = {}
    for u in units:
        longest[u.dataset] = max(longest.get(u.dataset, 0), u.dataset_max_len)
    over = {}
    for dataset, n in longest.items():
        fewest = plan.backend.fewest_tokens(plan.card, n)
        if fewest is not None and fewest > limit:
            over[dataset] = (n, fewest)
    if over:
        dataset, (n, fewest) = max(over.items(), key=lambda kv: kv[1][1])
        raise GlmscoreError(f"{len(over)} dataset(s) hold sequences longer than the model's context of {limit} tokens "
                            f"({dataset}: {n:,} nt, at least {fewest:,} tokens); pass --long truncate or --long window.")


def dry_run(plan: Plan, units: list[Unit], out: shards.OutputFolder, address: str) -> dict:
    """What the job would do, decided as the run decides it but with nothing started or written: the
    plan on the local machine's CPUs and GPUs (for another cluster, an estimate: its devices may differ
    and change the fingerprint), the shards in ``--out`` it would reuse and why the others are computed."""
    cfg = plan.cfg
    local = ray_address(cfg.address) == "local"
    predicted = local_plan(plan)
    previous = shards.read_run_file(out.out) if store.exists(out.out) else None
    if previous is not None and previous != predicted.fingerprint and not cfg.overwrite:
        state = f"{out} holds another configuration's run: the job would stop (choose a new --out or pass --overwrite)"
        pending, why = units, {"new": len(units)}
    else:
        _, digests = _fitted(predicted, units)
        pending = units if cfg.overwrite else out.pending(units, predicted.fingerprint, digests)
        why = out.why_pending(pending, predicted.fingerprint, digests)
        state = pending_line(len(units), why)
    datasets: dict[str, list[Unit]] = {}
    for u in units:
        datasets.setdefault(u.dataset, []).append(u)
    limit = predicted.runtime.token_limit
    lines = [f"dry run: {cfg.task} {plan.benchmark.name} with {plan.card.id} (backend {plan.backend.name}) into {out}; "
             "nothing is started or written",
             f"  units: {len(units)} ({sum(u.n_rows for u in units):,} rows in {len(datasets)} dataset(s), "
             f"--chunk-rows {cfg.chunk_rows})"]
    for name, us in sorted(datasets.items()):
        longest = max(u.dataset_max_len for u in us)
        over = f"; its longest sequence ({longest:,} nt) may exceed the token limit (--long {getattr(plan.options, 'long', '-')})" \
            if limit and longest >= limit else ""
        lines.append(f"    {name}: {sum(u.n_rows for u in us):,} rows, {len(us)} unit(s), longest {longest:,} nt{over}")
    lines += [f"  shards: {state}",
              f"  token limit: {limit if limit else 'none'}; device {predicted.provenance['device']}, dtype {predicted.runtime.dtype or '-'}",
              "  batching: " + (", ".join(f"{k} {v}" for k, v in predicted.provenance["batching"].items()) or "one call per unit"),
              f"  run-to-run noise: {noise_words(predicted.provenance['noise_floor'])}",
              f"  actors: {predicted.pool.min_actors}..{predicted.pool.max_actors}, {predicted.pool.gpus:g} GPU and "
              f"{ACTOR_CPUS:g} CPU each (+{PREPARE_CPUS + WRITE_CPUS:g} CPU for the prepare and write actors beside them)"
              + ("" if local else f"; on {address} the cluster's own devices decide (estimated here from this machine)"),
              f"  fingerprint: {predicted.fingerprint}" + ("" if local else " (estimate)")]
    for warning in plan.benchmark.warnings:
        lines.append(f"  warning: {warning}")
    return {"dry_run": "\n".join(lines), "units": len(units), "pending": len(pending), "why": why,
            "fingerprint": predicted.fingerprint}


def noise_words(floor: dict) -> str:
    """The manifest's ``noise_floor`` in words: ``max 0.003, mean - per row (source)`` or ``not measured``."""
    if floor.get("max_abs") is None:
        return f"not measured for {floor['backend']} on {floor['device']} in {floor['dtype']}"
    typical = "-" if floor.get("typical_abs") is None else f"{floor['typical_abs']:.3g}"
    return f"|score difference| per row up to {floor['max_abs']:.3g} (mean {typical}) between two runs; {floor['source']}"


def _complete_without_ray(plan: Plan, predicted: Plan, units: list[Unit], out: shards.OutputFolder, started: str,
                          laps: Laps) -> dict | None:
    """A rerun on a local cluster (whose plan is ``predicted``) whose every shard is already this
    configuration's, from this input: verify, write the manifest and return it, without starting Ray (27 s
    of nothing, before). None when anything is left to compute, so the job starts Ray as usual. Shards of
    this configuration that the run would refuse (another --limit's, other datasets') are refused here,
    before Ray starts."""
    previous = shards.read_run_file(out.out)
    if previous is None or not units or plan.cfg.overwrite:
        return None  # --overwrite replaces the folder's shards, so everything is computed, on Ray
    # another configuration's folder is refused here, naming what changed: on the cluster a local run
    # starts (this machine, a fixed size) the plan is the one predicted
    out.check(predicted.fingerprint, plan.cfg.overwrite, units, predicted.identity)
    digests = _fitted(predicted, units)[1]
    if out.pending(units, predicted.fingerprint, digests):
        return None
    say(f"{plan.cfg.task}: every shard in {out} is complete for this configuration and input; "
          "Ray not started")
    return _score(predicted, units, out, started, laps, checked=digests)


def _finished_read_only(plan: Plan, predicted: Plan, units: list[Unit], out: shards.OutputFolder) -> dict | None:
    """A rerun into a read-only folder (no lock can be written there) that holds this configuration's finished run:
    every shard verified complete, its manifest returned as it is and nothing written. None when anything is left
    to compute or the folder has no manifest (then the read-only folder is refused)."""
    try:
        manifest = shards.read_manifest(out.out)
    except GlmscoreError:
        return None
    out.check(predicted.fingerprint, plan.cfg.overwrite, units, predicted.identity)
    if plan.cfg.overwrite or out.pending(units, predicted.fingerprint, _fitted(predicted, units)[1]):
        return None
    say(f"{plan.cfg.task}: every shard in {out} is complete for this configuration and input; the folder is read-only, "
        "so its manifest is kept as it is and nothing was written")
    return {**manifest, "shards_computed": 0, "shards_reused": len(units)}


def _score(plan: Plan, units: list[Unit], out: shards.OutputFolder, started: str, laps: Laps,
           checked: dict[str, str] | None = None) -> dict:
    """The job once planned (and, unless nothing is left to compute, Ray up), ``out`` locked: claim it,
    run the pending units, verify, write the manifest. ``checked``: every shard was verified complete just
    now (``_complete_without_ray``), with these reference digests: no fit, and no shard is read again."""
    cfg = plan.cfg
    config = {**asdict(cfg), "data": cfg.data if plan.staged else str(Path(cfg.data).resolve()), "out": str(out),
              "resolved_pooling": plan.pooling, "options": plan.options.to_dict(),
              "benchmark_options": plan.benchmark.options.to_dict(), "fingerprint": plan.fingerprint,
              "card_id": plan.card.id}  # `glmscore runs` names an unfinished run's model as a finished one's
    out.claim(plan.fingerprint, config, cfg.overwrite, units, plan.identity)
    # the fit comes with the digest (one pass over the reference sequences), before we know whether any
    # shard is pending: the fit costs a fraction of reading them (a local rerun known to have nothing
    # left to compute comes from ``_complete_without_ray`` with fit=False)
    fitted, digests = (None, checked) if checked is not None else _fitted(plan, units, fit=True)
    if digests and checked is None:
        laps.lap("reference sequences and fit")
    plan = replace(plan, references=digests)
    pending = [] if checked is not None else out.pending(units, plan.fingerprint, plan.references)
    say(f"{pending_line(len(units), out.why_pending(pending, plan.fingerprint, plan.references))}")
    laps.lap("output check")
    provenance = dict(plan.provenance)
    if pending and plan.card.environment:  # built (or found) before the actors ask for it
        plan = replace(plan, actor_env=environments.actor_env(plan.card, local=started_local()))
        laps.lap("model environment")
        provenance["environment"] = {"packages": list(plan.card.environment),
                                     "installed": environments.installed(plan.card.environment)}
    startup = laps.seconds()
    revisions = _run_pending(plan, pending, fitted, out, laps) if pending else set()
    laps.lap("run")
    return out.finish(units, plan.fingerprint, revisions=revisions, computed=len(pending), written=pending, config=config,
                      card=plan.card.to_dict(), started=started,
                      provenance={**provenance, "startup_s": startup, "timings_s": laps.seconds()},
                      warnings=plan.benchmark.warnings)


def pending_line(total: int, why: dict[str, int]) -> str:
    """``12 of 80 shards to compute (2 input changed, 10 new); 68 reused`` (what a rerun redoes and why)."""
    todo = sum(why.values())
    reasons = ", ".join(f"{n} {k}" for k, n in sorted(why.items()) if n)
    return f"{todo} of {total} shards to compute" + (f" ({reasons})" if reasons else "") + f"; {total - todo} reused"


def _run_pending(plan: Plan, pending: list[Unit], fitted, out: shards.OutputFolder, laps: Laps) -> set[str]:
    """Ray Data over the pending units: prepare -> the backend (given ``fitted``, a fitted backend's
    table) -> write, each an actor pool (see ``StageActor``). Returns the model revisions the actors
    reported."""
    if not ray.is_initialized():  # Ray Data would otherwise join whatever cluster it finds on the machine
        raise RuntimeError("_run_pending needs the Ray cluster this job started or joined")
    say(f"{laps.line()}")
    ledger = attempts.Ledger(uuid.uuid4().hex)  # this job's kills per unit (a restarted job starts afresh)
    # row-level progress for backends that take seconds per row (an actor of its own: a worker process, which
    # a k-mer job that scores a unit in milliseconds would only wait for)
    board = ray.remote(num_cpus=0)(ProgressBoard).remote() if plan.backend.progress_step else None
    ds = ray.data.from_items([asdict(u) for u in pending], override_num_blocks=len(pending))
    # prepare and write are light beside a forward pass: fractional CPUs let them run next to a model actor
    # that holds a node's only CPU (after a node loss, a restarted actor plus whole-CPU writes left writes
    # waiting for minutes on a small cluster); their pools grow to the model pool's size at most
    ds = ds.map_batches(PrepareActor, batch_size=1, batch_format="pyarrow", num_cpus=PREPARE_CPUS,
                        compute=ActorPoolStrategy(min_size=1, max_size=plan.pool.max_actors),
                        fn_constructor_kwargs={"plan": plan})
    ds = ds.map_batches(
        ScoreActor, batch_size=1, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=plan.pool.min_actors, max_size=plan.pool.max_actors),
        # a killed actor (its process, or its node) is restarted and its unit retried: Ray Data creates
        # pool actors with max_restarts=-1 and max_task_retries=-1 (and Ray retries a lost task 3 times);
        # tests/core/test_faults.py and tests/core/test_node_loss.py hold it to that
        num_cpus=ACTOR_CPUS, **actor_remote_args(plan.backend.actor_resources(plan.card, plan.options, plan.pool.gpus)),
        # a model whose packages cannot share glmscore's environment gets its own, for these actors only
        **({"runtime_env": {**JOB_RUNTIME_ENV, **plan.actor_env}} if plan.actor_env else {}),
        fn_constructor_kwargs={"plan": plan, "fitted": fitted, "run": ledger.run, "board": board},
    )
    ds = ds.map_batches(WriteActor, batch_size=1, batch_format="pyarrow", num_cpus=WRITE_CPUS,
                        compute=ActorPoolStrategy(min_size=1, max_size=plan.pool.max_actors),
                        fn_constructor_kwargs={"plan": plan, "out": out})
    revisions = set()
    progress = Progress(sum(u.n_rows for u in pending), "rows")
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_board, args=(board, progress, plan.pool.min_actors, stop), daemon=True)
    watcher.start()
    try:
        for row in ds.iter_rows():
            if row.get(ERROR):
                raise GlmscoreError(row[ERROR])  # leaving the loop stops the job; no manifest is written
            if row.get("note"):
                say(f"{row['note']}")
            revisions.add(row["resolved_revision"])
            progress.update(row["rows"])
    finally:
        stop.set()
        watcher.join(timeout=10)
        ledger.clear()
    return revisions


def _watch_board(board, progress: Progress, actors: int, stop: threading.Event, every: float = 2.0) -> None:
    """Every ``every`` s: the rows the model actors have reported, and while none has come, what the job
    waits for (a line at least every ~10 s: a real-size model's first shard took 150-225 s)."""
    while not stop.wait(every):
        if board is None:  # a fast backend: shards finish within seconds; say only what the job waits for
            progress.heartbeat("starting the model actors and waiting for their first rows")
            continue
        try:
            rows, ready = ray.get(board.read.remote(), timeout=every)
        except Exception:  # noqa: BLE001 - a busy or restarting cluster: the next tick tries again
            continue
        progress.observe(rows)
        progress.heartbeat(f"starting {actors} model actor(s) and loading the model: {ready} ready" if ready < actors
                           else f"{ready} model actor(s) ready; scoring the first rows")
