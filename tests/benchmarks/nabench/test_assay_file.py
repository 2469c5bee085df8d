"""NABench assays read in O(unit): byte-range units, a CRC per unit, the scan's validation."""

import gzip
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.benchmarks.nabench import assay_file, source
from glmscore.pipelines.benchmarks.nabench.source import NABench, read_assay


def _assay(folder, n, seed=0, name="Big_2024_selex"):
    """``n`` random 40-nt RNA variants; every 7th score missing, a quoted multi-mutant every 5th row."""
    rng = np.random.default_rng(seed)
    seqs = ["".join(s) for s in rng.choice(list("ACGU"), size=(n, 40))]
    lines = ["mutant,DMS_score,sequence"]
    for i, s in enumerate(seqs):
        mutant = '"A1C,G2U"' if i % 5 == 0 else ("" if i == 0 else f"A{i % 40 + 1}G")
        score = "" if i % 7 == 3 else f"{rng.normal():.4f}"
        lines.append(f"{mutant},{score},{s}")
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _reference(path):
    return pd.read_csv(path, dtype={"mutant": str, "sequence": str}, keep_default_na=False,
                       na_values={"DMS_score": ["", "NA", "NaN", "nan"]})


def test_units_cover_the_assay_and_match_pandas(tmp_path, monkeypatch):
    path = _assay(tmp_path / "nab", 2_503)
    bench = NABench(str(tmp_path / "nab"))
    units = bench.units(chunk_rows=500, limit=None, datasets=None)
    assert [u.n_rows for u in units] == [500] * 5 + [3] and [u.first_row for u in units] == list(range(0, 2_503, 500))
    rows = [bench.read(u) for u in units]
    ref = _reference(path)
    assert sum((r.sequences for r in rows), []) == ref["sequence"].tolist()
    assert sum((r.names for r in rows), []) == ref["mutant"].tolist()
    labels = np.array(sum((r.extra["label"] for r in rows), []), float)
    assert np.allclose(labels, ref["DMS_score"].to_numpy(float), equal_nan=True)
    assert np.concatenate([r.pair_index for r in rows]).tolist() == list(range(2_503))
    assert sum(bench.reference_sequences(units, "Big_2024_selex"), []) == ref["sequence"].tolist()
    monkeypatch.setattr(source, "REFERENCE_BLOCK", 1_000)  # streamed: the driver holds one block at a time
    blocks = list(bench.reference_sequences(units, "Big_2024_selex"))
    assert [len(b) for b in blocks] == [1_000, 1_000, 503] and sum(blocks, []) == ref["sequence"].tolist()
    limited = bench.units(chunk_rows=500, limit=700, datasets=None)
    assert [u.n_rows for u in limited] == [500, 200]
    assert bench.read(limited[1]).sequences == ref["sequence"].tolist()[500:700]
    assert read_assay(path, 600, 10)["sequence"].tolist() == ref["sequence"].tolist()[600:610]


