"""The combined report of a sweep: each benchmark's own analysis tables set side by side for all models,
heatmaps of them, and every run's provenance. Nothing here recomputes a statistic: the inputs are the
tables that each benchmark's ``analyze`` returned or wrote (``pipelines/sweep.py`` runs them); each
benchmark turns its own into sections (``Benchmark.combined_tables``), with ``plot_grid`` and ``ordered``
from here; ``generic_tables`` is the default.

A *part* is one ``analyze`` call: ``{"result": what analyze returned, "dir": its output folder,
"names": {model value in its tables: the sweep's model name}}``. A benchmark whose analysis takes
``--labels`` (Nullsette) is analysed in one part with the sweep's names as labels; the others tell
models apart by card id, so models sharing a card id go to separate parts and are renamed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from glmscore.analysis.report import _pyplot, _save, md_table, write_report


def plot_grid(grid: pd.DataFrame, path: Path, title: str, label: str, vmin: float, vmax: float, cmap: str) -> Path:
    """A models x columns heatmap with each value written in its cell (NaN cells left blank)."""
    plt = _pyplot()
    values = grid.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(min(0.9 * grid.shape[1] + 3.5, 30), 0.55 * grid.shape[0] + 2.2))
    im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
    if grid.shape[1] <= 40:
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                v = values[i, j]
                if not np.isnan(v):
                    light = (v - vmin) / (vmax - vmin) < 0.6 if cmap == "viridis" else abs(v) > 0.6 * max(abs(vmin), abs(vmax))
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if light else "black")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title)
    return _save(fig, path)


def ordered(grid: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    return grid.reindex([m for m in order if m in grid.index])


def generic_tables(parts: list[dict], order: list[str], out: Path, bid: str) -> list[tuple[str, pd.DataFrame, list[Path]]]:
    """A benchmark without a combiner: the table its analysis returned, as it is."""
    table = pd.concat([p["result"]["table"] for p in parts], ignore_index=True)
    csv = out / f"{bid}_table.csv"
    table.to_csv(csv, index=False)
    return [(f"{bid}: analysis table", table, [csv])]


def provenance_table(entries: list[tuple[str, str, dict]]) -> pd.DataFrame:
    """One row per finished run from its ``_manifest.json``: (model name, benchmark id, manifest)."""
    rows = []
    for model, bench, m in entries:
        card, config = m.get("model_card", {}), m.get("config", {})
        glm = m.get("glmscore") or {}
        rows.append({
            "model": model, "benchmark": bench, "card": card.get("id"), "weights_from": card.get("hf_id") or card.get("id"),
            "backend": card.get("backend"), "revision": m.get("resolved_revision"), "fingerprint": config.get("fingerprint"),
            "weights_digest": m.get("weights"), "device": m.get("device"), "dtype": m.get("dtype"),
            "token_limit": m.get("token_limit"), "limit": config.get("limit"),
            "glmscore": f"{glm.get('version')} ({glm.get('git_commit')})",
            "packages": ", ".join(f"{k} {v}" for k, v in sorted((m.get("packages") or {}).items())),
            "rows": m.get("rows_total"), "finished": m.get("finished"), "folder": config.get("out"),
        })
    return pd.DataFrame(rows)


def _blank(table: pd.DataFrame) -> pd.DataFrame:
    """Missing values as empty cells (a k-mer baseline has no weights digest, a local model no revision)."""
    return table.astype(object).where(table.notna(), "")


def write_combined_report(out: Path, sections: list[tuple[str, pd.DataFrame, list[Path]]], provenance: pd.DataFrame,
                          runs: pd.DataFrame, notes: list[str], analyses: dict[str, list[str]]) -> Path:
    """``report.md`` with the runs, every section's table (and plot), the per-benchmark reports and provenance."""
    out.mkdir(parents=True, exist_ok=True)
    provenance.to_csv(out / "provenance.csv", index=False)
    failed = runs[runs["status"] != "ok"]
    lines = ["# Sweep report", "", f"{len(runs)} runs: {len(runs) - len(failed)} finished, {len(failed)} failed.", ""]
    if len(failed):
        lines += ["## Failed runs", "", md_table(failed[["model", "benchmark", "error"]], index=False), ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    for title, table, files in sections:
        lines += [f"## {title}", "", md_table(table, index=False, floatfmt=".4g"), ""]
        for f in files:
            lines.append(f"![{f.stem}]({f.name})" if f.suffix == ".png" else f"Table: [{f.name}]({f.name})")
        lines.append("")
    if analyses:
        lines += ["## Each benchmark's own report (its `glmscore analyze` output)", ""]
        for bid, reports in analyses.items():
            lines += [f"- {bid}: " + ", ".join(f"[{Path(r).relative_to(out)}]({Path(r).relative_to(out)})" for r in reports)]
        lines.append("")
    lines += ["## Provenance (each run's _manifest.json)", "",
              md_table(_blank(provenance.drop(columns=["packages", "folder"], errors="ignore")), index=False), "",
              "Packages: " + "; ".join(sorted(set(provenance.get("packages", pd.Series(dtype=str)).dropna()))), "",
              "Table: [provenance.csv](provenance.csv)", ""]
    return write_report(lines, out)
