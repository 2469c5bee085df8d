"""The layout is the architecture: read from the code (ast), and proved by deleting and adding a benchmark
package in a copy of the tree (docs/architecture.md)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = ("models", "pipelines", "analysis")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, dict[str, bool]]:
    """module -> {imported project module or third-party top name: imported inside a function}."""
    graph: dict[str, dict[str, bool]] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
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
    # keep project edges to modules that exist (``from pipelines import store`` names pipelines.store) and
    # third-party top-level names
    return {m: {t: f for t, f in e.items() if t in modules or t.split(".")[0] not in PACKAGES} for m, e in graph.items()}


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
        tops = {t.split(".")[0] for t in edges}
        if module.startswith("analysis"):
            assert not tops & {"ray", "pipelines"}, f"{module} (pure statistics) imports {sorted(tops & {'ray', 'pipelines'})}"
        if module.startswith("models"):
            assert not tops & {"ray", "pipelines", "analysis"}, f"{module} imports {sorted(tops & {'ray', 'pipelines', 'analysis'})}"
        if module.startswith("pipelines.") and not module.startswith("pipelines.benchmarks"):
            named = [t for t in edges if t.startswith("pipelines.benchmarks.")]
            assert not named, f"{module} imports a benchmark package ({named}); it must go through the registry"
    benchmarks = {m.split(".")[2] for m in graph if m.count(".") >= 2 and m.startswith("pipelines.benchmarks.")}
    for module, edges in graph.items():
        if module.startswith("pipelines.benchmarks."):
            own = module.split(".")[2]
            others = {t.split(".")[2] for t in edges if t.startswith("pipelines.benchmarks.") and t.count(".") >= 2} - {own}
            assert not others & benchmarks, f"{module} imports benchmark package(s) {sorted(others)}: each stands alone"


def test_project_imports_sit_at_the_top_of_modules():
    """An import inside a function hides a dependency; the exceptions say why in the same line (heavy or
    optional packages that actor or trial code loads: torch, transformers, vLLM, Ray Train, scikit-learn where
    every Ray worker would pay for it; a model package that only its actors' own environment has: enformer_pytorch, borzoi_pytorch, alphagenome_pt, evo2)."""
    allowed = ("torch", "transformers", "vllm", "ray", "tokenizers", "matplotlib", "peft", "evo", "sklearn", "enformer_pytorch", "borzoi_pytorch", "evo2",
               "alphagenome_pt")
    for module, edges in import_graph().items():
        inner = [t for t, in_function in edges.items() if in_function and t.split(".")[0] not in allowed]
        assert not inner, f"{module} imports {inner} inside a function"


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _glmscore(root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``glmscore`` from the copied tree (PYTHONPATH comes before the editable install's finder)."""
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    code = "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
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
    code = f"from pipelines.benchmarks.nullsette.demo import write_spec; write_spec(__import__('pathlib').Path({str(spec)!r}), 6)"
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

from models.options import Options, option
from pipelines.benchmark import Benchmark, Command, Rows, Unit, locator, register_benchmark
from pipelines.shards import read_scores


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
    def commands(cls):
        return {"count": Command(CountOptions, count, "count the toy lines")}

    @classmethod
    def combined_tables(cls, parts, order, out, bid):
        table = pd.concat([p["result"]["table"] for p in parts]).assign(toy_rank=lambda t: t["score"].rank())
        return [(f"{bid}: toy mean scores, ranked", table, [])]
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
