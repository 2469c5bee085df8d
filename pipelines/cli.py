"""The ``glmscore`` command line (also the entrypoint of ``ray job submit --working-dir .``).

Every flag is generated from an option dataclass (``models/options.py``): the score job's
``ScoreConfig``, each registered backend's ``Options``, each registered benchmark's ``Options`` and
``AnalyzeOptions`` and its extra commands. A new backend or benchmark brings its flags with it.
User mistakes raise ``GlmscoreError``: printed as one sentence, exit status 2, no traceback; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import signal
import sys
import tempfile
from dataclasses import MISSING
from pathlib import Path

from models.errors import GlmscoreError
from models.options import base_type, choices_of, flag_of, option_fields
from pipelines.console import Terminated, handle_sigterm

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it
PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _declaring_class(cls, name: str):
    """The class in ``cls``'s MRO that declares field ``name`` (its docstring titles the flag group)."""
    for c in reversed(cls.__mro__):
        if name in vars(c).get("__annotations__", {}):
            return c
    return cls


def add_option(parser, cls, f: dataclasses.Field) -> None:
    """One argparse flag from an option field. Defaults stay None in argparse, so only flags the user
    gave are passed on and the dataclass's own defaults apply to the rest."""
    kw: dict = {"dest": f.name, "default": None, "help": f.metadata["help"]}
    typ = base_type(cls, f)
    if typ is bool:
        kw["action"] = "store_true"
    else:
        kw["type"] = f.metadata.get("parse") or (typ if typ in (int, float, str) else str)
        choices = choices_of(f)
        if choices and not f.metadata.get("parse"):
            kw["choices"] = choices
        kw["metavar"] = None if choices else f.name.upper()
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    if default is MISSING:
        kw["required"] = True
    elif default is not None and default is not False:
        kw["help"] += f" (default: {','.join(map(str, default)) if isinstance(default, list) else default})"
    parser.add_argument(flag_of(f), **kw)


def add_options(parser, cls, *, command: str | None = None, skip: set[str] = frozenset()) -> list[str]:
    """Flags for every CLI field of ``cls`` (those limited to other commands left out); returns their names."""
    names = []
    for f in option_fields(cls):
        commands = f.metadata.get("commands")
        if not f.metadata.get("cli", True) or f.name in skip or (commands and command not in commands):
            continue
        add_option(parser, cls, f)
        names.append(f.name)
    return names


def given(args, names) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _score_parser(sub, command: str, help_: str) -> None:
    from models.base import BACKENDS
    from pipelines.benchmark import BENCHMARKS
    from pipelines.score import ScoreConfig

    p = sub.add_parser(command, help=help_)
    job = add_options(p, ScoreConfig, command=command)
    data = next(a for a in p._actions if a.dest == "data")
    data.help += " (" + "; ".join(b.data_help for b in BENCHMARKS.classes()) + ")"
    seen = set(job)
    backend_names: list[str] = []
    groups: dict = {}
    for cls in BACKENDS.classes():
        for f in option_fields(cls.Options):
            if f.name in seen or not f.metadata.get("cli", True):
                continue
            owner = _declaring_class(cls.Options, f.name)
            title = (owner.__doc__ or f"backend {cls.name}").strip().splitlines()[0]
            groups.setdefault(title, p.add_argument_group(title))
            add_option(groups[title], cls.Options, f)
            seen.add(f.name)
            backend_names.append(f.name)
    bench_names: list[str] = []
    for cls in BENCHMARKS.classes():
        g = p.add_argument_group(f"benchmark {cls.name} options")
        bench_names += add_options(g, cls.Options, skip=seen)
        seen.update(bench_names)
    p.set_defaults(job_fields=job, backend_fields=backend_names, benchmark_fields=bench_names)


