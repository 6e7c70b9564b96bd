"""nbs/run.ipynb end to end through papermill, with tiny parameters, and its errors for bad parameters."""
import json
from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "nbs" / "run.ipynb"
TINY = dict(n_train=40, n_dev=10, n_test=10, n_proposals=12, epochs=2, batch_size=16, embed=32, word_dim=16)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def run(tmp_path, cache, **params):
    out = tmp_path / "out"
    pm.execute_notebook(str(RUN), str(tmp_path / "run.ipynb"), parameters={**TINY, "cache_dir": cache, "out_dir": str(out), **params},
                        cwd=str(ROOT / "nbs"), progress_bar=False, kernel_name="python3")
    return json.loads((out / "metrics.json").read_text()), out


@pytest.mark.parametrize("loss", ["none", "ccr", "ccs", "ccr+ccs"])
def test_each_loss_runs_to_the_end(tmp_path, cache, loss):
    m, out = run(tmp_path, cache, loss=loss)
    assert m["config"]["loss"] == loss
    assert set(m["results"]) == {"dev", "twemoji/A", "openmoji/B"}
    for r in m["results"].values():
        assert 0 <= r["t2i_r1"] <= 100 and 0 <= r["rsum"] <= 600
        assert r["attention"]["available"] and 0 <= r["attention"]["f1"] <= 1
    terms = set(m["history"][0])
    assert ("loss_ccr" in terms) == ("ccr" in loss) and ("loss_ccs" in terms) == ("ccs" in loss)
    assert {"recall.png", "attention.png", "curves.png", "best.pt", "last.pt"} <= {p.name for p in out.iterdir()}
    assert m["times"]["total_s"] > 0 and m["versions"]["torch"]


def test_image_to_text_and_other_negatives(tmp_path, cache):
    m, _ = run(tmp_path, cache, model="scan_i2t", loss="ccr+ccs", ccr_negative="least", ccs_negative="image", test_domains=["openmoji/A"])
    assert set(m["results"]) == {"dev", "openmoji/A"}


@pytest.mark.parametrize("model", ["bfan", "saf", "sgr"])
def test_every_matcher_runs_with_both_constraints(tmp_path, cache, model):
    m, out = run(tmp_path, cache, model=model, loss="ccr+ccs", test_domains=["openmoji/B"])
    r = m["results"]["openmoji/B"]
    assert m["config"]["model"] == model and 0 <= r["rsum"] <= 600 and r["attention"]["available"]
    assert m["history"][-1]["loss_ccr"] >= 0 and m["history"][-1]["loss_ccs"] >= 0
    assert {"recall.png", "attention.png", "best.pt"} <= {p.name for p in out.iterdir()}


def test_pretrained_minilm_text_encoder(tmp_path, cache):
    m, _ = run(tmp_path, cache, text_encoder="minilm", finetune_text=False, loss="ccs", test_domains=["openmoji/B"], epochs=1)
    r = m["results"]["openmoji/B"]
    assert r["attention"]["available"] and r["attention"]["tokens"] > 0     # grounding reached the word pieces
    assert r["unk_rate"] < 0.01                                             # no vocabulary gap with word pieces


@pytest.mark.parametrize("params, message", [
    ({"text_encoder": "bert"}, "text_encoder='bert': expected one of ('bigru', 'minilm')"),
    ({"loss": "foo"}, "loss='foo': expected one of ('none', 'ccr', 'ccs', 'ccr+ccs')"),
    ({"epochs": 0}, "epochs=0: expected a positive integer"),
    ({"model": "bert"}, "model='bert': expected one of"),
    ({"test_domains": ["twemoji/C"]}, "domain 'twemoji/C': expected art/caption-style"),
    ({"lambda_r": -1.0}, "lambda_r=-1.0: expected a number ≥ 0"),
    ({"data_root": "/nonexistent/data", "train_set": "f30k_precomp"}, "data_root not found"),
    ({"data_root": "/tmp"}, "expected train_set"),
])
def test_bad_parameters_give_a_clear_error(tmp_path, cache, params, message):
    with pytest.raises(pm.PapermillExecutionError) as e:
        run(tmp_path, cache, **params)
    assert message in e.value.evalue, e.value.evalue
    assert e.value.ename in ("ValueError", "FileNotFoundError")
