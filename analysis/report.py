"""Reports: CSV tables, PNG plots, a Markdown summary (``report.md``) and the same report as one
self-contained HTML file (``report.html``: tables, plots inlined, provenance) to mail or attach."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown
import numpy as np
import pandas as pd

from glmscore.analysis.noise import NOISE_NOTE


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _pyplot():
    import matplotlib  # in here: matplotlib loads only when a plot is drawn

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


# The Markdown characters that can make text from inputs (assay file names, FASTA headers, model ids, gene names)
# into markup: a link or image ([ ] !), a table column (|), code (`), and the escape itself; escaped, so a name is
# never a link, an image or a column. A newline would end a table row; < and > become entities (no raw HTML).
_MD_SPECIAL = re.compile(r"([\\`\[\]!|])")


def md_text(value) -> str:
    """``value`` as literal Markdown text (and safe as HTML): special characters escaped, ``<``/``>`` as entities,
    line breaks as spaces."""
    text = re.sub(r"[\r\n\t]+", " ", str(value))
    return _MD_SPECIAL.sub(r"\\\1", text).replace("<", "&lt;").replace(">", "&gt;")


def md_table(frame: pd.DataFrame, **kwargs) -> str:
    """``frame.to_markdown`` with every text cell and column name escaped (``md_text``); numbers as they are."""
    shown = frame.copy()
    for column in shown.columns:
        if shown[column].dtype == object or pd.api.types.is_string_dtype(shown[column]):
            shown[column] = [v if v is None or (isinstance(v, float) and np.isnan(v)) else md_text(v) for v in shown[column]]
    shown.columns = [md_text(c) for c in shown.columns]
    return shown.to_markdown(**kwargs)


def write_report(lines: list[str], out: Path) -> Path:
    """``report.md`` and ``report.html`` beside it; returns the Markdown file's path."""
    text = "\n".join(lines) + "\n"
    path = out / "report.md"
    path.write_text(text)
    write_html(text, out / "report.html")
    return path


# The page may show its own inline style and inline PNGs, and nothing else: no script, no remote image or font,
# no frame, no form; a link that got past the sanitiser still cannot run code.
HTML_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
HTML_STYLE = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}"
              "table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}th,td{border:1px solid #ccc;padding:.25rem .5rem}"
              "th{background:#f3f3f3}td{text-align:right}img{max-width:100%}code{background:#f3f3f3;padding:0 .2rem}")


def write_html(markdown_text: str, path: Path) -> Path:
    """The Markdown report as one HTML file: PNGs beside it are inlined as data URIs, links to other
    reports' ``report.md`` point at their ``report.html``. Text from inputs (model names, paths) is
    escaped first, so nothing in them becomes markup."""
    body = markdown.markdown(markdown_text.replace("<", "&lt;").replace(">", "&gt;"),
                             extensions=["tables"], output_format="html")

    def inline(m: re.Match) -> str:
        image = path.parent / html.unescape(m.group(1))
        if image.suffix != ".png" or not image.is_file() or image.parent != path.parent:
            return m.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()}"'

    body = re.sub(r'src="([^"]+)"', inline, body)
    body = re.sub(r'href="([^"]*)report\.md"', r'href="\1report.html"', body)
    body = sanitise_html(body)
    title = html.escape(markdown_text.split("\n", 1)[0].lstrip("# ").strip())
    path.write_text(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                    f'<meta http-equiv="Content-Security-Policy" content="{HTML_POLICY}"><title>{title}</title>'
                    f"<style>{HTML_STYLE}</style></head><body>\n{body}\n</body></html>\n")
    return path


ALLOWED_TAGS = {"h1", "h2", "h3", "h4", "p", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "code", "pre",
                "em", "strong", "a", "img", "br", "hr", "blockquote"}


