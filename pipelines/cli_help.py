"""How the command line's help reads: a short usage line, the flags every run uses first, an example.

``glmscore score --help`` opens with what every run names (input, model, output, cluster: the ``group`` of the
score job's ``option()`` declarations) and an example, on one screen; the job's other flags, then each backend's
and each benchmark's groups follow. A command with many flags gets a usage line of its required flags and
``[options]`` instead of argparse's list of every flag. ``glmscore models CARD`` lists the flags a card's backend
takes. What a flag means is its declaration's; only the order and the usage line are decided here.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from dataclasses import MISSING

from glmscore.models.base import BACKENDS, resolve_card
from glmscore.models.cards import about, shipped_cards
from glmscore.models.options import base_type, choices_of, flag_of, option_fields

# the score job's groups in the order --help lists them; the first four are the first screen
FIRST_SCREEN = ("input", "model", "output", "cluster")
JOB_GROUPS = (*FIRST_SCREEN, "revision and remote code", "scoring", "actors and resources")
OTHER_JOB_FLAGS = "other options"
CONFIG_HELP = "options from a YAML or TOML file (keys: flag names); flags given here override it"
# shorter value names on the first screen (argparse's default is the field's name in capitals)
METAVARS = {"data": "DIR", "model": "M", "out": "DIR", "limit": "N", "datasets": "A,B", "chunk_rows": "N",
            "revision": "REV", "address": "ADDR"}
LONG_USAGE = 6  # a command with more optional flags than this gets `REQUIRED... [options]` as its usage line

EXAMPLES = {
    "score": ("glmscore score --benchmark nullsette --data nullsette --model kmer:3 --out scores/k3",
              "glmscore score --config run.yaml --limit 20 --dry-run   # a kept file; flags override it"),
    "embed": ("glmscore embed --benchmark nabench --data nabench --model nt-v2-50m-multi-species --out emb/nt50m",
              "glmscore embed --config run.yaml --dry-run   # a kept file; flags override it"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's layout with the description's line breaks kept (the examples)."""


def description(command: str, summary: str) -> str:
    """The text under the usage line: what the command does, an example (where there is one), where more is."""
    text = summary[0].upper() + summary[1:] + "."
    if command in EXAMPLES:
        text += ("\nThe flags every run uses come first, then each backend's (`glmscore models CARD`: those one"
                 "\nmodel takes) and each benchmark's.")
        text += "\n\nexamples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command])
    return text


def job_group(field: dataclasses.Field) -> str:
    return field.metadata.get("group") or OTHER_JOB_FLAGS


def compact_usage(parser: argparse.ArgumentParser) -> str | None:
    """``glmscore score --benchmark BENCHMARK ... [options]``: the required flags and positionals, then
    ``[options]``; None where the command has few enough flags for argparse's own usage line."""
    optional = [a for a in parser._actions if a.option_strings and not a.required and a.help != argparse.SUPPRESS]
    if len(optional) <= LONG_USAGE:
        return None
    words = [parser.prog]
    for action in parser._actions:
        if action.option_strings and action.required:
            words.append(f"{action.option_strings[0]} {action.metavar or action.dest.upper()}")
        elif not action.option_strings and action.help != argparse.SUPPRESS:
            words.append(action.metavar or action.dest if action.nargs is None else f"{action.metavar or action.dest} ...")
    return " ".join(words) + " [options]"


def shorten_usage(parser: argparse.ArgumentParser) -> None:
    """Every command under ``parser`` with many flags gets the compact usage line (``compact_usage``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                usage = compact_usage(sub)
                if usage is not None and sub.usage is None:
                    sub.usage = usage
                shorten_usage(sub)


def _default_text(field: dataclasses.Field) -> str:
    default = field.default_factory() if field.default_factory is not MISSING else field.default
    if default is MISSING:
        return "required"
    if default is None:
        return "unset"
    return ",".join(map(str, default)) if isinstance(default, list) else str(default)


def card_flags(spec: str) -> str:
    """``glmscore models CARD``: the card (or a name a backend claims: ``kmer:3``, a local folder) and the flags its
    backend takes, each with its default and help."""
    card = shipped_cards().get(spec) or resolve_card(spec)  # a shipped card as declared (not its fallback)
    cls = BACKENDS.get(card.backend)
    what = ", ".join(w for w in (f"backend {cls.name}", card.objective, card.hf_id) if w)
    remote = "runs its repository's code" if card.trust_remote_code else "no remote code"
    lines = [f"{card.id}: {what} ({remote})"]
    verified = about(card.id).get("verified")
    if verified:
        lines += textwrap.wrap(f"verified: {verified}", 100, initial_indent="  ", subsequent_indent="  ")
    fields = [f for f in option_fields(cls.Options) if f.metadata.get("cli", True)]
    lines.append(f"\nflags of backend {cls.name} (glmscore score / embed --model {spec}):" if fields
                 else f"\nbackend {cls.name} takes no flags of its own.")
    for f in fields:
        choices = choices_of(f)
        value = f" {{{','.join(map(str, choices))}}}" if choices else "" if base_type(cls.Options, f) is bool else f" {f.name.upper()}"
        default = _default_text(f)
        card_value = getattr(card, f.name, None)  # a card that sets the option itself (dtype)
        said = [f"default: {default}"] if default not in ("unset", "False") else []
        said += [f"this card: {card_value}"] if card_value not in (None, "") else []
        lines.append(f"  {flag_of(f)}{value}" + (f"  ({'; '.join(said)})" if said else ""))
        lines += textwrap.wrap(f.metadata["help"], 96, initial_indent="      ", subsequent_indent="      ")
    lines.append("\nThe job's flags (input, model, output, cluster) are in `glmscore score --help`.")
    return "\n".join(lines)
