"""The core interfaces: a new backend and a new benchmark plug in without touching the core;
the token limit is decided once; the fingerprint covers the weights; user errors travel as data."""

import os
import re
import shutil
import signal
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from glmscore.models.base import BACKENDS, Backend, LoglikResult, register_backend, resolve_card
from glmscore.models.cards import ModelCard
from glmscore.models.errors import GlmscoreError
from glmscore.models.loader import load_backend
from glmscore.models.options import Options, option
from glmscore.pipelines.benchmark import BENCHMARKS, Benchmark, Rows, Unit, locator, register_benchmark
from glmscore.pipelines.cli import main
from glmscore.pipelines.score import ScoreConfig, run_score
from glmscore.pipelines.shards import MANIFEST, read_scores

TOY_SEQS = ["ACGTACGTAA", "GGGCCCAT", "TTTT", "ACGNNACG", "GATTACA", "CCCCGGGGAT", "AT"]


@pytest.fixture
def toys():
    """A toy backend and a toy benchmark, defined here and registered through the public API only."""

    @dataclass(frozen=True)
    class GCOptions(Options):
        """toy GC backend"""

        gc_weight: float = option(1.0, help="toy: weight of a G or C")
        fail: str = option("", choices=("", "user", "bug"), help="toy: fail on purpose")
        batch_rows: int = option(4, minimum=1, help="toy: rows per batch")
        kill_over: int = option(-1, help="toy: SIGKILL this worker on a batch of more rows (-1: never)")

    @register_backend("toy_gc")
    class GCBackend(Backend):
        """Log-likelihood of a base = gc_weight for G/C, -1 otherwise; proves per-row context arrives."""

        Options = GCOptions
        objectives = ("toy",)

        @classmethod
        def card_for(cls, spec):
            return ModelCard(id="toy-gc", backend=cls.name, objective="toy") if spec == "toy-gc" else None

        @classmethod
        def make_encoder(cls, card, options, runtime):
            from glmscore.models.alphabet import BaseEncoder

            return BaseEncoder()

        def loglik(self, encoded, context=None, keep_positions=False):
            if self.options.fail == "user":
                raise GlmscoreError("the toy backend refuses this unit.")
            if self.options.fail == "bug":
                raise ValueError("a toy bug")
            assert context is not None and len(context.pair_index) == len(encoded)
            rows = getattr(self, "batch_rows", self.options.batch_rows)
            if 0 <= self.options.kill_over < min(rows, len(encoded)):
                os.kill(os.getpid(), signal.SIGKILL)  # what Ray's memory monitor does to a worker
            per = [np.where((e.ids == 1) | (e.ids == 2), self.options.gc_weight, -1.0)[e.real] for e in encoded]
            return LoglikResult.from_positions(per)

        def shrink_batches(self, factor):
            self.batch_rows = max(1, self.options.batch_rows // factor)
            return f"{self.batch_rows} row(s)"

    @dataclass(frozen=True)
    class LinesAnalyze(Options):
        top: int = option(3, minimum=1, help="toy: rows in the report")

    @register_benchmark("toy_lines")
    class Lines(Benchmark):
        """Every *.txt file of the data folder is a dataset, one sequence per line; group = 'all'."""

        extra_columns = {"length": pa.int32()}
        AnalyzeOptions = LinesAnalyze

        def units(self, *, chunk_rows, limit, datasets):
            from pathlib import Path

            out = []
            for path in sorted(Path(self.data).glob("*.txt")):
                seqs = path.read_text().split()[:limit]
                for i, start in enumerate(range(0, len(seqs), chunk_rows)):
                    n = min(chunk_rows, len(seqs) - start)
                    out.append(Unit(path.stem, "all", i, n, start, hash(tuple(seqs)) & 0xFFFF, max(map(len, seqs)),
                                    locator(path=str(path))))
            return out

        def read(self, unit):
            from pathlib import Path

            seqs = Path(unit.where()["path"]).read_text().split()[unit.first_row : unit.first_row + unit.n_rows]
            idx = np.arange(unit.first_row, unit.first_row + len(seqs), dtype=np.int32)
            return Rows([f"{unit.dataset}/{i}" for i in idx], [f"line {i + 1}" for i in idx], seqs, idx,
                        {"length": [len(s) for s in seqs]})

        @classmethod
        def analyze(cls, score_dirs, out, options):
            from pathlib import Path

            frame = pd.concat([read_scores(d, columns=["model", "dataset", "score", "length"]) for d in score_dirs])
            table = frame.sort_values("score", ascending=False).head(options.top)
            Path(out).mkdir(parents=True, exist_ok=True)
            table.to_csv(Path(out) / "top.csv", index=False)
            (Path(out) / "report.md").write_text(table.to_markdown(index=False))
            return {"report": str(Path(out) / "report.md"), "table": table}

    yield GCBackend, Lines
    BACKENDS.unregister("toy_gc")
    BENCHMARKS.unregister("toy_lines")


@pytest.fixture
def lines_data(tmp_path):
    d = tmp_path / "lines"
    d.mkdir()
    (d / "first.txt").write_text("\n".join(TOY_SEQS) + "\n")
    (d / "second.txt").write_text("\n".join(reversed(TOY_SEQS)) + "\n")
    return d


def _expected(seq, weight=1.0):
    vals = [weight if b in "GC" else -1.0 for b in seq.upper() if b in "ACGT"]
    return sum(vals), len(vals)


@pytest.mark.ray
def test_new_backend_and_benchmark_plug_in_without_core_edits(ray_cluster, toys, lines_data, tmp_path, capsys):
    out = tmp_path / "scores"
    manifest = run_score(ScoreConfig(benchmark="toy_lines", data=str(lines_data), model="toy-gc", out=str(out),
                                     chunk_rows=3, options={"gc_weight": 2.0}))
    assert manifest["rows_total"] == 14 and manifest["shards_computed"] == 6
    table = pads.dataset(out, format="parquet", partitioning="hive").to_table()
    for name, typ in [("seq_id", pa.string()), ("benchmark", pa.string()), ("pair_index", pa.int32()),
                      ("score", pa.float64()), ("n_scored", pa.int32()), ("length", pa.int32())]:
        assert table.schema.field(name).type == typ
    df = table.to_pandas()
    first = df[df["dataset"] == "first"].sort_values("pair_index")
    for seq, (_, row) in zip(TOY_SEQS, first.iterrows()):
        total, n = _expected(seq, 2.0)
        assert row["loglik_sum"] == total and row["n_scored"] == n and row["length"] == len(seq)
    assert (df["benchmark"] == "toy_lines").all() and (df["model"] == "toy-gc").all()
    # the CLI knows both, with the backend's own flag, and analyses with the benchmark's entry point
    assert main(["score", "--benchmark", "toy_lines", "--data", str(lines_data), "--model", "toy-gc",
                 "--out", str(out), "--chunk-rows", "3", "--gc-weight", "2.0"]) == 0
    assert "6 reused" in capsys.readouterr().out
    assert main(["analyze", "toy_lines", "--scores", str(out), "--out", str(tmp_path / "rep"), "--top", "2"]) == 0
    top = pd.read_csv(tmp_path / "rep" / "top.csv")
    assert len(top) == 2 and top["score"].iloc[0] == df["score"].max()
    # a flag that belongs to no option of this backend is a one-sentence error
    assert main(["score", "--benchmark", "toy_lines", "--data", str(lines_data), "--model", "toy-gc",
                 "--out", str(tmp_path / "x"), "--long", "window"]) == 2
    assert "--long does not apply to backend toy_gc" in capsys.readouterr().err


@pytest.mark.ray
def test_user_errors_travel_as_data_and_bugs_keep_their_traceback(ray_cluster, toys, lines_data, tmp_path):
    with pytest.raises(GlmscoreError, match="^the toy backend refuses this unit.$"):
        run_score(ScoreConfig(benchmark="toy_lines", data=str(lines_data), model="toy-gc", out=str(tmp_path / "u"),
                              options={"fail": "user"}))
    assert not (tmp_path / "u" / MANIFEST).exists()
    with pytest.raises(Exception) as info:
        run_score(ScoreConfig(benchmark="toy_lines", data=str(lines_data), model="toy-gc", out=str(tmp_path / "b"),
                              options={"fail": "bug"}))
    assert not isinstance(info.value, GlmscoreError) and "a toy bug" in str(info.value)
    assert not (tmp_path / "b" / MANIFEST).exists()


@pytest.mark.ray
def test_a_unit_whose_worker_is_killed_runs_smaller_batches_then_stops_in_one_sentence(ray_cluster, toys, lines_data,
                                                                                       tmp_path, capsys):
    """Ray's memory monitor SIGKILLs a worker on a node short of memory, and Ray Data's pools retry without
    end. The monitor cannot be made to fire on cue on a shared machine, so the toy kills its own worker on
    batches over a size: the same death, the same retries."""
    from ray.experimental import internal_kv

    one = tmp_path / "one"  # one unit: each kill costs an actor restart
    one.mkdir()
    shutil.copy(lines_data / "first.txt", one)

    def run(kill_over, out):
        return run_score(ScoreConfig(benchmark="toy_lines", data=str(one), model="toy-gc", out=str(tmp_path / out),
                                     chunk_rows=4, limit=4, options={"batch_rows": 4, "kill_over": kill_over}))

    # a batch of 4 rows is killed, 2 pass: the unit is scored on its second start, whole
    manifest = run(2, "shrunk")
    assert manifest["rows_total"] == 4 and manifest["shards_computed"] == 1
    df = read_scores(tmp_path / "shrunk")
    for seq, (_, row) in zip(TOY_SEQS[:4], df[df["dataset"] == "first"].sort_values("pair_index").iterrows()):
        assert (row["loglik_sum"], row["n_scored"]) == _expected(seq)
    # the ledger is the job's own: nothing is left in the cluster's key-value store
    assert not internal_kv._internal_kv_list("attempts/", namespace="glmscore")
    err = capsys.readouterr().err
    assert re.search(r"glmscore: first/all chunk 0 \(rows 0-3\): its worker was killed 1 time\(s\), most likely "
                     r"for memory \(it held [1-9][\d,.]* [MG]iB; the node had [\d,.]+ [MG]iB of [\d.]+ GiB in use\); scored with "
                     r"batches of 2 row\(s\)", err), err
    # killed on every batch: after 3 kills, one sentence naming the unit, the memory and what to change
    with pytest.raises(GlmscoreError, match=r"^first/all chunk 0 \(rows 0-3\): the worker scoring it was killed "
                       r"3 times, most likely for memory \(it held [1-9][\d,.]* [MG]iB; .*\), with batches down to 1 row\(s\); "
                       r"pass a smaller --batch-tokens or run on nodes with more memory\.$"):
        run(0, "killed")
    assert not (tmp_path / "killed" / MANIFEST).exists()


def test_token_limit_is_decided_once_from_the_config(tmp_path):
    """A card without a declared context (hub ids, local directories) takes the config's limit, and
    the encoder (prepare stage) enforces it under --long error instead of silently windowing."""
    from glmscore.models.backends.hf_causal import HFCausal
    from tests.tiny_models import make_tiny_llama

    path = make_tiny_llama(tmp_path / "ctx16", max_positions=16)
    card = resolve_card(str(path))
    assert card.max_context is None
    runtime = HFCausal.runtime(card, HFCausal.Options(), "cpu")
    assert runtime.token_limit == 16 and runtime.dtype == "float32"
    backend = load_backend(card)
    seq = "ACGT" * 6  # 24 bases + BOS
    with pytest.raises(GlmscoreError, match=r"exceed the model's context of 16 tokens \(cassette-1\)"):
        backend.encode([seq], ["cassette-1"])
    windowed = load_backend(card, long="window")
    assert windowed.runtime.token_limit == 16 and windowed.loglik_sequences([seq]).n_scored[0] == 24


def test_vllm_token_limit_is_max_model_len_minus_one(tiny_llama):
    """The prepare stage and the engine agree: vLLM keeps one slot for the generated token, so the
    limit is max_model_len - 1 (from the flag, else the card's or the config's context)."""
    from glmscore.models.backends.vllm_causal import VLLMCausal, VLLMOptions

    card = resolve_card(str(tiny_llama), backend="vllm")
    assert VLLMCausal.runtime(card, VLLMOptions(max_model_len=33), "cpu").token_limit == 32
    assert VLLMCausal.runtime(card, VLLMOptions(), "cpu").token_limit == 4095  # config: 4096 positions
    assert VLLMCausal.runtime(card, VLLMOptions(), "cuda").dtype == "bfloat16"
    runtime = VLLMCausal.runtime(card, VLLMOptions(max_model_len=33), "cpu")
    encoder = VLLMCausal.make_encoder(card, VLLMOptions(max_model_len=33), runtime)
    assert len(encoder.encode(["A" * 31])[0].ids) == 32  # BOS + 31: fits
    with pytest.raises(GlmscoreError, match="context of 32 tokens"):
        encoder.encode(["A" * 32], ["row-9"])


@pytest.mark.ray
def test_fingerprint_follows_the_weights_content(ray_cluster, small_nullsette, tmp_path):
    from tests.tiny_models import make_tiny_llama

    model = make_tiny_llama(tmp_path / "model", seed=0)
    common = dict(benchmark="nullsette", data=str(small_nullsette), model=str(model), limit=2,
                  datasets=["synthetic_ecoli"], chunk_rows=2)
    first = run_score(ScoreConfig(out=str(tmp_path / "s"), **common))
    assert first["weights"].startswith("sha256:") and first["device"] == "cpu" and first["dtype"] == "float32"
    assert first["glmscore"]["version"] and first["token_limit"] == 4096
    before = read_scores(tmp_path / "s", columns=["group", "pair_index", "score"])
    # the same weights written again (new modification times): same content, every shard reused
    shutil.rmtree(model)
    make_tiny_llama(model, seed=0)
    assert run_score(ScoreConfig(out=str(tmp_path / "s"), **common))["shards_reused"] == 20
    # different weights saved into the same directory: the old shards are not reused
    shutil.rmtree(model)
    make_tiny_llama(model, seed=5)
    with pytest.raises(GlmscoreError, match=r"another configuration \(the model's weights \(their content\)\)"):
        run_score(ScoreConfig(out=str(tmp_path / "s"), **common))
    again = run_score(ScoreConfig(out=str(tmp_path / "s"), overwrite=True, **common))
    assert again["shards_computed"] == 20 and again["weights"] != first["weights"]
    after = read_scores(tmp_path / "s", columns=["group", "pair_index", "score"])
    key = ["group", "pair_index"]
    assert not np.allclose(before.sort_values(key)["score"], after.sort_values(key)["score"])


@pytest.mark.ray
def test_shards_of_different_revisions_are_an_error(ray_cluster, small_nullsette, tmp_path):
    import pyarrow.parquet as pq

    from glmscore.pipelines import shards

    out = tmp_path / "s"
    common = dict(benchmark="nullsette", data=str(small_nullsette), model="kmer:3", out=str(out), limit=2,
                  datasets=["synthetic_ecoli"])
    run_score(ScoreConfig(**common))
    for revision, path in zip(("aaaa", "bbbb"), sorted(out.rglob("part-*.parquet"))[:2]):
        meta = {**shards.shard_meta(path), "resolved_revision": revision}
        shards.write_shard(path, pq.read_table(path).drop_columns(["dataset", "group"])
                           if "dataset" in pq.read_schema(path).names else pq.read_table(path), meta)
    with pytest.raises(GlmscoreError, match="different model revisions \\(aaaa, bbbb\\)"):
        run_score(ScoreConfig(**common))


def test_options_are_checked_where_they_are_declared(small_nullsette, tmp_path):
    common = dict(benchmark="nullsette", data=str(small_nullsette), out=str(tmp_path / "o"))
    with pytest.raises(GlmscoreError, match="--chunk-rows must be at least 1"):
        ScoreConfig(model="kmer:3", chunk_rows=0, **common)
    with pytest.raises(GlmscoreError, match="--max-actors must be at least --min-actors"):
        ScoreConfig(model="kmer:3", min_actors=3, max_actors=2, **common)
    with pytest.raises(GlmscoreError, match="--mlm-scoring does not apply to backend kmer"):
        run_score(ScoreConfig(model="kmer:3", options={"mlm_mode": "pll"}, **common))
    with pytest.raises(GlmscoreError, match="--assays does not apply to benchmark nullsette"):
        run_score(ScoreConfig(model="kmer:3", benchmark_options={"assays": ["x"]}, **common))
    with pytest.raises(GlmscoreError, match="gives no embeddings"):
        run_score(ScoreConfig(model="kmer:3", task="embed", **common))
    with pytest.raises(GlmscoreError, match="gives no scores"):
        run_score(ScoreConfig(model="onehot", **common))
    assert not (tmp_path / "o").exists()  # refused before Ray started or anything was written


def test_command_line_mistakes_are_one_sentence(capsys):
    """argparse's type and choice errors: one line naming the flag and where the help is, no usage block."""
    from glmscore.pipelines.cli import main

    for argv, says in [(["score", "--benchmark", "nullsette", "--data", "d", "--model", "kmer:2", "--out", "o", "--limit", "abc"],
                        "glmscore: error: argument --limit: invalid int value: 'abc' (see `glmscore score --help`)."),
                       (["scroe"], "glmscore: error: argument command: invalid choice: 'scroe'")]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.startswith(says) and len(err.strip().splitlines()) == 1, err


def test_progress_eta_comes_from_the_recent_rate_after_warm_up():
    """A job whose first unit waits 50 s for Ray and the model, then runs at 10 rows/s: the ETA is what
    is left at 10 rows/s (the rate over the whole elapsed time made it 20-35x too long)."""
    from glmscore.pipelines.console import Progress

    now = [0.0]
    p = Progress(1_000, clock=lambda: now[0])
    now[0] = 50.0
    p.update(10)
    assert "ETA -" in p.line()  # one point is no rate
    for _ in range(20):
        now[0] += 1.0
        p.update(10)
    assert p.rate() == pytest.approx(10.0)
    assert "10.0 rows/s" in p.line() and "ETA 79 s" in p.line()  # 790 rows left at 10 rows/s
    for _ in range(79):
        now[0] += 1.0
        p.update(10)
    assert p.line().endswith("done") and "1,000/1,000 rows (100%)" in p.line()


def test_progress_moves_with_the_rows_actors_report_and_says_what_it_waits_for():
    """A real-size model: 150 s before the first row, then 30 s per window. Before: no line until the first
    shard (150-225 s), then "0.0 rows/s". Now: a line every 10 s saying what the job waits for, the rows the
    actors report before any shard is written, and a rate a person can read."""
    import io

    from glmscore.pipelines.console import Progress, rate_text, redirect

    now = [0.0]
    seen = io.StringIO()
    with redirect(seen):
        p = Progress(20, "windows", clock=lambda: now[0])
        for t in range(2, 150, 2):  # the driver's watcher ticks every 2 s
            now[0] = float(t)
            p.observe(0)
            p.heartbeat("starting 1 model actor(s) and loading the model: 0 ready")
        waits = seen.getvalue().splitlines()
        assert len(waits) == 14 and all("loading the model: 0 ready; elapsed" in w for w in waits), waits
        now[0] = 180.0
        p.observe(1)  # the actor's first step: before any shard is written
        now[0] = 240.0
        p.observe(3)
        p.heartbeat("1 model actor(s) ready; scoring the first rows")
    line = seen.getvalue().splitlines()[-1]
    assert "3/20 windows (15%)" in line and "30.0 s/window" in line and "ETA 510 s" in line, line
    assert rate_text(12_345.67, "rows") == "12,345.7 rows/s" and rate_text(2.5, "rows") == "2.5 rows/s"
    p.update(20)  # finished shards are the authority: the line ends done
    assert p.line(now[0]).endswith("done")
    # Ray Tune pickles the trial-progress callback that holds one (its lock stays behind and is made anew)
    from ray import cloudpickle

    from glmscore.pipelines.console import trial_progress

    again = cloudpickle.loads(cloudpickle.dumps(trial_progress(3)))
    again.progress.update(1)
    assert again.progress.done == 1


def test_start_up_laps_add_up_to_the_time_before_the_first_row():
    from glmscore.pipelines.console import Laps

    now = [10.0]
    laps = Laps(clock=lambda: now[0])
    for name, took in [("input scan", 3.8), ("Ray start", 6.25), ("fit", 1.0), ("input scan", 0.5)]:
        now[0] += took
        laps.lap(name)
    assert laps.seconds() == {"input scan": 4.3, "Ray start": 6.25, "fit": 1.0}  # a phase met twice adds up
    assert laps.line() == "start-up 11.6 s: input scan 4.3 s, Ray start 6.2 s, fit 1.0 s"


def test_the_generic_job_names_no_backend_and_no_benchmark():
    """pipelines/score.py, pipelines/cli.py and models/loader.py reach backends and benchmarks only
    through their registries (a new one is one file, see docs/architecture.md)."""
    import re

    from tests.conftest import ROOT

    names = set(BACKENDS.names(aliases=True)) | set(BENCHMARKS.names())
    for path in ("pipelines/score.py", "pipelines/cli.py", "models/loader.py"):
        text = (ROOT / path).read_text()
        quoted = {n for n in names if re.search(rf"[\"']{re.escape(n)}[\"']", text)}
        assert not quoted, f"{path} names {sorted(quoted)}"


@pytest.mark.ray
def test_reverse_complement_averaging_scores_and_embeds_both_strands(ray_cluster, small_nullsette, tiny_llama, tmp_path):
    """--rc both: every row and its reverse complement, each scored (embedded) by the model's own backend
    as a direct call would, their mean in ``score`` and each strand beside it; embeddings side by side
    (a window pooling follows its bases onto the other strand: tests/benchmarks/variants)."""
    from glmscore.models.alphabet import reverse_complement
    from glmscore.models.pooling import Pooling

    common = dict(benchmark="nullsette", data=str(small_nullsette), model=str(tiny_llama), limit=2,
                  datasets=["synthetic_ecoli"], chunk_rows=8)
    bench = BENCHMARKS.get("nullsette")(str(small_nullsette), BENCHMARKS.get("nullsette").Options())
    rows = [bench.read(u) for u in bench.units(chunk_rows=8, limit=2, datasets=["synthetic_ecoli"])]
    seqs = {i: s for r in rows for i, s in zip(r.seq_ids, r.sequences)}
    assert reverse_complement("ACGTN") == "NACGT" and reverse_complement("AACGU") == "ACGUU"  # RNA stays RNA
    backend = load_backend(resolve_card(str(tiny_llama)))
    ids = sorted(seqs)

    both = run_score(ScoreConfig(out=str(tmp_path / "s"), rc="both", **common))
    assert both["config"]["rc"] == "both"
    got = read_scores(tmp_path / "s", columns=["seq_id", "score", "score_fwd", "score_rc"]).set_index("seq_id").loc[ids]
    fwd = backend.loglik_sequences([seqs[i] for i in ids]).score("mean")
    rev = backend.loglik_sequences([reverse_complement(seqs[i]) for i in ids]).score("mean")
    np.testing.assert_allclose(got["score_fwd"], fwd, rtol=1e-4)
    np.testing.assert_allclose(got["score_rc"], rev, rtol=1e-4)
    np.testing.assert_allclose(got["score"], (fwd + rev) / 2, rtol=1e-4)
    assert not np.allclose(fwd, rev)  # the strands do differ: the test can see which one was scored

    run_score(ScoreConfig(task="embed", out=str(tmp_path / "e"), rc="both", **common))
    emb = pd.read_parquet(tmp_path / "e", columns=["seq_id", "embedding"]).set_index("seq_id").loc[ids]
    got = np.stack(emb["embedding"].to_numpy())
    direct = [backend.embed(backend.encode(s), Pooling.parse("mean"), -1, None)
              for s in ([seqs[i] for i in ids], [reverse_complement(seqs[i]) for i in ids])]
    np.testing.assert_allclose(got, np.concatenate(direct, axis=1), rtol=1e-4, atol=1e-5)



def test_a_local_cluster_whose_raylet_is_late_is_started_again(tmp_path, monkeypatch, capsys):
    """Ray gives a local raylet a fixed 30 s to register; on a machine busy enough to miss it (CI with two test
    workers) glmscore shuts the attempt down and starts again, up to 3 times, then says so in one sentence.
    Ray's start is replaced here by one that times out as Ray's does (no machine can be made that busy on
    cue); the real start is what every other Ray test runs."""
    import ray

    from glmscore.pipelines import ray_session

    calls = []

    def late(**kwargs):
        calls.append(kwargs["address"])
        if calls.count("local") < 3:
            raise Exception("The current node timed out during startup. This could happen because some of the "
                            "raylet failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(ray, "init", late)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_session, "handle_sigterm", lambda: None)
    ray_session.start_ray("local", tmp_path)
    assert calls == ["local", "shutdown", "local", "shutdown", "local"]
    assert capsys.readouterr().err.count("starting it again (attempt") == 2
    calls.clear()
    monkeypatch.setattr(ray, "init", lambda **kwargs: (_ for _ in ()).throw(Exception("timed out during startup")))
    with pytest.raises(GlmscoreError, match=r"did not start within Ray's 30 s, 3 time\(s\)"):
        ray_session.start_ray("local", tmp_path)