def sanitise_html(body: str) -> str:
    """An allow-list over the rendered report: only ``ALLOWED_TAGS``, no attribute but a relative ``href`` (another
    file of the report), a ``src`` that is an inlined PNG (``data:image/png;base64,``), ``alt`` and ``style``
    alignment the table extension writes; anything else is dropped (an image from a remote host, a ``javascript:``
    link, an event handler), its text kept."""
    def tag(m: re.Match) -> str:
        closing, name, attrs = m.group(1), m.group(2).lower(), m.group(3) or ""
        if name not in ALLOWED_TAGS:
            return ""
        if closing:
            return f"</{name}>"
        kept = []
        for key, value in re.findall(r'([a-zA-Z-]+)="([^"]*)"', attrs):
            key = key.lower()
            if key == "href" and not re.match(r"^\s*([a-zA-Z][a-zA-Z0-9+.-]*:|//)", html.unescape(value)):
                kept.append(f'href="{value}"')
            elif key == "src" and value.startswith("data:image/png;base64,"):
                kept.append(f'src="{value}"')
            elif key == "alt" or (key == "style" and re.fullmatch(r"text-align: ?(left|right|center);?", value)):
                kept.append(f'{key}="{value}"')
        if name == "img" and not any(k.startswith("src=") for k in kept):
            alt = next((v for k, v in re.findall(r'([a-zA-Z-]+)="([^"]*)"', attrs) if k.lower() == "alt"), "")
            return f"[image: {alt}]"
        return f"<{name}{''.join(' ' + k for k in kept)}>"

    return re.sub(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)([^>]*)>", tag, body)


def type_labels(groups: list[str], significant: set[str]) -> list[str]:
    """Box-plot tick labels: the mutant type's number, starred when it is significant."""
    return [g.replace("mutant_translocation", "") + ("*" if g in significant else "") for g in groups]


def plot_differences(diffs: dict[tuple[str, str, str], np.ndarray], out: Path, tests: pd.DataFrame | None = None) -> list[Path]:
    """One PNG per (model, dataset): paired score differences (mutant - nonmutant, ``paired_differences``)
    by mutant type; types significant in ``tests`` are starred and drawn in colour."""
    plt = _pyplot()

    by_md: dict[tuple[str, str], list[tuple[str, np.ndarray]]] = {}
    for (model, dataset, group), d in diffs.items():
        by_md.setdefault((model, dataset), []).append((group, d[~np.isnan(d)]))
    paths = []
    for (model, dataset), items in by_md.items():
        significant = set()
        if tests is not None:
            hit = tests[(tests["model"] == model) & (tests["dataset"] == dataset) & tests["significant"]]
            significant = set(hit["group"])
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(items) + 2), 4))
        boxes = ax.boxplot([d for _, d in items], showfliers=False, patch_artist=True)
        for box, (g, _) in zip(boxes["boxes"], items):
            box.set_facecolor("tab:orange" if g in significant else "white")
        ax.set_xticks(range(1, len(items) + 1), type_labels([g for g, _ in items], significant))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("mutant type (translocation k; * and orange: significant after correction)")
        ax.set_ylabel("score(mutant) - score(nonmutant)")
        ax.set_title(f"{model} on {dataset}")
        paths.append(_save(fig, out / f"differences_{_safe(model)}_{_safe(dataset)}.png"))
    return paths


def plot_success_heatmap(success: pd.DataFrame, out: Path) -> Path | None:
    """Model x dataset success-rate heatmap (drawn when several models are present)."""
    if success["model"].nunique() < 2:
        return None
    plt = _pyplot()

    grid = success.pivot(index="model", columns="dataset", values="success_rate")
    fig, ax = plt.subplots(figsize=(1.4 * grid.shape[1] + 3, 0.6 * grid.shape[0] + 2))
    im = ax.imshow(grid.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid.iat[i, j]
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="success rate")
    ax.set_title("Nullsette success rate")
    return _save(fig, out / "success_heatmap.png")


def write_nullsette_report(diffs: dict[tuple[str, str, str], np.ndarray], tests: pd.DataFrame, success: pd.DataFrame,
                           out: Path, settings: dict, provenance: dict, noise: pd.DataFrame | None = None) -> Path:
    """``noise``: each model's backend noise floor (``analysis.noise.noise_table``); tests within it carry the
    verdict ``within backend noise: not a result`` (``mark_within_noise``)."""
    out.mkdir(parents=True, exist_ok=True)
    tests.to_csv(out / "nullsette_tests.csv", index=False)
    success.to_csv(out / "nullsette_success.csv", index=False)
    plots = plot_differences(diffs, out, tests)
    heat = plot_success_heatmap(success, out)
    lines = ["# Nullsette report", ""]
    lines.append("Settings: " + md_text(", ".join(f"{k}={v}" for k, v in settings.items())))
    lines += ["", "## Success rate (fraction of mutant types with corrected p < alpha)", "",
              md_table(success, index=False, floatfmt=".3g"), ""]
    if noise is not None:
        lines += noise_section(noise)
    for (model, dataset), frame in tests.groupby(["model", "dataset"], sort=True):
        lines += [f"## {md_text(model)} on {md_text(dataset)}", "",
                  md_table(frame.drop(columns=["model", "dataset"]), index=False, floatfmt=".4g"), ""]
    lines += ["## Plots", ""]
    if heat:
        lines.append(f"![success heatmap]({heat.name})")
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Provenance", ""]
    for name, info in provenance.items():
        lines.append(f"- {md_text(name)}: {md_text(info)}")
    return write_report(lines, out)


