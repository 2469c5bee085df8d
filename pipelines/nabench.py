"""The NABench benchmark: fitness assays (``<DMS_ID>.csv``) and their metadata.

``<data>/metadata.csv`` (one row per assay; it may list assays that have no file and miss assays that
have one) and ``<data>/<DMS_ID>.csv`` with columns ``mutant, DMS_score, sequence``. ``mutant`` is a
comma-separated list of 1-based ``<ref><pos><alt>`` changes, empty for the wild type (kept and marked
``is_wildtype``). Sequences may be DNA or RNA letters; the model card's alphabet decides the mapping.

Nucleic-acid family: ``RNA_TYPE`` case-insensitively, whitespace -> '_' (``Aptamer``/``aptamer`` ->
``aptamer``, ``Binding Site`` -> ``binding_site``); an assay without a metadata row is ``unknown``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.errors import GlmscoreError

COLUMNS = ["mutant", "DMS_score", "sequence"]
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
    crc: int
    max_len: int = 0


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
    """Rows ``start .. start+n`` of one assay, validated."""
    try:
        frame = pd.read_csv(path, dtype={"mutant": str, "sequence": str}, keep_default_na=False,
                            na_values={"DMS_score": ["", "NA", "NaN", "nan"]},
                            skiprows=range(1, start + 1) if start else None, nrows=n)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise GlmscoreError(f"{path.name} is not a readable assay CSV ({str(exc).splitlines()[0]}).") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise GlmscoreError(f"{path.name} lacks column(s) {', '.join(missing)}: an assay needs mutant, DMS_score, sequence.")
    if frame["sequence"].eq("").any():
        row = int(frame.index[frame["sequence"].eq("")][0]) + start + 2
        raise GlmscoreError(f"{path.name}: line {row} has an empty sequence.")
    bad = ~frame["sequence"].str.fullmatch(r"[A-Za-z]+")
    if bad.any():
        raise GlmscoreError(f"{path.name}: line {int(frame.index[bad][0]) + start + 2} has characters that are not sequence letters.")
    frame["DMS_score"] = pd.to_numeric(frame["DMS_score"], errors="coerce").astype(np.float64)
    return frame


def discover(data: Path, *, assays: list[str] | None = None, families: list[str] | None = None,
             limit: int | None = None) -> list[Assay]:
    data = Path(data)
    if not data.is_dir():
        raise GlmscoreError(f"NABench data folder {data} does not exist.")
    meta = read_metadata(data)
    files = {p.stem: p for p in sorted(data.glob("*.csv")) if p.name not in ("metadata.csv", "metadata_rfam_id.csv")}
    if not files:
        raise GlmscoreError(f"no assay files (<DMS_ID>.csv) in {data}.")
    if assays:
        missing = sorted(set(assays) - set(files))
        if missing:
            raise GlmscoreError(f"assay(s) {', '.join(missing)} not found in {data}.")
        files = {k: v for k, v in files.items() if k in assays}
    out = []
    for dms_id, path in files.items():
        family = meta.get(dms_id, "unknown")
        if families and family not in families:
            continue
        raw = path.read_bytes()
        header = raw.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(",")
        if header[:3] != COLUMNS:
            raise GlmscoreError(f"{path.name}: the header must start with mutant,DMS_score,sequence.")
        frame = read_assay(path)  # validates every row once
        if len(frame) == 0:
            raise GlmscoreError(f"{path.name} has no variants.")
        n_rows = min(len(frame), limit) if limit else len(frame)
        out.append(Assay(dms_id, family, path, n_rows, zlib.crc32(raw), int(frame["sequence"].str.len().max())))
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
