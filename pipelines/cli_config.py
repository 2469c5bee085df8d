"""``--config FILE``: a command's options from a YAML or TOML file, so a long command line is a file a lab keeps.

The file is one mapping of option names to values: the flags' names with ``_`` or ``-`` (``chunk_rows: 512``,
``mlm_scoring: pll`` or ``mlm_mode: pll``, ``datasets: [a, b]`` or ``datasets: a,b``). Its values become the
command's defaults, so a flag on the command line overrides the file. Each value is checked as the flag's text
would be (type, choices, the flag's own parser; bounds by the option class, as for a flag), and a key the command
does not take, or a value of the wrong type, is one sentence naming the key and the file (exit status 2).

A file cannot turn on remote code (design: no data, sweep or card file can): ``trust_remote_code: true`` is refused;
only ``--trust-remote-code`` on the command line allows a model repository's code (``false`` is kept: a file may
refuse it).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import yaml

CONFIG_FLAG = "--config"
REMOTE_CODE_KEYS = {"trust_remote_code"}


class ConfigError(Exception):
    """A config file the command cannot use; the message is one sentence without the final stop."""


def _config_path(argv: list[str]) -> str | None:
    for i, word in enumerate(argv):
        if word == CONFIG_FLAG and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(CONFIG_FLAG + "="):
            return word.split("=", 1)[1]
    return None


def command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser | None:
    """The (sub-)parser that ``argv``'s command words lead to (``score``, ``nabench probe``, ``analyze nullsette``)."""
    words = iter(w for w in argv if not w.startswith("-"))
    current = parser
    while True:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return current
        word = next(words, None)
        if word not in subs[0].choices:
            return None
        current = subs[0].choices[word]


def read_config(path: str) -> dict:
    """The mapping in a YAML (``.yaml``, ``.yml``) or TOML (``.toml``) file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = file.read_text()
    try:
        values = tomllib.loads(text) if file.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        kind = "TOML" if file.suffix == ".toml" else "YAML"
        raise ConfigError(f"{path} is not valid {kind}: {' '.join(str(exc).split())}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values (`limit: 20`), not a {type(values).__name__}")
    return values


def _actions_by_key(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The flags a file may set, by field name and by flag name (``_`` for ``-``)."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "config") or action.help == argparse.SUPPRESS:
            continue
        keys[action.dest] = action
        for flag in action.option_strings:
            if flag.startswith("--") and not flag.startswith("--no-"):
                keys[flag[2:].replace("-", "_")] = action
    return keys


def _value(action: argparse.Action, key: str, value, path: str):
    """``value`` from the file as ``action`` would have made it from the flag's text."""
    where = f"{path}: {key}"
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        return [_scalar(action, where, item) for item in items]
    if isinstance(value, list) and action.type not in (int, float, str, None):
        value = ",".join(map(str, value))  # a list for a comma-separated flag (``datasets: [a, b]``)
    return _scalar(action, where, value)


def _scalar(action: argparse.Action, where: str, value):
    kind = action.type
    if isinstance(value, (dict, list)) or value is None:
        raise ConfigError(f"{where} must be one value, not {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where} must be a whole number, not {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        value = float(value)
    elif kind not in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where} must be text, not {value!r}")
    elif kind not in (int, float, str, None):
        try:
            value = kind(str(value))
        except Exception as exc:  # the flag's own parser says what is wrong, as for the flag's text
            raise ConfigError(f"{where}: {' '.join(str(exc).split()).rstrip('.')}") from None
    elif kind in (str, None):
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, action.choices))}, not {value!r}")
    return value


def config_values(parser: argparse.ArgumentParser, path: str) -> dict:
    """The file's options as ``parser``'s destinations, each checked (``ConfigError`` names the key and file)."""
    values = read_config(path)
    keys = _actions_by_key(parser)
    out = {}
    for key, value in values.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name in REMOTE_CODE_KEYS and value is not False:
            raise ConfigError(f"{path}: {key} cannot be set in a config file (a file never turns on remote code); "
                              "pass --trust-remote-code on the command line")
        if name == "config":
            raise ConfigError(f"{path}: config cannot name another config file")
        action = keys.get(name)
        if action is None:
            raise ConfigError(f"{path}: {key} is not an option of `{parser.prog}`")
        out[action.dest] = _value(action, str(key), value, path)
    return out


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with a ``--config`` file's options as the command's defaults (flags override
    them; a flag the file gives is no longer required on the command line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _config_path(argv)
    command = command_parser(parser, argv) if path is not None else None
    applied = None
    if command is not None and CONFIG_FLAG in command._option_string_actions:
        try:
            values = config_values(command, path)
        except ConfigError as exc:
            command.error(str(exc))
        for action in command._actions:
            if action.dest in values:
                action.required = False
        command.set_defaults(**values)
        applied = path
    args = parser.parse_args(argv)
    if getattr(args, "config", None) is not None and args.config != applied:
        # argparse took an abbreviation (``--conf``) or the command takes no file
        (command or parser).error(f"write {CONFIG_FLAG} FILE in full, after the command's name")
    return args
