"""The NABench benchmark: fitness assays (``<DMS_ID>.csv``) and their metadata, the registered benchmark
(units = row ranges of one assay) and its zero-shot analysis.

``<data>/metadata.csv`` (one row per assay; it may list assays that have no file and miss assays that
have one) and ``<data>/<DMS_ID>.csv`` with columns ``mutant, DMS_score, sequence``. ``mutant`` is a
comma-separated list of 1-based ``<ref><pos><alt>`` changes, empty for the wild type (kept and marked
``is_wildtype``). Sequences may be DNA or RNA letters; the model card's alphabet decides the mapping.

Nucleic-acid family: ``RNA_TYPE`` case-insensitively, whitespace -> '_' (``Aptamer``/``aptamer`` ->
``aptamer``, ``Binding Site`` -> ``binding_site``); an assay without a metadata row is ``unknown``.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from glmscore.analysis.combined import ordered, plot_grid
from glmscore.analysis.fitness import (
    METRICS,
    PROTOCOLS,
    aggregate,
    breakdown,
    leaderboard,
    paired_differences,
    size_bin,
    zero_shot_table,
)
from glmscore.analysis.noise import manifest_noise, noise_table
from glmscore.analysis.report import plot_best_worst, plot_family_bars, write_table_report
from glmscore.models.errors import GlmscoreError
from glmscore.models.options import Options, comma_list, option, seed_option
from glmscore.pipelines import gunzip
from glmscore.pipelines.benchmark import REFERENCE_BLOCK, Benchmark, Rows, Unit, locator, register_benchmark
from glmscore.pipelines.benchmarks.nabench.assay_file import Span, parse, read_span, scan, scan_files
from glmscore.pipelines.shards import read_datasets, read_manifest

_MUT_RE = re.compile(r"^[A-Za-z](\d+)[A-Za-z]$")


def family_of(rna_type) -> str:
    if rna_type is None or (isinstance(rna_type, float) and np.isnan(rna_type)) or not str(rna_type).strip():
        return "unknown"
    return re.sub(r"\s+", "_", str(rna_type).strip().lower())


@dataclass(frozen=True)
class Assay:
    dms_id: str
    family: str
    path: Path
    n_rows: int
    crc: int  # of the whole file
    max_len: int = 0
    spans: tuple[Span, ...] = ()  # where each chunk of rows lies in the file (its own CRC)
    source: Path | None = None  # the file as found: ``path``, or the .gz that ``path`` is the decompressed copy of


def read_metadata(data: Path) -> dict[str, str]:
    path = Path(data) / "metadata.csv"
    if not path.exists():
        return {}
    try:
        meta = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise GlmscoreError(f"{path} is not a readable CSV ({type(exc).__name__}).") from None
    if "DMS_ID" not in meta.columns:
        raise GlmscoreError(f"{path} has no DMS_ID column.")
    types = meta["RNA_TYPE"] if "RNA_TYPE" in meta.columns else pd.Series([None] * len(meta))
    return {str(d): family_of(t) for d, t in zip(meta["DMS_ID"], types)}


def read_assay(path: Path, start: int = 0, n: int | None = None) -> pd.DataFrame:
    """Rows ``start .. start+n`` of one assay, validated (the whole file is scanned: for a job's units,
    ``NABench.read`` reads only the unit's bytes)."""
    found = scan(Path(path), chunk_rows=1 << 62, limit=None if n is None else start + n)
    if not found.spans:
        return parse(io.BytesIO(b""), Path(path), header=found.header)
    span = found.spans[0]
    return read_span(Path(path), span.offset, span.length).iloc[start:].reset_index(drop=True)


def discover(data: Path, *, assays: list[str] | None = None, families: list[str] | None = None,
             limit: int | None = None, warnings: list[str] | None = None, chunk_rows: int = 1 << 62) -> list[Assay]:
    """The assays under ``data``, each scanned (validated, split into spans of ``chunk_rows`` rows) in one
    streaming pass; what is usable but suspicious is appended to ``warnings``."""
    data = Path(data)
    if not data.is_dir():
        raise GlmscoreError(f"NABench data folder {data} does not exist.")
    meta = read_metadata(data)
    warnings = warnings if warnings is not None else []
    if not meta:
        warnings.append(f"{data / 'metadata.csv'} is missing, so every assay's family is 'unknown'.")
    # <DMS_ID>.csv, or <DMS_ID>.csv.gz (read through a copy decompressed once: pipelines/gunzip.py)
    files = {gunzip.plain_name(p)[:-len(".csv")]: p for p in sorted(data.glob("*.csv.gz"))}
    files.update({p.stem: p for p in sorted(data.glob("*.csv"))})  # a plain file beside its .gz is the one read
    for name in ("metadata", "metadata_rfam_id"):
        files.pop(name, None)
    if not files:
        raise GlmscoreError(f"no assay files (<DMS_ID>.csv or .csv.gz) in {data}.")
    if assays:
        missing = sorted(set(assays) - set(files))
        if missing:
            raise GlmscoreError(f"assay(s) {', '.join(missing)} not found in {data}.")
        files = {k: v for k, v in files.items() if k in assays}
    chosen = {dms_id: gunzip.readable(path) for dms_id, path in files.items()
              if not families or meta.get(dms_id, "unknown") in families}
    out = []
    for (dms_id, path), found in zip(chosen.items(), scan_files(list(chosen.values()), chunk_rows, limit)):
        family = meta.get(dms_id, "unknown")
        if found.n_rows == 0:
            raise GlmscoreError(f"{path.name} has no variants.")
        if found.numeric_scores == 0:
            raise GlmscoreError(f"{path.name}: no DMS_score is a number, so nothing in it can be evaluated.")
        if found.non_numeric_scores:
            warnings.append(f"{path.name}: {found.non_numeric_scores} DMS_score value(s) are not finite numbers (empty, "
                            "NaN, text or inf); those rows are scored but carry no label and count in no metric.")
        if found.duplicate_mutants:
            warnings.append(f"{path.name}: {found.duplicate_mutants} row(s) repeat an earlier row's mutant name; "
                            "each row is scored on its own (pair_index tells them apart).")
        if found.with_t and found.with_u:
            warnings.append(f"{path.name}: {found.with_t} sequence(s) have T and {found.with_u} have U: DNA and RNA "
                            "letters mixed in one assay (the model card's alphabet maps both).")
        n_rows = min(found.n_rows, limit) if limit else found.n_rows
        out.append(Assay(dms_id, family, path, n_rows, found.file_crc, found.max_len, found.spans, files[dms_id]))
    if not out:
        raise GlmscoreError(f"no assay in {data} matches the families {families}.")
    return out


def positions(mutant: str) -> list[int]:
    """1-based positions of a mutant string ('' for the wild type -> [])."""
    if not mutant:
        return []
    out = []
    for m in mutant.split(","):
        hit = _MUT_RE.match(m.strip())
        if not hit:
            raise GlmscoreError(f"mutation {m!r} is not <ref><pos><alt>.")
        out.append(int(hit.group(1)))
    return out


# ---------------------------------------------------------------- the registered benchmark


def family_list(text: str) -> list[str]:
    return [family_of(f) for f in comma_list(text)]


@dataclass(frozen=True)
class NABenchOptions(Options):
    assays: list[str] | None = option(None, parse=comma_list, affects_result=False,
                                      help="NABench: comma-separated DMS_IDs (default: all)")
    families: list[str] | None = option(None, parse=family_list, affects_result=False,
                                        help="NABench: comma-separated families (case-insensitive RNA_TYPE)")


@dataclass(frozen=True)
class NABenchAnalyzeOptions(Options):
    cutoff: float | None = option(None, help="binarise fitness (label > cutoff) at this value for every assay, instead of "
                                             "each assay's --cutoff-column value or median")
    cutoff_column: str = option("DMS_binarization_cutoff", help="metadata.csv column with a per-assay binarisation "
                                "cutoff (ProteinGym's name); assays without a value use their median")
    protocol: str = option("tie-aware", choices=list(PROTOCOLS),
                           help="tie-aware: NDCG and top-10%% recall as exact expectations over the orders of tied "
                                "scores (row order changes nothing); paper: ProteinGym's reference code as written")
    missing: str = option("error", choices=["error", "drop"],
                          help="labelled rows a model left unscored (NaN): error (name them), or drop (metrics on "
                               "the rows it scored; counted in the tables)")
    level: str = option("assay", choices=["assay", "construct"],
                        help="average within each family over assays, or first within each construct "
                             "(RAW_CONSTRUCT_SEQ, like ProteinGym's UniProt target) and then over constructs")
    include: list[str] | None = option(None, parse=comma_list,
                                       help="assays to keep in the family means although they duplicate another "
                                            "assay's content or have no metadata row")
    labels: list[str] | None = option(None, parse=comma_list, help="comma-separated names for the --scores folders, in order "
                                                                  "(one model twice, e.g. two runs to compare)")
    n_boot: int = option(1000, minimum=1, help="bootstrap resamples of assays within each family")
    seed: int = seed_option("bootstrap seed")
    data: str | None = option(None, affects_result=False,
                              help="NABench data folder whose metadata.csv gives each assay's construct, granular type "
                                   "and cutoff column (default: the folder the scores were made from, if it is there)")


def assay_annotations(data: Path, cutoff_column: str) -> pd.DataFrame:
    """Per assay from metadata.csv: ``construct`` (RAW_CONSTRUCT_SEQ), ``granular`` (RNA_TYPE_GRANULAR) and
    ``cutoff`` (``cutoff_column``, a number or NaN); an empty frame when there is no metadata.csv."""
    path = Path(data) / "metadata.csv"
    if not path.exists():
        return pd.DataFrame(columns=["assay", "construct", "granular", "cutoff"])
    read_metadata(data)  # its checks and sentences
    meta = pd.read_csv(path, dtype=str)
    column = lambda name: meta[name] if name in meta.columns else pd.Series([None] * len(meta))  # noqa: E731
    return pd.DataFrame({"assay": meta["DMS_ID"].astype(str), "construct": column("RAW_CONSTRUCT_SEQ"),
                         "granular": column("RNA_TYPE_GRANULAR").map(lambda t: t.strip() if isinstance(t, str) else t),
                         "cutoff": pd.to_numeric(column(cutoff_column), errors="coerce")}).drop_duplicates("assay")


def content_digest(frame: pd.DataFrame) -> str:
    """One assay's variants and labels in file order: equal digests = the same assay under two names."""
    ordered_ = frame.sort_values("pair_index", kind="stable")
    hashed = pd.util.hash_pandas_object(ordered_[["mutant", "label"]].reset_index(drop=True), index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()


def headline_exclusions(digests: dict[str, str], families: dict[str, str], include: list[str]) -> tuple[dict[str, str], list[str]]:
    """Assays left out of the family means ({assay: why}) and a warning for each: a file without a metadata
    row (family 'unknown') and every copy but one of identical content, unless the user named it."""
    out, notes = {}, []
    by_digest: dict[str, list[str]] = {}
    for assay, digest in digests.items():
        by_digest.setdefault(digest, []).append(assay)
    for same in by_digest.values():
        if len(same) > 1:
            keep, *copies = sorted(same, key=lambda a: (families[a] == "unknown", a))
            for c in copies:
                if c not in include:
                    out[c] = f"same variants and labels as {keep}"
            notes.append(f"assays {', '.join(sorted(same))} have identical variants and labels; only {keep} counts in "
                         "the family means (name another with --include to keep it).")
    listed = any(f != "unknown" for f in families.values())  # without any metadata, nothing is "unlisted"
    for assay, family in families.items():
        if listed and family == "unknown" and assay not in include and assay not in out:
            out[assay] = "no metadata.csv row (family unknown)"
            notes.append(f"assay {assay} has no metadata.csv row, so no family: it is left out of the family means "
                         "(name it with --include to keep it as family 'unknown').")
    return out, notes


def data_notes(assays: pd.DataFrame, depth_rows: pd.DataFrame) -> list[str]:
    """What the per-assay table hides: unlabelled and unscored rows, assays too small for a metric."""
    notes = []
    first = assays.drop_duplicates("assay")
    for _, r in first[first["n_unlabelled"] > 0].iterrows():
        notes.append(f"assay {r['assay']}: {r['n_unlabelled']} row(s) have a DMS_score that is not a finite number "
                     "(empty, NaN, text or inf); they are left out of every metric.")
    for _, r in assays[assays["n_missing"] > 0].iterrows():
        notes.append(f"assay {r['assay']}: model {r['model']} left {r['n_missing']} labelled row(s) unscored; "
                     "--missing drop computed its metrics without them.")
    for _, r in first[first["too_small"].notna()].iterrows():
        notes.append(f"assay {r['assay']} has no metrics: {r['too_small']}.")
    return notes


def best_and_worst_rows(score_dirs: list[str], models: dict[str, str], assays: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The rows of each model's best and worst assay by Spearman (what the scatter plots draw), read
    back from the score folders: two assays per model, not the whole release."""
    picks: dict[str, set[str]] = {}
    for model, a in assays.dropna(subset=["spearman"]).groupby("model"):
        picks[model] = {a.loc[a["spearman"].idxmax(), "assay"], a.loc[a["spearman"].idxmin(), "assay"]}
    frames = [f.assign(model=models[d]) for d in score_dirs if models.get(d) in picks  # one model per folder
              for _, f in read_datasets(d, columns, what="NABench score folder", datasets=sorted(picks[models[d]]))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def nabench_tables(parts: list[dict], order: list[str], out: Path, bid: str) -> list[tuple[str, pd.DataFrame, list[Path]]]:
    """Zero-shot Spearman per assay (``nabench_assays.csv``), models x assays, and the summary table."""
    assays, summary = [], []
    for p in parts:
        a = pd.read_csv(Path(p["dir"]) / "nabench_assays.csv")
        assays.append(a.assign(model=a["model"].map(p["names"]).fillna(a["model"])))
        s = p["result"]["table"]
        summary.append(s.assign(model=s["model"].map(p["names"]).fillna(s["model"])))
    grid = ordered(pd.concat(assays, ignore_index=True).pivot(index="model", columns="assay", values="spearman"), order)
    grid.columns.name = None
    summary_ = pd.concat(summary, ignore_index=True).set_index("model")
    summary_ = summary_.reindex([m for m in order if m in summary_.index]).reset_index()
    csv, sum_csv = out / f"{bid}_spearman.csv", out / f"{bid}_summary.csv"
    grid.reset_index().to_csv(csv, index=False)
    summary_.to_csv(sum_csv, index=False)
    png = plot_grid(grid, out / f"{bid}_spearman_heatmap.png", f"{bid}: NABench zero-shot Spearman", "Spearman", -1, 1, "coolwarm")
    return [(f"{bid}: NABench summary (unweighted mean over families, bootstrap SEs)", summary_, [sum_csv]),
            (f"{bid}: NABench zero-shot Spearman, models x assays", grid.reset_index(), [csv, png])]


@register_benchmark("nabench")
class NABench(Benchmark):
    """Rows are an assay's variants in file order (``pair_index`` = row number); group = family."""
    data_help = "NABench: metadata.csv + <DMS_ID>.csv (mutant, DMS_score, sequence)"
    extra_columns = {"label": pa.float64(), "mutant": pa.string(), "is_wildtype": pa.bool_()}
    Options = NABenchOptions
    AnalyzeOptions = NABenchAnalyzeOptions

    def units(self, *, chunk_rows, limit, datasets) -> list[Unit]:
        wanted = sorted(set(self.options.assays or []) | set(datasets or [])) or None
        units = []
        for a in discover(Path(self.data), assays=wanted, families=self.options.families, limit=limit,
                          warnings=self.warnings, chunk_rows=chunk_rows):
            file = gunzip.where(a.path, a.source)  # a worker without the driver's copy of a .gz makes its own
            for i, s in enumerate(a.spans):
                # each unit's CRC covers its own bytes: an edited row recomputes only its unit
                units.append(Unit(a.dms_id, a.family, i, s.n_rows, s.first_row, s.crc, a.max_len,
                                  locator(**file, offset=s.offset, length=s.length)))
        return units

    def read(self, unit: Unit) -> Rows:
        where = unit.where()
        path = gunzip.unit_file(where)
        frame = read_span(path, where["offset"], where["length"], unit.crc)
        if len(frame) != unit.n_rows:
            raise GlmscoreError(f"{path} changed while the job ran; rerun to rescan it.")
        names = frame["mutant"].tolist()
        pair_index = np.arange(unit.first_row, unit.first_row + len(frame), dtype=np.int32)
        return Rows([f"{unit.dataset}/{i}" for i in pair_index], names, frame["sequence"].tolist(), pair_index,
                    {"label": frame["DMS_score"].tolist(), "mutant": names, "is_wildtype": [m == "" for m in names]})

    def reference_sequences(self, units: list[Unit], dataset: str) -> Iterator[list[str]]:
        """Every variant of the assay (sequences only: labels are never read for fitting), span by span,
        not only the --limit slice the units cover."""
        path = gunzip.unit_file(next(u for u in units if u.dataset == dataset).where())
        for s in scan(path, chunk_rows=REFERENCE_BLOCK).spans:
            yield read_span(path, s.offset, s.length, s.crc)["sequence"].tolist()

    @classmethod
    def analyze(cls, score_dirs: list[str], out: str, options: NABenchAnalyzeOptions) -> dict:
        if not score_dirs:
            raise GlmscoreError("pass --scores with one or more score folders.")
        if options.labels and len(options.labels) != len(score_dirs):
            raise GlmscoreError(f"--labels names {len(options.labels)} folder(s) but --scores has {len(score_dirs)}.")
        manifests = {d: read_manifest(d) for d in score_dirs}
        notes = sorted({w for m in manifests.values() for w in m.get("warnings", [])})
        annotations, meta_note = cls._annotations(options, manifests)
        if meta_note:
            notes.append(meta_note)
        if options.level == "construct" and annotations["construct"].isna().all():
            raise GlmscoreError("--level construct needs metadata.csv with a RAW_CONSTRUCT_SEQ column: pass --data with "
                                "the NABench data folder.")
        cutoffs = options.cutoff if options.cutoff is not None else annotations.set_index("assay")["cutoff"].dropna().to_dict()
        # One assay in memory at a time (its shards cut to these columns): per-assay metrics need nothing
        # else, and a SELEX-scale release does not fit in one frame. The scatter plots re-read two assays.
        columns = ["model", "dataset", "group", "label", "score"]
        per_assay, models, labelled, seen, digests, families = [], {}, False, {}, {}, {}
        for i, d in enumerate(score_dirs):
            for assay, frame in read_datasets(d, columns + ["pair_index", "mutant"], what="NABench score folder"):
                if options.labels:
                    frame = frame.assign(model=options.labels[i])
                labelled = labelled or bool(frame["label"].notna().any())
                models.setdefault(d, frame["model"].iloc[0])
                for model in frame["model"].unique():
                    if (model, assay) in seen:  # a rerun or a second folder of one model: each assay would count twice
                        raise GlmscoreError(f"the score folders overlap: model {model} scored assay {assay} twice (in "
                                            f"{seen[model, assay]} and {d}); pass each model once or name them apart "
                                            "with --labels.")
                    seen[model, assay] = d
                if assay not in digests:
                    digests[assay] = content_digest(frame[frame["model"] == frame["model"].iloc[0]])
                    families[assay] = str(frame["group"].iloc[0])
                per_assay.append(zero_shot_table(frame, cutoffs, options.protocol, options.missing, by_depth=True))
        if not labelled:
            raise GlmscoreError("the score folders hold no NABench labels; score with --benchmark nabench.")
        unknown = sorted(set(options.include or []) - set(digests))
        if unknown:
            raise GlmscoreError(f"--include names assay(s) {', '.join(unknown)} that no score folder holds.")
        excluded, exclusion_notes = headline_exclusions(digests, families, options.include or [])
        inputs = pd.DataFrame([{"model": models.get(d), "folder": d, "card": m["model_card"].get("hf_id") or m["model_card"]["id"],
                                "revision": m.get("resolved_revision"), "limit": m.get("config", {}).get("limit"),
                                "finished": m.get("finished")} for d, m in manifests.items()])
        table = pd.concat(per_assay, ignore_index=True)
        table = table.merge(annotations[["assay", "construct", "granular"]], on="assay", how="left")
        depth_rows = table[table["depth"].notna()]
        assays = (table[table["depth"].isna()].drop(columns=["depth"])
                  .sort_values(["model", "assay", "family"], kind="stable").reset_index(drop=True))
        assays["in_headline"] = ~assays["assay"].isin(list(excluded))
        assays["size"] = assays["n_rows"].map(size_bin)
        notes += exclusion_notes + data_notes(assays, depth_rows)
        counted = assays[assays["in_headline"]]
        level = "construct" if options.level == "construct" else None
        fams, summary = aggregate(counted, n_boot=options.n_boot, seed=options.seed, level=level)
        noise = {models[d]: manifest_noise(m) for d, m in manifests.items() if d in models}
        summary["noise_floor"] = summary["model"].map({model: r.get("max_abs") for model, r in noise.items()}).astype(float)
        pairs = paired_differences(counted, "spearman", n_boot=options.n_boot, seed=options.seed, level=level)
        depth = breakdown(depth_rows[depth_rows["assay"].isin(counted["assay"])], "depth")
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        assays.to_csv(out_dir / "nabench_assays.csv", index=False)
        fams.to_csv(out_dir / "nabench_families.csv", index=False)
        summary.to_csv(out_dir / "nabench_summary.csv", index=False)
        pairs.to_csv(out_dir / "nabench_pairwise.csv", index=False)
        depth_rows.drop(columns=["too_small"], errors="ignore").to_csv(out_dir / "nabench_depth_assays.csv", index=False)
        breakdowns = {"depth": depth, "granular": breakdown(counted, "granular"), "size": breakdown(counted, "size")}
        for name, frame in breakdowns.items():
            frame.to_csv(out_dir / f"nabench_by_{name}.csv", index=False)
        boards = {}
        for metric in METRICS:
            depth_m = breakdown(depth_rows[depth_rows["assay"].isin(counted["assay"])], "depth", metric)
            pairs_m = pairs if metric == "spearman" else paired_differences(counted, metric, n_boot=options.n_boot,
                                                                            seed=options.seed, level=level)
            boards[metric] = leaderboard(summary, fams, pairs_m, depth_m, metric)
            name = boards[metric].columns[1].removeprefix("Average_")
            boards[metric].to_csv(out_dir / f"nabench_leaderboard_{name}.csv")
        plots = [plot_family_bars(fams, out_dir)] + plot_best_worst(
            best_and_worst_rows(score_dirs, models, assays, columns), assays, out_dir)
        levels = ("constructs (RAW_CONSTRUCT_SEQ) within each family, then families" if level
                  else "assays within each family, then families")
        report = write_table_report(
            "NABench zero-shot report",
            {"Leaderboard (Spearman; SE = paired bootstrap SE of the difference from the top model)":
                 boards["spearman"].reset_index(),
             "Summary (unweighted mean over families; *_se = each model's own bootstrap SE)": summary,
             "Model vs model (Spearman: difference, paired bootstrap SE, 95% interval)": pairs,
             "Spearman by mutation depth (mean over assays)": depth,
             "Spearman by RNA_TYPE_GRANULAR": breakdowns["granular"],
             "Spearman by assay size (rows)": breakdowns["size"],
             "Families": fams, "Assays": assays.drop(columns=["construct"]),
             "Data notes": pd.DataFrame({"note": notes or ["none"]}),
             "Backend noise floor (run-to-run |score difference| per row; a score difference within it is not a "
             "result, and variants whose scores lie closer than it are ties)": noise_table(noise),
             "Provenance": inputs},
            plots, out_dir,
            {"metrics": "Spearman, AUC and MCC (label > cutoff; score >= its median), NDCG@10%, top-10% recall",
             "protocol": options.protocol, "headline": f"unweighted mean over families of the mean over {levels}",
             "cutoff": options.cutoff if options.cutoff is not None else f"{options.cutoff_column} column, else median",
             "missing": options.missing, "bootstrap": options.n_boot, "seed": options.seed,
             "left out of the means": ", ".join(sorted(excluded)) or "none"})
        return {"report": str(report), "table": summary}

    @staticmethod
    def _annotations(options: NABenchAnalyzeOptions, manifests: dict) -> tuple[pd.DataFrame, str | None]:
        """metadata.csv of --data, else of the folder the scores were made from when it is still there."""
        if options.data:
            if not Path(options.data).is_dir():
                raise GlmscoreError(f"--data {options.data} is not a folder.")
            return assay_annotations(Path(options.data), options.cutoff_column), None
        for m in manifests.values():
            data = m.get("config", {}).get("data")
            if data and not str(data).startswith(("s3://", "gs://")) and (Path(data) / "metadata.csv").exists():
                return assay_annotations(Path(data), options.cutoff_column), None
        return (pd.DataFrame(columns=["assay", "construct", "granular", "cutoff"]),
                "no metadata.csv found (pass --data): no construct level, granular-type table or per-assay cutoffs.")

    @classmethod
    def combined_tables(cls, parts: list[dict], order: list[str], out: Path, bid: str) -> list:
        return nabench_tables(parts, order, out, bid)
