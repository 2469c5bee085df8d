"""``tests/bench/gpu_check_cards.py --smoke`` (the GPU check of the cards, tiny configurations on CPU) runs as a
subprocess and writes its table: one row per card and benchmark with every column, a card the CPU cannot run
listed with its reason. Only NT v1 is scored here (one Ray run, kosuri's first cassette of each file), to stay
near a minute on 2 cores; the other cards share the same code path."""

import csv
import subprocess
import sys

import pytest

from tests.bench.realsize import COLUMNS
from tests.conftest import ROOT, shared_data


@pytest.mark.ray
def test_gpu_check_cards_smoke_writes_a_row_per_card_with_every_column(tmp_path):
    shared_data("nullsette")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "tests.bench.gpu_check_cards", "--smoke", "--out", str(out),
                          "--cards", "nt-v1-500m,caduceus", "--benchmarks", "nullsette"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(out / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == COLUMNS
    assert [(r["card"], r["benchmark"], r["loads"]) for r in rows] == [
        ("nt-v1-500m-human-ref", "nullsette", "yes"), ("caduceus-ph-131k", "-", "no")]
    nt, caduceus = rows
    assert nt["rows"] == "20" and float(nt["units_per_s"]) > 0 and float(nt["peak_actor_rss_gb"]) > 0
    assert nt["card_gpu_memory_gb_estimate"] == "6" and nt["unit"] == "row" and int(nt["tokens_per_s"].replace(",", "")) > 0
    assert nt["peak_gpu_gb"] == "" and nt["mfu"] == ""  # no GPU in smoke mode
    assert caduceus["note"].startswith("not built: remote code from the hub and mamba-ssm")
    md = (out / "table.md").read_text().splitlines()
    assert md[0].startswith("Cards at real configurations, random weights, on CPU (smoke)")
    assert md[2] == "| " + " | ".join(COLUMNS) + " |" and len([line for line in md if line.startswith("| ")]) == 3
