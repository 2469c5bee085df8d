"""glmscore as a library: the Python API (``glmscore.score/embed/analyze``), the Ray Data processor on a
user's own Dataset, and the wheel installed beside another project's top-level ``models`` package."""

import io
import os
import shutil
import subprocess
import sys
import venv
import zipfile

import numpy as np
import pytest

import glmscore
from glmscore.models.errors import GlmscoreError
from glmscore.pipelines.benchmark import BENCHMARKS
from tests.conftest import ROOT


def _rows(data, limit=4):
    bench = BENCHMARKS.get("nullsette")(str(data), BENCHMARKS.get("nullsette").Options())
    rows = [bench.read(u) for u in bench.units(chunk_rows=8, limit=limit, datasets=["synthetic_ecoli"])]
    return {i: s for r in rows for i, s in zip(r.seq_ids, r.sequences)}


@pytest.mark.ray
def test_processor_on_a_users_dataset_equals_the_score_job(ray_cluster, small_nullsette, tiny_llama, tmp_path):
    """A Dataset the user made (``ray.data.from_items``, with a column of their own) through
    ``glmscore.processor`` gives each sequence the score ``glmscore score`` gives it, keeps the user's columns,
    and embeds as ``glmscore embed`` does; the API's result objects read the shards back."""
    import ray

    seqs = _rows(small_nullsette)
    common = dict(benchmark="nullsette", data=str(small_nullsette), model=str(tiny_llama), limit=4,
                  datasets=["synthetic_ecoli"], chunk_rows=8)
    said = io.StringIO()
    with glmscore.console.redirect(said):
        job = glmscore.score(out=str(tmp_path / "s"), rc="mean", **common)
    assert "shards to compute" in said.getvalue()  # the library's lines went where the caller said
    assert job.rows == len(seqs) and job.manifest["config"]["rc"] == "mean" and "run" in job.timings
    want = job.to_pandas(columns=["seq_id", "score"]).set_index("seq_id")["score"]
    assert job.to_arrow(columns=["seq_id", "score"]).num_rows == len(seqs)

    ds = ray.data.from_items([{"seq_id": i, "sequence": s, "lab_tag": f"tag{n}"} for n, (i, s) in enumerate(seqs.items())])
    got = glmscore.processor(model=str(tiny_llama), reduction="mean", rc="mean", batch_size=3)(ds).to_pandas()
    assert {"seq_id", "sequence", "lab_tag", "score", "loglik_sum", "n_scored", "n_ambiguous", "truncated"} <= set(got.columns)
    assert not {"ids", "real", "ids_rc"} & set(got.columns)
    got = got.set_index("seq_id")
    np.testing.assert_allclose(got.loc[want.index, "score"], want, rtol=1e-5)
    assert got.loc[want.index[0], "lab_tag"].startswith("tag")

    emb_job = glmscore.embed(out=str(tmp_path / "e"), **common)
    emb_want = emb_job.to_pandas(columns=["seq_id", "embedding"]).set_index("seq_id")["embedding"]
    emb = glmscore.processor(model=str(tiny_llama), task="embed")(ds).to_pandas().set_index("seq_id")["embedding"]
    np.testing.assert_allclose(np.stack(emb.loc[emb_want.index]), np.stack(emb_want), rtol=1e-4, atol=1e-6)

    report = glmscore.analyze("nullsette", scores=[str(tmp_path / "s")], out=str(tmp_path / "r"))
    assert report.report.endswith("report.md") and os.path.isfile(report.report) and len(report.to_pandas())


def test_the_api_refuses_as_the_cli_does(small_nullsette, tiny_llama, tmp_path):
    with pytest.raises(GlmscoreError, match=r"^chunk_rwos: not an option of `glmscore score`"):
        glmscore.score("nullsette", small_nullsette, "kmer:3", tmp_path / "x", chunk_rwos=3)
    with pytest.raises(GlmscoreError, match="--chunk-rows must be at least 1"):
        glmscore.score("nullsette", small_nullsette, "kmer:3", tmp_path / "x", chunk_rows=0)
    with pytest.raises(GlmscoreError, match="is fitted on reference sequences; pass reference"):
        glmscore.processor(model="kmer:3")
    with pytest.raises(GlmscoreError, match="rc 'sideways'"):
        glmscore.processor(model=str(tiny_llama), rc="sideways")
    dry = glmscore.score("nullsette", small_nullsette, "kmer:3", tmp_path / "d", dry_run=True, limit=2)
    assert "nothing is started or written" in dry.manifest["dry_run"] and not (tmp_path / "d").exists()


@pytest.mark.ray
def test_a_fitted_baseline_in_the_processor(ray_cluster):
    import ray

    reference = ["ACGTACGTAC" * 5, "GGGCCCATATTA" * 4]
    ds = ray.data.from_items([{"sequence": "ACGTACGTACGT"}, {"sequence": "TTTTTTTTTTTT"}])
    got = glmscore.processor(model="kmer:2", reference=reference)(ds).to_pandas()
    assert got["score"].notna().all() and got.loc[0, "score"] > got.loc[1, "score"]  # the reference's k-mers score higher


def test_the_wheel_installs_as_one_namespace_beside_another_models_package(tmp_path):
    """``pip install glmscore`` puts one package, ``glmscore``, at the top of site-packages: a project with its own
    top-level ``models`` keeps it, and glmscore's rooms import as glmscore.models/pipelines/analysis."""
    wheels, src = tmp_path / "wheels", tmp_path / "src"  # built from a copy: setuptools writes build/ beside the source
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("glmscore", "models", "pipelines", "analysis"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("glmscore-*.whl"))
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"glmscore"}, tops
    names = zipfile.ZipFile(wheel).namelist()
    assert "glmscore/models/cards.yaml" in names and "glmscore/pipelines/benchmarks/nabench/source.py" in names

    other = tmp_path / "other" / "models"  # another project's top-level package named models
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("WHO = 'the other project'\n")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with zipfile.ZipFile(wheel) as z:  # what pip does with a pure-Python wheel: unpack it into site-packages
        z.extractall(site)
    (tmp_path / "venv" / "lib").mkdir(exist_ok=True)
    deps = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # glmscore's dependencies from this environment, after the new one's own site-packages; not its source tree
    with open(os.path.join(site, "zz_deps.pth"), "w") as f:
        f.write(deps + "\n")
    code = ("import models, glmscore, glmscore.models.cards as c, glmscore.pipelines.cli;"
            "print(models.WHO); print(c.__file__); print(len(c.shipped_cards()))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    ran = subprocess.run([str(python), "-c", code], cwd=tmp_path / "other", env=env, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    who, where, cards = ran.stdout.split("\n")[:3]
    assert who == "the other project" and where.startswith(site) and int(cards) > 10
