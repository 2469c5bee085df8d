"""Backend noise floors: the lookup a manifest records, and Nullsette's verdict against a hand computation."""

import numpy as np
import pandas as pd

from glmscore.analysis.noise import manifest_noise, noise_table
from glmscore.analysis.nullsette import WITHIN_NOISE, mark_within_noise, success_rates
from glmscore.models.noise import FLOORS, noise_floor, noise_record


def test_a_test_within_the_floor_is_not_a_result_whatever_its_p_value():
    tests = pd.DataFrame({"model": ["v", "v", "v", "v", "h"], "dataset": ["d"] * 5,
                          "group": ["m1", "m2", "m3", "m4", "m1"], "n_pairs": [20] * 5,
                          "mean_diff": [-0.002, -0.01, 0.003, -0.0031, -1e-6],
                          "p_value": [1e-4, 1e-4, 0.9, 1e-4, 1e-4], "p_adjusted": [1e-4, 1e-4, 0.9, 1e-4, 1e-4],
                          "significant": [True, True, False, True, True]})
    marked = mark_within_noise(tests, {"v": 0.003, "h": None})
    # by hand: |-0.002| <= 0.003 and |0.003| <= 0.003 are within; 0.01 and 0.0031 are above; h has no floor
    assert marked["verdict"].tolist() == [WITHIN_NOISE, "significant", WITHIN_NOISE, "significant",
                                          "significant (noise not measured)"]
    assert marked["significant"].tolist() == [False, True, False, True, True]
    assert marked["p_value"].tolist() == tests["p_value"].tolist()  # the p-values are kept as computed
    assert np.isnan(marked["noise_floor"].iloc[4]) and marked["noise_floor"].iloc[0] == 0.003
    success = success_rates(marked).set_index("model")
    assert success.loc["v", ["n_types", "n_significant", "n_within_noise"]].tolist() == [4, 2, 2]
    assert success.loc["v", "success_rate"] == 0.5 and success.loc["v", "noise_floor"] == 0.003
    assert success.loc["h", "n_within_noise"] == 0 and np.isnan(success.loc["h", "noise_floor"])


def test_the_floor_a_manifest_records_and_the_lookup_for_older_manifests():
    # the measured entries (issue 40's vLLM bf16 number applies on any device; CPU entries are this machine's)
    assert noise_floor("vllm_causal", "cuda", "bfloat16").max_abs == 0.003
    assert noise_floor("vllm_causal", "cpu", "bfloat16").max_abs == 0.003
    assert noise_floor("hf_causal", "cuda", "bfloat16") is None  # not measured: nothing assumed
    assert all(f.max_abs >= (f.typical_abs or 0) and f.source for f in FLOORS)
    record = noise_record("hf_causal", "cpu", "float32")
    assert record["max_abs"] == noise_floor("hf_causal", "cpu", "float32").max_abs and "bench_noise" in record["source"]
    # recorded in the manifest: taken as it is; an older manifest: looked up by card backend, device and dtype
    assert manifest_noise({"noise_floor": {"max_abs": 0.5, "backend": "x"}})["max_abs"] == 0.5
    old = {"model_card": {"backend": "vllm_causal"}, "device": "cuda", "dtype": "bfloat16"}
    assert manifest_noise(old)["max_abs"] == 0.003
    assert manifest_noise({"model_card": {"backend": "kmer"}, "device": "cpu", "dtype": None})["max_abs"] is None
    assert manifest_noise(None)["max_abs"] is None


def test_two_backends_of_one_dtype_show_how_far_apart_they_were_measured():
    records = {"gen-hf": noise_record("hf_causal", "cuda", "bfloat16"),
               "gen-vllm": noise_record("vllm_causal", "cuda", "bfloat16"),
               "kmer3": noise_record("kmer", "cpu", None)}
    table = noise_table(records).set_index("model")
    assert list(table.index) == ["gen-hf", "gen-vllm", "kmer3", "gen-hf vs gen-vllm"]
    assert table.loc["gen-vllm", "noise_max_abs"] == 0.003 and table.loc["gen-hf vs gen-vllm", "noise_max_abs"] == 0.005
    assert pd.isna(table.loc["gen-hf", "noise_max_abs"]) and pd.isna(table.loc["kmer3", "noise_max_abs"])

