"""Each model's backend noise floor, from its score folder's manifest, as the reports show it.

``models/noise.py`` holds the measured floors; a score job records the one that applies in its manifest
(``noise_floor``). A manifest from before that was recorded is looked up by its card's backend, device and dtype.
"""

from __future__ import annotations

import itertools

import pandas as pd

from glmscore.models.noise import cross_backend_floor, noise_record

NOISE_TABLE_COLUMNS = ["model", "backend", "device", "dtype", "noise_max_abs", "noise_mean_abs", "source"]
UNKNOWN = {"backend": None, "device": None, "dtype": None, "max_abs": None, "typical_abs": None,
           "source": "no glmscore manifest (scores from another program): not measured"}


def manifest_noise(manifest: dict | None) -> dict:
    """The run-to-run noise a score folder's manifest records (``noise_record``'s shape); for an older manifest,
    the measured floor for its card's backend, device and dtype; ``UNKNOWN`` without a manifest."""
    if not manifest:
        return dict(UNKNOWN)
    recorded = manifest.get("noise_floor")
    if recorded:
        return recorded
    return noise_record(manifest.get("model_card", {}).get("backend"), manifest.get("device"), manifest.get("dtype"))


def noise_table(records: dict[str, dict]) -> pd.DataFrame:
    """One row per model (``records``: model -> ``manifest_noise``), then one per pair of models on two backends
    whose disagreement was measured (``model`` ``A vs B``): what a score difference must exceed to be a result."""
    rows = [{"model": model, "backend": r.get("backend"), "device": r.get("device"), "dtype": r.get("dtype"),
             "noise_max_abs": r.get("max_abs"), "noise_mean_abs": r.get("typical_abs"), "source": r.get("source")}
            for model, r in records.items()]
    for (a, ra), (b, rb) in itertools.combinations(records.items(), 2):
        if ra.get("backend") and rb.get("backend") and ra["backend"] != rb["backend"] and ra.get("dtype") == rb.get("dtype"):
            cross = cross_backend_floor(ra["backend"], rb["backend"], ra.get("dtype"))
            if cross is not None:
                rows.append({"model": f"{a} vs {b}", "backend": cross.backend, "device": f"{ra['device']}/{rb['device']}",
                             "dtype": cross.dtype, "noise_max_abs": cross.max_abs, "noise_mean_abs": cross.typical_abs,
                             "source": cross.source})
    return pd.DataFrame(rows, columns=NOISE_TABLE_COLUMNS)


NOISE_NOTE = ("Backend noise floor: the largest (and mean) |score difference| per row between two runs of the same rows "
              "with a different batch composition, measured per backend, device and dtype; a score difference within it "
              "is not a result.")
