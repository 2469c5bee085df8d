"""The layout is the architecture: read from the code (ast), and proved by deleting and adding a benchmark
package in a copy of the tree (docs/architecture.md)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = ("models", "pipelines", "analysis")  # the design card's folders: glmscore.models, .pipelines, .analysis


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(["glmscore", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def room(name: str) -> str:
    """``glmscore.models.base`` -> ``models``; a third-party module -> its top-level name."""
    parts = name.split(".")
    return parts[1] if parts[0] == "glmscore" and len(parts) > 1 else parts[0]


def library_files(root: Path = ROOT) -> list[Path]:
    return [p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))]


def import_graph(root: Path = ROOT) -> dict[str, dict[str, bool]]:
    """module -> {imported project module or third-party top name: imported inside a function}."""
    graph: dict[str, dict[str, bool]] = {}
    for path in library_files(root):
        name = _module_name(path, root)
        tree = ast.parse(path.read_text())
        inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f) if n is not f}
        edges = graph.setdefault(name, {})
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                edges[target] = edges.get(target, True) and id(node) in inner
    modules = set(graph)
    # keep project edges to modules that exist (``from glmscore.pipelines import store`` names
    # glmscore.pipelines.store) and third-party top-level names
    return {m: {t: f for t, f in e.items() if t in modules or t.split(".")[0] != "glmscore"} for m, e in graph.items()}


def _cycle(graph: dict[str, dict[str, bool]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, {}):
            if t not in graph or t == m:
                continue
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_circle_and_each_folder_keeps_to_its_room():
    graph = import_graph()
    # every import counts, inside functions too: a circle hidden in a function is still a circle
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"
    for module, edges in graph.items():
        tops = {room(t) for t in edges}
        if room(module) == "analysis":
            assert not tops & {"ray", "pipelines"}, f"{module} (pure statistics) imports {sorted(tops & {'ray', 'pipelines'})}"
        if room(module) == "models":
            assert not tops & {"ray", "pipelines", "analysis"}, f"{module} imports {sorted(tops & {'ray', 'pipelines', 'analysis'})}"
        if module.startswith("glmscore.pipelines.") and not module.startswith("glmscore.pipelines.benchmarks"):
            named = [t for t in edges if t.startswith("glmscore.pipelines.benchmarks.")]
            assert not named, f"{module} imports a benchmark package ({named}); it must go through the registry"
    benchmarks = {m.split(".")[3] for m in graph if m.count(".") >= 3 and m.startswith("glmscore.pipelines.benchmarks.")}
    for module, edges in graph.items():
        if module.startswith("glmscore.pipelines.benchmarks."):
            own = module.split(".")[3]
            others = {t.split(".")[3] for t in edges if t.startswith("glmscore.pipelines.benchmarks.") and t.count(".") >= 3} - {own}
            assert not others & benchmarks, f"{module} imports benchmark package(s) {sorted(others)}: each stands alone"


def test_every_import_names_the_glmscore_namespace():
    """Library, tests and scripts import the rooms as ``glmscore.models`` / ``glmscore.pipelines`` /
    ``glmscore.analysis``: a bare ``import models`` would load a second copy of a module (two registries), or
    another project's ``models`` package."""
    files = library_files() + sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "glmscore").rglob("*.py"))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bare = [n for n in names if n.split(".")[0] in PACKAGES]
            assert not bare, f"{path.relative_to(ROOT)}:{node.lineno} imports {bare[0]}; write glmscore.{bare[0]}"


# a module may be long when it holds one thing (a benchmark's source, the sweep); one above MAX_MIXED lines must
# not hold things of several rooms: the score job's settings, stages and driver are three modules
MAX_LINES = 750
MAX_MIXED = 450
ROOMS_OF_A_JOB = {"Ray Data stages": re.compile(r"^class \w+Actor\b", re.M), "Tune runner": re.compile(r"^def run_trials\(", re.M),
                  "process supervision": re.compile(r"\bos\.fork\(|subprocess\.Popen\(\[sys\.executable", re.M),
                  "cluster start": re.compile(r"^def start_ray\(", re.M), "option declarations": re.compile(r"= option\(", re.M)}


def test_modules_stay_small_and_one_topic_each():
    for path in library_files():
        text = path.read_text()
        n = text.count("\n")
        assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (at most {MAX_LINES}): split it by topic"
        if n > MAX_MIXED:
            topics = [t for t, pattern in ROOMS_OF_A_JOB.items() if pattern.search(text)]
            assert len(topics) <= 1, f"{path.relative_to(ROOT)} ({n} lines) mixes {topics}: one module each"


