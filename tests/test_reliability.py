"""Reliability: kill and resume, determinism, bad input, several processes."""
import json, os, random, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch

import ccrlab.train as T
from ccrlab.data import PrecompSplit
from ccrlab.train import RunConfig, prepare_data, run_experiment, read_checkpoint, save_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_train=40, n_dev=10, n_test=10, n_proposals=12, epochs=3, batch_size=16, embed=32, word_dim=16,
            loss="ccr+ccs", test_domains=["openmoji/B"])

# A run in its own process: config as JSON; optionally the process kills itself (SIGKILL) or asks itself to stop
# (SIGTERM) after a given step of a given epoch.
SCRIPT = """
import json, os, signal, sys
from ccrlab.train import RunConfig, run_experiment, TrainingInterrupted
cfg = RunConfig(**json.loads(sys.argv[1]))
kill = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
def on_step(epoch, step):
    if kill and (epoch, step) == tuple(kill["at"]): os.kill(os.getpid(), getattr(signal, kill["signal"]))
try: run_experiment(cfg, progress=False, log=lambda s: None, on_step=on_step)
except TrainingInterrupted as e: print(e); sys.exit(3)
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    c = tmp_path_factory.mktemp("cache")
    prepare_data(RunConfig(**TINY, cache_dir=str(c), out_dir=str(c / "x")), progress=False)   # build once
    return str(c)


def run_proc(tmp_path, cache, out, kill=None, **over):
    cfg = {**TINY, "cache_dir": cache, "out_dir": str(out), **over}
    script = tmp_path / "run.py"; script.write_text(SCRIPT)
    args = [sys.executable, str(script), json.dumps(cfg)] + ([json.dumps(kill)] if kill else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def numbers(out):
    "Every number of metrics.json except wall times."
    m = json.loads((Path(out) / "metrics.json").read_text())
    hist = [{k: v for k, v in h.items() if k != "train_time_s"} for h in m["history"]]
    return {"results": m["results"], "history": hist, "best": m["best"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
    tmp = tmp_path_factory.mktemp("ref")
    r = run_proc(tmp, cache, tmp / "out")
    assert r.returncode == 0, r.stderr[-2000:]
    return numbers(tmp / "out")


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, cache, reference):
    out = tmp_path / "out"
    r = run_proc(tmp_path, cache, out, kill={"at": [1, 5], "signal": "SIGKILL"})
    assert r.returncode == -signal.SIGKILL
    assert read_checkpoint(out / "last.pt")["epoch"] == 1 and not (out / "metrics.json").exists()
    r = run_proc(tmp_path, cache, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert numbers(out) == reference                      # exact equality, every number


def test_sigterm_saves_at_the_step_and_resume_is_bit_identical(tmp_path, cache, reference):
    out = tmp_path / "out"
    r = run_proc(tmp_path, cache, out, kill={"at": [1, 4], "signal": "SIGTERM"})
    assert r.returncode == 3 and "SIGTERM: stopped at epoch 2, step 5" in r.stdout
    ck = read_checkpoint(out / "last.pt")
    assert (ck["epoch"], ck["step"]) == (1, 5)
    r = run_proc(tmp_path, cache, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert numbers(out) == reference


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, cache, reference):
    run_experiment(RunConfig(**TINY, cache_dir=cache, out_dir=str(tmp_path / "a")), progress=False, log=lambda s: None)
    assert numbers(tmp_path / "a") == reference
    run_experiment(RunConfig(**TINY, cache_dir=cache, out_dir=str(tmp_path / "b"), seed=1), progress=False, log=lambda s: None)
    other = numbers(tmp_path / "b")
    assert other["history"][0]["loss_total"] != reference["history"][0]["loss_total"]


def test_finished_run_is_not_trained_again(tmp_path, cache, reference):
    cfg = RunConfig(**TINY, cache_dir=cache, out_dir=str(tmp_path / "a"))
    run_experiment(cfg, progress=False, log=lambda s: None)
    logs = []
    run_experiment(cfg, progress=False, log=logs.append)
    assert any("training already complete" in l for l in logs) and numbers(tmp_path / "a") == reference


# ---------------------------------------------------------------- bad input
def _precomp(folder, n=4, caps=None, feats=None):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "test_ims.npy", feats if feats is not None else np.random.default_rng(0).normal(size=(n, 3, 8)).astype(np.float32))
    (folder / "test_caps.txt").write_text("\n".join(caps or [f"a dog {i}" for i in range(5 * n)]) + "\n")
    return folder


def test_empty_data_folder(tmp_path):
    (tmp_path / "coco_precomp").mkdir()
    with pytest.raises(FileNotFoundError, match="coco_precomp/train_ims.npy"):
        prepare_data(RunConfig(data_root=str(tmp_path), train_set="coco_precomp", out_dir=str(tmp_path / "o")), progress=False)


def test_wrong_split_name(tmp_path):
    with pytest.raises(ValueError, match=r"split='validation': expected one of \('train', 'dev', 'test', 'testall'\)"):
        PrecompSplit(_precomp(tmp_path / "f"), "validation")


def test_nan_and_inf_in_features(tmp_path):
    f = np.ones((4, 3, 8), np.float32); f[2, 1, 5] = np.nan
    with pytest.raises(ValueError, match="test_ims.npy: NaN or inf in the features of image 2"):
        PrecompSplit(_precomp(tmp_path / "f", feats=f), "test")
    f[2, 1, 5] = np.inf; f[2, 1, 5] = 1.0; f[3, 0, 0] = -np.inf
    with pytest.raises(ValueError, match="image 3"):
        PrecompSplit(_precomp(tmp_path / "g", feats=f), "test")


def test_empty_caption_line(tmp_path):
    caps = [f"a dog {i}" for i in range(20)]; caps[7] = "  "
    with pytest.raises(ValueError, match="test_caps.txt: empty caption on line 8"):
        PrecompSplit(_precomp(tmp_path / "f", caps=caps), "test")


def test_caption_of_only_unknown_words_is_reported(tmp_path):
    from ccrlab.data import CaptionSet, Vocab
    caps = [f"a dog {i}" for i in range(20)]; caps[3] = "zebras graze"
    sp = PrecompSplit(_precomp(tmp_path / "f", caps=caps), "test")
    with pytest.warns(UserWarning, match="test_caps.txt: 1 caption.* only of words outside the training vocabulary \\(first: line 4\\)"):
        cs = CaptionSet(sp, Vocab.build(["a dog"]))
    assert cs.all_unknown == [3]


def test_feature_dimension_other_than_the_checkpoint(tmp_path):
    from ccrlab.data import CaptionSet, Vocab
    from ccrlab.evaluate import evaluate
    from ccrlab.models import build_model, ModelConfig
    sp = PrecompSplit(_precomp(tmp_path / "f"), "test")
    m = build_model(ModelConfig(feat_dim=16, vocab_size=20, embed=8, word_dim=4))
    with pytest.raises(ValueError, match="test_ims.npy: features of dimension 8, but the model was trained on dimension 16"):
        evaluate(m, CaptionSet(sp, Vocab.build(sp.captions)))


@pytest.mark.parametrize("params, message", [
    ({"model": "vilbert"}, "model='vilbert': expected one of"),
    ({"loss": "ccx"}, "loss='ccx': expected one of"),
    ({"ccr_negative": "random"}, "ccr_negative='random': expected one of ('reversed', 'least')"),
    ({"ccs_negative": "caption"}, "ccs_negative='caption': expected one of ('fragment', 'image')"),
    ({"train_domain": "emoji/A"}, "domain 'emoji/A'"),
    ({"batch_size": -4}, "batch_size=-4: expected a positive integer"),
    ({"embed": 0}, "embed=0: expected a positive integer"),
    ({"n_train": 0}, "n_train=0"),
    ({"lambda_s": -0.1}, "lambda_s=-0.1: expected a number ≥ 0"),
    ({"resume": "maybe"}, "resume='maybe': expected auto, off or require"),
    ({"test_split": "val"}, "test_split='val': expected auto, test or testall"),
])
def test_bad_parameter_values(params, message):
    with pytest.raises(ValueError) as e:
        RunConfig(**params)
    assert message in str(e.value), str(e.value)


def test_checkpoint_of_another_model_or_run_is_refused(tmp_path, cache):
    out = tmp_path / "out"
    run_experiment(RunConfig(**{**TINY, "epochs": 1}, model="scan_i2t", cache_dir=cache, out_dir=str(out)), progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match="last.pt: a checkpoint of model 'scan_i2t'; this run is model 'scan_t2i'"):
        run_experiment(RunConfig(**TINY, cache_dir=cache, out_dir=str(out)), progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match=r"the checkpoint is of another run \(epochs=1 there, 3 here.*lr=0.0006 there, 0.001 here"):
        run_experiment(RunConfig(**TINY, model="scan_i2t", lr=1e-3, cache_dir=cache, out_dir=str(out)), progress=False, log=lambda s: None)


def test_truncated_checkpoint(tmp_path, cache):
    out = tmp_path / "out"
    run_experiment(RunConfig(**{**TINY, "epochs": 1}, cache_dir=cache, out_dir=str(out)), progress=False, log=lambda s: None)
    data = (out / "last.pt").read_bytes(); (out / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="last.pt: unreadable checkpoint, truncated or corrupt"):
        run_experiment(RunConfig(**{**TINY, "epochs": 1}, cache_dir=cache, out_dir=str(out)), progress=False, log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="resume='require' but there is no checkpoint"):
        run_experiment(RunConfig(**TINY, resume="require", cache_dir=cache, out_dir=str(tmp_path / "new")), progress=False, log=lambda s: None)


def test_out_dir_not_writable(tmp_path, cache):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="out_dir=.*file/run': not writable"):
        run_experiment(RunConfig(**TINY, cache_dir=cache, out_dir=str(tmp_path / "file" / "run")), progress=False, log=lambda s: None)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, cache, monkeypatch):
    out = tmp_path / "out"
    run_experiment(RunConfig(**{**TINY, "epochs": 1}, cache_dir=cache, out_dir=str(out)), progress=False, log=lambda s: None)
    before = (out / "last.pt").read_bytes()
    model, vocab, ck = load_checkpoint(out / "last.pt")
    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"partial"); raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="last.pt: write failed \\(No space left on device\\); the previous last.pt, if any, is unchanged"):
        save_checkpoint(out / "last.pt", model, None, RunConfig(**TINY), vocab, 9, ck["best"], [])
    assert (out / "last.pt").read_bytes() == before and read_checkpoint(out / "last.pt")["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".last.pt")]      # no temporary file left behind


def test_nan_loss_stops_with_step_and_terms_and_keeps_last_good_checkpoint(tmp_path, cache, monkeypatch):
    real, calls = T.objective, {"n": 0}
    steps = 200 // TINY["batch_size"]
    def poisoned(model, batch, lc, dist=None):
        out = real(model, batch, lc, dist); calls["n"] += 1
        if calls["n"] == steps + 3: out["ccs"] = out["ccs"] * float("nan"); out["total"] = out["total"] + out["ccs"]
        return out
    monkeypatch.setattr(T, "objective", poisoned)
    out = tmp_path / "out"
    with pytest.raises(FloatingPointError) as e:
        run_experiment(RunConfig(**TINY, cache_dir=cache, out_dir=str(out)), progress=False, log=lambda s: None)
    msg = str(e.value)
    assert "non-finite loss at epoch 2, step 2" in msg and "ccs=nan" in msg and "total=nan" in msg and "rank=" in msg
    assert read_checkpoint(out / "last.pt")["epoch"] == 1


# ---------------------------------------------------------------- several processes
DDP_SCRIPT = """
import json, os, sys, torch
from ccrlab.train import init_dist, train_step
from ccrlab.models import build_model, ModelConfig
from ccrlab.losses import LossConfig
from ccrlab.data import Batch
from ccrlab.encoders import lengths_mask
model_name, loss, neg, out = sys.argv[1:5]
dist = init_dist(torch.device("cpu"))
torch.manual_seed(0)
B, K, L, F = 8, 5, 7, 12
g = torch.Generator().manual_seed(1)
lens = torch.randint(2, L + 1, (B,), generator=g)
full = Batch(torch.randn(B, K, F, generator=g), torch.full((B,), K), torch.randint(2, 30, (B, L), generator=g) * lengths_mask(lens, L),
             lens, torch.tensor([0, 0, 1, 2, 3, 3, 4, 5]), torch.arange(B))
