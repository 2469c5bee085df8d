"""The score pipeline on a real local Ray cluster: shard contract, agreement, resume, bad input."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from glmscore.models.base import resolve_card
from glmscore.models.errors import GlmscoreError
from glmscore.models.loader import load_backend
from glmscore.pipelines.benchmarks.nullsette.source import Nullsette
from glmscore.pipelines.fasta import read_all
from glmscore.pipelines.score import ScoreConfig, run_score
from glmscore.pipelines.shards import MANIFEST, read_scores

pytestmark = pytest.mark.ray


def _cfg(data, model, out, **kw):
    return ScoreConfig(benchmark="nullsette", data=str(data), model=str(model), out=str(out), **kw)


def test_scores_match_in_process_scorer_and_contract(ray_cluster, small_nullsette, tiny_llama, tmp_path):
    out = tmp_path / "scores"
    manifest = run_score(_cfg(small_nullsette, tiny_llama, out, limit=6, chunk_rows=4))
    assert manifest["rows_total"] == 20 * 6 and manifest["shards_computed"] == 40
    assert manifest["rows_per_partition"]["dataset=synthetic_ecoli/group=mutant_translocation19"] == 6
    assert {"ray", "torch", "transformers", "pyarrow"} <= set(manifest["packages"])
    # where the start-up went, phase by phase (printed before the first row streams, kept here)
    assert list(manifest["startup_s"]) == ["model and options", "input scan", "Ray start", "output check"]
    assert all(v >= 0 for v in manifest["startup_s"].values())
    table = pads.dataset(out, format="parquet", partitioning="hive").to_table()
    for name, typ in [("seq_id", pa.string()), ("benchmark", pa.string()), ("pair_index", pa.int32()),
                      ("model", pa.string()), ("score", pa.float64()), ("loglik_sum", pa.float64()),
                      ("n_scored", pa.int32()), ("n_ambiguous", pa.int32()), ("truncated", pa.bool_())]:
        assert table.schema.field(name).type == typ
    assert {"dataset", "group"} <= set(table.column_names)
    df = table.to_pandas()
    # reference: the same backend in this process, one group at a time
    scorer = load_backend(resolve_card(str(tiny_llama)))
    for group in ("nonmutant", "mutant_translocation4"):
        _, seqs = read_all(small_nullsette / "synthetic_ecoli" / f"{group}.txt")
        ref = scorer.loglik_sequences(seqs[:6])
        got = df[df["group"] == group].sort_values("pair_index")
        assert got["pair_index"].tolist() == list(range(6))
        assert np.allclose(got["score"], ref.mean, atol=1e-5)
        assert np.allclose(got["loglik_sum"], ref.loglik_sum, atol=1e-3)


def test_resume_recomputes_only_the_missing_shard(ray_cluster, small_nullsette, tmp_path):
    out = tmp_path / "scores"
    run_score(_cfg(small_nullsette, "kmer:4", out, limit=8, chunk_rows=4))
    before = pads.dataset(out, partitioning="hive").to_table().to_pandas()
    victim = out / "dataset=synthetic_ecoli" / "group=mutant_translocation2" / "part-00001.parquet"
    others = {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet") if p != victim}
    victim.unlink()
    # a leftover temporary file from a killed worker must not count
    (victim.parent / ".part-00001.parquet.999.tmp").write_bytes(b"partial")
    manifest = run_score(_cfg(small_nullsette, "kmer:4", out, limit=8, chunk_rows=4))
    assert manifest["shards_computed"] == 1 and manifest["shards_reused"] == 39
    assert victim.exists() and not list(out.rglob("*.tmp"))
    assert all(p.stat().st_mtime_ns == t for p, t in others.items())
    after = pads.dataset(out, partitioning="hive").to_table().to_pandas()
    key = ["group", "pair_index"]
    assert before.sort_values(key).reset_index(drop=True).equals(after.sort_values(key).reset_index(drop=True))
    # a different model into the same folder is refused, naming it (not its card's fields one by one)
    with pytest.raises(GlmscoreError, match=r"holds scores from another configuration \(the model kmer4 -> kmer5\); choose"):
        run_score(_cfg(small_nullsette, "kmer:5", out, limit=8, chunk_rows=4))
    # so is a smaller selection, whose folder would keep the larger run's extra shards under a new manifest
    with pytest.raises(GlmscoreError, match="holds 20 shard\\(s\\) that this run would not write"):
        run_score(_cfg(small_nullsette, "kmer:4", out, limit=4, chunk_rows=4))
    manifest = run_score(_cfg(small_nullsette, "kmer:4", out, limit=4, chunk_rows=4, overwrite=True))
    assert manifest["rows_total"] == 80 and len(pads.dataset(out, partitioning="hive").to_table()) == 80
    # a smaller --limit that would cut the same shards short (4 rows -> 2) is refused, not silently replaced
    with pytest.raises(GlmscoreError, match="holds a shard of 4 rows where this run would write 2"):
        run_score(_cfg(small_nullsette, "kmer:4", out, limit=2, chunk_rows=4))
    # a report into an unwritable place is one sentence
    from glmscore.pipelines.cli import main

    assert main(["analyze", "nullsette", "--scores", str(out), "--out", "/sys/glmscore_test_report", "--n-perm", "10"]) == 2


def test_an_edited_record_recomputes_only_its_unit(ray_cluster, small_nullsette, tmp_path, capsys):
    """Each unit has its own CRC: an edited mutant record recomputes its one shard (a fitted k-mer table
    learns only from nonmutants, so it is unchanged), and the run says so."""
    data = tmp_path / "pd"
    shutil.copytree(small_nullsette, data)
    out = tmp_path / "scores"
    cfg = _cfg(data, "kmer:3", out, limit=8, chunk_rows=4, datasets=["synthetic_ecoli"])
    run_score(cfg)
    mutant = data / "synthetic_ecoli" / "mutant_translocation3.txt"
    lines = mutant.read_text().splitlines()
    seq_line = [i for i, line in enumerate(lines) if not line.startswith(">")][5]  # record 6: chunk 1
    lines[seq_line] = ("C" if lines[seq_line][0] != "C" else "G") + lines[seq_line][1:]
    mutant.write_text("\n".join(lines) + "\n")
    # --dry-run says so, and starts and writes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    plan = run_score(replace(cfg, dry_run=True))
    assert plan["pending"] == 1 and "1 of 40 shards to compute (1 input changed); 39 reused" in plan["dry_run"]
    assert "synthetic_ecoli: 160 rows, 40 unit(s)" in plan["dry_run"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    capsys.readouterr()
    manifest = run_score(cfg)
    assert manifest["shards_computed"] == 1 and manifest["shards_reused"] == 39
    assert "1 of 40 shards to compute (1 input changed); 39 reused" in capsys.readouterr().err
    # an edited nonmutant changes the dataset's fitted table: every shard of it is recomputed
    non = data / "synthetic_ecoli" / "nonmutant.txt"
    lines = non.read_text().splitlines()
    lines[1] = ("C" if lines[1][0] != "C" else "G") + lines[1][1:]
    non.write_text("\n".join(lines) + "\n")
    manifest = run_score(cfg)
    assert manifest["shards_computed"] == 40
    assert "40 of 40 shards to compute (1 input changed, 39 reference changed); 0 reused" in capsys.readouterr().err
    # `glmscore runs` says what folders hold, finished or not
    from glmscore.pipelines.cli import main

    assert main(["runs", str(out), str(tmp_path / "nope"), str(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "nullsette" in lines[1] and "kmer3" in lines[1] and " 160 " in lines[1] and "finished" in lines[1]
    assert "does not exist" in lines[2] and "not a glmscore folder" in lines[3]
    (out / MANIFEST).unlink()
    assert main(["runs", str(out)]) == 0
    unfinished = capsys.readouterr().out
    assert "unfinished: 40 shard(s) written; rerun the same command to resume" in unfinished
    assert " kmer3 " in unfinished.splitlines()[1]  # the card id, as for a finished run (not the --model text)


def test_a_report_is_written_whole_or_not_at_all(ray_cluster, small_nullsette, tmp_path, capsys, monkeypatch):
    """An interrupted analysis leaves no tables that look complete, and says so in its own terms; another
    benchmark's score folder is named as such."""
    from glmscore.pipelines.cli import main

    out = tmp_path / "scores"
    run_score(_cfg(small_nullsette, "kmer:2", out, limit=4, datasets=["synthetic_ecoli"]))
    report = tmp_path / "report"
    argv = ["analyze", "nullsette", "--scores", str(out), "--out", str(report), "--n-perm", "20"]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("glmscore.analysis.report.plot_success_heatmap", interrupted)  # after the tables are written
    capsys.readouterr()
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"glmscore: interrupted; no report was written to {report}" in err and "shards" not in err
    assert not report.exists() and not list(tmp_path.glob(".report.partial-*"))
    monkeypatch.undo()
    assert main(argv) == 0
    assert {"nullsette_tests.csv", "nullsette_success.csv", "report.md"} <= {p.name for p in report.iterdir()}
    assert f"report: {report}" in capsys.readouterr().out and not list(tmp_path.glob(".report.partial-*"))
    assert main(["analyze", "nabench", "--scores", str(out), "--out", str(tmp_path / "r2")]) == 2
    assert (f"glmscore: error: {out} is a nullsette score folder; analyse it with `glmscore analyze nullsette`."
            in capsys.readouterr().err)


