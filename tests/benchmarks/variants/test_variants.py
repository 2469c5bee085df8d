"""Causal-variant benchmark: sources and window rules on real hg38/GENCODE/GTEx fixtures, splits and
statistics against scikit-learn, and the whole chain on the synthetic labelled set (real local Ray)."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from glmscore.analysis.variants import bootstrap_ci, check_no_leak, chromosome_folds, variant_features, weighted_auroc
from glmscore.models.alphabet import reverse_complement
from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.benchmarks.variants.genome import Genome, read_tss, read_variants
from glmscore.pipelines.benchmarks.variants.source import BuildOptions, build_windows, window_pair
from tests.conftest import shared_data

GTEX_VCF = "gtex_b38_chr1_snvs.vcf"
HG38 = "hg38_chr1_1mb.fa.gz"


def _build(tmp_path, data, name="w", **kw):
    o = BuildOptions(genome=str(data / HG38), variants=str(kw.pop("variants", data / GTEX_VCF)), out=str(tmp_path / name), **kw)
    return build_windows(o), pd.read_parquet(tmp_path / name / "sites.parquet")


# ---------------------------------------------------------------- real fixtures


@pytest.mark.realdata
def test_real_vcf_without_chrom_line_matches_the_genome_and_windows_centre_on_the_variant(tmp_path):
    data = shared_data("variants")
    table = read_variants(data / GTEX_VCF)
    assert len(table.frame) == 8 and table.frame["pos"].min() == 14677  # no #CHROM line, still 8 SNVs
    for name, opener in (("bom.vcf", open), ("bom.vcf.gz", gzip.open)):  # a byte-order mark first: the same table
        with opener(tmp_path / name, "wb") as fh:
            fh.write(b"\xef\xbb\xbf" + (data / GTEX_VCF).read_bytes())
        pd.testing.assert_frame_equal(read_variants(tmp_path / name).frame, table.frame)
    record, sites = _build(tmp_path, data)
    assert record["sites"] == 8 and record["dropped"] == {}
    genome = Genome(data / HG38)
    for s in sites.to_dict("records"):
        assert genome.base(s["chrom"], s["pos"]) == s["ref"]  # VCF POS is 1-based
        assert s["window_start"] == s["pos"] - 1 - 750 and s["variant_offset"] == 750
        ref, alt, padded = window_pair(genome, s, 1500)
        assert len(ref) == 1500 and ref[750] == s["ref"] and alt[750] == s["alt"]
        assert ref[:750] == alt[:750] and ref[751:] == alt[751:]
        assert ref == genome._fasta.fetch("chr1", s["pos"] - 751, s["pos"] + 749).upper()  # 0-based half-open


@pytest.mark.realdata
def test_gtex_variant_ids_without_chrom_pos_columns_are_parsed(tmp_path, capsys):
    """GTEx tables name variants chr1_14677_G_A_b38 and carry no chrom/pos/ref/alt columns: the same sites
    as the VCF; a VCF without tissues builds an unlabelled set and says so (not "0 variant x tissue rows")."""
    from glmscore.pipelines.cli import main

    data = shared_data("variants")
    vcf = read_variants(data / GTEX_VCF).frame
    ids = vcf["chrom"] + "_" + vcf["pos"].astype(str) + "_" + vcf["ref"] + "_" + vcf["alt"] + "_b38"
    table = tmp_path / "gtex.tsv"
    pd.DataFrame({"variant_id": ids, "tissue": "Whole_Blood", "label": 1}).to_csv(table, sep="\t", index=False)
    got = read_variants(table).frame
    cols = ["chrom", "pos", "ref", "alt"]
    assert got[cols].astype(str).values.tolist() == vcf[cols].astype(str).values.tolist()
    assert (got["tissue"] == "Whole_Blood").all() and (got["label"] == 1).all()
    (tmp_path / "bad.tsv").write_text("variant_id\tlabel\nchr1-14677-G-A\t1\n")
    with pytest.raises(GlmscoreError, match="is not chrom_pos_ref_alt"):
        read_variants(tmp_path / "bad.tsv")
    assert main(["variants", "build", "--genome", str(data / HG38), "--variants", str(data / GTEX_VCF),
                 "--out", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "unlabelled: the variants carry no tissue or label column" in out and "0 variant x tissue rows" not in out


@pytest.mark.ray
@pytest.mark.realdata
def test_unlabelled_real_variants_get_an_effect_table_a_vcf_and_a_report(ray_cluster, tiny_llama, tmp_path, capsys):
    """The GTEx fixture carries no labels: `analyze variants` writes the effect table (Parquet, TSV, a VCF
    that htslib reads back, one value per gene of a variant) and a report of the effect distributions,
    where it used to exit 2 with only zero_shot_llr.csv. Gene view, every TSS within 2 kb: 4 variants
    with 2 genes each (the first 2 scored)."""
    import pysam

    from glmscore.pipelines.benchmarks.variants.report import zero_shot_llr
    from glmscore.pipelines.cli import main

    data = shared_data("variants")
    w, scores, report = (str(tmp_path / n) for n in ("w", "s", "r"))
    assert main(["variants", "build", "--genome", str(data / HG38), "--variants", str(data / GTEX_VCF), "--view", "gene",
                 "--annotation", str(data / "gencode_gene_tss.tsv.gz"), "--gene-rule", "all", "--window", "4000",
                 "--out", w]) == 0
    assert main(["score", "--benchmark", "variants", "--data", w, "--model", str(tiny_llama), "--reduction", "sum", "--limit", "4",
                 "--out", scores]) == 0
    capsys.readouterr()
    assert main(["analyze", "variants", "--scores", scores, "--out", report]) == 0
    printed = capsys.readouterr().out
    assert "fraction < 0" in printed and "Empty DataFrame" not in printed and "report: " in printed
    llr = zero_shot_llr(scores)
    effects = pd.read_parquet(tmp_path / "r" / "variant_effects.parquet")
    assert len(effects) == len(llr) and effects["tissue"].eq("").all() and effects["label"].isna().all()
    assert np.allclose(effects["effect"], llr["llr"]) and np.allclose(effects["effect"], effects["score_alt"] - effects["score_ref"])
    assert (effects["ref"] + ">" + effects["alt"]).tolist() == llr["variant_id"].str.split(":").str[2].tolist()
    tsv = pd.read_csv(tmp_path / "r" / "variant_effects.tsv", sep="\t", keep_default_na=False)
    assert tsv["variant_id"].tolist() == effects["variant_id"].tolist()
    per_variant = llr.groupby("variant_id", sort=False)
    assert per_variant.ngroups < len(llr)  # some variant has several genes
    with pysam.VariantFile(str(tmp_path / "r" / "variant_effects.vcf")) as vcf:
        key = next(k for k in vcf.header.info if k.endswith("_EFFECT"))
        records = list(vcf)
    assert [r.id for r in records] == list(per_variant.groups)
    for r in records:
        mine = llr[llr["variant_id"] == r.id]
        assert (r.chrom, r.pos, r.ref, r.alts[0]) == (mine["chrom"].iloc[0], mine["pos"].iloc[0], *r.id.split(":")[2].split(">"))
        assert list(r.info["GENE"]) == mine["gene"].tolist()
        assert np.allclose(r.info[key], mine["llr"], rtol=1e-5)  # htslib writes 6 significant digits
    text = (tmp_path / "r" / "report.md").read_text()
    assert "# Variant effects" in text and "none of the inputs carries labels" in text and "AUROC (95% CI" not in text
    assert not (tmp_path / "r" / "variants_results.csv").exists()
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 1 and "variant_effects.vcf" in page and "<table>" in page


@pytest.mark.realdata
def test_chromosome_names_ref_mismatch_and_multiallelic_records(tmp_path):
    data = shared_data("variants")
    lines = [l for l in (data / GTEX_VCF).read_text().splitlines() if not l.startswith("#")]
    renamed = tmp_path / "renamed.vcf"  # `1` instead of `chr1`, one REF wrong, one multi-allelic, one indel
    rows = [l.replace("chr1\t", "1\t", 1) for l in lines]
    rows[0] = rows[0].replace("\tG\tA", "\tC\tA")
    rows[1] = rows[1].replace("\tG\tA", "\tG\tA,T")
    rows.append("1\t200000\tindel\tA\tAT\t.\t.")
    renamed.write_text("\n".join(rows) + "\n")
    with pytest.raises(GlmscoreError, match=r"chr1:14677 C>A has REF C but the genome has G"):
        _build(tmp_path, data, variants=renamed)
    record, sites = _build(tmp_path, data, variants=renamed, drop_mismatches=True)
    assert record["dropped"] == {"not an SNV (indel, symbolic or non-ACGT allele)": 1, "REF differs from the genome": 1}
    assert len(sites) == 8  # 8 - 1 mismatch + 1 extra ALT allele
    assert (sites["chrom"] == "chr1").all()
    assert sites[sites["pos"] == 54490]["alt"].tolist() == ["A", "T"]


@pytest.mark.realdata
def test_window_off_the_chromosome_end_is_padded_with_n():
    genome = Genome(shared_data("variants") / HG38)
    seq, padded = genome.fetch("chr1", 999_990, 1_000_010)
    assert seq == genome._fasta.fetch("chr1", 999_990, 1_000_000).upper() + "N" * 10 and padded == 10
    seq, padded = genome.fetch("chr1", -5, 5)
    assert seq[:5] == "NNNNN" and padded == 5 and len(seq) == 10
    assert genome.resolve("1") == "chr1" and genome.resolve("chrX") is None


@pytest.mark.realdata
def test_tss_centred_windows_of_the_56_genes_that_fit_and_their_strand(tmp_path):
    data = shared_data("variants")
    tss = read_tss(data / "gencode_gene_tss.tsv.gz")
    genome = Genome(data / HG38)
    fit = tss[(tss["chrom"] == "chr1") & (tss["tss"] - 1 - 65_536 >= 0) & (tss["tss"] - 1 + 65_536 <= 1_000_000)]
    assert len(fit) == 56
    rows = []  # one SNV 100 bp downstream (on the gene's strand) of every TSS that fits
    for r in fit.itertuples():
        pos = r.tss + (100 if r.strand == "+" else -100)
        ref = genome.base("chr1", pos)
        alt = "A" if ref != "A" else "C"
        rows.append(("chr1", pos, ref, alt, r.gene_id or r.gene_name))
    variants = tmp_path / "v.tsv"
    pd.DataFrame(rows, columns=["chrom", "pos", "ref", "alt", "gene"]).to_csv(variants, sep="\t", index=False)
    for orient in ("genome", "gene"):
        record, sites = _build(tmp_path, data, name=orient, variants=variants, view="gene",
                               annotation=str(data / "gencode_gene_tss.tsv.gz"), orient=orient)
        assert record["window"] == 131_072 and len(sites) == 56 and (sites["n_padded"] == 0).all()
        assert (sites["tss_offset"] == 65_536).all()
        for s in sites.to_dict("records"):
            ref, alt, _ = window_pair(genome, s, 131_072)
            t = s["tss"] - 1
            if orient == "gene" and s["strand"] == "-":
                assert s["reverse"] and ref[65_536] == reverse_complement(genome.base("chr1", s["tss"]))
                assert ref[65_536 + 3] == reverse_complement(genome.base("chr1", s["tss"] - 3))  # downstream = left on -
                assert s["variant_offset"] == 65_536 + 100 and alt[s["variant_offset"]] == reverse_complement(s["alt"])
            else:
                assert ref[65_536] == genome.base("chr1", s["tss"]) and s["window_start"] == t - 65_536
                assert alt[s["variant_offset"]] == s["alt"]
                assert s["variant_offset"] == 65_536 + (100 if s["strand"] == "+" else -100)


def test_gtf_and_transcript_tables_give_the_gene_start(tmp_path):
    gtf = tmp_path / "genes.gtf"
    gtf.write_text(
        'chr1\tHAVANA\tgene\t1000\t5000\t.\t+\t.\tgene_id "ENSG1.3"; gene_name "PLUS";\n'
        'chr1\tHAVANA\ttranscript\t1200\t5000\t.\t+\t.\tgene_id "ENSG1.3"; gene_name "PLUS";\n'
        'chr1\tHAVANA\tgene\t8000\t9000\t.\t-\t.\tgene_id "ENSG2.1"; gene_name "MINUS";\n')
    tss = read_tss(gtf).set_index("gene_name")
    assert tss.loc["PLUS", "tss"] == 1000 and tss.loc["MINUS", "tss"] == 9000 and tss.loc["PLUS", "gene_id"] == "ENSG1"
    table = tmp_path / "tx.tsv.gz"
    with gzip.open(table, "wt") as fh:
        fh.write("chrom\ttss\tstrand\tgene_id\tgene_name\nchr1\t1300\t+\tENSG1.3\tPLUS\nchr1\t1000\t+\tENSG1.3\tPLUS\n"
                 "chr1\t8500\t-\tENSG2.1\tMINUS\nchr1\t9000\t-\tENSG2.1\tMINUS\n")
    tss = read_tss(table).set_index("gene_name")
    assert tss.loc["PLUS", "tss"] == 1000 and tss.loc["MINUS", "tss"] == 9000  # most upstream transcript
    bad = tmp_path / "bad.tsv"
    bad.write_text("chrom\tpos\nchr1\t5\n")
    with pytest.raises(GlmscoreError, match="a TSS table needs"):
        read_tss(bad)


# ---------------------------------------------------------------- splits and statistics


def test_chromosome_folds_hold_out_chr9_chr10_and_never_split_a_variant():
    chroms = np.array([f"chr{c}" for c in range(1, 13) for _ in range(10)])
    site = np.arange(len(chroms)) // 2  # two tissue rows per variant
    fold = chromosome_folds(chroms, ("chr9", "chr10"), 5)
    assert set(chroms[fold == -1]) == {"chr9", "chr10"}
    assert sorted(set(fold[fold >= 0])) == [0, 1, 2, 3, 4]
    check_no_leak(site, chroms, fold)
    leaky = fold.copy()
    leaky[0] = (fold[1] + 1) % 5  # one tissue row of variant 0 moved to another fold
    with pytest.raises(AssertionError, match="variant 0 lies on both sides"):
        check_no_leak(site, chroms, leaky)
    with pytest.raises(GlmscoreError, match="needs 5 training chromosomes"):
        chromosome_folds(np.array(["chr1", "chr2", "chr9"]), ("chr9",), 5)


def test_auroc_and_bootstrap_against_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.normal(size=400) + 0.6 * y, 1)  # ties on purpose
    w = rng.integers(0, 4, 400).astype(float)
    assert weighted_auroc(y, s, np.ones((1, 400)))[0] == pytest.approx(roc_auc_score(y, s))
    assert weighted_auroc(y, s, w[None])[0] == pytest.approx(roc_auc_score(y, s, sample_weight=w))
    lo, hi = bootstrap_ci(y, s, np.arange(400) // 2, n_boot=500)
    assert lo < roc_auc_score(y, s) < hi and hi - lo < 0.2
    f = variant_features(np.array([[1.0, 2.0]]), np.array([[1.0, 0.0]]))
    assert f[0, 0] == pytest.approx(np.log(1e-6)) and f[0, 1] == pytest.approx(np.log(2 + 1e-6))


# ---------------------------------------------------------------- the chain on the synthetic labelled set


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The planted-mechanism set (12 chromosomes, 960 variants; see pipelines/benchmarks/variants/synthetic.py) built
    as 64 bp variant-centred windows (CNN, zero-shot) and 512 bp TSS-centred windows (embeddings)."""
    from glmscore.pipelines.cli import main

    base = tmp_path_factory.mktemp("variants")
    assert main(["variants", "synth", "--out", str(base / "src")]) == 0
    src = base / "src"
    assert main(["variants", "build", "--genome", str(src / "genome.fa"), "--variants", str(src / "variants.csv"),
                 "--window", "64", "--out", str(base / "var")]) == 0
    assert main(["variants", "build", "--genome", str(src / "genome.fa"), "--variants", str(src / "variants.csv"),
                 "--annotation", str(src / "tss.tsv"), "--view", "gene", "--window", "512", "--orient", "gene",
                 "--out", str(base / "gene")]) == 0
    return base


