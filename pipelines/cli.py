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
import logging
import os
import signal
from dataclasses import MISSING
from pathlib import Path

import pandas as pd

from glmscore.models.base import BACKENDS
from glmscore.models.cards import about, shipped_cards, zoo_table
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import base_type, choices_of, flag_of, option_fields
from glmscore.pipelines import downloads, store
from glmscore.pipelines.api import analyze
from glmscore.pipelines.benchmark import BENCHMARKS, Command, commands_of
from glmscore.pipelines.cli_config import parse_args
from glmscore.pipelines.cli_help import (
    CONFIG_HELP,
    JOB_GROUPS,
    METAVARS,
    HelpFormatter,
    card_flags,
    description,
    job_group,
    shorten_usage,
)
from glmscore.pipelines.console import Terminated, handle_sigint, handle_sigterm, say, show
from glmscore.pipelines.demo import DemoOptions, run_demo
from glmscore.pipelines.plan import refuse_relative_in_job_copy
from glmscore.pipelines.score import ScoreConfig, run_score
from glmscore.pipelines.shards import describe, output_folders
from glmscore.pipelines.supervise import CHANNEL
from glmscore.pipelines.sweep import main_sweep

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
    if typ is bool and f.metadata.get("negatable"):  # three states: unset (the default decides), --flag, --no-flag
        kw["action"] = argparse.BooleanOptionalAction
    elif typ is bool:
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
    action = parser.add_argument(flag_of(f), **kw)
    action.declared = (cls, f)  # the declaration behind the flag (the generated CLI reference reads it)


def add_options(parser, cls, *, command: str | None = None, skip: set[str] = frozenset(), groups: dict | None = None) -> list[str]:
    """Flags for every CLI field of ``cls`` (those limited to other commands left out); returns their names.
    ``groups``: help sections by the fields' ``group`` (``cli_help.job_group``), made on first use."""
    names = []
    for f in option_fields(cls):
        commands = f.metadata.get("commands")
        if not f.metadata.get("cli", True) or f.name in skip or (commands and command not in commands):
            continue
        target = parser
        if groups is not None:
            title = job_group(f)
            target = groups[title] if title in groups else groups.setdefault(title, parser.add_argument_group(title))
        add_option(target, cls, f)
        names.append(f.name)
    return names


def add_config(parser) -> None:
    """``--config FILE``: the command's options from a YAML or TOML file (``pipelines/cli_config.py``)."""
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)


def given(args, names) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _score_parser(sub, command: str, help_: str) -> None:
    p = sub.add_parser(command, help=help_, description=description(command, help_), formatter_class=HelpFormatter)
    add_config(p)
    groups = {title: p.add_argument_group(title) for title in JOB_GROUPS}  # the first screen first
    job = add_options(p, ScoreConfig, command=command, groups=groups)
    data = next(a for a in p._actions if a.dest == "data")
    data.help += ", or a name `glmscore data get` fetched (each benchmark's layout: its group below)"
    for action in p._actions:
        action.metavar = METAVARS.get(action.dest, action.metavar)
    seen = set(job)
    backend_names: list[str] = []
    for cls in BACKENDS.classes():
        for f in option_fields(cls.Options):
            if f.name in seen or not f.metadata.get("cli", True):
                continue
            owner = _declaring_class(cls.Options, f.name)
            title = (owner.__doc__ or f"backend {cls.name}").strip().splitlines()[0]
            if title not in groups:
                groups[title] = p.add_argument_group(title)
            add_option(groups[title], cls.Options, f)
            seen.add(f.name)
            backend_names.append(f.name)
    for action in p._actions:  # a flag several backends declare takes what any of them takes; each checks its own
        if action.dest in backend_names:
            _union_choices(action, [f for cls in BACKENDS.classes() for f in option_fields(cls.Options) if f.name == action.dest])
    bench_names: list[str] = []
    for cls in BENCHMARKS.classes():
        g = p.add_argument_group(f"benchmark {cls.name} options", f"--data: {cls.data_help}")
        bench_names += add_options(g, cls.Options, skip=seen)
        seen.update(bench_names)
    p.set_defaults(job_fields=job, backend_fields=backend_names, benchmark_fields=bench_names)