def test_over_long_sequences_fail_clearly_without_manifest(ray_cluster, small_nullsette, tmp_path):
    from tests.tiny_models import make_tiny_llama

    short = make_tiny_llama(tmp_path / "short-llama", max_positions=64)
    out = tmp_path / "scores"
    with pytest.raises(GlmscoreError) as info:
        run_score(_cfg(small_nullsette, short, out, limit=2))
    message = str(info.value)
    assert "exceed the model's context of 64 tokens" in message and "--long" in message
    assert "synthetic_ecoli/" in message  # names the rows
    assert not (out / MANIFEST).exists()
    manifest = run_score(_cfg(small_nullsette, short, tmp_path / "trunc", limit=2, options={"long": "truncate"}))
    df = pads.dataset(tmp_path / "trunc", partitioning="hive").to_table().to_pandas()
    assert df["truncated"].all() and (df["n_scored"] == 63).all() and manifest["rows_total"] == 40


def test_letters_outside_alphabet_are_mapped_and_counted(ray_cluster, small_nullsette, tiny_llama, tmp_path):
    data = tmp_path / "pd"
    shutil.copytree(small_nullsette, data)
    for f in (data / "synthetic_ecoli").glob("*.txt"):
        lines = f.read_text().splitlines()
        lines[1] = lines[1][:10].lower() + "XU" + "N" + lines[1][13:]
        f.write_text("\n".join(lines) + "\n")
    run_score(_cfg(data, tiny_llama, tmp_path / "s", limit=2, datasets=["synthetic_ecoli"]))
    df = pads.dataset(tmp_path / "s", partitioning="hive").to_table().to_pandas()
    assert (df.loc[df["pair_index"] == 0, "n_ambiguous"] == 2).all()
    assert (df.loc[df["pair_index"] == 1, "n_ambiguous"] == 0).all()