def test_each_benchmark_is_one_registered_class_with_its_commands_beside_it():
    """A benchmark's interface is its data and its analysis: one class, registered where it is defined, inheriting
    from ``Benchmark`` alone (no second class that exists to break an import circle); its commands and demo
    register beside it (``commands.py``), so the source never imports its learners."""
    for package in sorted(p for p in (ROOT / "pipelines" / "benchmarks").iterdir() if (p / "__init__.py").is_file()):
        classes = []
        for path in sorted(package.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and any("Benchmark" in ast.unparse(b) for b in node.bases):
                    classes.append((path.name, node))
        assert len(classes) == 1, f"{package.name}: {[(f, c.name) for f, c in classes]}"
        file, cls = classes[0]
        assert [ast.unparse(b) for b in cls.bases] == ["Benchmark"], f"{package.name}.{cls.name} inherits {cls.bases}"
        assert any("register_benchmark" in ast.unparse(d) for d in cls.decorator_list), f"{package.name}.{cls.name} is not registered"
        source_imports = import_graph()[f"glmscore.pipelines.benchmarks.{package.name}.{file[:-3]}"]
        assert not [t for t in source_imports if t.endswith(".commands")], f"{package.name}/{file} imports its commands"


def test_what_a_person_sees_goes_through_the_console():
    """One module owns what glmscore prints (``pipelines/console.py``: ``say``, ``warn``, ``show``, the progress
    line), so a library caller can redirect or silence all of it (``glmscore.console.redirect``)."""
    for path in library_files():
        if path == ROOT / "pipelines" / "console.py":
            continue
        calls = [n.lineno for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]
        assert not calls, f"{path.relative_to(ROOT)}:{calls[0]} prints; use glmscore.pipelines.console"


def test_no_global_statement_in_library_code():
    """State lives in objects a caller can see (``ray_session.SESSION``, ``supervise.CHANNEL``, ``console.CONSOLE``),
    never in module variables rebound with ``global``."""
    for path in library_files() + sorted((ROOT / "glmscore").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            assert not isinstance(node, ast.Global), f"{path.relative_to(ROOT)}:{node.lineno}: global {', '.join(node.names)}"


def test_tests_use_public_names_only():
    """Tests import what a user could (no ``_private`` names from glmscore) and reach no private attribute of a
    glmscore module (``store._filesystem``): what they need is a public seam."""
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text())
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("glmscore"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(ROOT)}:{node.lineno} imports private {private}"
                modules |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                modules |= {a.asname for a in node.names if a.asname and a.name.startswith("glmscore")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                assert False, f"{path.relative_to(ROOT)}:{node.lineno} reaches {node.value.id}.{node.attr}"


def test_project_imports_sit_at_the_top_of_modules():
    """An import inside a function hides a dependency; the exceptions say why in the same line (heavy or
    optional packages that actor or trial code loads: torch, transformers, vLLM, Ray Train, scikit-learn where
    every Ray worker would pay for it; a model package that only its actors' own environment has: enformer_pytorch, borzoi_pytorch, alphagenome_pt, evo2,
    modelgenerator)."""
    allowed = ("torch", "transformers", "vllm", "ray", "tokenizers", "matplotlib", "peft", "evo", "sklearn", "enformer_pytorch", "borzoi_pytorch", "evo2",
               "alphagenome_pt", "modelgenerator")
    for module, edges in import_graph().items():
        inner = [t for t, in_function in edges.items() if in_function and t.split(".")[0] not in allowed]
        assert not inner, f"{module} imports {inner} inside a function"


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for package in (*PACKAGES, "glmscore"):
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _glmscore(root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``glmscore`` from the copied tree (PYTHONPATH comes before the editable install's finder)."""
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    code = "import sys; from glmscore.pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_deleting_a_benchmark_package_removes_only_that_benchmark(tmp_path):
    root = _copy_tree(tmp_path)
    shutil.rmtree(root / "pipelines" / "benchmarks" / "variants")
    where = _glmscore(root, "models")
    assert where.returncode == 0, where.stderr
    top = _glmscore(root, "--help")
    assert top.returncode == 0 and "variants" not in top.stdout and "nullsette" in top.stdout and "nabench" in top.stdout
    # the variants alias is gone with it; NABench's probe keeps the name
    probe = _glmscore(root, "probe", "--help")
    assert probe.returncode == 0 and "--test-chroms" not in probe.stdout and "--wildtype" in probe.stdout
    assert _glmscore(root, "baseline", "--help").returncode == 2  # `baseline cnn` belonged to variants
    unknown = _glmscore(root, "score", "--benchmark", "variants", "--data", ".", "--model", "kmer:3", "--out", "o")
    assert unknown.returncode == 2 and "invalid choice: 'variants'" in unknown.stderr
    # another benchmark's command still runs for real: build Nullsette's released layout
    spec = tmp_path / "spec"
    code = f"from glmscore.pipelines.benchmarks.nullsette.demo import write_spec; write_spec(__import__('pathlib').Path({str(spec)!r}), 6)"
    subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, check=True)
    built = _glmscore(root, "nullsette", "build", "--spec", str(spec), "--out", str(tmp_path / "data"))
    assert built.returncode == 0, built.stderr
    assert "6 cassettes" in built.stdout and "Traceback" not in built.stderr
    assert _glmscore(root, "analyze", "nabench", "--help").returncode == 0


TOY_PACKAGE = '''
"""A toy benchmark: every *.txt file of the data folder is a dataset, one sequence per line."""

from dataclasses import MISSING, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from glmscore.models.options import Options, option
from glmscore.pipelines.benchmark import Benchmark, Command, Rows, Unit, locator, register_benchmark, register_command
from glmscore.pipelines.shards import read_scores


@dataclass(frozen=True)
class CountOptions(Options):
    data: str = option(MISSING, help="toy data folder")


def count(o: CountOptions) -> str:
    return f"{sum(len(p.read_text().split()) for p in Path(o.data).glob('*.txt'))} toy lines"


@register_benchmark("toy_pkg")
class ToyLines(Benchmark):
    def units(self, *, chunk_rows, limit, datasets):
        out = []
        for path in sorted(Path(self.data).glob("*.txt")):
            seqs = path.read_text().split()[:limit]
            out.append(Unit(path.stem, "all", 0, len(seqs), 0, len("".join(seqs)), max(map(len, seqs)), locator(path=str(path))))
        return out

    def read(self, unit):
        seqs = Path(unit.where()["path"]).read_text().split()[: unit.n_rows]
        idx = np.arange(len(seqs), dtype=np.int32)
        return Rows([f"{unit.dataset}/{i}" for i in idx], [f"line {i + 1}" for i in idx], seqs, idx)

    def reference_sequences(self, units, dataset):
        unit = next(u for u in units if u.dataset == dataset)
        yield Path(unit.where()["path"]).read_text().split()  # one block

    @classmethod
    def analyze(cls, score_dirs, out, options):
        table = pd.concat([read_scores(d, columns=["model", "dataset", "score"]) for d in score_dirs])
        table = table.groupby(["model", "dataset"], as_index=False)["score"].mean()
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "report.md").write_text(table.to_markdown(index=False))
        return {"report": str(Path(out) / "report.md"), "table": table}

    @classmethod
    def combined_tables(cls, parts, order, out, bid):
        table = pd.concat([p["result"]["table"] for p in parts]).assign(toy_rank=lambda t: t["score"].rank())
        return [(f"{bid}: toy mean scores, ranked", table, [])]


register_command("toy_pkg", "count", Command(CountOptions, count, "count the toy lines"))
'''


@pytest.mark.ray
def test_a_new_benchmark_is_one_package_with_its_command_and_report_section(tmp_path):
    """No edit outside the new folder: its command appears in the CLI, and a sweep's combined report
    carries the section its ``combined_tables`` wrote."""
    root = _copy_tree(tmp_path)
    pkg = root / "pipelines" / "benchmarks" / "toy_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(TOY_PACKAGE))
    data = tmp_path / "lines"
    data.mkdir()
    (data / "a.txt").write_text("ACGTACGTAA\nGGGCCCATAT\nTTTTAAAACC\nACGTTGCAAC\n")
    counted = _glmscore(root, "toy_pkg", "count", "--data", str(data))
    assert counted.returncode == 0 and counted.stdout.strip() == "4 toy lines", counted.stderr
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"out": str(tmp_path / "sweep_out"), "models": ["kmer:2"], "local_cpus": 2,
                                     "benchmarks": [{"name": "toy_pkg", "data": str(data)}]}))
    ran = _glmscore(root, "sweep", str(sweep), timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = (tmp_path / "sweep_out" / "report" / "report.md").read_text()
    assert "## toy_pkg: toy mean scores, ranked" in report and "toy_rank" in report
