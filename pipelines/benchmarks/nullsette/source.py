"""The Nullsette benchmark: the released file layout, building it from component tables, the registered
benchmark (units = chunks of one FASTA file) and its analysis (paired permutation tests, success rates).

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
from collections.abc import Iterator
from dataclasses import MISSING, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from glmscore.analysis.combined import ordered, plot_grid
from glmscore.analysis.noise import manifest_noise, noise_table
from glmscore.analysis.nullsette import mark_within_noise, nullsette_tests, paired_differences, success_rates
from glmscore.analysis.report import write_nullsette_report
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import Options, comma_list, option, out_option, seed_option
from glmscore.pipelines import gunzip, store
from glmscore.pipelines.benchmark import REFERENCE_BLOCK, REGION_COLUMNS, Benchmark, Rows, Unit, locator, register_benchmark
from glmscore.pipelines.console import warn
from glmscore.pipelines.fasta import Chunk, read_chunk, scan, sequence_blocks, write_fasta
from glmscore.pipelines.shards import read_datasets, read_manifest
from glmscore.pipelines.textfiles import open_text

NONMUTANT = "nonmutant"
BUILD_RECORD = "_nullsette_build.json"  # {dataset: {kingdom, orders: {group: [components]}, fixed: {component: seq}}}
REGION_TYPES = {name: pa.int64() for name in REGION_COLUMNS}
_MUTANT_RE = re.compile(r"^mutant_translocation(\d+)\.txt(?:\.gz)?$")
# Released folder of each component table shipped with the benchmark; other tables use their file stem.
RELEASED_FOLDERS = {"deboer_Abf1TATA": "deboer/Abf1TATA", "deboer_pTpA": "deboer/pTpA"}


@dataclass(frozen=True)
class GroupFile:
    dataset: str
    group: str  # nonmutant | mutant_translocation<k>
    path: Path
    n_records: int
    chunks: tuple[Chunk, ...]
    max_len: int = 0  # longest record of the whole file (not only the --limit slice)
    source: Path | None = None  # the file as found: ``path``, or the .gz that ``path`` is the decompressed copy of


PAIR_BY = ("header", "order")


def pairing_mismatches(nonmutant: list[bytes], mutant: list[bytes]) -> list[int]:
    """The record indices at which ``mutant`` names another cassette than ``nonmutant`` does.

    Same cassette = the same record name, the header's first word (``>kosuri_0017 promoter=...``: ``kosuri_0017``),
    compared exactly. ``glmscore nullsette build`` writes the component table's ``cassette_id`` (the five real
    tables of ../shared/data/nullsette: ``apFAB67_Invitrogen_RBS``, ``minCMV_JDP2_529``...) as the header of record
    i in nonmutant.txt and in every mutant_translocation<k>.txt, with no suffix per mutant type (the published
    repository's example FASTA uses the same ids), so equality is the whole rule; text after the first
    whitespace (a description) is not compared."""
    return [i for i, (a, b) in enumerate(zip(nonmutant, mutant)) if a != b]


def discover(root: Path, *, chunk_rows: int = 1024, limit: int | None = None,
             datasets: list[str] | None = None, warnings: list[str] | None = None,
             pair_by: str = "header") -> list[GroupFile]:
    """Find and validate every dataset under ``root``; return one entry per (dataset, group) file. What is
    usable but suspicious (repeated record names, lowercase letters) is appended to ``warnings``.

    Record i of every mutant file pairs with record i of nonmutant.txt. ``pair_by="header"`` (the release's
    pairing key) refuses a mutant file whose record i names another cassette than nonmutant record i
    (``pairing_mismatches``), naming the file, the record and both headers; ``"order"`` pairs by position and
    only warns. The names are taken in the pass that validates each file (``scan``), so no file is read twice."""
    root = Path(root)
    if not root.is_dir():
        raise GlmscoreError(f"Nullsette data folder {root} does not exist.")
    # <group>.txt, or <group>.txt.gz read through a copy decompressed once (pipelines/gunzip.py)
    folders = sorted({p.parent for pattern in (f"{NONMUTANT}.txt", f"{NONMUTANT}.txt.gz")
                      for p in root.rglob(pattern) if not gunzip.in_cache(p.relative_to(root))})
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
        by_type: dict[int, Path] = {}
        for p in sorted(folder.iterdir(), key=lambda p: not gunzip.is_gzip(p)):  # a plain file wins over its .gz
            if m := _MUTANT_RE.match(p.name):
                by_type[int(m.group(1))] = p
        mutants = sorted(by_type.items())
        if not mutants:
            raise GlmscoreError(f"dataset {name} ({folder}) has nonmutant.txt but no mutant_translocation<k>.txt files.")
        ks = [k for k, _ in mutants]
        if ks != list(range(1, len(ks) + 1)):
            raise GlmscoreError(f"dataset {name}: mutant types must be numbered 1..K without gaps, found {ks}.")
        nonmutant = folder / f"{NONMUTANT}.txt"
        files = [(NONMUTANT, nonmutant if nonmutant.exists() else folder / f"{NONMUTANT}.txt.gz")] + \
            [(f"mutant_translocation{k}", p) for k, p in mutants]
        expected = None
        reference: list[bytes] = []  # nonmutant.txt's record names, in order
        for group, source in files:
            path = gunzip.readable(source)
            notes: dict = {}
            names: list[bytes] = []
            n, chunks = scan(path, chunk_rows, None, notes, names)
            if warnings is not None and notes["duplicate_names"]:
                warnings.append(f"{path}: {notes['duplicate_names']} record(s) repeat an earlier record's name "
                                "(records pair by position; a repeated name does not tell cassettes apart)")
            if warnings is not None and notes["lowercase"]:
                warnings.append(f"{path}: {notes['lowercase']} record(s) have lowercase letters, read as uppercase "
                                "(a soft mask is not kept)")
            longest = max(c.max_len for c in chunks)
            if expected is None:
                expected = n
            elif n != expected:
                raise GlmscoreError(
                    f"dataset {name}: {path.name} has {n} records but nonmutant.txt has {expected}; mutant files must pair row by row."
                )
            if group == NONMUTANT:
                reference = names
            elif mismatched := pairing_mismatches(reference, names):
                i = mismatched[0]
                first = (f"record {i + 1} is {names[i].decode('utf-8', 'replace')!r} where nonmutant.txt's record {i + 1} "
                         f"is {reference[i].decode('utf-8', 'replace')!r}")
                if pair_by == "header":
                    raise GlmscoreError(f"dataset {name}: {path} does not list the cassettes in nonmutant.txt's order: {first}"
                                        + (f" ({len(mismatched)} records differ)" if len(mismatched) > 1 else "")
                                        + "; reorder the file, or pass --pair-by order to pair records by position anyway.")
                if warnings is not None:
                    warnings.append(f"{path}: {len(mismatched)} record(s) name another cassette than nonmutant.txt's record "
                                    f"at their position (first: {first}); paired by position (--pair-by order)")
            if limit is not None and limit < n:
                n, chunks = scan(path, chunk_rows, limit)
            out.append(GroupFile(name, group, path, n, tuple(chunks), longest, source))
    return out


def read_translocations(spec: Path) -> dict:
    if not Path(spec).is_dir():
        raise GlmscoreError(f"--spec {spec} is not a folder: it should hold translocations.json and <dataset>.tsv tables.")
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
    record = json.loads((out / BUILD_RECORD).read_text()) if (out / BUILD_RECORD).is_file() else {}
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
        name = str(folder.relative_to(out)).replace("/", "_")
        built[name] = len(ids)
        # components that are one sequence in every cassette (the CDS, the start codon...): what
        # --score-subsequence cds scores, as the published alphagenome_infer.py --score-subsequence does
        fixed = {c: columns[c][0] for c in components if len(set(columns[c])) == 1}
        record[name] = {"kingdom": kingdom, "orders": dict(orders), "fixed": fixed}
    (out / BUILD_RECORD).write_text(json.dumps(record, indent=1))  # names the mutant types in reports
    return built


def _read_table(path: Path) -> tuple[list[str], dict[str, list[str]], list[str]]:
    with open_text(path) as fh:
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


def mutant_orders(translocations: str | None, data_folders: set, tests) -> dict[tuple[str, str], str]:
    """(dataset, group) -> component order ("terminator-promoter-rbs-..."): from a translocations.json
    (a dataset takes the kingdom with its number of mutant types) or from the build record beside the data."""
    out: dict[tuple[str, str], str] = {}
    if translocations:
        kingdoms = read_translocations(Path(translocations).parent) if Path(translocations).name == "translocations.json" \
            else json.loads(Path(translocations).read_text())
        for dataset, part in tests.groupby("dataset"):
            match = [k for k in kingdoms.values() if len(k["mutants"]) == part["group"].nunique()]
            if len(match) == 1:
                for k, order in enumerate(match[0]["mutants"], start=1):
                    out[(dataset, f"mutant_translocation{k}")] = "-".join(order)
        return out
    for folder in data_folders:
        record = Path(folder or "") / BUILD_RECORD
        if folder and record.is_file():
            for dataset, entry in json.loads(record.read_text()).items():
                out.update({(dataset, g): "-".join(order) for g, order in entry["orders"].items()})
    return out


# ---------------------------------------------------------------- the published scripts' score files

# Dataset folder names the published scripts write (hyenadna.py: the last path component) -> glmscore's
PUBLISHED_DATASETS = {"Abf1TATA": "deboer_Abf1TATA", "pTpA": "deboer_pTpA"}
_PUBLISHED_FILE = re.compile(r"^(nonmutant|mutant_translocation\d+)\.csv$")


def is_published_layout(folder: Path) -> bool:
    """A folder of the published scripts' outputs: ``.../<dataset>/nonmutant.csv`` at any depth under it
    (``hyenadna.py``: ``<out>/<model>/<dataset>``; ``NT.py``, ``generator.py``: ``<out>/<family>/<variant>/
    <dataset>``; ``alphagenome_infer.py``: ``<out>/AlphaGenome/<run>/<organism>/<tracks>/<scoring>/<dataset>``),
    and no glmscore manifest."""
    folder = Path(folder)
    return folder.is_dir() and not (folder / "_manifest.json").exists() and any(folder.rglob("nonmutant.csv"))


# the published columns; alphagenome_infer.py adds the scored region when it scores a sub-sequence
PUBLISHED_COLUMNS = (["seqs", "scores"], ["seqs", "scores", "score_region_start", "score_region_end"])


def read_published_scores(folder: Path):
    """Scores written by the GLM-Nullsette-Benchmark scripts as a glmscore score table.

    Every ``<dataset>/{nonmutant,mutant_translocation<k>}.csv`` under ``folder`` (tab-separated, columns
    ``seqs, scores`` and, from ``alphagenome_infer.py``, ``score_region_start, score_region_end``; row i of
    every file of a dataset = cassette i, as the scripts keep FASTA order). The model is the path from
    ``folder`` to the dataset folder's parent (``NucleotideTransformer/2.5B_multispecies``), or ``folder``'s
    own name when the datasets lie directly in it. Returns (model, dataset, group, pair_index, score) rows;
    every file of a dataset must have the nonmutant file's rows, else one sentence.
    """

    folder = Path(folder)
    frames = []
    for data_dir in sorted(p.parent for p in folder.rglob("nonmutant.csv")):
        rel = data_dir.parent.relative_to(folder)
        model = folder.name if rel == Path(".") else rel.as_posix()
        dataset = PUBLISHED_DATASETS.get(data_dir.name, data_dir.name)
        files = sorted(p for p in data_dir.iterdir() if _PUBLISHED_FILE.match(p.name))
        n_rows = None
        for path in sorted(files, key=lambda p: p.name != "nonmutant.csv"):
            try:
                table = pd.read_csv(path, sep="\t", dtype={"seqs": str})
            except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
                raise GlmscoreError(f"{path} is not a tab-separated score file ({str(exc).splitlines()[0]}).") from None
            if list(table.columns) not in PUBLISHED_COLUMNS:
                raise GlmscoreError(f"{path}: expected the published columns seqs, scores (tab-separated; "
                                    f"alphagenome_infer.py adds score_region_start, score_region_end), "
                                    f"found {', '.join(map(str, table.columns))}.")
            scores = pd.to_numeric(table["scores"], errors="coerce")
            if scores.isna().any():
                raise GlmscoreError(f"{path}: {int(scores.isna().sum())} score(s) are not numbers.")
            if n_rows is None:
                n_rows = len(table)
            elif len(table) != n_rows:
                raise GlmscoreError(f"{path} has {len(table)} rows but nonmutant.csv has {n_rows}; "
                                    "the files of a dataset must pair row by row.")
            frames.append(pd.DataFrame({"model": model, "dataset": dataset, "group": path.stem,
                                        "pair_index": np.arange(len(table), dtype=np.int32),
                                        "score": scores.to_numpy(np.float64)}))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- the registered benchmark


@dataclass(frozen=True)
class NullsetteAnalyzeOptions(Options):
    n_perm: int = option(10_000, minimum=1, help="sign-flip permutations per test")
    seed: int = seed_option("permutation seed")
    correction: str = option("bh", choices=("bh", "bonferroni", "holm", "none"), help="multiple-testing correction within (model, dataset)")
    estimator: str = option("plus_one", choices=("plus_one", "seed", "paper"),
                            help="plus_one: (1+b)/(1+n); seed: b/n on glmscore's draw; paper: the published "
                                 "function bit for bit (fresh default_rng(seed) per test, rng.choice signs, b/n)")
    alpha: float = option(0.05, minimum=0.0, maximum=1.0, help="significance level of corrected p-values")
    labels: list[str] | None = option(None, parse=comma_list, help="comma-separated names for the --scores folders, in order "
                                                                  "(one model twice, e.g. mean,sum)")
    translocations: str | None = option(None, help="translocations.json naming the mutant types (default: the record "
                                                   "`nullsette build` leaves beside the data)")


@dataclass(frozen=True)
class BuildOptions(Options):
    spec: str = option(MISSING, help="folder with translocations.json and <dataset>.tsv tables")
    out: str = out_option("where to write the released layout")
    tables: list[str] | None = option(None, parse=comma_list, help="comma-separated table names (default: all)")


def nullsette_tables(parts: list[dict], order: list[str], out: Path, bid: str) -> list[tuple[str, pd.DataFrame, list[Path]]]:
    """Success rate, models x datasets (``nullsette_success.csv`` of the analysis, pivoted)."""
    success = pd.concat([p["result"]["table"].assign(model=lambda t, p=p: t["model"].map(p["names"]).fillna(t["model"]))
                         for p in parts], ignore_index=True)
    grid = ordered(success.pivot(index="model", columns="dataset", values="success_rate"), order)
    grid.columns.name = None
    csv = out / f"{bid}_success_rate.csv"
    grid.reset_index().to_csv(csv, index=False)
    png = plot_grid(grid, out / f"{bid}_success_heatmap.png", f"{bid}: Nullsette success rate", "success rate", 0, 1, "viridis")
    return [(f"{bid}: Nullsette success rate (fraction of mutant types with corrected p < alpha), models x datasets",
             grid.reset_index(), [csv, png])]


@dataclass(frozen=True)
class NullsetteOptions(Options):
    """Nullsette (score, embed)"""
    pair_by: str = option("header", choices=PAIR_BY, affects_result=False,
                          help="Nullsette: how record i of a mutant file is checked against record i of nonmutant.txt: "
                               "header (default): the same cassette name (the header's first word), else refused; "
                               "order: paired by position, differing names only warned")
    score_subsequence: str | None = option(
        None, help="Nullsette, sequence-to-function models: score only this subsequence of each cassette, as "
                   "alphagenome_infer.py --score-subsequence (its first occurrence): a DNA sequence, or a component "
                   "that is one sequence in every cassette of a dataset (cds, start_codon...), from the build record")


@register_benchmark("nullsette")
class Nullsette(Benchmark):
    """Rows are FASTA records; record i of every file of a dataset is cassette i (``pair_index``)."""
    data_help = "Nullsette: the released layout <dataset>/{nonmutant,mutant_translocation<k>}.txt"
    scores_help = ("glmscore score folders, or the published scripts' outputs <out>[/<model>]/<dataset>/"
                   "{nonmutant,mutant_translocation<k>}.csv (tab-separated seqs, scores)")

    Options = NullsetteOptions
    AnalyzeOptions = NullsetteAnalyzeOptions

    @property
    def extra_columns(self) -> dict[str, pa.DataType]:
        return REGION_TYPES if self.options.score_subsequence else {}

    @property
    def has_regions(self) -> bool:
        return bool(self.options.score_subsequence)

    def subsequence(self, dataset: str) -> str:
        """The sequence --score-subsequence names for ``dataset``: itself, or the dataset's fixed component."""
        spec = self.options.score_subsequence
        if re.fullmatch(r"[ACGTNacgtn]+", spec):  # component names (cds, rbs, promoter...) are not DNA
            return spec.upper()
        record = Path(self.data) / BUILD_RECORD
        entry = json.loads(record.read_text()).get(dataset, {}) if record.is_file() else {}
        if "fixed" not in entry:
            raise GlmscoreError(f"--score-subsequence {spec}: dataset {dataset} has no record of its components "
                                f"({record} from `glmscore nullsette build`, rebuilt since 2026-12-04); give the "
                                "subsequence itself instead.")
        if spec not in entry["fixed"]:
            raise GlmscoreError(f"--score-subsequence {spec} is not a DNA sequence nor a component that is one "
                                f"sequence in every cassette of {dataset} ({', '.join(entry['fixed']) or 'none is'}).")
        return entry["fixed"][spec].upper()

    def units(self, *, chunk_rows, limit, datasets) -> list[Unit]:
        groups = discover(Path(self.data), chunk_rows=chunk_rows, limit=limit, datasets=datasets, warnings=self.warnings,
                          pair_by=self.options.pair_by)
        if self.options.score_subsequence:
            for dataset in sorted({g.dataset for g in groups}):
                self.subsequence(dataset)  # refused on the driver, before Ray starts
        widths = {g.dataset: g.max_len for g in groups if g.group == NONMUTANT}
        return [
            Unit(g.dataset, g.group, i, c.n_records, c.first_record, c.crc, widths[g.dataset],
                 locator(**gunzip.where(g.path, g.source or g.path), offset=c.offset, length=c.length))
            for g in groups for i, c in enumerate(g.chunks)
        ]

    def read(self, unit: Unit) -> Rows:
        where = unit.where()
        names, seqs = read_chunk(str(gunzip.unit_file(where)), where["offset"], where["length"])
        if len(seqs) != unit.n_rows:
            raise GlmscoreError(f"{where['path']} changed while the job ran; rerun to rescan it.")
        pair_index = np.arange(unit.first_row, unit.first_row + len(seqs), dtype=np.int32)
        seq_ids = [f"{unit.dataset}/{unit.group}/{i}" for i in pair_index]
        extra = {}
        if self.options.score_subsequence:
            sub = self.subsequence(unit.dataset)
            starts = [seq.upper().find(sub) for seq in seqs]
            missing = [seq_ids[i] for i, start in enumerate(starts) if start < 0]
            if missing:
                raise GlmscoreError(f"--score-subsequence {self.options.score_subsequence} ({len(sub)} bp) is not in "
                                    f"{len(missing)} cassette(s) of {unit.dataset}/{unit.group} ({', '.join(missing[:3])}).")
            extra = {"score_region_start": starts, "score_region_end": [start + len(sub) for start in starts]}
        return Rows(seq_ids, names, seqs, pair_index, extra)

    def reference_sequences(self, units: list[Unit], dataset: str) -> Iterator[list[str]]:
        """The dataset's nonmutants, all cassettes (a crossfit baseline must never see mutants)."""
        non = [u for u in units if u.dataset == dataset and u.group == NONMUTANT]
        if not non:
            raise GlmscoreError(f"fitting on dataset {dataset} needs its nonmutant sequences.")
        return sequence_blocks(gunzip.unit_file(non[0].where()), REFERENCE_BLOCK)

    @classmethod
    def analyze(cls, score_dirs: list[str], out: str, options: NullsetteAnalyzeOptions) -> dict:

        if not score_dirs:
            raise GlmscoreError("pass --scores with one or more score folders.")
        if options.labels and len(options.labels) != len(score_dirs):
            raise GlmscoreError(f"--labels names {len(options.labels)} folder(s) but --scores has {len(score_dirs)}.")
        # one dataset of one folder in memory at a time: what the tests need of it is a float per pair
        diffs: dict[tuple[str, str, str], np.ndarray] = {}
        provenance, limits, datas, data_notes, noise = {}, {}, set(), set(), {}

        def add(frame: pd.DataFrame, folder: str, label: str | None) -> None:
            if label:
                frame["model"] = label
            for key, d in paired_differences(frame).items():
                if key in diffs:
                    raise GlmscoreError(f"the score folders overlap: model {key[0]} scored dataset {key[1]} twice "
                                        f"(again in {folder}); pass each model once or name them apart with --labels.")
                diffs[key] = d

        for i, d in enumerate(score_dirs):
            if not store.is_uri(d) and is_published_layout(Path(d)):
                frame = read_published_scores(Path(d))
                if options.labels and frame["model"].nunique() > 1:
                    raise GlmscoreError(f"{d} holds {frame['model'].nunique()} models; --labels names one per folder, "
                                        "so pass <out>/<model> folders one by one.")
                models = [options.labels[i]] if options.labels else frame["model"].unique()
                add(frame, d, options.labels[i] if options.labels else None)
                for model in models:
                    limits[model] = None
                    noise[model] = manifest_noise(None)
                    provenance[model] = f"{d}, the published scripts' score files (seqs, scores)"
                continue
            manifest = read_manifest(d)
            models = set()
            for _, frame in read_datasets(d, columns=["model", "dataset", "group", "pair_index", "score"],
                                          what="score folder"):
                models.update(frame["model"].unique())
                add(frame, d, options.labels[i] if options.labels else None)
            models = {options.labels[i]} if options.labels else models
            data_notes.update(manifest.get("warnings", []))  # what the score job found suspicious in the input
            config = manifest.get("config", {})
            datas.add(config.get("data"))
            for model in sorted(models):
                limits[model] = config.get("limit")
                noise[model] = manifest_noise(manifest)
                provenance[model] = (f"{d}, card {manifest['model_card'].get('hf_id') or manifest['model_card']['id']}, "
                                     f"revision {manifest.get('resolved_revision')}, --limit {config.get('limit')}, "
                                     f"finished {manifest['finished']}")
        notes = sorted(data_notes)
        if len(set(limits.values())) > 1:
            notes.append("the models were scored on different --limit slices (" + ", ".join(f"{m}: {v}" for m, v in limits.items())
                         + "); their tests use different cassettes")
            warn(f"{notes[-1]}.")
        o = options
        # (model, dataset) in order, mutant types in each as paired_differences orders them (a stable sort)
        diffs = dict(sorted(diffs.items(), key=lambda kv: kv[0][:2]))
        tests = nullsette_tests(diffs, n_perm=o.n_perm, seed=o.seed, correction=o.correction, estimator=o.estimator,
                                alpha=o.alpha)
        tests = mark_within_noise(tests, {model: record.get("max_abs") for model, record in noise.items()})
        orders = mutant_orders(o.translocations, datas, tests)
        tests.insert(tests.columns.get_loc("group") + 1, "order",
                     [orders.get((d, g), "") for d, g in zip(tests["dataset"], tests["group"])])
        success = success_rates(tests)
        settings = {**{k: v for k, v in o.to_dict().items() if v is not None}, "alternative": "less (mutant < nonmutant)",
                    **({"notes": "; ".join(notes)} if notes else {})}
        report = write_nullsette_report(diffs, tests, success, Path(out), settings, provenance, noise_table(noise))
        return {"report": str(report), "table": success, "tests": tests}

    @classmethod
    def combined_tables(cls, parts: list[dict], order: list[str], out: Path, bid: str) -> list:
        return nullsette_tables(parts, order, out, bid)