def test_kmer_crossfit_end_to_end_with_report(ray_cluster, small_nullsette, tmp_path):
    dirs = []
    for model in ("kmer:3", "kmer:5"):
        run_score(_cfg(small_nullsette, model, tmp_path / model.replace(":", "")))
        dirs.append(str(tmp_path / model.replace(":", "")))
    result = Nullsette.analyze(dirs, str(tmp_path / "report"), Nullsette.AnalyzeOptions(n_perm=2000))
    report = tmp_path / "report"
    for name in ("nullsette_tests.csv", "nullsette_success.csv", "report.md", "success_heatmap.png",
                 "differences_kmer3_synthetic_ecoli.png"):
        assert (report / name).exists(), name
    import pandas as pd

    tests = pd.read_csv(report / "nullsette_tests.csv")
    assert list(tests.columns) == ["model", "dataset", "group", "order", "n_pairs", "mean_diff", "p_value", "p_adjusted",
                                   "significant", "noise_floor", "verdict"]
    # k-mer counts have no measured run-to-run noise: nothing is marked as within it
    assert tests["noise_floor"].isna().all() and not tests["verdict"].str.startswith("within").any()
    assert len(tests) == 38 and (tests["n_pairs"] == 12).all()
    # mutant types are named by their component order (from the record `nullsette build` left beside the data)
    first = tests[tests["group"] == "mutant_translocation1"]["order"].iloc[0]
    assert first == "cds-promoter-rbs-start_codon-stop_codon-terminator"
    assert set(result["table"]["model"]) == {"kmer3", "kmer5"} and (result["table"]["n_pairs"] == 12).all()
    # the analysis reads one dataset of one folder at a time; its tests equal those of every score at once
    from glmscore.analysis.nullsette import nullsette_tests

    whole = pd.concat([read_scores(d) for d in dirs], ignore_index=True)
    pd.testing.assert_frame_equal(result["tests"].drop(columns=["order", "noise_floor", "verdict"]),
                                  nullsette_tests(whole, n_perm=2000))
    # one model twice under two labels, and a warning when the folders cover different --limit slices
    run_score(_cfg(small_nullsette, "kmer:3", tmp_path / "k3small", limit=6))
    again = Nullsette.analyze([dirs[0], str(tmp_path / "k3small")], str(tmp_path / "report2"),
                              Nullsette.AnalyzeOptions(n_perm=200, labels=["k3 all", "k3 first 6"]))
    assert set(again["table"]["model"]) == {"k3 all", "k3 first 6"}
    assert "different --limit slices" in (tmp_path / "report2" / "report.md").read_text()
    with pytest.raises(GlmscoreError, match="pass each model once or name them apart with --labels"):
        Nullsette.analyze([dirs[0], dirs[0]], str(tmp_path / "report3"), Nullsette.AnalyzeOptions(n_perm=10))
    # a Nullsette folder given to the NABench analysis is one sentence, not ArrowInvalid
    from glmscore.pipelines.cli import main

    assert main(["analyze", "nabench", "--scores", dirs[0], "--out", str(tmp_path / "r4")]) == 2
    manifest = json.loads((tmp_path / "kmer3" / MANIFEST).read_text())
    assert manifest["model_card"]["backend"] == "kmer"


