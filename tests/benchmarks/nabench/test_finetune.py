"""NABench fine-tuning (Ray Train) and transfer: pooling and head against a transformers forward pass, fold
and transfer plans that never mix test rows or held-out labels into training, and real runs on a local
Ray cluster with 2 Ray Train workers on real assays: fresh pretrained weights for every fold, a killed
run resumed from its checkpoint, and the label-shuffled control."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from glmscore.models.errors import GlmscoreError
from tests.conftest import shared_data

NABENCH = shared_data("nabench")
needs_data = pytest.mark.skipif(not NABENCH.is_dir(), reason="../shared/data/nabench is absent")
ROOT = Path(__file__).resolve().parents[3]
GLMSCORE = [sys.executable, "-m", "glmscore"]


# ---------------------------------------------------------------- pooling and the regressor


@pytest.mark.parametrize("pooling", ["mean", "cls", "last", "cls+mean"])
def test_torch_pooling_matches_numpy_pooling(pooling):
    import torch

    from glmscore.models.pooling import Pooling, pool
    from glmscore.models.regression import pool_torch

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 7, 5)).astype(np.float32)
    lengths = [7, 4, 6]
    real = np.zeros((3, 7), dtype=bool)
    for i, n in enumerate(lengths):
        real[i, 1 : n - 1] = True  # CLS ... SEP, then padding
    got = pool_torch(torch.from_numpy(hidden), torch.from_numpy(real), pooling).numpy()
    want = np.stack([pool(hidden[i, :n], real[i, :n], Pooling.parse(pooling)) for i, n in enumerate(lengths)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_regressor_is_the_transformers_forward_pass_plus_the_head(tiny_bert):
    import torch
    from transformers import AutoModel

    from glmscore.models.base import resolve_card
    from glmscore.models.regression import load_base, make_regressor, pad_batch
    from glmscore.models.tokenization import TokenPolicy, load_tokenizer

    card = resolve_card(str(tiny_bert))
    policy = TokenPolicy(card, load_tokenizer(card.hf_id, card.revision, False), 512)
    enc = policy.encode(["ACGTAC", "GGA", "TTTTACG"])
    model = make_regressor(load_base(card), "mean", "linear", seed=3).eval()
    ids, mask, real = pad_batch([e.ids for e in enc], [e.real for e in enc], 0)
    with torch.no_grad():
        got = model(ids, mask, real).numpy()
        reference = AutoModel.from_pretrained(tiny_bert).eval()
        want = []
        for e in enc:  # one sequence at a time, no padding: the plain forward pass
            h = reference(input_ids=torch.from_numpy(e.ids[None])).last_hidden_state[0].numpy()
            pooled = h[e.real].mean(axis=0)
            want.append(float(model.head(torch.from_numpy(pooled)).item()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_models_without_weights_cannot_be_finetuned():
    from glmscore.models.base import resolve_card
    from glmscore.models.regression import check_finetunable

    with pytest.raises(GlmscoreError, match="no weights to fine-tune"):
        check_finetunable(resolve_card("onehot"), "mean")


# ---------------------------------------------------------------- plans: folds and transfer tasks


def _table(assays, families, n=40, seed=0):
    from glmscore.pipelines.benchmarks.nabench.finetune import Table

    rng = np.random.default_rng(seed)
    rows = [(a, f, i) for a, f in zip(assays, families) for i in range(n)]
    return Table(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
                 [f"A{i + 1}G" for _, _, i in rows], rng.normal(size=len(rows)),
                 [np.array([1, 2, 3])] * len(rows), [np.array([True] * 3)] * len(rows), {a: 0 for a in assays})


def _cfg(**kw):
    from glmscore.pipelines.benchmarks.nabench.finetune import FinetuneConfig

    return FinetuneConfig(data="d", model="m", out="o", **kw)


def test_supervised_and_sweep_plans_keep_test_rows_out_of_training_and_validation():
    from glmscore.pipelines.benchmarks.nabench.finetune import plan_fits

    table = _table(["a1", "a2"], ["f", "f"])
    for cfg in (_cfg(setting="supervised"), _cfg(setting="supervised", lr=[1e-5, 1e-4], head=["linear", "mlp"])):
        fits = plan_fits(cfg, table)
        assert {f.split for f in fits} == {"random", "modulo", "contiguous"}  # single mutants: every scheme
        for f in fits:
            assert not set(f.test) & (set(f.train) | set(f.val))
            assert not set(f.train) & set(f.val)
            assert set(table.assay[np.concatenate([f.train, f.val, f.test])]) == {f.assay}
        random = [f for f in fits if f.split == "random" and f.assay == "a1"]
        assert sorted(np.concatenate([f.test for f in random if (f.lr, f.head) == (cfg.lr[0], cfg.head[0])]).tolist()) \
            == table.rows_of("a1").tolist()  # every row is a test row exactly once
    sweep = plan_fits(_cfg(setting="supervised", lr=[1e-5, 1e-4]), table)
    assert all(len(f.val) > 0 for f in sweep) and len(sweep) == 2 * len(plan_fits(_cfg(setting="supervised"), table))
    with pytest.raises(GlmscoreError, match="few-shot"):
        _cfg(setting="fewshot", lr=[1e-5, 1e-4])


def test_transfer_plan_never_reads_the_held_out_assays_labels():
    from glmscore.pipelines.benchmarks.nabench.finetune import plan_fits

    table = _table(["a1", "a2", "a3", "b1"], ["f", "f", "f", "g"])
    fits = plan_fits(_cfg(setting="transfer"), table)
    assert sorted(f.assay for f in fits) == ["a1", "a2", "a3"]  # family g has one assay: nothing to transfer from
    for f in fits:
        assert set(table.assay[f.test]) == {f.assay} and f.assay not in set(table.assay[f.train])
        assert set(table.family[f.train]) == {f.family}
    poisoned = replace(table, label=table.label.copy())
    for f in fits:  # the held-out assay's labels changed: its fit's inputs are the same
        poisoned.label[table.rows_of(f.assay)] = np.nan
        again = next(g for g in plan_fits(_cfg(setting="transfer"), poisoned) if g.name == f.name)
        for part in ("train", "test", "target"):
            np.testing.assert_array_equal(getattr(f, part), getattr(again, part))
        poisoned.label[:] = table.label
    cross = plan_fits(_cfg(setting="transfer", transfer_from=["f"], transfer_to=["g"]), table)
    assert [(f.assay, f.split) for f in cross] == [("b1", "f->g")]
    with pytest.raises(GlmscoreError, match="needs both"):
        plan_fits(_cfg(setting="transfer", transfer_from=["f"]), table)


def test_transfer_tasks_and_rank_normalisation():
    from glmscore.analysis.transfer import rank_normalise, transfer_tasks

    fam = {"a1": "f", "a2": "f", "b1": "g"}
    assert [(t.test, t.train) for t in transfer_tasks(fam)] == [("a1", ("a2",)), ("a2", ("a1",))]
    with pytest.raises(GlmscoreError, match="no assay"):
        transfer_tasks(fam, ["f"], ["h"])
    with pytest.raises(GlmscoreError, match="no transfer task"):
        transfer_tasks({"a1": "f", "b1": "g"})
    y = np.array([3.0, -1.0, 3.0, 10.0])
    np.testing.assert_allclose(rank_normalise(y), stats.rankdata(y) / 5)


def _kmer_features(seqs, k=3):
    """3-mer composition: one width for every assay (a pooled featurisation of real sequences)."""
    from itertools import product

    index = {"".join(w): i for i, w in enumerate(product("ACGT", repeat=k))}
    X = np.zeros((len(seqs), len(index)), dtype=np.float32)
    for r, s in enumerate(seqs):
        s = s.upper().replace("U", "T")
        for i in range(len(s) - k + 1):
            j = index.get(s[i : i + k])
            if j is not None:
                X[r, j] += 1
    return X / np.maximum(X.sum(1, keepdims=True), 1)


@needs_data
def test_probe_transfer_on_real_assays_never_reads_held_out_labels():
    from glmscore.analysis.probe_trials import AssayArrays
    from glmscore.analysis.transfer import TransferTask, transfer_predict
    from glmscore.pipelines.benchmarks.nabench.source import read_assay

    data = {}
    for name in ("Townshend_2015_4nt_aptamer", "Townshend_2015_5nt_aptamer", "Tome_2014_GFP_aptamer"):
        frame = read_assay(NABENCH / f"{name}.csv").dropna(subset=["DMS_score"])
        data[name] = AssayArrays(_kmer_features(frame["sequence"]), frame["DMS_score"].to_numpy(), [], "aptamer")
    task = TransferTask("Tome_2014_GFP_aptamer", ("Townshend_2015_4nt_aptamer", "Townshend_2015_5nt_aptamer"), "within")
    pred = transfer_predict("ridge", data, task)
    blind = dict(data)
    blind[task.test] = AssayArrays(data[task.test].X, np.full(len(data[task.test].y), np.nan), [], "aptamer")
    np.testing.assert_array_equal(transfer_predict("ridge", blind, task), pred)
    assert len(pred) == len(data[task.test].y) and np.ptp(pred) > 0
    onehot = dict(data)  # widths differ per assay, as one-hot features of different lengths do
    onehot[task.test] = AssayArrays(np.zeros((3, 7)), np.zeros(3), [], "aptamer")
    with pytest.raises(GlmscoreError, match="one width"):
        transfer_predict("ridge", onehot, task)


# ---------------------------------------------------------------- real runs on Ray Train


ASSAYS = "Pitt_2010_ribozyme,Townshend_2015_4nt_aptamer"


def _finetune(out: Path, *extra: str, **popen) -> subprocess.Popen:
    cmd = [*GLMSCORE, "finetune", "--data", str(NABENCH), "--assays", ASSAYS, "--setting", "supervised",
           "--schemes", "random", "--workers", "2", "--lr", "1e-3", "--out", str(out), *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a new local cluster of its own
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, tiny_bert):
    """A 4-epoch run SIGKILLed (with its local cluster) right after its first checkpoint, then rerun."""
    out = tmp_path_factory.mktemp("finetune") / "run"
    proc = _finetune(out, "--model", str(tiny_bert), "--epochs", "4")
    deadline = time.time() + 300
    # the snapshot is what Ray Train restores from: it is written once the first epoch's checkpoint is registered
    while not list((out / "train").glob("*/checkpoint_manager_snapshot.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((out / "fits").glob("*.parquet"))  # killed inside the first fit
    rerun = _finetune(out, "--model", str(tiny_bert), "--epochs", "4")
    log = rerun.communicate(timeout=900)[0]
    assert rerun.returncode == 0, log[-3000:]
    return out, log


@pytest.mark.slow
@needs_data
def test_every_fold_starts_from_the_pretrained_weights(killed_and_resumed, tiny_bert):
    from glmscore.models.base import resolve_card
    from glmscore.models.regression import load_base, weights_sha256

    out, _ = killed_and_resumed
    fits = pd.read_csv(out / "finetune_fits.csv")
    assert len(fits) == 10  # 2 assays x 5 random folds
    pretrained = weights_sha256(load_base(resolve_card(str(tiny_bert))))
    assert (fits["initial_weights_sha256"] == pretrained).all()
    assert fits["final_weights_sha256"].nunique() == 10 and pretrained not in set(fits["final_weights_sha256"])


@pytest.mark.slow
@needs_data
def test_test_rows_are_predicted_once_and_never_trained_on(killed_and_resumed):
    from glmscore.pipelines.benchmarks.nabench.finetune import read_fit

    out, _ = killed_and_resumed
    pred = pd.read_parquet(out / "finetune_predictions.parquet")
    test = pred[pred["role"] == "test"]
    assert not test.duplicated(["assay", "pair_index"]).any()
    for assay in ASSAYS.split(","):
        labelled = pd.read_csv(NABENCH / f"{assay}.csv")["DMS_score"].notna().sum()
        assert (test["assay"] == assay).sum() == labelled
    for path in (out / "fits").glob("*.parquet"):  # each fit lists its own split: train, val, test
        frame, info = read_fit(path)
        roles = {r: set(frame.loc[frame["role"] == r, "row"]) for r in ("train", "val", "test")}
        assert roles["test"] and len(roles["train"]) == info["train_rows"]
        assert not roles["test"] & (roles["train"] | roles["val"]) and not roles["train"] & roles["val"]
        assert frame.loc[frame["role"] == "train", "prediction"].isna().all()
    folds = pd.read_csv(out / "finetune_folds.csv")
    assert folds["selected"].all() and len(folds) == 10


@pytest.mark.slow
@needs_data
def test_a_killed_run_resumes_from_its_checkpoint(killed_and_resumed):
    out, log = killed_and_resumed
    fits = pd.read_csv(out / "finetune_fits.csv")
    resumed = fits[fits["resumed_at_epoch"] > 0]
    assert len(resumed) == 1 and 1 <= int(resumed["resumed_at_epoch"].iloc[0]) <= 3
    from glmscore.pipelines.benchmarks.nabench.finetune import read_fit

    _, info = read_fit(out / "fits" / f"{resumed['fit'].iloc[0]}.parquet")
    assert [h["epoch"] for h in info["history"]] == [0, 1, 2, 3]  # no epoch lost or repeated
    assert "0 finished before" in log
    summary = pd.read_csv(out / "finetune_summary.csv")
    assert summary["spearman"].iloc[0] > 0.2  # a learnable signal: the control below must lose it


@pytest.mark.slow
@needs_data
def test_label_shuffled_control_scores_near_zero(tmp_path, tiny_bert, killed_and_resumed):
    # 2 epochs, not 4: shuffled labels hold no signal to learn in more epochs, and the run is the suite's longest
    proc = _finetune(tmp_path / "shuffled", "--model", str(tiny_bert), "--epochs", "2", "--shuffle-labels")
    log = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, log[-3000:]
    shuffled = pd.read_csv(tmp_path / "shuffled" / "finetune_summary.csv")["spearman"].iloc[0]
    real = pd.read_csv(killed_and_resumed[0] / "finetune_summary.csv")["spearman"].iloc[0]
    assert abs(shuffled) < 0.2 and real - shuffled > 0.2  # null SD of the mean over 5 folds x 2 assays: ~0.05


@pytest.mark.slow
@needs_data
def test_finetune_transfer_and_user_errors(tmp_path, tiny_bert):
    proc = _finetune(tmp_path / "t", "--model", str(tiny_bert), "--setting", "transfer", "--epochs", "1",
                     "--assays", "Townshend_2015_4nt_aptamer,Tome_2014_GFP_aptamer", "--limit", "120")
    log = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, log[-3000:]
    assays = pd.read_csv(tmp_path / "t" / "finetune_assays.csv")
    assert sorted(assays["assay"]) == ["Tome_2014_GFP_aptamer", "Townshend_2015_4nt_aptamer"]
    assert (assays["split"] == "within").all() and assays["spearman"].notna().all()
    run = json.loads((tmp_path / "t" / "run.json").read_text())
    assert run["config"]["setting"] == "transfer"
    bad = subprocess.run([*GLMSCORE, "finetune", "--data", str(NABENCH), "--model", "onehot", "--setting", "supervised",
                          "--out", str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "no weights to fine-tune" in bad.stderr and "Traceback" not in bad.stderr
    none = subprocess.run([*GLMSCORE, "finetune", "--data", str(NABENCH), "--model", str(tiny_bert), "--setting",
                           "supervised", "--assays", "Townshend_2015_4nt_aptamer", "--schemes", "modulo", "--out", str(tmp_path / "y")],
                          cwd=ROOT, capture_output=True, text=True)
    assert none.returncode == 2 and "nothing to fine-tune" in none.stderr and "Traceback" not in none.stderr