def test_build_errors_are_one_sentence(synthetic, tmp_path, capsys):
    from glmscore.pipelines.cli import main

    src = synthetic / "src"
    bad = tmp_path / "bad.csv"
    lines = (src / "variants.csv").read_text().splitlines()
    chrom, pos, ref, *rest = lines[1].split(",")
    wrong = next(b for b in "ACGT" if b not in (ref, rest[0]))
    bad.write_text("\n".join([lines[0], ",".join([chrom, pos, wrong, *rest])]) + "\n")
    assert main(["variants", "build", "--genome", str(src / "genome.fa"), "--variants", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{chrom}:{pos} {wrong}>{rest[0]} has REF {wrong} but the genome has {ref}" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "build.json").exists()
    assert main(["variants", "build", "--genome", str(src / "genome.fa"), "--variants", str(bad), "--view", "gene",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--view gene needs --annotation" in capsys.readouterr().err
    # a k-mer baseline fits on a benchmark's reference sequences; variants has none: refused before Ray starts
    assert main(["score", "--benchmark", "variants", "--data", str(synthetic / "var"), "--model", "kmer:3",
                 "--out", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert "benchmark variants has none; use a model that needs no fitting" in err and "glmscore: score on" not in err


@pytest.mark.ray
@pytest.mark.slow
def test_probes_and_cnn_recover_the_planted_mechanism_and_shuffled_labels_do_not(synthetic, ray_cluster, tmp_path, capsys):
    from glmscore.pipelines.benchmarks.variants.learning import CNNOptions, VariantProbeConfig, run_cnn, run_variant_probes
    from glmscore.pipelines.score import ScoreConfig, run_score

    emb = tmp_path / "emb"
    run_score(ScoreConfig(task="embed", benchmark="variants", data=str(synthetic / "gene"), model="onehot", pooling="tss",
                          out=str(emb)))
    X = pd.read_parquet(emb / "dataset=gene" / "group=ref")
    assert len(X["embedding"].iloc[0]) == 384 * 4  # the 384 bp around the TSS, one-hot
    dry = run_variant_probes(VariantProbeConfig(embeddings=str(emb), out=str(tmp_path / "dry"), dry_run=True))["dry_run"]
    assert "10 Ray Tune trials, 1 CPU each" in dry and "probes mlp,logistic x 5 folds" in dry, dry  # 2 probes x 5 folds
    assert re.search(r"rows: [\d,]+ variant x tissue rows \([\d,]+ on the test chromosomes chr9,chr10\)", dry), dry
    assert not (tmp_path / "dry").exists()
    results = {}
    for shuffle in (False, True):
        probes = run_variant_probes(VariantProbeConfig(embeddings=str(emb), probes=["logistic"],
                                                       out=str(tmp_path / f"probes{shuffle}"), shuffle_labels=shuffle))
        # the shuffled control stops sooner: its validation AUROC has nothing to improve on
        cnn = run_cnn(CNNOptions(data=str(synthetic / "var"), out=str(tmp_path / f"cnn{shuffle}"), filters=[16, 32, 32, 48],
                                 hidden=[32, 16], lr=3e-3, patience=4 if shuffle else 10, max_epochs=12 if shuffle else 30,
                                 shuffle_labels=shuffle))
        results[shuffle] = (probes["summary"].iloc[0], cnn["summary"].iloc[0])
    assert "glmscore: 5/5 trials (100%)" in capsys.readouterr().err  # Tune sweeps count trials
    for row in results[False]:
        assert row["ensemble_auroc"] > 0.75 and row["n_folds"] == 5, row.to_dict()
    for row in results[True]:
        assert abs(row["ensemble_auroc"] - 0.5) < 0.12, row.to_dict()
    pred = pd.read_parquet(tmp_path / "cnnFalse" / "predictions.parquet")
    assert set(pred[pred["split"] == "test"]["chrom"]) == {"chr9", "chr10"}
    folds = pred[pred["split"] == "val"].drop_duplicates(["site_index", "fold"])
    check_no_leak(folds["site_index"].to_numpy(), folds["chrom"].to_numpy(), folds["fold"].to_numpy())  # asserted, not assumed


@pytest.mark.ray
def test_zero_shot_llr_matches_a_transformers_forward_pass_and_the_report(synthetic, ray_cluster, tiny_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glmscore.pipelines.benchmarks.variants.report import analyze_variants, zero_shot_llr
    from glmscore.pipelines.benchmarks.variants.source import VariantsAnalyzeOptions
    from glmscore.pipelines.score import ScoreConfig, run_score

    scores = tmp_path / "scores"
    run_score(ScoreConfig(benchmark="variants", data=str(synthetic / "var"), model=str(tiny_llama), reduction="sum",
                          out=str(scores)))
    llr = zero_shot_llr(str(scores)).set_index("site_index")
    assert len(llr) == 960
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    sites = pd.read_parquet(synthetic / "var" / "sites.parquet").head(3)
    genome = Genome(synthetic / "src" / "genome.fa")

    def loglik(seq: str) -> float:  # BOS + characters, every nucleotide scored
        ids = torch.tensor([[tok.bos_token_id, *tok(seq, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        return float(lp.gather(-1, ids[0, 1:, None]).sum())

    for s in sites.to_dict("records"):
        ref, alt, _ = window_pair(genome, s, 64)
        assert llr.loc[s["site_index"], "llr"] == pytest.approx(loglik(alt) - loglik(ref), abs=1e-3)
    o = VariantsAnalyzeOptions(n_boot=200)
    result = analyze_variants([str(scores)], [], [], tmp_path / "report", o)
    table = pd.read_csv(tmp_path / "report" / "variants_results.csv")
    assert {"all", "test"} <= set(table["subset"]) and table["auroc"].between(0, 1).all()
    assert "quoted from the publication, not recomputed" in (tmp_path / "report" / "report.md").read_text()
    assert result["table"]["kind"].eq("zero-shot").all()
    effects = pd.read_parquet(tmp_path / "report" / "variant_effects.parquet")  # one row per variant x tissue
    labelled = effects.merge(llr.reset_index()[["variant_id", "llr"]], on="variant_id")
    assert effects["label"].notna().all() and np.allclose(labelled["effect"], labelled["llr"])
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "quoted from the publication" in page  # ROC + effects


@pytest.mark.ray
def test_masked_marginal_at_the_variant_base_matches_a_hand_computation(synthetic, ray_cluster, tiny_bert, tiny_llama,
                                                                        tmp_path):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from glmscore.pipelines.benchmarks.variants.report import zero_shot_llr
    from glmscore.pipelines.score import ScoreConfig, run_score

    scores = tmp_path / "scores"
    run_score(ScoreConfig(benchmark="variants", data=str(synthetic / "var"), model=str(tiny_bert), reduction="focus",
                          options={"mlm_mode": "pll"}, out=str(scores), limit=6))
    llr = zero_shot_llr(str(scores)).set_index("site_index")
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForMaskedLM.from_pretrained(tiny_bert, dtype=torch.float32).eval()
    genome = Genome(synthetic / "src" / "genome.fa")
    for s in pd.read_parquet(synthetic / "var" / "sites.parquet").head(6).to_dict("records"):
        ref, _, _ = window_pair(genome, s, 64)
        ids = torch.tensor([tok(ref)["input_ids"]])  # [CLS] + 64 bases + [SEP]
        ids[0, 1 + s["variant_offset"]] = tok.mask_token_id
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, 1 + s["variant_offset"]], -1)
        expected = lp[tok.convert_tokens_to_ids(s["alt"])] - lp[tok.convert_tokens_to_ids(s["ref"])]
        assert llr.loc[s["site_index"], "llr"] == pytest.approx(float(expected), abs=1e-4)
    with pytest.raises(GlmscoreError, match="cannot score one position"):
        run_score(ScoreConfig(benchmark="variants", data=str(synthetic / "var"), model=str(tiny_llama), reduction="focus",
                              out=str(tmp_path / "k")))


@pytest.mark.realdata
def test_gene_view_without_a_gene_column_takes_the_nearest_tss_or_all_within_the_window(tmp_path):
    data = shared_data("variants")
    ann = str(data / "gencode_gene_tss.tsv.gz")
    record, sites = _build(tmp_path, data, name="near", view="gene", annotation=ann)
    assert len(sites) == 8 and sites.iloc[0]["gene"] == "DDX11L1" and sites.iloc[0]["tss"] == 12010  # 2,667 bp away
    tss = read_tss(ann)
    tss = tss[tss["chrom"] == "chr1"]
    for s in sites.to_dict("records"):
        assert abs(s["pos"] - s["tss"]) == (tss["tss"] - s["pos"]).abs().min()
    record, every = _build(tmp_path, data, name="all", view="gene", annotation=ann, gene_rule="all")
    expected = sum(int(((tss["tss"] - p).abs() <= 65_536).sum()) for p in sites["pos"])
    assert len(every) <= expected and len(every) > 8 * 10
    assert (every["variant_offset"].between(0, 131_071)).all()
    assert json.loads((tmp_path / "all" / "build.json").read_text())["view"] == "gene"


@pytest.mark.ray
def test_tss_pooling_averages_the_384_bases_around_the_tss(synthetic, ray_cluster, tiny_bert, tmp_path):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from glmscore.pipelines.score import ScoreConfig, run_score

    emb = tmp_path / "emb"
    run_score(ScoreConfig(task="embed", benchmark="variants", data=str(synthetic / "gene"), model=str(tiny_bert),
                          pooling="tss", out=str(emb), limit=3, options={"long": "truncate"}))  # 514 tokens > 512
    table = pd.read_parquet(emb / "dataset=gene" / "group=alt").sort_values("pair_index")
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForMaskedLM.from_pretrained(tiny_bert, dtype=torch.float32).eval()
    genome = Genome(synthetic / "src" / "genome.fa")
    sites = pd.read_parquet(synthetic / "gene" / "sites.parquet").head(3)
    for s, got in zip(sites.to_dict("records"), table["embedding"]):
        _, alt, _ = window_pair(genome, s, 512)
        with torch.no_grad():
            ids = torch.tensor([tok(alt)["input_ids"][:512]])  # truncated as the job does: [SEP] and the last base go
            hidden = model(ids, output_hidden_states=True).hidden_states[-1][0]
        expected = hidden[1 + 256 - 192: 1 + 256 + 192].mean(0)  # [CLS] first; the TSS at 256, 384 bases around it
        np.testing.assert_allclose(np.asarray(got), expected.numpy(), rtol=1e-4, atol=1e-5)
    # --rc both: the reverse strand pools the same 384 bases, at [512 - 448, 512 - 64) of the reverse complement
    run_score(ScoreConfig(task="embed", benchmark="variants", data=str(synthetic / "gene"), model=str(tiny_bert),
                          pooling="tss", out=str(tmp_path / "rc"), limit=3, rc="both", options={"long": "truncate"}))
    both = pd.read_parquet(tmp_path / "rc" / "dataset=gene" / "group=alt").sort_values("pair_index")
    for s, fwd, got in zip(sites.to_dict("records"), table["embedding"], both["embedding"]):
        _, alt, _ = window_pair(genome, s, 512)
        with torch.no_grad():
            ids = torch.tensor([tok(reverse_complement(alt))["input_ids"][:512]])
            hidden = model(ids, output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(np.asarray(got[:len(fwd)]), np.asarray(fwd), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(got[len(fwd):]), hidden[1 + 64: 1 + 448].mean(0).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(GlmscoreError, match="needs a gene-view windows folder"):
        run_score(ScoreConfig(task="embed", benchmark="variants", data=str(synthetic / "var"), model="onehot",
                              pooling="tss", out=str(tmp_path / "x")))


def test_track_effects_over_the_tss_bins_and_the_whole_output(synthetic, ray_cluster, tmp_path):
    """A sequence-to-function model's variant scores: ``--track-region centre`` averages the tracks over the
    bins the 384 bp around the TSS overlap (the gene view, as Enformer's 3 TSS bins), ``all`` over every
    output bin; each equals the model's own forward pass on the ref and alt windows by hand."""
    import multimolecule
    import torch
    from multimolecule.tokenisers.dna.utils import get_alphabet

    from glmscore.models.base import resolve_card
    from glmscore.pipelines.score import ScoreConfig, run_score

    torch.manual_seed(0)  # 512 bp window = the gene view's windows; 8 bp bins, the central 60 of 64 predicted
    window, bin_bp, bins = 512, 8, 60
    config = multimolecule.EnformerConfig(sequence_length=window, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                                          attention_head_size=4, num_downsamples=3, dim_divisible_by=2, target_length=bins,
                                          num_labels=4)
    model = multimolecule.EnformerForTokenPrediction(config).eval()
    path = tmp_path / "enformer"
    model.save_pretrained(path)
    multimolecule.DnaTokenizer(alphabet=get_alphabet("streamline", prepend_tokens=[]), unk_token="N", pad_token="N",
                               model_max_length=window).save_pretrained(path)
    assert resolve_card(str(path)).objective == "tracks"
    crop = (window - bins * bin_bp) // 2
    genome = Genome(synthetic / "src" / "genome.fa")
    sites = pd.read_parquet(synthetic / "gene" / "sites.parquet").head(3)

    def by_hand(seq: str, first: int, end: int) -> float:
        ids = torch.tensor([["ACGTN".index(c) for c in seq]])
        covered = sorted({(p - crop) // bin_bp for p in range(first, end) if 0 <= (p - crop) // bin_bp < bins})
        with torch.no_grad():
            pred = model.postprocess(model(input_ids=ids))[0][0].double().numpy()
        return float(pred[covered][:, 0:2].mean())

    for region, (first, end) in (("centre", (256 - 192, 256 + 192)), ("all", (0, window))):
        out = tmp_path / region
        run_score(ScoreConfig(benchmark="variants", data=str(synthetic / "gene"), model=str(path), out=str(out), limit=3,
                              options={"tracks": "0:2"}, benchmark_options={"track_region": region}))
        for group, strand in (("ref", 0), ("alt", 1)):
            got = pd.read_parquet(out / "dataset=gene" / f"group={group}").sort_values("pair_index")
            want = [by_hand(window_pair(genome, s, window)[strand], first, end) for s in sites.to_dict("records")]
            np.testing.assert_allclose(got["score"], want, rtol=1e-5, atol=1e-6, err_msg=f"{region} {group}")
            assert ("score_region_start" in got.columns) == (region == "centre")
    # gene-centred embeddings for the probes: the trunk's bins over the 384 bp around the TSS
    run_score(ScoreConfig(task="embed", benchmark="variants", data=str(synthetic / "gene"), model=str(path), pooling="tss",
                          out=str(tmp_path / "emb"), limit=3))
    got = pd.read_parquet(tmp_path / "emb" / "dataset=gene" / "group=ref").sort_values("pair_index")
    covered = sorted({(p - crop) // bin_bp for p in range(256 - 192, 256 + 192)})
    for s, emb in zip(sites.to_dict("records"), got["embedding"]):
        ids = torch.tensor([["ACGTN".index(c) for c in window_pair(genome, s, window)[0]]])
        with torch.no_grad():
            hidden = model.model(input_ids=ids).last_hidden_state[0].double().numpy()
        np.testing.assert_allclose(np.asarray(emb), hidden[covered].mean(axis=0), rtol=1e-4, atol=1e-5)