def benchmark_commands() -> dict[tuple[str, ...], list[tuple[str, Command]]]:
    """Every benchmark command by the words that name it: ``(benchmark, command)``, and its alias
    (``("probe",)``, ``("baseline", "cnn")``), which several benchmarks' commands may share; each entry
    with its full name (``glmscore nabench probe``)."""
    table: dict[tuple[str, ...], list[tuple[str, Command]]] = {}
    for cls in BENCHMARKS.classes():
        for name, command in commands_of(cls.name).items():
            command = command if isinstance(command, Command) else Command(*command)
            entry = (f"glmscore {cls.name} {name}", command)
            table.setdefault((cls.name, name), []).append(entry)
            if command.alias:
                table.setdefault(tuple(command.alias), []).append(entry)
    return table


def _command_parser(sub_of: dict, parent_sub, words: tuple[str, ...], entries: list[tuple[str, Command]]) -> None:
    """``glmscore w1 w2 ...``: the sub-parsers along ``words`` (made once, shared by commands that start
    alike), the last one with the flags of every command named so (the union, each flag once)."""
    sub = parent_sub
    for depth, word in enumerate(words[:-1]):
        key = words[: depth + 1]
        if key not in sub_of:
            owner = sub.add_parser(word, help=f"{' '.join(key)} commands")
            sub_of[key] = owner.add_subparsers(dest=f"word{depth + 1}", required=True)
        sub = sub_of[key]
    commands = [command for _, command in entries]
    c = sub.add_parser(words[-1], help=" / ".join(dict.fromkeys(cmd.help for cmd in commands)))
    names: list[str] = []
    for command in commands:
        names += add_options(c, command.options, skip=set(names))
    if len(commands) > 1:  # a shared name: a flag takes what any of its commands takes; _pick decides
        for action in c._actions:
            owners = [f for cmd in commands for f in option_fields(cmd.options) if f.name == action.dest]
            if not owners:
                continue
            if len(owners) < len(commands):
                action.required = False
            _union_choices(action, owners)
    add_config(c)
    c.set_defaults(fields=names, commands=entries)


def _union_choices(action: argparse.Action, owners: list) -> None:
    """A flag declared by several option classes takes any value one of them takes (free text if one of
    them has no choices); the class that runs checks its own."""
    if action.choices is not None:
        merged = [choices_of(f) for f in owners]
        action.choices = None if not all(merged) else list(dict.fromkeys(x for m in merged for x in m))


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is one sentence (and where the help is), not the
    usage block first; subparsers inherit it."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"glmscore: error: {message} (see `{self.prog} --help`).\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="glmscore", description="Batch scoring of genomic language models on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Ray's logs on the console (default: a log file)")
    sub = parser.add_subparsers(dest="command", required=True)
    _score_parser(sub, "score", "score a benchmark with a model on Ray")
    _score_parser(sub, "embed", "embed a benchmark's sequences on Ray (Parquet shards with an embedding column)")

    an = sub.add_parser("analyze", help="statistics, tables, plots and report from score folders")
    an_sub = an.add_subparsers(dest="benchmark", required=True)
    for cls in BENCHMARKS.classes():
        a = an_sub.add_parser(cls.name, help=f"analyse {cls.name} score folders")
        a.add_argument("--scores", nargs="+", default=[], help=cls.scores_help)
        a.add_argument("--out", required=True, help="report folder")
        a.set_defaults(fields=add_options(a, cls.AnalyzeOptions, skip={"scores", "out"}))
        add_config(a)

    # each benchmark's commands (``glmscore nabench probe``), then their aliases (``glmscore probe``)
    sub_of: dict = {}
    table = benchmark_commands()
    for words, commands in sorted(table.items(), key=lambda kv: (len(kv[0]) == 1, kv[0])):
        _command_parser(sub_of, sub, words, commands)

    sw = sub.add_parser("sweep", help="score models x benchmarks from a YAML file in one Ray job, then one combined report")
    sw.add_argument("file", help="sweep file (README: Sweeps)")
    sw.add_argument("--check", action="store_true", help="only check the file and list the runs (nothing starts)")
    sw.add_argument("--trust-remote-code", action="store_true",
                    help="allow code from every model repository the file names (a sweep file itself never can)")
    sw.add_argument("--dry-run", action="store_true", help="check the file and say what each run would compute (units, "
                                                           "rows, shards reused, token limit, actors); nothing starts")

    d = sub.add_parser("demo", help="the whole chain on an embedded synthetic benchmark (no download, no GPU)")
    d.set_defaults(fields=add_options(d, DemoOptions))
    add_config(d)
    m = sub.add_parser("models", help="list the model cards and backends; with a card: the flags its backend takes")
    m.add_argument("card", nargs="?", help="a card id (or kmer:K, onehot, a local model folder): its backend's flags and defaults")
    m.add_argument("--table", action="store_true", help="the model zoo as a Markdown table (the README's)")
    r = sub.add_parser("runs", help="what output folders hold: benchmark, model, rows, finished or not, fingerprint")
    r.add_argument("folders", nargs="+", help="score or embed output folders (local or s3://)")
    dt = sub.add_parser("data", help="the benchmarks' public data: fetch and verify it into your cache (README: Getting the data)")
    dt_sub = dt.add_subparsers(dest="data_command", required=True)
    dg = dt_sub.add_parser("get", help="download, verify and unpack a benchmark's data; --data NAME then uses it")
    dg.add_argument("name", help=f"what to fetch: {', '.join(downloads.SOURCES)}")
    dg.add_argument("--from", dest="source_from", metavar="FILE_OR_URL",
                    help="a local copy or another URL of the archive (a machine without network; NABench's assay archive)")
    dg.add_argument("--sha256", help="the SHA-256 the archive must have (replaces glmscore's pin or the first download's)")
    dg.add_argument("--force", action="store_true", help="fetch and unpack again even if a complete copy is cached")
    dt_sub.add_parser("list", help="the names, their sources and pins, and whether each is fetched here")
    shorten_usage(parser)
    return parser


