"""Real-dataset code on tiny folders written in exactly the formats of the released precomputed features
(SCAN / BFAN / SGRAF / VSE∞ layout) and of Flickr30k Entities."""
import json
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
import torch

from ccrlab.data import PrecompSplit, CaptionSet, Vocab
from ccrlab.entities import write_entities_example, entities_grounding
from ccrlab.evaluate import recall_metrics, recall_folds, relevance, attended_set, prf
from ccrlab.train import RunConfig, prepare_data

ROOT = Path(__file__).resolve().parents[1]
WORDS = "a man woman dog cat ball street red blue sits runs holds near on the with small large".split()


def write_precomp(folder, split, n_img, regions=36, dim=8, per_image=5, seed=0, words=WORDS, boxes=False):
    """`{split}_ims.npy` (images × regions × dim, float32), `{split}_caps.txt` (per_image lines an image, in order),
    `{split}_ids.txt`; image k's features carry k in dimension 0 and its captions end with the token `imgk`."""
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ims = rng.normal(size=(n_img, regions, dim)).astype(np.float32); ims[:, :, 0] = np.arange(n_img)[:, None]
    np.save(folder / f"{split}_ims.npy", ims)
    caps = [" ".join(rng.choice(words, size=rng.integers(4, 9))) + f" img{k} ." for k in range(n_img) for _ in range(per_image)]
    (folder / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")
    (folder / f"{split}_ids.txt").write_text("\n".join(str(100000 + k) for k in range(n_img)) + "\n")
    if boxes:
        xy = rng.uniform(0, 300, size=(n_img, regions, 2))
        np.save(folder / f"{split}_boxes.npy", np.concatenate([xy, xy + 50], -1).astype(np.float32))
    return caps


def test_captions_and_images_stay_aligned(tmp_path):
    write_precomp(tmp_path / "f30k_precomp", "train", 12)
    sp = PrecompSplit(tmp_path / "f30k_precomp", "train")
    assert (sp.n_images, sp.per_image, len(sp), len(sp.ids)) == (12, 5, 60, 12)
    assert isinstance(sp.ims, np.memmap)                      # opened memory-mapped, not loaded
    cs = CaptionSet(sp, Vocab.build(sp.captions))
    b = cs.batch(np.arange(60))
    for j in range(60):
        k = int(b.images[j, 0, 0])
        assert k == j // 5 and cs.vocab.decode(b.tokens[j, : b.lengths[j]])[-2] == f"img{k}"


def test_coco_splits_dev_is_cut_to_5000_captions_and_testall_has_five_folds(tmp_path):
    root = tmp_path / "data"
    write_precomp(root / "coco_precomp", "train", 30)
    write_precomp(root / "coco_precomp", "dev", 1014, regions=4, dim=8)
    write_precomp(root / "coco_precomp", "testall", 5000, regions=4, dim=8)
    write_precomp(root / "coco_precomp", "test", 1000, regions=4, dim=8)
    d = prepare_data(RunConfig(data_root=str(root), train_set="coco_precomp", out_dir=str(tmp_path / "o")), progress=False)
    assert (len(d.dev), d.dev.split.n_images) == (5000, 1000)
    ts = d.tests["coco_precomp"].split
    assert (ts.split, ts.n_images, len(d.tests["coco_precomp"])) == ("testall", 5000, 25000)
    assert d.folds == {"coco_precomp": 1000}
    d1 = prepare_data(RunConfig(data_root=str(root), train_set="coco_precomp", test_split="test", out_dir=str(tmp_path / "o")), progress=False)
    assert d1.tests["coco_precomp"].split.split == "test" and d1.folds == {}


def test_five_fold_average_equals_the_folds_computed_alone():
    g = torch.Generator().manual_seed(0)
    sims = torch.rand(5000, 25000, generator=g)
    sims.view(5000, 5000, 5)[torch.arange(5000), torch.arange(5000)] = -1.0   # every image's own captions score lowest …
    for f in range(5):                                        # scores across folds are high: they must be ignored by 1K
        sims[f * 1000:(f + 1) * 1000, : f * 5000] += 10; sims[f * 1000:(f + 1) * 1000, (f + 1) * 5000:] += 10
        sims[torch.arange(f * 1000, f * 1000 + 100 * (f + 1)), torch.arange(f * 5000, f * 5000 + 500 * (f + 1), 5) + 2] = 5.0
    r = recall_folds(sims)
    # … except in fold f images f*1000 … f*1000+100(f+1)-1, which find their third caption first: i2t R@1 = 10(f+1)%
    assert [m["i2t_r1"] for m in r["folds"]] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert r["mean"]["i2t_r1"] == 30.0
    alone = [recall_metrics(sims[f * 1000:(f + 1) * 1000, f * 5000:(f + 1) * 5000]) for f in range(5)]
    for k in ("t2i_r1", "t2i_r5", "rsum", "i2t_medr"):
        assert r["mean"][k] == pytest.approx(np.mean([a[k] for a in alone]))
    assert recall_metrics(sims)["i2t_r1"] < 1.0               # the 5K protocol sees the cross-fold scores


def test_i2t_counts_the_best_of_five_captions():
    sims = torch.zeros(3, 15)
    sims[0, 4] = 1.0                                          # image 0: only its 5th caption on top → rank 1
    sims[1, 0] = 2.0; sims[1, 9] = 1.0                        # image 1: best of its own (caption 9) ranks 2nd
    sims[2, 10:15] = -1.0; sims[2, :10] = 0.5                 # image 2: all ten others above → rank 11
    r = recall_metrics(sims)
    assert (r["i2t_r1"], r["i2t_r5"], r["i2t_r10"]) == pytest.approx((100 / 3, 200 / 3, 200 / 3))
    assert r["i2t_medr"] == 2.0 and r["i2t_meanr"] == pytest.approx((1 + 2 + 11) / 3)


def test_transfer_uses_the_training_vocabulary_and_reports_unknown_words(tmp_path):
    root = tmp_path / "data"
    write_precomp(root / "coco_precomp", "train", 20, words=["a", "dog", "runs"])
    write_precomp(root / "coco_precomp", "dev", 4, words=["a", "dog", "runs"])
    caps = write_precomp(root / "f30k_precomp", "test", 3, words=["a", "zebra"], seed=1)
    d = prepare_data(RunConfig(data_root=str(root), train_set="coco_precomp", test_sets=["f30k_precomp"], out_dir=str(tmp_path / "o")), progress=False)
    cs = d.tests["f30k_precomp"]
    known = set(d.vocab.itos)
    toks = [t for c in caps for t in c.lower().split()]
    assert "zebra" not in known and "img20" not in known       # f30k's own words and image tags are unseen
    assert cs.unk_rate == pytest.approx(sum(t not in known for t in toks) / len(toks))
    unk = d.vocab.stoi["<unk>"]
    for c, ids in zip(caps, cs.ids):
        assert [i == unk for i in ids] == [t not in known for t in c.lower().split()]


def test_entities_phrases_map_to_tokens_and_give_attention_metrics(tmp_path):
    ids = write_entities_example(tmp_path / "entities", tmp_path / "f30k_precomp")
    st = entities_grounding(tmp_path / "entities", tmp_path / "f30k_precomp", "test", ids)
    assert st["captions"] == 10 and st["unboxed_phrases"] == 4   # "soccer" (no box), "a field", "grass", "the woods" (scene)
    sp = PrecompSplit(tmp_path / "f30k_precomp", "test")
    recs = sp.grounding()
    nested = recs[1]["phrases"]                                   # "a man in a red shirt" ⊃ "a red shirt"
    assert [p["span"] for p in nested][:2] == [[0, 6], [3, 6]] and nested[0]["entity"] == "4"
    assert len(recs[0]["phrases"][0]["boxes"]) == 2               # "two men": one entity, two boxes
    rel = relevance(recs[0], sp.boxes[0], 8)                      # regions 0 and 1 were written on the two men
    assert rel[0, :2].all() and rel[1, :2].all() and not rel[2:].any()
    w = torch.full((8, 36), 0.5 / 35); w[:, 1] = 0.5              # half the attention on region 1 (a man): attended = {1}
    m = prf(attended_set(w), rel, w)
    assert (m["precision"], m["recall"], m["tokens"]) == (1.0, 0.5, 2)


@pytest.mark.parametrize("make, file, message", [
    (lambda f: (f / "test_caps.txt").write_text("a\n" * 7), "test_caps.txt", "7 captions for 2 images"),
    (lambda f: np.save(f / "test_ims.npy", np.zeros((2, 36), np.float32)), "test_ims.npy", "expected images × regions × dim"),
    (lambda f: np.save(f / "test_boxes.npy", np.zeros((3, 36, 4), np.float32)), "test_boxes.npy", "do not match features"),
    (lambda f: (f / "test_ids.txt").write_text("1\n2\n3\n"), "test_ids.txt", "3 ids for 2 images"),
])
def test_bad_real_files_name_the_file(tmp_path, make, file, message):
    f = tmp_path / "f30k_precomp"
    write_precomp(f, "test", 2)
    make(f)
    with pytest.raises(ValueError) as e:
        PrecompSplit(f, "test")
    assert str(f / file) in str(e.value) and message in str(e.value)


def test_missing_split_and_broken_entities_file_name_the_file(tmp_path):
    f = tmp_path / "f30k_precomp"
    write_precomp(f, "test", 2)
    with pytest.raises(FileNotFoundError, match="dev_ims.npy"):
        PrecompSplit(f, "dev")
    ids = write_entities_example(tmp_path / "entities", tmp_path / "g")
    (tmp_path / "entities" / "Annotations" / "1001.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match="1001.xml: not a readable Entities annotation"):
        entities_grounding(tmp_path / "entities", tmp_path / "g", "test", ids)


def test_coco_to_flickr_zero_shot_run_through_papermill(tmp_path):
    root = tmp_path / "data"
    write_precomp(root / "coco_precomp", "train", 60, regions=8)
    write_precomp(root / "coco_precomp", "dev", 20, regions=8)
    write_precomp(root / "coco_precomp", "testall", 2000, regions=8)
    ids = write_entities_example(tmp_path / "entities", root / "f30k_precomp")   # Flickr30k test: 2 images with boxes
    entities_grounding(tmp_path / "entities", root / "f30k_precomp", "test", ids)
    out = tmp_path / "run"
    pm.execute_notebook(str(ROOT / "nbs" / "run.ipynb"), str(tmp_path / "run.ipynb"), cwd=str(ROOT / "nbs"), progress_bar=False,
                        kernel_name="python3", parameters=dict(data_root=str(root), train_set="coco_precomp",
                        test_sets=["f30k_precomp", "coco_precomp"], epochs=1, batch_size=16, embed=16, word_dim=8, loss="ccr+ccs", out_dir=str(out)))
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["results"]) == {"dev", "f30k_precomp", "coco_precomp"}
    assert m["splits"] == {"f30k_precomp": "test", "coco_precomp": "testall"}
    coco, f30k = m["results"]["coco_precomp"], m["results"]["f30k_precomp"]
    assert coco["n_images"] == 2000 and len(coco["folds"]["folds"]) == 2 and 0 <= coco["folds"]["mean"]["rsum"] <= 600
    assert f30k["attention"]["available"] and 0 <= f30k["attention"]["f1"] <= 1 and f30k["unk_rate"] > 0
    assert not coco["attention"]["available"] and "no testall_grounding.jsonl" in coco["attention"]["reason"]


@pytest.mark.parametrize("name", ["paper_coco.yaml", "paper_f30k.yaml"])
def test_paper_parameter_files_are_valid_run_parameters(tmp_path, name):
    import yaml
    params = yaml.safe_load((ROOT / "nbs" / "params" / name).read_text())
    known = pm.inspect_notebook(str(ROOT / "nbs" / "run.ipynb"))
    assert set(params) <= set(known), set(params) - set(known)
    cfg = RunConfig(**params, data_root=str(tmp_path), out_dir=str(tmp_path / "o"))
    assert (cfg.embed, cfg.word_dim, cfg.batch_size, cfg.lr) == (1024, 300, 128, 2e-4) and cfg.lr_update == cfg.epochs // 2