part = B // dist.world; rows = slice(dist.rank * part, (dist.rank + 1) * part)
mine = Batch(*(getattr(full, f)[rows] for f in full.__dataclass_fields__))
L_mine = int(mine.lengths.max()); mine.tokens = mine.tokens[:, :L_mine]     # each process pads to its own longest caption
m = build_model(ModelConfig(model_name, feat_dim=F, vocab_size=30, embed=16, word_dim=8))
# SGD with lr 1: the update is exactly the all-reduced, clipped gradient. (Adam's first step is g / (|g| + eps),
# which turns rounding-level differences of near-zero gradients into lr-sized ones, whatever the process count.)
opt = torch.optim.SGD(m.parameters(), lr=1.0)
terms = train_step(m, opt, mine, LossConfig(loss, ccs_negative=neg), 2.0, dist)
if dist.rank == 0:
    json.dump({"terms": terms, "params": torch.cat([p.detach().flatten() for p in m.parameters()]).tolist()}, open(out, "w"))
"""


@pytest.mark.parametrize("model, loss, neg", [("scan_t2i", "ccr+ccs", "fragment"), ("scan_i2t", "ccs", "image"), ("scan_t2i", "ccs", "image")])
def test_two_processes_equal_one_on_the_same_global_batch(tmp_path, model, loss, neg):
    script = tmp_path / "ddp.py"; script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), model, loss, neg, str(tmp_path / "one.json")], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29500 + random.randint(1, 500))]
    two = subprocess.run(torchrun + [str(script), model, loss, neg, str(tmp_path / "two.json")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert set(a["terms"]) == set(b["terms"]) and {"rank", "total"} <= set(a["terms"])
    for k in a["terms"]: assert abs(a["terms"][k] - b["terms"][k]) <= 1e-5 * max(1.0, abs(a["terms"][k])), k
    assert np.abs(np.array(a["params"]) - np.array(b["params"])).max() <= 1e-5


# ---------------------------------------------------------------- soak (slow)
@pytest.mark.slow
def test_soak_random_kills_never_leave_an_unreadable_checkpoint(tmp_path, cache, reference):
    out, rng = tmp_path / "out", random.Random(0)
    script = tmp_path / "run.py"; script.write_text(SCRIPT)
    cfg = json.dumps({**TINY, "cache_dir": cache, "out_dir": str(out)})
    for i in range(12):
        p = subprocess.Popen([sys.executable, script, cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 12.0))
        p.send_signal(rng.choice([signal.SIGKILL, signal.SIGTERM])); p.wait()
        if (out / "last.pt").exists(): read_checkpoint(out / "last.pt")        # never unreadable
        for f in out.glob("*.pt"): read_checkpoint(f)
    r = run_proc(tmp_path, cache, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert numbers(out) == reference
