"""A command line that fits on a screen, at the level a user meets it (the ``glmscore`` command): ``score --help``
opens with the flags every run uses and an example, ``models CARD`` lists a backend's flags, ``--config FILE``
reads a run's options from a file the command line overrides, and the CLI reference page is the declarations'."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from glmscore.pipelines.cli import build_parser, score_config_from_args
from glmscore.pipelines.cli_config import parse_args
from glmscore.pipelines.cli_help import EXAMPLES
from glmscore.pipelines.cli_reference import reference
from tests.conftest import ROOT

SCREEN = 42  # lines: a laptop terminal


def _glmscore_all(commands: dict[str, tuple[tuple[str, ...], Path]]) -> dict[str, subprocess.CompletedProcess]:
    """Several ``glmscore`` commands at once (each starts an interpreter that imports Ray: seconds apiece), by name."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["COLUMNS"] = "80"
    started = {name: subprocess.Popen([sys.executable, "-m", "glmscore", *args], cwd=cwd, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name, (args, cwd) in commands.items()}
    done = {}
    for name, proc in started.items():
        out, err = proc.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


@pytest.fixture(scope="module")
def ran(tmp_path_factory, small_nullsette) -> dict[str, subprocess.CompletedProcess]:
    """What a user runs: the help, a card's flags, a config file with an override, a file with a wrong key, a file
    that tries to turn on remote code."""
    base = tmp_path_factory.mktemp("cli_help")
    (base / "run.yaml").write_text(yaml.safe_dump({"benchmark": "nullsette", "data": str(small_nullsette), "model": "kmer:3",
                                                   "out": str(base / "out"), "limit": 3, "chunk-rows": 2}))
    (base / "typo.yaml").write_text("benchmark: nullsette\nlimt: 3\n")
    (base / "remote.toml").write_text('benchmark = "nullsette"\ntrust_remote_code = true\n')
    rest = ("--data", ".", "--model", "kmer:3", "--out", "o")
    return _glmscore_all({
        "help": (("score", "--help"), ROOT),
        "card": (("models", "kmer:3"), ROOT),
        "config": (("score", "--config", "run.yaml", "--limit", "2", "--dry-run"), base),
        "typo": (("score", "--config", "typo.yaml", *rest), base),
        "remote": (("score", "--config", "remote.toml", *rest), base),
    })


def _one_sentence(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("glmscore: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_score_help_opens_with_the_flags_every_run_uses_and_an_example(ran):
    shown = ran["help"]
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "usage: glmscore score --benchmark BENCHMARK --data DIR --model M --out DIR [options]"
    screen = "\n".join(lines[:SCREEN])
    for flag in ("--benchmark", "--data", "--model", "--out", "--config", "--address", "--dry-run", "--limit"):
        assert f"  {flag} " in screen, f"{flag} is not on the first screen:\n{screen}"
    assert "examples:\n  glmscore score --benchmark nullsette" in screen
    rest = "\n".join(lines[SCREEN:])
    for later in ("vLLM engine", "--max-num-seqs", "benchmark nabench options", "--mlm-scoring"):  # the groups follow
        assert later in rest
    assert "--max-num-seqs" not in screen


def test_models_card_lists_its_backends_flags_with_their_defaults(ran):
    shown = ran["card"]
    assert shown.returncode == 0, shown.stderr
    assert "backend kmer" in shown.stdout and "--kmer-folds KMER_FOLDS  (default: 5)" in shown.stdout
    assert "--mlm-scoring" not in shown.stdout  # another backend's flag


def test_a_config_file_gives_the_options_and_the_command_line_overrides_it(ran):
    shown = ran["config"]
    assert shown.returncode == 0, shown.stderr
    # the flag's --limit 2 (not the file's 3) rows of each file, 2 rows a shard (the file's --chunk-rows)
    assert "--chunk-rows 2" in shown.stdout and "nothing is started" in shown.stdout, shown.stdout
    units = next(line for line in shown.stdout.splitlines() if line.strip().startswith("units:"))
    rows = int(units.split("(")[1].split()[0])
    assert rows == 40, units  # 20 files x 2 rows; with the file's --limit 3 it would be 60


def test_a_config_file_key_the_command_does_not_take_is_one_sentence_naming_it(ran):
    _one_sentence(ran["typo"], "limt", "typo.yaml", "not an option of `glmscore score`")


def test_a_config_file_cannot_turn_on_remote_code(ran):
    _one_sentence(ran["remote"], "remote.toml", "trust_remote_code", "--trust-remote-code on the command line")


@pytest.mark.parametrize("text, words", [
    ("limit: abc\n", ("limit", "whole number")),
    ("reduction: median\n", ("reduction", "one of mean, sum, focus")),
    ("dry_run: 1\n", ("dry_run", "true or false")),
    ("- limit\n", ("mapping",)),
    ("limit: [\n", ("not valid YAML",)),
])
def test_a_config_file_value_of_the_wrong_type_names_the_key_and_the_file(tmp_path, capsys, text, words):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit) as ended:
        parse_args(build_parser(), ["score", "--config", str(config), "--benchmark", "nullsette", "--data", ".",
                                    "--model", "kmer:3", "--out", "o"])
    assert ended.value.code == 2
    said = capsys.readouterr().err.strip()
    assert said.startswith(f"glmscore: error: {config}") and len(said.splitlines()) == 1, said
    for w in words:
        assert w in said


def test_the_run_record_keeps_the_resolved_options_and_the_file(tmp_path):
    """The manifest's ``config`` is the ScoreConfig (``asdict``): the file's values, the flags over them, the file."""
    config = tmp_path / "run.toml"
    config.write_text('benchmark = "nullsette"\ndata = "d"\nmodel = "kmer:3"\nout = "o"\ndatasets = ["a", "b"]\n'
                      'mlm_scoring = "pll"\npair_by = "order"\nlimit = 5\ntrust_remote_code = false\n')
    args = parse_args(build_parser(), ["score", "--config", str(config), "--limit", "7", "--out", "o2"])
    cfg = score_config_from_args(args)
    assert (cfg.benchmark, cfg.model, cfg.out, cfg.limit, cfg.datasets) == ("nullsette", "kmer:3", "o2", 7, ["a", "b"])
    assert cfg.options == {"mlm_mode": "pll"} and cfg.benchmark_options == {"pair_by": "order"}
    assert cfg.trust_remote_code is False and cfg.config_file == str(config.resolve())


def test_the_cli_reference_page_is_generated_from_the_declarations():
    page = ROOT / "docs" / "reference" / "cli.md"
    assert page.read_text() == reference(), ("docs/reference/cli.md is out of date: "
                                             "python -m glmscore.pipelines.cli_reference > docs/reference/cli.md")
    text = page.read_text()
    assert "## glmscore score" in text and "| `--max-num-seqs` | integer |" in text and "backend vllm_causal" in text


def test_the_help_examples_parse(tmp_path):
    """The examples ``--help`` shows are commands the parser takes (their config file given)."""
    (tmp_path / "run.yaml").write_text("benchmark: nullsette\ndata: d\nmodel: kmer:3\nout: o\n")
    for command, lines in EXAMPLES.items():
        for line in lines:
            words = shlex.split(line.split("#")[0])
            assert words[:2] == ["glmscore", command]
            words = [str(tmp_path / w) if w == "run.yaml" else w for w in words]
            assert parse_args(build_parser(), words[1:]).command == command