def noise_section(noise: pd.DataFrame) -> list[str]:
    """The report's ``Backend noise floor`` section: what it means, then one row per model."""
    return ["## Backend noise floor (run-to-run |score difference| per row)", "", md_text(NOISE_NOTE), "",
            md_table(noise, index=False, floatfmt=".3g"), ""]


def plot_family_bars(families: pd.DataFrame, out: Path, metric: str = "spearman") -> Path:
    """Per-family metric bars with bootstrap standard errors, models side by side."""
    plt = _pyplot()

    models = sorted(families["model"].unique())
    fams = sorted(families["family"].unique())
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(fams) + 2), 4))
    for i, m in enumerate(models):
        f = families[families["model"] == m].set_index("family").reindex(fams)
        ax.bar(np.arange(len(fams)) + i * width, f[metric], width, yerr=f[f"{metric}_se"], capsize=3, label=m)
    ax.set_xticks(np.arange(len(fams)) + 0.4 - width / 2, fams, rotation=30, ha="right")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel(f"{metric} (mean over assays, ± bootstrap SE)")
    ax.legend(fontsize=8)
    return _save(fig, out / f"families_{metric}.png")


def plot_best_worst(scores: pd.DataFrame, assays: pd.DataFrame, out: Path) -> list[Path]:
    """Score-vs-fitness scatter for each model's best and worst assay by Spearman."""
    plt = _pyplot()

    paths = []
    for model, a in assays.dropna(subset=["spearman"]).groupby("model"):
        picks = [a.loc[a["spearman"].idxmax()], a.loc[a["spearman"].idxmin()]]
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        for ax, row, tag in zip(axes, picks, ("best", "worst")):
            g = scores[(scores["model"] == model) & (scores["dataset"] == row["assay"])]
            ax.scatter(g["score"], g["label"], s=3, alpha=0.4)
            ax.set_title(f"{tag}: {row['assay']}\nSpearman {row['spearman']:.3f}", fontsize=9)
            ax.set_xlabel("model score")
            ax.set_ylabel("fitness (DMS_score)")
        fig.suptitle(model)
        paths.append(_save(fig, out / f"scatter_{_safe(model)}.png"))
    return paths


def write_table_report(title: str, tables: dict[str, pd.DataFrame], plots: list[Path], out: Path,
                       settings: dict) -> Path:
    lines = [f"# {title}", "", "Settings: " + md_text(", ".join(f"{k}={v}" for k, v in settings.items())), ""]
    for name, frame in tables.items():
        lines += [f"## {md_text(name)}", "", md_table(frame, index=False, floatfmt=".4g"), ""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return write_report(lines, out)


def plot_effect_distributions(effects: dict[str, np.ndarray], out: Path) -> Path:
    """Histograms of variant effects (alt - ref), one per model, on one shared axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, e in effects.items():
        ax.hist(e, bins=min(60, max(10, len(e) // 5)), histtype="step", linewidth=1.2, label=f"{name} (n={len(e)})")
    ax.axvline(0, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="effect = score(alt) - score(ref)", ylabel="variants", title="variant effects")
    ax.legend(fontsize=7)
    return _save(fig, out / "variant_effects.png")


def plot_roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: Path, title: str) -> Path | None:
    """ROC curves, one per method: ``{label: (y, score)}`` (higher score = more likely positive)."""
    curves = {k: v for k, v in curves.items() if 0 < np.sum(v[0]) < len(v[0])}
    if not curves:
        return None
    # in here: every Ray worker imports this module; only a report pays for scikit-learn (1-2 s)
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (y, score) in curves.items():
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, score):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out / f"roc_{_safe(title)}.png")
