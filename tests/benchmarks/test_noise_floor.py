"""The backend noise floor as a user meets it: ``glmscore analyze nullsette|nabench`` on prepared score folders
(one whose manifest records a vLLM bf16 floor, one older manifest without it, looked up by backend and dtype)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa

from glmscore.models.noise import noise_floor, noise_record
from glmscore.pipelines.shards.format import shard_path, write_shard
from glmscore.pipelines.shards.manifest import write_manifest
from tests.conftest import ROOT

VLLM = "gen <vllm>"  # a model name that is markup: the HTML report must show it as text


def _glmscore(*args):
    proc = subprocess.run([sys.executable, "-m", "glmscore", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _folder(out, benchmark: str, model: str, backend: str, dtype: str, groups: dict, record: bool) -> str:
    """A finished score folder written the way the score job writes one: checksummed shards and a manifest
    (``record``: with the noise floor, as this version writes it; else as a manifest from before)."""
    shards = []
    for (dataset, group), columns in groups.items():
        n = len(columns["score"])
        table = pa.table({"model": [model] * n, "pair_index": np.arange(n, dtype=np.int32), **columns})
        write_shard(shard_path(out, dataset, group, 0), table, {"fingerprint": "f", "rows": n})
        shards.append({"path": f"dataset={dataset}/group={group}/part-00000.parquet", "rows": n, "digest": ""})
    provenance = {"device": "cuda", "dtype": dtype, **({"noise_floor": noise_record(backend, "cuda", dtype)} if record else {})}
    write_manifest(out, config={"benchmark": benchmark, "limit": None}, card={"id": model, "backend": backend},
                   resolved_revision="r", rows={}, started="s", skipped=0, computed=len(shards), provenance=provenance,
                   shards=shards)
    return str(out)


def test_nullsette_report_marks_a_detection_within_backend_noise_as_not_a_result(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(-1.2, 0.1, 16)
    # vLLM bf16 (floor 0.003): type 1 sits 0.001 below its nonmutant in every pair (a tiny p-value, inside the
    # noise), type 2 0.2 below (a result); the transformers fp32 folder (an older manifest) sees the same 0.001
    groups = {("kosuri", "nonmutant"): {"score": base},
              ("kosuri", "mutant_translocation1"): {"score": base - 0.001 - rng.uniform(0, 1e-5, 16)},
              ("kosuri", "mutant_translocation2"): {"score": base - 0.2 + rng.normal(0, 0.01, 16)}}
    a = _folder(tmp_path / "vllm", "nullsette", VLLM, "vllm_causal", "bfloat16", groups, record=True)
    b = _folder(tmp_path / "hf", "nullsette", "gen-hf", "hf_causal", "float32", groups, record=False)
    (tmp_path / "hf" / "_manifest.json").write_text(  # an older manifest: on CPU, fp32, no noise_floor
        (tmp_path / "hf" / "_manifest.json").read_text().replace('"cuda"', '"cpu"'))
    stdout = _glmscore("analyze", "nullsette", "--scores", a, b, "--out", str(tmp_path / "r"), "--n-perm", "2000")
    # the console summary: each model's floor and how many types it made no result of
    header, first, second = stdout.splitlines()[:3]
    assert header.split()[-2:] == ["n_within_noise", "noise_floor"]
    assert first.split()[-2:] == ["1", "3.000000e-03"] and second.split()[-2:] == ["0", "9.080000e-09"]
    tests = pd.read_csv(tmp_path / "r" / "nullsette_tests.csv").set_index(["model", "group"])
    assert tests.loc[(VLLM, "mutant_translocation1"), "p_value"] < 0.01  # significant by the test alone...
    assert tests.loc[(VLLM, "mutant_translocation1"), "verdict"] == "within backend noise: not a result"  # ...not a result
    assert not tests.loc[(VLLM, "mutant_translocation1"), "significant"]
    assert tests.loc[(VLLM, "mutant_translocation2"), "verdict"] == "significant"
    hf_floor = noise_floor("hf_causal", "cpu", "float32").max_abs
    assert tests.loc[("gen-hf", "mutant_translocation1"), "verdict"] == "significant"  # 0.001 >> the fp32 CPU floor
    assert tests.loc[("gen-hf", "mutant_translocation1"), "noise_floor"] == hf_floor
    success = pd.read_csv(tmp_path / "r" / "nullsette_success.csv").set_index("model")
    assert success.loc[VLLM, ["n_significant", "n_within_noise"]].tolist() == [1, 1]
    assert success.loc["gen-hf", ["n_significant", "n_within_noise"]].tolist() == [2, 0]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Backend noise floor" in md and "within backend noise: not a result" in md and "issue 40" in md
    html = (tmp_path / "r" / "report.html").read_text()
    assert "within backend noise: not a result" in html and "Backend noise floor" in html
    assert "gen &lt;vllm&gt;" in html and "<vllm>" not in html


def test_nabench_report_shows_each_models_backend_noise_floor(tmp_path):
    rng = np.random.default_rng(1)
    label = rng.normal(size=40)
    groups = {("Apt_2020_a", "Aptamer"): {"score": label + rng.normal(0, 1, 40), "label": label,
                                         "mutant": [f"A{i + 1}G" for i in range(40)]}}
    a = _folder(tmp_path / "vllm", "nabench", VLLM, "vllm_causal", "bfloat16", groups, record=True)
    b = _folder(tmp_path / "hf", "nabench", "gen-hf", "hf_causal", "bfloat16", groups, record=True)
    stdout = _glmscore("analyze", "nabench", "--scores", a, b, "--out", str(tmp_path / "r"), "--labels", f"{VLLM},gen-hf",
                       "--n-boot", "50")
    summary = pd.read_csv(tmp_path / "r" / "nabench_summary.csv").set_index("model")
    assert summary.loc[VLLM, "noise_floor"] == 0.003 and pd.isna(summary.loc["gen-hf", "noise_floor"])
    assert stdout.splitlines()[0].split()[-1] == "noise_floor" and "0.003" in stdout
    md = (tmp_path / "r" / "report.md").read_text()
    section = md.split("## Backend noise floor", 1)[1].split("\n## ", 1)[0]
    # both models, and how far transformers and vLLM were measured apart in bf16
    assert "not measured for this backend" in section and "issue 40" in section
    cross = next(line for line in section.splitlines() if "gen &lt;vllm&gt; vs gen-hf" in line)
    assert "hf_causal vs vllm_causal" in cross and "0.005" in cross
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Backend noise floor" in html and "<vllm>" not in html
    assert json.loads((tmp_path / "vllm" / "_manifest.json").read_text())["noise_floor"]["max_abs"] == 0.003
