"""Properties of the built-in benchmark that would fail if it were wrong."""
import json, os
import numpy as np
import pytest

from ccrlab.data import PrecompSplit, tokenize
from ccrlab.features import BenchmarkConfig, build_benchmark, cache_root, parse_domain
from ccrlab.scenes import (ART_STYLES, CONCEPT, IOU_BANDS, SceneConfig, box_iou, make_example, object_boxes,
                           plural, propose_boxes, sample_scene, scene_proposals, sprite)

TINY = BenchmarkConfig(SceneConfig(n_proposals=12), n_train=12, n_dev=6, n_test=6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return build_benchmark(TINY, "twemoji/A", ("twemoji/A", "openmoji/B", "openmoji/A"), cache_dir=cache, progress=False)


def test_boxes_inside_canvas_and_centred_in_cells():
    cfg = SceneConfig()
    for i in range(300):
        sc = sample_scene(cfg, "train", i)
        assert 2 <= len(sc.objects) <= 5 and len(sc.groups()) >= 2
        for art in ART_STYLES:
            b = object_boxes(sc, art)
            assert (b[:, :2] >= 0).all() and (b[:, 2:] <= cfg.canvas).all() and (b[:, 2:] > b[:, :2]).all()
            for o, bb in zip(sc.objects, b):
                assert abs((bb[0] + bb[2]) / 2 - o.center[0]) <= 1 and abs((bb[1] + bb[3]) / 2 - o.center[1]) <= 1


def test_proposals_have_the_intended_iou_spread():
    cfg, best, bands = SceneConfig(), [], np.zeros(len(IOU_BANDS))
    for i in range(100):
        sc = sample_scene(cfg, "dev", i)
        boxes, props = scene_proposals(cfg, "dev", i, sc, "twemoji")
        iou = box_iou(boxes, props)
        best += iou.max(1).tolist()
        for j, (lo, hi) in enumerate(IOU_BANDS):
            bands[j] += ((iou >= lo) & (iou <= hi)).sum()
        assert len(props) == cfg.n_proposals
    assert min(best) >= 0.8, "every object needs a near-exact proposal"
    assert (bands > 0.1 * bands.sum() / len(bands)).all(), f"IoU bands unevenly filled: {bands}"


def test_relevant_regions_exist_for_every_object():
    cfg = SceneConfig()
    for i in range(50):
        for art in ART_STYLES:
            ex = make_example(cfg, "test", i, art, "A")
            assert ((box_iou(ex.boxes, ex.proposals) >= 0.5).sum(1) >= 2).all()


def test_grounding_records_match_captions_and_boxes(tiny):
    root, folders = tiny
    for d, folder in folders.items():
        art, style = parse_domain(d)
        for split in (["train", "dev", "test"] if d == "twemoji/A" else ["test"]):
            sp = PrecompSplit(folder, split)
            recs = sp.grounding()
            assert len(recs) == len(sp.captions) == 5 * sp.n_images
            for j, (cap, rec) in enumerate(zip(sp.captions, recs)):
                assert rec["image"] == j // 5 and rec["tokens"] == tokenize(cap)
                sc = sample_scene(TINY.scenes, split, rec["image"])
                boxes = object_boxes(sc, art)
                for p in rec["phrases"]:
                    s, e = p["span"]
                    assert 0 <= s < e <= len(rec["tokens"])
                    np.testing.assert_allclose(p["boxes"], boxes[p["objects"]])
                    assert all(sc.objects[i].concept == p["concept"] for i in p["objects"])
                    words, n = rec["tokens"][s:e], len(p["objects"])
                    names = [tokenize(w if n == 1 else plural(w)) for w in CONCEPT[p["concept"]].words(style)]
                    assert any(words[-len(x):] == x for x in names), (words, p["concept"])


def test_art_shift_changes_pixels_not_scenes(tiny):
    root, folders = tiny
    a, b = PrecompSplit(folders["twemoji/A"], "test"), PrecompSplit(folders["openmoji/A"], "test")
    assert a.captions == b.captions
    fa, fb = np.asarray(a.ims, np.float32), np.asarray(b.ims, np.float32)
    assert np.isfinite(fa).all() and np.isfinite(fb).all()
    assert np.abs(fa[..., :1280] - fb[..., :1280]).mean() > 0.05 * np.abs(fa[..., :1280]).mean()


def test_same_config_is_byte_identical(tmp_path):
    r1, f1 = build_benchmark(TINY, "twemoji/A", ("openmoji/B",), cache_dir=tmp_path / "a", progress=False)
    r2, f2 = build_benchmark(TINY, "twemoji/A", ("openmoji/B",), cache_dir=tmp_path / "b", progress=False)
    for d in f1:
        for name in sorted(p.name for p in f1[d].iterdir() if p.suffix in (".txt", ".jsonl") or p.name.endswith("_boxes.npy")):
            assert (f1[d] / name).read_bytes() == (f2[d] / name).read_bytes(), name


def test_bad_input_errors(tmp_path, tiny):
    with pytest.raises(ValueError, match="art style 'noto'"):
        sprite("dog", "noto")
    with pytest.raises(ValueError, match="domain 'twemoji/C'"):
        build_benchmark(TINY, "twemoji/C", (), cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="n_proposals=3: K must be at least"):
        SceneConfig(n_proposals=3)
    with pytest.raises(ValueError, match="fewer proposals than the 4 objects"):
        propose_boxes(np.array([[0, 0, 10, 10]] * 4, np.float32), 3, 64, np.random.default_rng(0))
    blocker = tmp_path / "file"; blocker.write_text("x")
    with pytest.raises(PermissionError, match="cache folder is not writable"):
        cache_root(blocker / "cache")
    root, folders = tiny
    bad = tmp_path / "bad_precomp"; bad.mkdir()
    for f in folders["openmoji/B"].iterdir():
        if f.name.startswith("test_"): (bad / f.name).write_bytes(f.read_bytes())
    (bad / "test_ims.npy").write_bytes((bad / "test_ims.npy").read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"bad_precomp/test_ims.npy: unreadable .npy file, truncated"):
        PrecompSplit(bad, "test")
