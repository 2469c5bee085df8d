"""glmscore: Ray-distributed batch scoring of genomic language models, and the statistics that turn scores
into benchmark results (Nullsette, NABench, causal variants).

The public API (``glmscore/pipelines/api.py``, imported on first use, so ``import glmscore`` stays cheap):

- ``glmscore.score(benchmark, data, model, out, **options)`` / ``glmscore.embed(...)``: a score or embed job,
  the CLI's options as keyword arguments; returns a ``Result`` (``out``, ``manifest``, ``timings``,
  ``to_pandas()``, ``to_arrow()``).
- ``glmscore.analyze(benchmark, scores, out, **options)``: the benchmark's statistics and report.
- ``glmscore.sweep(file)``: models x benchmarks from a sweep file, then one combined report.
- ``glmscore.processor(model=..., reduction=..., rc=...)``: a Ray Data processor; ``processor(ds)`` adds score
  (or embedding) columns to any Dataset with a ``sequence`` column.
- ``glmscore.console``: ``redirect(stream)`` / ``redirect(silent=True)`` for what glmscore prints.
- ``glmscore.GlmscoreError``: a user mistake, with one sentence.

The subpackages are the repository's folders: ``glmscore.models`` (cards, backends), ``glmscore.pipelines``
(Ray jobs, output folders, the CLI), ``glmscore.analysis`` (pure statistics).
"""

from __future__ import annotations

import os as _os

# A source checkout (or the working directory ``ray job submit --working-dir`` uploads): models/, pipelines/
# and analysis/ sit beside this folder, not inside it, so the package also looks there. An installed wheel
# holds them inside (setup.py's package_dir) and looks nowhere else.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "models")):
    __path__.append(_os.path.dirname(_here))  # noqa: F821 (a package's own __path__)

__version__ = "0.1.0"  # pyproject.toml's; it is part of every fingerprint (a change recomputes old folders)
_API = {"score", "embed", "analyze", "sweep", "processor", "Result", "AnalysisResult", "SweepResult"}
__all__ = sorted(_API | {"GlmscoreError", "console", "__version__"})


def __getattr__(name: str):
    if name in _API:
        from glmscore.pipelines import api

        return getattr(api, name)
    if name == "GlmscoreError":
        from glmscore.models.errors import GlmscoreError

        return GlmscoreError
    if name == "console":
        from glmscore.pipelines import console

        return console
    raise AttributeError(f"module 'glmscore' has no attribute {name!r}")