def build_parser() -> argparse.ArgumentParser:
    from pipelines.benchmark import BENCHMARKS
    from pipelines.demo import DemoOptions
    from pipelines.benchmarks.nabench.probe import ProbeConfig

    parser = argparse.ArgumentParser(prog="glmscore", description="Batch scoring of genomic language models on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Ray's logs on the console (default: a log file)")
    sub = parser.add_subparsers(dest="command", required=True)
    _score_parser(sub, "score", "score a benchmark with a model on Ray")
    _score_parser(sub, "embed", "embed a benchmark's sequences on Ray (Parquet shards with an embedding column)")

    pr = sub.add_parser("probe", help="few-shot or supervised probe sweep on embeddings (Ray Tune)")
    pr.set_defaults(fields=add_options(pr, ProbeConfig))

    from pipelines.benchmarks.nabench.finetune import FinetuneConfig

    ft = sub.add_parser("finetune", help="fine-tune a whole model on NABench assays (Ray Train, Ray Tune for sweeps)")
    ft.set_defaults(fields=add_options(ft, FinetuneConfig))

    an = sub.add_parser("analyze", help="statistics, tables, plots and report from score folders")
    an_sub = an.add_subparsers(dest="benchmark", required=True)
    for cls in BENCHMARKS.classes():
        a = an_sub.add_parser(cls.name, help=f"analyse {cls.name} score folders")
        a.add_argument("--scores", nargs="+", default=[], help=cls.scores_help)
        a.add_argument("--out", required=True, help="report folder")
        a.set_defaults(fields=add_options(a, cls.AnalyzeOptions, skip={"scores", "out"}))

    for cls in BENCHMARKS.classes():
        commands = cls.commands()
        if commands:
            b = sub.add_parser(cls.name, help=f"{cls.name} data tools")
            b_sub = b.add_subparsers(dest="action", required=True)
            for name, (options_cls, _, help_) in commands.items():
                c = b_sub.add_parser(name, help=help_)
                c.set_defaults(fields=add_options(c, options_cls))

    from pipelines.benchmarks.variants.learning import BASELINES

    bl = sub.add_parser("baseline", help="train a baseline model of a benchmark (Ray Tune)")
    bl_sub = bl.add_subparsers(dest="baseline", required=True)
    for name, (options_cls, _, help_) in BASELINES.items():
        c = bl_sub.add_parser(name, help=help_)
        c.set_defaults(fields=add_options(c, options_cls))

    sw = sub.add_parser("sweep", help="score models x benchmarks from a YAML file in one Ray job, then one combined report")
    sw.add_argument("file", help="sweep file (README: Sweeps)")
    sw.add_argument("--check", action="store_true", help="only check the file and list the runs (nothing starts)")

    d = sub.add_parser("demo", help="the whole chain on an embedded synthetic benchmark (no download, no GPU)")
    d.set_defaults(fields=add_options(d, DemoOptions))
    sub.add_parser("models", help="list the model cards and backends")
    return parser


