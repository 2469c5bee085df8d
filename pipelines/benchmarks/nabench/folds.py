"""Distributed CV folds for ``glmscore probe --folds FILE_OR_DIR`` (ProteinGym-style fold files).

A fold file is a CSV with a ``mutant`` column and one or more fold columns, named ``fold_*`` as
ProteinGym names them (``fold_random_5``, ``fold_modulo_5``, ``fold_contiguous_5``): each present column
is one supervised scheme, its values the fold of each row (empty/NA: the row is in no fold of that
scheme). NABench lists such folds (``cv_folds.zip``) among its downloads without naming their columns, so
the ProteinGym names are the convention here.

Matching. ``--folds`` names a folder of per-assay files, ``<folder>/<DMS_ID>.csv`` matched to the
embedding folder's ``dataset=<DMS_ID>`` by exact name (other files are ignored), or a single CSV: it
belongs to the assay of its file name (``<DMS_ID>.csv``), or to the only assay when the embeddings hold
one. Every embedded assay needs a fold file. Rows are joined by ``mutant`` (the wild type's is empty); a
mutant listed n times in an assay (repeated measurements) has its k-th row matched to its k-th row in the
fold file. Every embedded row must find its fold row; fold-file rows without an embedded row (rows left
out by ``--limit``, NaN labels, a dropped wild type) are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from glmscore.models.errors import GlmscoreError

FOLD_PREFIX = "fold_"


def occurrence(mutants) -> np.ndarray:
    """For each row, how many earlier rows carry the same mutant (0 for a first occurrence)."""
    return pd.Series(list(mutants), dtype=object).groupby(list(mutants), sort=False).cumcount().to_numpy()


def read_fold_file(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The file's ``mutant``, ``occurrence`` and numeric fold columns, and the names of those fold columns."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise GlmscoreError(f"fold file {path} is not a readable CSV ({type(exc).__name__}).") from None
    if "mutant" not in frame.columns:
        raise GlmscoreError(f"fold file {path} has no mutant column, so its rows cannot be matched to the embeddings.")
    columns = [c for c in frame.columns if c.startswith(FOLD_PREFIX)]
    if not columns:
        raise GlmscoreError(f"fold file {path} has no fold column (fold_random_5, fold_modulo_5, fold_contiguous_5 "
                            "or another fold_* column).")
    out = pd.DataFrame({"mutant": frame["mutant"].str.strip()})
    out["occurrence"] = occurrence(out["mutant"])
    kept = []
    for c in columns:
        text = frame[c].str.strip()
        missing = text.isin(["", "NA", "NaN", "nan", "None"])
        values = pd.to_numeric(text.where(~missing), errors="coerce")
        bad = values.isna() & ~missing
        if bad.any():
            raise GlmscoreError(f"fold file {path}: column {c} has {int(bad.sum())} value(s) that are not fold numbers "
                                f"(first: {text[bad].iloc[0]!r}).")
        if values.notna().any():
            out[c] = values.astype(float)
            kept.append(c)
    if not kept:
        raise GlmscoreError(f"fold file {path}: its fold columns ({', '.join(columns)}) are all empty.")
    return out, kept


def fold_files_for(folds: Path, assays: list[str]) -> dict[str, Path]:
    """The fold file of each embedded assay (see the module docstring), or one sentence saying what is missing."""
    folds = Path(folds)
    if folds.is_dir():
        found = {a: folds / f"{a}.csv" for a in assays if (folds / f"{a}.csv").is_file()}
        lacking = [a for a in assays if a not in found]
        if lacking:
            shown = ", ".join(lacking[:10]) + (f" and {len(lacking) - 10} more" if len(lacking) > 10 else "")
            raise GlmscoreError(f"--folds {folds} has no fold file for {len(lacking)} embedded assay(s): {shown} "
                                "(expected <DMS_ID>.csv in that folder).")
        return found
    if not folds.is_file():
        raise GlmscoreError(f"--folds {folds} does not exist (give a fold CSV or a folder of <DMS_ID>.csv fold files).")
    if len(assays) == 1:
        return {assays[0]: folds}
    if folds.stem in assays:
        others = [a for a in assays if a != folds.stem]
        raise GlmscoreError(f"--folds {folds} gives folds for {folds.stem} only, but the embeddings also hold "
                            f"{', '.join(others[:10])}{' and more' if len(others) > 10 else ''}; pass a folder of "
                            "<DMS_ID>.csv fold files.")
    raise GlmscoreError(f"--folds {folds} is named after no embedded assay ({', '.join(assays[:10])}"
                        f"{', ...' if len(assays) > 10 else ''}); name it <DMS_ID>.csv or pass a folder of such files.")


def join_folds(assay: str, mutants: list[str], occ: np.ndarray, path: Path) -> dict[str, np.ndarray]:
    """Per fold column, the fold label of each embedded row (rows in embedding order)."""
    table, columns = read_fold_file(path)
    index = pd.MultiIndex.from_frame(table[["mutant", "occurrence"]])
    keys = pd.MultiIndex.from_arrays([pd.Index([m.strip() for m in mutants], dtype=object), pd.Index(occ)])
    where = index.get_indexer(keys)
    missing = where < 0
    if missing.any():
        wt = any(mutants[i].strip() == "" for i in np.flatnonzero(missing))
        raise GlmscoreError(f"{int(missing.sum())} of the {len(mutants)} embedded rows of {assay} have a mutant that is "
                            f"not in fold file {path}" + (" (the wild type among them: pass --wildtype drop or add "
                                                          "its row to the file)." if wt else "."))
    return {c: table[c].to_numpy()[where] for c in columns}