def _pick(entries: list[tuple[str, Command]], values: dict) -> tuple[Command, object]:
    """The command (and its options) that takes ``values`` among those sharing a name (``glmscore probe``):
    the first whose options declare every given flag and accept their values. Otherwise one sentence:
    preferably of the command the values fit but for flags it does not have, else of one that has every
    flag but refuses a value, else of the first."""
    errors: list[tuple[int, GlmscoreError]] = []
    for full_name, command in entries:
        declared = {f.name for f in option_fields(command.options)}
        unknown = [n for n in values if n not in declared]
        missing = [flag_of(f) for f in option_fields(command.options) if f.name not in values
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            errors.append((2 if unknown else 1, GlmscoreError(f"`{full_name}` needs {', '.join(missing)}.")))
            continue
        try:
            options = command.options(**{k: v for k, v in values.items() if k in declared})
        except GlmscoreError as exc:
            errors.append((2 if unknown else 1, exc))
            continue
        if not unknown:
            return command, options
        flags = ", ".join("--" + n.replace("_", "-") for n in unknown)
        errors.append((0, GlmscoreError(f"{flags} {'does' if len(unknown) == 1 else 'do'} not apply to `{full_name}`.")))
    raise min(errors, key=lambda e: e[0])[1]


def score_config_from_args(args):
    config_file = str(Path(args.config).resolve()) if getattr(args, "config", None) else None
    return ScoreConfig(task=args.command, options=given(args, args.backend_fields), config_file=config_file,
                       benchmark_options=given(args, args.benchmark_fields), **given(args, args.job_fields))


def main(argv: list[str] | None = None, *, supervised: bool = False) -> int:
    """The command line in this process (``argv``: the words after ``glmscore``). ``supervised``: this is
    the child of the ``glmscore`` command (``pipelines/supervise.py``), which is told how the command ends."""
    if supervised:
        CHANNEL.attach()
    code = _main(argv)
    CHANNEL.finished(code)
    return code


def _main(argv: list[str] | None) -> int:
    args = parse_args(build_parser(), argv)  # with a --config file's options under the command line's
    if args.verbose:
        os.environ["GLMSCORE_VERBOSE"] = "1"
    # a log handler that cannot write (Ray's log file on a full disk) must not print Python's
    # "--- Logging error ---" traceback per record over the one sentence that says what happened
    logging.raiseExceptions = False
    handle_sigterm()
    handle_sigint()
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
        kept = {"score": "; completed shards are kept and a rerun resumes from them",
                "embed": "; completed shards are kept and a rerun resumes from them",
                "sweep": "; completed shards are kept and a rerun resumes from them",
                "analyze": f"; no report was written to {getattr(args, 'out', '')} (it holds what it held before)"}
        said = f"; {exc.kept}" if getattr(exc, "kept", None) else kept.get(args.command, "")
        say(f"{what}{said}.")
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except GlmscoreError as exc:
        say(f"error: {exc}")
        return EXIT_USER_ERROR
    except OSError as exc:
        # a location the user named that cannot be written (read-only, no permission, disk full): one
        # sentence; any other OSError is a bug and keeps its traceback
        if exc.errno not in PATH_ERRNOS:
            raise
        say(f"error: cannot write or read {exc.filename or 'the output'}: {exc.strerror}.")
        return EXIT_USER_ERROR


def _local_only(args) -> None:
    """Commands whose outputs are written by local-file libraries take local folders only (an s3:// path
    given to them would otherwise become a local folder named ``s3:``)."""

    if args.command not in ("score", "embed", "analyze", "sweep"):
        for name in ("out", "embeddings", "data"):
            value = getattr(args, name, None)
            if isinstance(value, str) and store.is_uri(value):
                raise GlmscoreError(f"`glmscore {args.command}` reads and writes local or shared folders; --{name} {value} "
                                    "is in object storage (score, embed and analyze take s3:// locations).")


def _dispatch(args) -> int:
    _local_only(args)
    for flag in downloads.DATA_FLAGS:  # a registered name means its fetched copy (on the driver, once)
        if isinstance(getattr(args, flag, None), str):
            setattr(args, flag, downloads.resolve_data(getattr(args, flag), f"--{flag}", archives=flag == "data"))
    if isinstance(getattr(args, "out", None), str):
        refuse_relative_in_job_copy(args.out, "--out")

    if args.command == "models":
        if args.card:
            show(card_flags(args.card))
            return 0
        if args.table:
            show(zoo_table())
            return 0
        for card in shipped_cards().values():
            remote = "remote code" if card.trust_remote_code else "no remote code"
            show(f"{card.id:28s} {card.backend:12s} {card.objective}  {card.hf_id}  ({remote}; vLLM: {'yes' if card.vllm else 'no'}; "
                  f"protocols: {', '.join(card.protocols)}"
                  + (f"; own environment: {' '.join(card.environment)}" if card.environment else "") + ")")
            show(f"{'':28s} verified: {about(card.id)['verified'] or 'none'}")
        show("\nbackends:")
        for cls in BACKENDS.classes():
            can = [w for w, ok in (("scores", cls.scores), ("embeds", cls.embeds), ("GPU", cls.can_use_gpu),
                                   ("fits on reference", cls.fits_on_reference)) if ok]
            show(f"  {cls.name:12s} {', '.join(can)}{'' if cls.available() else '  (not installed)'}")
        return 0
    if args.command == "data":
        show(downloads.describe() if args.data_command == "list" else
             str(downloads.get(args.name, source_from=args.source_from, sha256=args.sha256, force=args.force)))
        return 0
    if args.command == "runs":
        folders = [f for given in args.folders for f in output_folders(store.absolute(given) if not store.is_uri(given) else given)]
        table = pd.DataFrame([describe(f) for f in folders], dtype=object)
        with pd.option_context("display.max_colwidth", 80, "display.width", 250):
            show(table.astype(object).where(table.notna(), "").to_string(index=False))
        return 0
    if args.command in ("score", "embed"):
        manifest = run_score(score_config_from_args(args))
        if "dry_run" in manifest:
            show(manifest["dry_run"])
            return 0
        show(f"{'scored' if args.command == 'score' else 'embedded'} {manifest['rows_total']} rows into {args.out} "
              f"({manifest['shards_computed']} shards computed, {manifest['shards_reused']} reused)")
        return 0
    if args.command == "analyze":
        result = analyze(args.benchmark, args.scores, args.out, **given(args, args.fields))
        show(result.table.to_string(index=False))
        show(f"report: {result.report}")
        return 0
    if args.command == "sweep":
        return main_sweep(args.file, check=args.check, dry_run=args.dry_run, trust_remote_code=args.trust_remote_code)
    if args.command == "demo":
        run_demo(DemoOptions(**given(args, args.fields)))
        return 0
    command, options = _pick(args.commands, given(args, args.fields))  # a benchmark's command or its alias
    show(command.run(options))
    return 0


if __name__ == "__main__":
    from glmscore.pipelines.supervise import command

    command()