def score_config_from_args(args):
    from pipelines.score import ScoreConfig

    return ScoreConfig(task=args.command, options=given(args, args.backend_fields),
                       benchmark_options=given(args, args.benchmark_fields), **given(args, args.job_fields))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ["GLMSCORE_VERBOSE"] = "1"
    handle_sigterm()
    try:
        try:
            return _dispatch(args)
        except SystemExit as exc:
            # ray.init replaces our SIGTERM handler by one that calls sys.exit(SIGTERM)
            if exc.code == signal.SIGTERM:
                raise Terminated() from None
            raise
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"glmscore: {what}; completed shards are kept and a rerun resumes from them.", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except GlmscoreError as exc:
        print(f"glmscore: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        # a location the user named that cannot be written (read-only, no permission, disk full): one
        # sentence; any other OSError is a bug and keeps its traceback
        if exc.errno not in PATH_ERRNOS:
            raise
        print(f"glmscore: error: cannot write or read {exc.filename or 'the output'}: {exc.strerror}.", file=sys.stderr)
        return EXIT_USER_ERROR


def _analyze_to(cls, args) -> dict:
    """``analyze``, its report written to a local folder or, for an object-store ``--out``, written locally
    and then uploaded (plots and tables are written by libraries that need a local file)."""
    from pipelines import store

    options = cls.AnalyzeOptions(**given(args, args.fields))
    if not store.is_uri(args.out):
        return cls.analyze(args.scores, args.out, options)
    with tempfile.TemporaryDirectory(prefix="glmscore-report-") as tmp:
        result = cls.analyze(args.scores, tmp, options)
        store.upload_folder(Path(tmp), args.out)
    return {**result, "report": str(result["report"]).replace(tmp, args.out.rstrip("/"))}


def _local_only(args) -> None:
    """Commands whose outputs are written by local-file libraries take local folders only (an s3:// path
    given to them would otherwise become a local folder named ``s3:``)."""
    from pipelines import store

    if args.command not in ("score", "embed", "analyze", "sweep"):
        for name in ("out", "embeddings", "data"):
            value = getattr(args, name, None)
            if isinstance(value, str) and store.is_uri(value):
                raise GlmscoreError(f"`glmscore {args.command}` reads and writes local or shared folders; --{name} {value} "
                                    "is in object storage (score, embed and analyze take s3:// locations).")


def _dispatch(args) -> int:
    from pipelines.benchmark import BENCHMARKS

    _local_only(args)

    if args.command == "models":
        from models.base import BACKENDS
        from models.cards import registry

        for card in registry().values():
            remote = "remote code" if card.trust_remote_code else "no remote code"
            print(f"{card.id:28s} {card.backend:12s} {card.objective}  {card.hf_id}  ({remote}; vLLM: {'yes' if card.vllm else 'no'}; "
                  f"protocols: {', '.join(card.protocols)})")
        print("\nbackends:")
        for cls in BACKENDS.classes():
            can = [w for w, ok in (("scores", cls.scores), ("embeds", cls.embeds), ("GPU", cls.can_use_gpu),
                                   ("fits on reference", cls.fits_on_reference)) if ok]
            print(f"  {cls.name:12s} {', '.join(can)}{'' if cls.available() else '  (not installed)'}")
        return 0
    if args.command in ("score", "embed"):
        from pipelines.score import run_score

        manifest = run_score(score_config_from_args(args))
        print(f"{'scored' if args.command == 'score' else 'embedded'} {manifest['rows_total']} rows into {args.out} "
              f"({manifest['shards_computed']} shards computed, {manifest['shards_reused']} reused)")
        return 0
    if args.command == "probe":
        from pipelines.benchmarks.nabench.probe import ProbeConfig, run_probes

        result = run_probes(ProbeConfig(**given(args, args.fields)))
        print(result["summary"].to_string(index=False))
        print(f"report: {result['report']}")
        return 0
    if args.command == "finetune":
        from pipelines.benchmarks.nabench.finetune import FinetuneConfig, run_finetune

        result = run_finetune(FinetuneConfig(**given(args, args.fields)))
        print(result["summary"].to_string(index=False))
        print(f"report: {result['report']}")
        return 0
    if args.command == "analyze":
        cls = BENCHMARKS.get(args.benchmark)
        result = _analyze_to(cls, args)
        print(result["table"].to_string(index=False))
        print(f"report: {result['report']}")
        return 0
    if args.command == "baseline":
        from pipelines.benchmarks.variants.learning import BASELINES

        options_cls, run, _ = BASELINES[args.baseline]
        result = run(options_cls(**given(args, args.fields)))
        print(result["summary"].to_string(index=False))
        print(f"report: {result['report']}")
        return 0
    if args.command == "sweep":
        from pipelines.sweep import main_sweep

        return main_sweep(args.file, check=args.check)
    if args.command == "demo":
        from pipelines.demo import DemoOptions, run_demo

        run_demo(DemoOptions(**given(args, args.fields)))
        return 0
    cls = BENCHMARKS.get(args.command)
    options_cls, run, _ = cls.commands()[args.action]
    print(run(options_cls(**given(args, args.fields))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