def test_analyze_reads_the_published_scripts_output_layout(ray_cluster, tmp_path):
    """Real shards (kmer:3 on the real kosuri and lagator cassettes) written out as the published scripts
    write theirs (<out>/<model>/<dataset>/<file>.csv, tab-separated seqs, scores) analyse to the same table."""
    import pandas as pd

    from glmscore.pipelines.benchmarks.nullsette.source import build
    from glmscore.pipelines.cli import main
    from tests.conftest import shared_data

    data = tmp_path / "pd"
    build(shared_data("nullsette"), data, tables=["kosuri", "deboer_pTpA"])
    run_score(_cfg(data, "kmer:3", tmp_path / "k3", limit=300))
    shards = pads.dataset(tmp_path / "k3", partitioning="hive").to_table().to_pandas()
    published = tmp_path / "output"
    for (dataset, group), part in shards.groupby(["dataset", "group"]):
        folder = published / "kmer3" / {"deboer_pTpA": "pTpA"}.get(dataset, dataset)  # as hyenadna.py names it
        folder.mkdir(parents=True, exist_ok=True)
        source = data / ("deboer/pTpA" if dataset == "deboer_pTpA" else dataset) / f"{group}.txt"
        part = part.sort_values("pair_index")
        seqs = read_all(source)[1][:300]
        pd.DataFrame({"seqs": seqs, "scores": part["score"].to_numpy()}).to_csv(folder / f"{group}.csv", sep="\t", index=False)
    opts = Nullsette.AnalyzeOptions(n_perm=500, estimator="paper")
    ours = Nullsette.analyze([str(tmp_path / "k3")], str(tmp_path / "r1"), opts)["tests"]
    theirs = Nullsette.analyze([str(published)], str(tmp_path / "r2"), opts)["tests"]
    assert len(ours) == 30 and set(theirs["dataset"]) == {"kosuri", "deboer_pTpA"}
    pd.testing.assert_frame_equal(ours.drop(columns="order"), theirs.drop(columns="order"))
    # one model folder, renamed with --labels, through the CLI
    assert main(["analyze", "nullsette", "--scores", str(published / "kmer3"), "--labels", "published k3",
                 "--estimator", "paper", "--n-perm", "200", "--out", str(tmp_path / "r3")]) == 0
    assert "published k3" in (tmp_path / "r3" / "nullsette_success.csv").read_text()
    # NT.py's and generator.py's nested layout (<out>/<family>/<variant>/<dataset>) and alphagenome_infer.py's
    # deeper one with its four columns (the scored region) read the same, the model named by its path
    nested, deep = tmp_path / "output_nt", tmp_path / "output_ag"
    for f in published.rglob("*.csv"):
        a = nested / "NucleotideTransformer" / "2.5B_multispecies" / f.relative_to(published / "kmer3")
        a.parent.mkdir(parents=True, exist_ok=True)
        a.write_text(f.read_text())
        b = deep / "AlphaGenome" / "all_folds" / "homo_sapiens" / "EFO-0001187" / "matched_subsequence_20bp" / f.relative_to(published / "kmer3")
        b.parent.mkdir(parents=True, exist_ok=True)
        table = pd.read_csv(f, sep="\t")
        table.assign(score_region_start=0, score_region_end=20).to_csv(b, sep="\t", index=False)
    for root, model in ((nested, "NucleotideTransformer/2.5B_multispecies"),
                        (deep, "AlphaGenome/all_folds/homo_sapiens/EFO-0001187/matched_subsequence_20bp")):
        got = Nullsette.analyze([str(root)], str(tmp_path / f"r_{root.name}"), opts)["tests"]
        assert set(got["model"]) == {model}
        pd.testing.assert_frame_equal(got.drop(columns=["order", "model"]), theirs.drop(columns=["order", "model"]))
    # a file that breaks the pairing is one sentence
    broken = published / "kmer3" / "kosuri" / "mutant_translocation3.csv"
    broken.write_text("\n".join(broken.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(GlmscoreError, match="must pair row by row"):
        Nullsette.analyze([str(published)], str(tmp_path / "r4"), opts)


@pytest.mark.realdata
def test_nullsette_cds_rule_averages_tracks_over_each_real_kosuri_cassettes_cds(ray_cluster, tmp_path):
    """``--score-subsequence cds`` (the published alphagenome_infer.py rule): a tracks model's score of a
    real kosuri cassette is the mean of its tracks over the bins its CDS overlaps, wherever a translocation
    put the CDS; by hand here from the component table (the CDS offset = the lengths of the components
    before it in the group's order), not by searching the sequence. A model that scores whole sequences is
    refused in one sentence, and so is a subsequence a cassette lacks."""
    import multimolecule
    import pandas as pd
    import torch
    from multimolecule.tokenisers.dna.utils import get_alphabet

    from glmscore.models.base import Context
    from glmscore.pipelines.benchmarks.nullsette.source import build
    from tests.conftest import shared_data

    spec = shared_data("nullsette")
    build(spec, tmp_path / "pd", tables=["kosuri"])
    table = pd.read_csv(spec / "kosuri.tsv", sep="\t")
    orders = json.loads((spec / "translocations.json").read_text())["prokaryotic"]
    record = json.loads((tmp_path / "pd" / "_nullsette_build.json").read_text())["kosuri"]
    assert record["fixed"]["cds"] == table["cds"].iloc[0] and "promoter" not in record["fixed"]

    torch.manual_seed(0)  # 1,024 bp window, 8 bp bins, the central 120 of 128 predicted: kosuri is 887-928 bp
    config = multimolecule.EnformerConfig(sequence_length=1024, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                                          attention_head_size=4, num_downsamples=3, dim_divisible_by=2, target_length=120,
                                          num_labels=4)
    model = multimolecule.EnformerForTokenPrediction(config).eval()
    path = tmp_path / "enformer"
    model.save_pretrained(path)
    multimolecule.DnaTokenizer(alphabet=get_alphabet("streamline", prepend_tokens=[]), unk_token="N", pad_token="N",
                               model_max_length=1024).save_pretrained(path)
    window, bin_bp, bins = 1024, 8, 120
    crop = (window - bins * bin_bp) // 2

    def by_hand(i: int, order: list[str]) -> float:
        cassette = table.iloc[i]
        seq = "".join(cassette[c] for c in order)
        cds0 = sum(len(cassette[c]) for c in order[: order.index("cds")])
        ids = np.full(window, 4)
        start = (window - len(seq)) // 2
        ids[start : start + len(seq)] = ["ACGTN".index(c) for c in seq]
        covered = sorted({(p - crop) // bin_bp for p in range(start + cds0, start + cds0 + len(cassette["cds"]))})
        with torch.no_grad():
            pred = model.postprocess(model(input_ids=torch.from_numpy(ids[None])))[0][0].double().numpy()
        return float(pred[covered][:, 1:3].mean())

    bench = Nullsette(str(tmp_path / "pd"), Nullsette.Options(score_subsequence="cds"))
    units = bench.units(chunk_rows=4, limit=4, datasets=None)
    backend = load_backend(resolve_card(str(path)), tracks="1:3")
    groups = {"nonmutant": orders["nonmutant"], "mutant_translocation1": orders["mutants"][0],
              "mutant_translocation19": orders["mutants"][18]}
    for unit in (u for u in units if u.group in groups):
        rows = bench.read(unit)
        region = np.stack([rows.extra["score_region_start"], rows.extra["score_region_end"]], axis=1)
        got = backend.loglik(backend.encode(rows.sequences), Context(region=region)).mean
        np.testing.assert_allclose(got, [by_hand(int(i), groups[unit.group]) for i in rows.pair_index], rtol=1e-5, atol=1e-6)

    # through the job: the shards carry the region beside the score
    from glmscore.pipelines.score import resolve_job

    run_score(ScoreConfig(benchmark="nullsette", data=str(tmp_path / "pd"), model=str(path), out=str(tmp_path / "s"),
                          limit=2, options={"tracks": "1:3"}, benchmark_options={"score_subsequence": "cds"}))
    df = read_scores(tmp_path / "s")
    df = df[df["group"].isin(groups)].sort_values(["group", "pair_index"])
    assert len(df) == 6 and (df["score_region_end"] - df["score_region_start"] == len(record["fixed"]["cds"])).all()
    np.testing.assert_allclose(df["score"], [by_hand(int(i), groups[g]) for g, i in zip(df["group"], df["pair_index"])],
                               rtol=1e-5, atol=1e-6)

    with pytest.raises(GlmscoreError, match="only sequence-to-function models read; backend kmer scores whole sequences"):
        resolve_job(ScoreConfig(benchmark="nullsette", data=str(tmp_path / "pd"), model="kmer:3", out=str(tmp_path / "k"),
                                benchmark_options={"score_subsequence": "cds"}))
    lacking = Nullsette(str(tmp_path / "pd"), Nullsette.Options(score_subsequence="GATTACAGATTACAGATTACA"))
    with pytest.raises(GlmscoreError, match=r"\(21 bp\) is not in 4 cassette\(s\) of kosuri/nonmutant"):
        lacking.read(lacking.units(chunk_rows=4, limit=4, datasets=None)[0])