def test_a_unit_reads_only_its_own_bytes(tmp_path, monkeypatch):
    """A unit near the end of a large assay reads no more than one near the start (the old reader
    re-parsed the file from its first line for every unit)."""
    path = _assay(tmp_path / "nab", 20_000)
    bench = NABench(str(tmp_path / "nab"))
    units = bench.units(chunk_rows=1_000, limit=None, datasets=None)
    read = []

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def readline(self):
            line = self.fh.readline()
            read.append(len(line))
            return line

        def read(self, n=-1):
            data = self.fh.read(n)
            read.append(len(data))
            return data

        def seek(self, pos):
            return self.fh.seek(pos)

    real_open = open
    monkeypatch.setattr(assay_file, "open", lambda p, mode="r": Counting(real_open(p, mode)), raising=False)
    costs = []
    for u in (units[0], units[len(units) // 2], units[-1]):
        read.clear()
        bench.read(u)
        costs.append(sum(read))
    header = len(path.read_text().splitlines()[0]) + 1
    assert costs == [u.where()["length"] + header for u in (units[0], units[len(units) // 2], units[-1])]
    assert max(costs) < 1.1 * min(costs) and max(costs) < path.stat().st_size / 10
    # the bytes before a unit do not matter to it: garble them (same length) and the last unit still reads
    monkeypatch.undo()
    raw = bytearray(path.read_bytes())
    first_row = raw.index(b"\n") + 1
    raw[first_row:first_row + 30] = b"#" * 30
    path.write_bytes(bytes(raw))
    assert bench.read(units[-1]).sequences == _reference(path)["sequence"].tolist()[-1_000:]
    with pytest.raises(GlmscoreError, match="changed while the job ran"):
        bench.read(units[0])


def test_an_edited_row_changes_only_its_units_crc(tmp_path):
    path = _assay(tmp_path / "nab", 3_000)
    bench = NABench(str(tmp_path / "nab"))
    before = bench.units(chunk_rows=1_000, limit=None, datasets=None)
    lines = path.read_text().splitlines()
    lines[1_500] = lines[1_500].replace(",", ",9", 1) if ",," not in lines[1_500] else lines[1_500].replace(",,", ",1.5,")
    path.write_text("\n".join(lines) + "\n")
    after = bench.units(chunk_rows=1_000, limit=None, datasets=None)
    assert [a.crc == b.crc for a, b in zip(after, before)] == [True, False, True]
    # a changed header changes every unit
    path.write_text(path.read_text().replace("mutant,DMS_score,sequence", "mutant,DMS_score,sequence,note", 1))
    assert all(a.crc != b.crc for a, b in zip(bench.units(chunk_rows=1_000, limit=None, datasets=None), after))


def test_scan_refuses_bad_rows_in_one_sentence_and_accepts_a_bom(tmp_path):
    folder = tmp_path / "nab"
    folder.mkdir()
    path = folder / "Toy_2024_assay.csv"
    path.write_bytes(b"\xef\xbb\xbfmutant,DMS_score,sequence\r\n,0.5,ACGT\r\nA1C,0.1,CCGT\r\n")
    bench = NABench(str(folder))
    (unit,) = bench.units(chunk_rows=10, limit=None, datasets=None)
    assert bench.read(unit).sequences == ["ACGT", "CCGT"] and bench.read(unit).names == ["", "A1C"]
    path.write_text("mutant,DMS_score,sequence\n,0.5,ACGT\nA1C,0.1,AC-T\n")
    with pytest.raises(GlmscoreError, match=r"line 3 has '-' in its sequence, which is not a sequence letter"):
        bench.units(chunk_rows=10, limit=None, datasets=None)
    path.write_text("mutant,DMS_score,sequence\n,0.5,ACGT\nA1C,0.1\n")
    with pytest.raises(GlmscoreError, match="line 3 has 2 field"):
        bench.units(chunk_rows=10, limit=None, datasets=None)
    path.write_text('mutant,DMS_score,sequence\n,0.5,ACGT\n"A1C,0.1,CCGT\n')
    with pytest.raises(GlmscoreError, match="line 3 has a quoted field that does not close"):
        bench.units(chunk_rows=10, limit=None, datasets=None)
    path.write_text("mutant,score,sequence\n,0.5,ACGT\n")
    with pytest.raises(GlmscoreError, match="header must start with mutant,DMS_score,sequence \\(it starts with mutant,score"):
        bench.units(chunk_rows=10, limit=None, datasets=None)
    path.unlink()
    (folder / "Toy_2024_assay.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(GlmscoreError, match="Toy_2024_assay.csv.gz is not a readable gzip file"):
        bench.units(chunk_rows=10, limit=None, datasets=None)


def test_gzipped_assays_are_read_through_a_copy_decompressed_once(tmp_path, monkeypatch, capsys):
    """A .csv.gz assay scores as its plain CSV does: the same units, CRCs and rows, from a copy made once
    beside it (reused while the .gz is unchanged, remade by a worker that lacks it); an edited row
    changes only its own unit's CRC; a data folder that cannot take it puts the copy under GLMSCORE_CACHE."""
    plain = _assay(tmp_path / "plain", 2_503)
    packed = tmp_path / "packed"
    packed.mkdir()
    gz = packed / "Big_2024_selex.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    want = NABench(str(tmp_path / "plain")).units(chunk_rows=500, limit=None, datasets=None)
    bench = NABench(str(packed))
    units = bench.units(chunk_rows=500, limit=None, datasets=None)
    assert "decompressing" in capsys.readouterr().err
    assert [(u.dataset, u.n_rows, u.first_row, u.crc) for u in units] == [(u.dataset, u.n_rows, u.first_row, u.crc) for u in want]
    ref = _reference(plain)
    assert sum((bench.read(u).sequences for u in units), []) == ref["sequence"].tolist()
    assert sum(bench.reference_sequences(units, "Big_2024_selex"), []) == ref["sequence"].tolist()
    copy = packed / ".glmscore-gunzip" / "Big_2024_selex.csv"
    assert copy.read_bytes() == plain.read_bytes()
    NABench(str(packed)).units(chunk_rows=500, limit=None, datasets=None)
    assert "decompressing" not in capsys.readouterr().err  # reused
    copy.unlink()  # a worker on a node without the driver's copy
    assert bench.read(units[3]).sequences == ref["sequence"].tolist()[1_500:2_000]
    lines = plain.read_text().splitlines(keepends=True)
    lines[1_700] = lines[1_700].rstrip("\n") + "A\n"  # row 1,699 (unit 3) gets a longer sequence
    gz.write_bytes(gzip.compress("".join(lines).encode()))
    os.utime(gz, ns=(gz.stat().st_atime_ns, gz.stat().st_mtime_ns + 10**9))
    edited = NABench(str(packed)).units(chunk_rows=500, limit=None, datasets=None)
    assert [i for i, (a, b) in enumerate(zip(units, edited)) if a.crc != b.crc] == [3]
    assert len(NABench(str(packed)).read(edited[3]).sequences[199]) == 41
    with pytest.raises(GlmscoreError, match="changed while the job ran"):
        bench.read(units[3])  # a unit of the old scan is not read from the new copy
    shutil.rmtree(packed / ".glmscore-gunzip")
    monkeypatch.setenv("GLMSCORE_CACHE", str(tmp_path / "cache"))
    (packed / ".glmscore-gunzip").write_text("")  # no copy can be made beside the data (root ignores chmod)
    again = NABench(str(packed)).units(chunk_rows=500, limit=None, datasets=None)
    assert [u.crc for u in again] == [u.crc for u in edited]
    assert list((tmp_path / "cache" / "gunzip").glob("*/Big_2024_selex.csv"))


def test_duplicate_mutants_and_mixed_t_u_are_warnings(tmp_path):
    folder = tmp_path / "nab"
    folder.mkdir()
    (folder / "Toy_2024_assay.csv").write_text("mutant,DMS_score,sequence\n,0.5,ACGU\nA1C,0.1,CCGU\nA1C,0.2,CCGT\n"
                                               '"A1C,G2U",0.3,CUGU\n')
    bench = NABench(str(folder))
    bench.units(chunk_rows=10, limit=None, datasets=None)
    assert any("1 row(s) repeat an earlier row's mutant name" in w for w in bench.warnings)
    assert any("1 sequence(s) have T and 3 have U: DNA and RNA letters mixed" in w for w in bench.warnings)


def test_large_assays_are_scanned_in_parallel_processes_with_the_same_result(tmp_path, monkeypatch):
    """Many large files are scanned in worker processes (``scan_files``): the units equal a scan in this
    process, and a user error in one file is still the one sentence naming it."""
    for i in range(3):
        _assay(tmp_path / "nab", 1_200 + i, seed=i, name=f"Big_2024_selex{i}")
    one_by_one = NABench(str(tmp_path / "nab")).units(chunk_rows=500, limit=None, datasets=None)
    monkeypatch.setattr(assay_file, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(assay_file.os, "cpu_count", lambda: 2)
    calls = []
    real = assay_file.ProcessPoolExecutor
    monkeypatch.setattr(assay_file, "ProcessPoolExecutor", lambda *a, **k: calls.append(a) or real(*a, **k))
    parallel = NABench(str(tmp_path / "nab")).units(chunk_rows=500, limit=None, datasets=None)
    assert calls == [(2,)] and parallel == one_by_one
    (tmp_path / "nab" / "Big_2024_selex1.csv").write_text("mutant,DMS_score,sequence\n,0.5,AC-T\n")
    with pytest.raises(GlmscoreError, match=r"Big_2024_selex1.csv: line 2 has '-' in its sequence"):
        NABench(str(tmp_path / "nab")).units(chunk_rows=500, limit=None, datasets=None)
    assert len(calls) == 2
