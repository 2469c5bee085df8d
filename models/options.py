"""Options declared once: a dataclass field carries its flag, help, choices and bounds.

Every configurable thing in glmscore (the score job, each backend, each benchmark) is a dataclass whose
fields are made with ``option(...)``. The CLI builds its flags from these fields (``pipelines.cli``),
``validate`` checks a filled-in instance, and the fingerprint keeps the fields marked
``affects_result``. So a flag is written once, where it is used.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, field, fields
from typing import Any, Callable

from glmscore.models.errors import GlmscoreError


def option(default: Any = MISSING, *, help: str, flag: str | None = None, choices: Callable[[], list] | list | tuple | None = None,
           minimum: float | None = None, maximum: float | None = None, affects_result: bool = True,
           commands: tuple[str, ...] | None = None, cli: bool = True, parse: Callable[[str], Any] | None = None,
           negatable: bool = False, group: str | None = None):
    """A dataclass field with what the CLI and the validation need.

    ``choices`` may be a callable (registries are read when the parser is built); ``affects_result=False``
    marks settings that change speed or placement but never a score (kept out of the fingerprint);
    ``commands`` limits a score-job flag to some sub-commands (``embed`` only, say); ``parse`` turns the
    command-line text into the value (default: the field's type); ``negatable``: a ``bool | None`` field gets
    ``--flag`` and ``--no-flag`` (unset: the default decides); ``group``: the title of the help section the flag
    is listed in (``glmscore score --help`` opens with the groups every run uses: input, model, output, cluster).
    """
    meta = {"help": help, "flag": flag, "choices": choices, "minimum": minimum, "maximum": maximum,
            "affects_result": affects_result, "commands": commands, "cli": cli, "parse": parse, "negatable": negatable,
            "group": group}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def comma_list(text: str) -> list[str]:
    """``a,b , c`` -> ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def choices_of(f: dataclasses.Field) -> list | None:
    c = f.metadata.get("choices")
    return list(c()) if callable(c) else (list(c) if c is not None else None)


def option_fields(cls) -> list[dataclasses.Field]:
    return [f for f in fields(cls) if "help" in f.metadata]


def base_type(cls, f: dataclasses.Field):
    """The field's type without ``| None`` (``int | None`` -> ``int``)."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return hint


def validate(obj) -> None:
    """Check choices and bounds of every option field that is set; one sentence per problem."""
    for f in option_fields(type(obj)):
        value = getattr(obj, f.name)
        if value is None:
            continue
        flag = flag_of(f)
        choices = choices_of(f)
        values = value if isinstance(value, list) else [value]
        if choices is not None:
            bad = [v for v in values if v not in choices]
            if bad:
                raise GlmscoreError(f"{flag} {bad[0]!r} is not one of {', '.join(map(str, choices))}.")
        lo, hi = f.metadata.get("minimum"), f.metadata.get("maximum")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if lo is not None and value < lo:
                raise GlmscoreError(f"{flag} must be at least {lo:g}, not {value:g}.")
            if hi is not None and value > hi:
                raise GlmscoreError(f"{flag} must be at most {hi:g}, not {value:g}.")


def flag_for(name: str) -> str:
    """The flag of a field called ``name`` in any option class (``mlm_mode`` -> ``--mlm-scoring``)."""
    todo = list(Options.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        f = getattr(cls, "__dataclass_fields__", {}).get(name)
        if f is not None and "help" in f.metadata:
            return flag_of(f)
    return "--" + name.replace("_", "-")


class Options:
    """Base of option dataclasses: validated on construction; built from a dict of set values."""
    def __post_init__(self):
        validate(self)

    @classmethod
    def from_values(cls, values: dict | None, *, owner: str) -> "Options":
        """An instance from ``values`` (unset keys keep their defaults); unknown keys are a user error
        naming ``owner`` (the backend or benchmark these options belong to)."""
        values = {k: v for k, v in (values or {}).items() if v is not None}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            names = ", ".join(flag_for(u) for u in unknown)
            raise GlmscoreError(f"{names} does not apply to {owner}.")
        return cls(**values)

    def result_fields(self) -> dict:
        """The fields that change results (for the fingerprint)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata.get("affects_result", True)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class NoOptions(Options):
    """For things that have no options."""

# Options many commands share, declared once: each command's options class makes its field with these.
ADDRESS_HELP = ("Ray address (default: RAY_ADDRESS, as set by `ray job submit`, else a new local cluster; "
                "`auto` joins the running one)")


def address_option(group: str | None = None):
    return option(None, affects_result=False, help=ADDRESS_HELP, group=group)


def out_option(what: str = "output folder", group: str | None = None):
    return option(MISSING, affects_result=False, help=what, group=group)


def seed_option(what: str = "seed of splits and fits"):
    return option(0, help=what)


def test_chroms_option():
    """The causal-variant test chromosomes (chr9 + chr10, the benchmark's split)."""
    return option(["chr9", "chr10"], parse=comma_list, help="test chromosomes (comma-separated)")


def coerce_values(cls, values: dict, where: str, problems: list[str]) -> dict:
    """``values`` from a file (a sweep's YAML) for option class ``cls``, through the same machinery as the
    CLI's flags: lists and strings through the field's own parser (``a,b`` or ``[a, b]``), scalars checked
    against the field's type (a YAML value is typed already, so it is checked, not re-parsed). A problem is
    one sentence in ``problems``, prefixed with ``where``; validation (choices, bounds) is the class's own."""
    fields_ = {f.name: f for f in option_fields(cls)}
    out = {}
    for key, value in values.items():
        f = fields_.get(key)
        if f is None or value is None:
            out[key] = value
            continue
        typ = base_type(cls, f)
        parse = f.metadata.get("parse")
        if parse is not None and isinstance(value, (str, list)):
            value = parse(",".join(map(str, value)) if isinstance(value, list) else value)
        elif typ is bool and not isinstance(value, bool):
            problems.append(f"{where}: {key} must be true or false, not {value!r}.")
            continue
        elif typ is int and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{where}: {key} must be a whole number, not {value!r}.")
            continue
        elif typ is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(f"{where}: {key} must be a number, not {value!r}.")
            continue
        elif typ is str and not isinstance(value, str):
            value = str(value)  # e.g. `backend: 5` -> "5", then refused by its choices
        out[key] = value
    return out
