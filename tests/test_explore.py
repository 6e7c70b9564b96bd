"""The attention explorer: selection → numbers and figure against the evaluation's own results, the widget driven as a
click would, real-format data with images, and the notebook rendered by Voila in a real headless browser."""
import os, shutil, socket, subprocess, sys, time
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
import torch
from PIL import Image

from ccrlab.explore import Explorer, select, view, explorer_widget, png
from ccrlab.evaluate import encode_split, similarity_matrix
from ccrlab.train import RunConfig, run_experiment

from test_realdata import write_precomp

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_train=40, n_dev=10, n_test=12, n_proposals=12, epochs=1, batch_size=16, embed=16, word_dim=8,
            test_domains=["twemoji/A", "openmoji/B"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explore")
    for loss in ("none", "ccs"):
        run_experiment(RunConfig(loss=loss, out_dir=str(tmp / loss), cache_dir=str(tmp / "cache"), **TINY), progress=False, log=lambda *a: None)
    return tmp


def test_selection_matches_the_evaluation(runs):
    ex = Explorer([runs / "none", runs / "ccs"], domain="openmoji/B", cache_dir=str(runs / "cache"))
    assert ex.n_images == 12 and len(ex.captions(3)) == 5
    saved = {r.name: np.load(runs / r.name / "ranks_openmoji_B.npz")["t2i"] for r in ex.runs}
    for image in range(ex.n_images):
        for k in range(5):
            sel = select(ex, image, k)
            for r in sel["runs"]:
                assert r["rank"] == saved[r["run"]][sel["caption_index"]]       # the rank the run's evaluation saved
    # attention of one caption alone equals the batched attention of the whole split (padding and batch do not matter)
    rv = ex.runs[1]
    img, nr, cap, ln = encode_split(rv.model, rv.cs)
    c = 17
    wr = rv.model.pair_attention(img[c // 5:c // 5 + 1], nr[:1], cap[c:c + 1], ln[c:c + 1]).word_region()[0]
    sel = select(ex, c // 5, c % 5, 1)
    np.testing.assert_allclose(sel["runs"][1]["attention"], wr[1].numpy(), atol=1e-6)
    assert abs(sel["runs"][1]["attention"].sum() - 1) < 1e-5
    # the top retrieved images are the best-scored column of the full similarity matrix
    s = similarity_matrix(rv.model, img, nr, cap, ln)[:, c].numpy()
    assert sel["runs"][1]["top"] == np.argsort(-s, kind="stable")[:ex.top].tolist()


def test_figure_and_widget(runs):
    ex = Explorer([runs / "none", runs / "ccs"], domain="twemoji/A", cache_dir=str(runs / "cache"))
    fig = view(ex, 2, 1)
    assert len(fig.axes) == 2 * (1 + ex.top)
    ui = explorer_widget(ex)
    first = ui.figure.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and ui.shown == ui.state == (0, 0, ui.word.value)
    ui.image.value = 5                                          # as typing 5 in the image box
    assert [t for t, _ in ui.caption.options] == ex.captions(5) and ui.shown == (5, 0, ui.word.value)
    assert ui.figure.value != first
    ui.caption.value = 3
    assert [t.split(" ▣")[0] for t, _ in ui.word.options] == ex.words(5, 3) and ui.shown[:2] == (5, 3)
    ui.word.value = len(ui.word.options) - 1
    assert ui.shown == (5, 3, len(ui.word.options) - 1)
    assert str(ui.shown[0]) in ui.info.value or "rank" in ui.info.value


def test_bad_selections_and_runs_are_named(runs, tmp_path):
    ex = Explorer([runs / "none"], cache_dir=str(runs / "cache"))
    with pytest.raises(IndexError, match="image=99"): select(ex, 99)
    with pytest.raises(IndexError, match="caption=7"): select(ex, 0, 7)
    with pytest.raises(IndexError, match="word=50"): select(ex, 0, 0, 50)
    with pytest.raises(FileNotFoundError, match="best.pt"): Explorer([tmp_path / "nothing"])
    other = tmp_path / "other"
    run_experiment(RunConfig(loss="none", out_dir=str(other), cache_dir=str(runs / "cache"), **{**TINY, "n_test": 10}), progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="n_test=10 vs 12"): Explorer([runs / "none", other], cache_dir=str(runs / "cache"))


def test_real_features_with_images_and_boxes(tmp_path):
    root = tmp_path / "data"
    for split, n in (("train", 30), ("dev", 6), ("test", 6)):
        write_precomp(root / "f30k_precomp", split, n, regions=4, boxes=True)
    run_experiment(RunConfig(data_root=str(root), train_set="f30k_precomp", out_dir=str(tmp_path / "run"), epochs=1,
                             batch_size=10, embed=16, word_dim=8), progress=False, log=lambda *a: None)
    with pytest.raises(FileNotFoundError, match="image_dir"): Explorer([tmp_path / "run"])
    pics = tmp_path / "pics"; pics.mkdir()
    for k in range(6): Image.new("RGB", (400, 360), (40 * k, 90, 160)).save(pics / f"{100000 + k}.jpg")
    ex = Explorer([tmp_path / "run"], image_dir=pics)
    assert ex.image(2).shape == (360, 400, 3)
    sel = select(ex, 2, 0, 0)
    assert sel["runs"][0]["rank"] == np.load(tmp_path / "run" / "ranks_f30k_precomp.npz")["t2i"][10]
    assert len(view(ex, 2, 0, 0).axes) == 1 + ex.top
    (root / "f30k_precomp" / "test_boxes.npy").unlink()
    with pytest.raises(FileNotFoundError, match="test_boxes.npy"): Explorer([tmp_path / "run"], image_dir=pics)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(os.environ.get("CCRLAB_BROWSER_TEST") != "1" and CHROMIUM is None,
                    reason="needs Debian's chromium (make test installs it; set CCRLAB_BROWSER_TEST=1 to insist)")
def test_notebook_renders_in_a_headless_browser(runs, tmp_path):
    assert CHROMIUM, "chromium not found (apt-get install chromium)"
    from playwright.sync_api import sync_playwright
    nb = tmp_path / "explore.ipynb"
    pm.execute_notebook(str(ROOT / "nbs" / "explore.ipynb"), str(nb), prepare_only=True,
                        parameters={"runs": [str(runs / "none"), str(runs / "ccs")], "domain": "openmoji/B", "cache_dir": str(runs / "cache")})
    port = _free_port()
    voila = subprocess.Popen([sys.executable, "-m", "voila", str(nb), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
                              f"--Voila.root_dir={tmp_path}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            for _ in range(60):
                try: page.goto(f"http://127.0.0.1:{port}/", timeout=120_000); break
                except Exception: time.sleep(1)
            page.wait_for_selector(".widget-image img, img.widget-image", timeout=180_000)
            img = page.locator(".widget-image img, img.widget-image").first
            src0 = img.get_attribute("src")
            assert page.locator("select").count() >= 2 and "rank" in page.inner_text("body")
            page.locator("select").nth(1).select_option(index=2)           # another caption: the figure is redrawn
            page.wait_for_function("s => { const i = document.querySelector('.widget-image img, img.widget-image'); return i && i.src !== s; }", arg=src0, timeout=60_000)
            page.screenshot(path=str(tmp_path / "explorer.png"))
            browser.close()
    finally:
        voila.terminate()
        try: voila.wait(10)
        except subprocess.TimeoutExpired: voila.kill()
