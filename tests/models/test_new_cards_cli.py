"""The cards added for issue 41 on the user's path: ``glmscore sweep`` of ``--model lucaone`` and ``--model generrna``
by card id, their weights in the Hugging Face cache (where a login node's download leaves them; no network here),
scored by Ray actors that import the authors' package and adapt it (LucaOne) or map the nanoGPT checkpoint
(GenerRNA) in their own processes. The shards equal the card's backend run in this process on the same files,
which tests/models/test_luca_cards.py and test_generrna.py check against the packages' own forward passes."""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
import yaml

from glmscore.models.cards import import_package, shipped_cards
from glmscore.models.loader import load_backend
from glmscore.pipelines.fasta import read_all
from tests.models import test_generrna as generrna

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _snapshot(hub: os.PathLike, repo_id: str):
    """The cache folder of ``repo_id`` at main, as huggingface_hub lays it out after a download."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    folder = repo / "snapshots" / COMMIT
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    hf_home = tmp_path_factory.mktemp("hf")
    hub = hf_home / "hub"
    cards = shipped_cards()
    # LucaOne: the package's own masked-LM class and tokenizer at a tiny random size
    card = cards["lucaone"]
    try:
        import_package(card)
    except Exception as exc:  # noqa: BLE001 - the archs extra is not installed: say which
        pytest.skip(f"the lucaone package is not importable here: {exc}")
    module = importlib.import_module("lucaone")
    config = module.LucaGPLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = module.LucaGPLMForMaskedLM(config).eval()
    with torch.no_grad():
        model.lm_head.bias.normal_()
    luca = _snapshot(hub, card.hf_id)
    model.save_pretrained(luca)
    module.LucaGPLMTokenizer().save_pretrained(luca)
    # GenerRNA: the files its card downloads (model_updated.pt, tokenizer/) in the layout its train.py saves
    args = generrna.model_args(bias=True, block_size=1024)
    gpt = generrna.tiny_gpt(args)
    gen = _snapshot(hub, cards["generrna"].hf_id)
    generrna.release(gen, generrna.checkpoint(gpt, args), parts=1, name="model_updated.pt")
    generrna.write_tokenizer(gen / "tokenizer")
    return hf_home, {"lucaone": luca, "generrna": gen}


@pytest.mark.ray
def test_new_cards_by_id_from_the_hugging_face_cache_in_a_sweep(tmp_path, small_nullsette, hub_cache):
    hf_home, folders = hub_cache
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "out": "out", "local_cpus": 2, "max_parallel": 2, "defaults": {"threads_per_actor": 1},
        "models": [{"model": "lucaone"}, {"model": "generrna"}],
        "benchmarks": [{"name": "nullsette", "data": str(small_nullsette), "limit": 2,
                        "datasets": ["synthetic_ecoli"]}]}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "glmscore", "sweep", str(sweep)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    cards = shipped_cards()
    for card_id, folder in folders.items():
        scores = next(p for p in (tmp_path / "out").rglob("_manifest.json")
                      if json.loads(p.read_text())["model_card"]["id"] == card_id).parent
        manifest = json.loads((scores / "_manifest.json").read_text())
        assert manifest["model_card"]["hf_id"] == cards[card_id].hf_id
        df = pads.dataset(scores, format="parquet", partitioning="hive").to_table().to_pandas()
        assert len(df) == manifest["rows_total"] == 20 * 2 and np.isfinite(df["score"]).all()
        scorer = load_backend(cards[card_id].with_(hf_id=str(folder), revision=None), device="cpu")
        for group in ("nonmutant", "mutant_translocation4"):
            _, seqs = read_all(small_nullsette / "synthetic_ecoli" / f"{group}.txt")
            got = df[df["group"] == group].sort_values("pair_index")
            ref = scorer.loglik_sequences(seqs[:2])
            np.testing.assert_allclose(got["score"].to_numpy(), ref.mean, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{card_id} {group}")
        assert f"{card_id} x nullsette: 40 rows" in proc.stderr, proc.stderr[-4000:]
