"""The Nullsette benchmark: the released file layout, and building it from component tables.

Released layout (GLM-Nullsette-Benchmark ``processed_data``)::

    <root>/{deboer/Abf1TATA, deboer/pTpA, kosuri, lagator, zahm}/
        nonmutant.txt, mutant_translocation1.txt, ..., mutant_translocation<K>.txt

FASTA despite the suffix; record i of every file of a dataset belongs to cassette i. A dataset is any
folder under the root holding ``nonmutant.txt``; its name is its relative path with '/' -> '_'
(``deboer_Abf1TATA``), so it can be a hive partition value.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from models.errors import GlmscoreError
from pipelines.fasta import Chunk, scan, write_fasta

NONMUTANT = "nonmutant"
_MUTANT_RE = re.compile(r"^mutant_translocation(\d+)\.txt$")
# Released folder of each component table shipped with the benchmark; other tables use their file stem.
RELEASED_FOLDERS = {"deboer_Abf1TATA": "deboer/Abf1TATA", "deboer_pTpA": "deboer/pTpA"}


@dataclass(frozen=True)
class GroupFile:
    dataset: str
    group: str  # nonmutant | mutant_translocation<k>
    path: Path
    n_records: int
    chunks: tuple[Chunk, ...]


def discover(root: Path, *, chunk_rows: int = 1024, limit: int | None = None,
             datasets: list[str] | None = None) -> list[GroupFile]:
    """Find and validate every dataset under ``root``; return one entry per (dataset, group) file."""
    root = Path(root)
    if not root.is_dir():
        raise GlmscoreError(f"Nullsette data folder {root} does not exist.")
    folders = sorted(p.parent for p in root.rglob(f"{NONMUTANT}.txt"))
    if not folders:
        raise GlmscoreError(f"no Nullsette dataset under {root}: expected <dataset>/nonmutant.txt (run `glmscore nullsette build`).")
    found = {str(f.relative_to(root)).replace("/", "_") or root.name: f for f in folders}
    if datasets:
        missing = sorted(set(datasets) - set(found))
        if missing:
            raise GlmscoreError(f"dataset(s) {', '.join(missing)} not found under {root} (found: {', '.join(sorted(found))}).")
        found = {k: v for k, v in found.items() if k in datasets}
    out: list[GroupFile] = []
    for name, folder in sorted(found.items()):
        mutants = sorted(
            (int(m.group(1)), p) for p in folder.iterdir() if (m := _MUTANT_RE.match(p.name))
        )
        if not mutants:
            raise GlmscoreError(f"dataset {name} ({folder}) has nonmutant.txt but no mutant_translocation<k>.txt files.")
        ks = [k for k, _ in mutants]
        if ks != list(range(1, len(ks) + 1)):
            raise GlmscoreError(f"dataset {name}: mutant types must be numbered 1..K without gaps, found {ks}.")
        files = [(NONMUTANT, folder / f"{NONMUTANT}.txt")] + [(f"mutant_translocation{k}", p) for k, p in mutants]
        expected = None
        for group, path in files:
            n, chunks = scan(path, chunk_rows, None)
            if expected is None:
                expected = n
            elif n != expected:
                raise GlmscoreError(
                    f"dataset {name}: {path.name} has {n} records but nonmutant.txt has {expected}; mutant files must pair row by row."
                )
            if limit is not None and limit < n:
                n, chunks = scan(path, chunk_rows, limit)
            out.append(GroupFile(name, group, path, n, tuple(chunks)))
    return out


def read_translocations(spec: Path) -> dict:
    path = spec / "translocations.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GlmscoreError(f"{path} is missing: a cassette spec needs translocations.json beside the tables.") from None
    except json.JSONDecodeError as exc:
        raise GlmscoreError(f"{path} is not valid JSON (line {exc.lineno}).") from None
    for kingdom, entry in data.items():
        if not isinstance(entry, dict) or "nonmutant" not in entry or "mutants" not in entry:
            raise GlmscoreError(f"{path}: kingdom {kingdom!r} needs 'nonmutant' and 'mutants' lists.")
        for k, order in enumerate(entry["mutants"], start=1):
            if sorted(order) != sorted(entry["nonmutant"]):
                raise GlmscoreError(f"{path}: {kingdom} mutant {k} is not a reordering of the nonmutant components.")
    return data


def build(spec: Path, out: Path, *, tables: list[str] | None = None) -> dict[str, int]:
    """Write the released layout from component tables (``<name>.tsv`` + ``translocations.json``).

    Each cassette is the byte-exact concatenation of its component columns in the nonmutant order;
    mutant k is the concatenation in order k. The kingdom of a table is the one whose component list
    equals the table's component columns. Returns {dataset: cassettes}. A dataset folder appears only
    when all its files are written (built in a hidden folder, then renamed).
    """
    spec, out = Path(spec), Path(out)
    kingdoms = read_translocations(spec)
    paths = sorted(spec.glob("*.tsv"))
    if tables:
        paths = [p for p in paths if p.stem in tables]
        missing = set(tables) - {p.stem for p in paths}
        if missing:
            raise GlmscoreError(f"no component table {', '.join(sorted(missing))}.tsv in {spec}.")
    if not paths:
        raise GlmscoreError(f"no component tables (*.tsv) in {spec}.")
    out.mkdir(parents=True, exist_ok=True)
    built = {}
    for path in paths:
        ids, columns, components = _read_table(path)
        kingdom = next((k for k, v in kingdoms.items() if sorted(v["nonmutant"]) == sorted(components)), None)
        if kingdom is None:
            raise GlmscoreError(f"{path.name}: its components {components} match no kingdom in translocations.json.")
        entry = kingdoms[kingdom]
        folder = out / RELEASED_FOLDERS.get(path.stem, path.stem)
        tmp = folder.with_name(f".{folder.name}.building")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        orders = [(NONMUTANT, entry["nonmutant"])] + [
            (f"mutant_translocation{k}", order) for k, order in enumerate(entry["mutants"], start=1)
        ]
        for group, order in orders:
            seqs = ["".join(columns[c][i] for c in order) for i in range(len(ids))]
            write_fasta(tmp / f"{group}.txt", ids, seqs)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        built[str(folder.relative_to(out)).replace("/", "_")] = len(ids)
    return built


def _read_table(path: Path) -> tuple[list[str], dict[str, list[str]], list[str]]:
    with open(path, newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if not header or header[:2] != ["cassette_id", "expression"] or len(header) < 3:
            raise GlmscoreError(f"{path.name}: the header must be cassette_id, expression, then component columns.")
        components = header[2:]
        ids: list[str] = []
        columns: dict[str, list[str]] = {c: [] for c in components}
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise GlmscoreError(f"{path.name}: line {lineno} has {len(row)} fields, the header has {len(header)}.")
            if not row[0]:
                raise GlmscoreError(f"{path.name}: line {lineno} has no cassette_id.")
            for c, value in zip(components, row[2:]):
                if not value or not value.isalpha():
                    raise GlmscoreError(f"{path.name}: line {lineno}, component {c} is empty or not letters.")
                columns[c].append(value)
            ids.append(row[0])
    if not ids:
        raise GlmscoreError(f"{path.name} has no cassettes.")
    if len(set(ids)) != len(ids):
        raise GlmscoreError(f"{path.name}: cassette ids are not unique.")
    return ids, columns, components
