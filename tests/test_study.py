"""The study's grid runner and tables, on a tiny grid of real (tiny) runs."""
import json
from pathlib import Path

import numpy as np
import pytest

from ccrlab.study import grid, run_grid, collect, summary, delta_table, complete, run_name

TINY = dict(n_train=40, n_dev=10, n_test=10, n_proposals=12, epochs=1, batch_size=16, embed=16, word_dim=8,
            test_domains=["twemoji/A", "openmoji/B"])


def test_tiny_grid_runs_skips_finished_runs_and_aggregates(tmp_path):
    root, logs = tmp_path / "study", []
    common = {**TINY, "cache_dir": str(tmp_path / "cache")}
    runs = grid(["scan_t2i"], ["none", "ccs"], [0, 1])
    names = run_grid(root, runs, common, progress=False, log=logs.append)
    assert names == [run_name(r["model"], r["loss"], r["seed"]) for r in runs] and all(l.endswith("running") for l in logs)
    assert all(complete(root / n, {**common, **r}) for n, r in zip(names, runs))
    (root / names[2] / "metrics.json").unlink()                      # as if killed before the end
    logs.clear(); run_grid(root, runs, common, progress=False, log=logs.append)
    assert [l.split(": ")[1] for l in logs] == ["complete, skipped", "complete, skipped", "running", "complete, skipped"]
    df = collect(root)
    assert len(df) == 4 * 2 and set(df["shift"]) == {"in-domain", "art + caption"}
    assert (df[df["shift"] == "in-domain"]["drop"] == 0).all()
    s = summary(df)
    assert s.shape[0] == 2 * 2 and (s["seeds"] == 2).all() and " ± " in s.loc[("scan_t2i", "ccs", "in-domain"), "rsum"]
    d = delta_table(root, df, n_boot=200)
    assert len(d) == 2 and set(d["loss"]) == {"ccs"} and (d["seeds"] == 2).all()
    m = json.loads((root / names[0] / "metrics.json").read_text())
    assert complete(root / names[0], {**common, **runs[0]}) and not complete(root / names[0], {**common, **runs[0], "epochs": 2})
    assert not complete(root / names[0], {**common, **runs[0], "warmup_epochs": 0})    # a default the run was not made with
    del m["config"]["warmup_epochs"]; (root / names[0] / "metrics.json").write_text(json.dumps(m))
    assert not complete(root / names[0], {**common, **runs[0]})                           # made before the setting existed


def test_study_notebook_killed_mid_grid_completes_when_run_again(tmp_path):
    """papermill nbs/study.ipynb on a tiny grid, killed (SIGKILL, whole process group) once its first run has finished;
    the second invocation skips that run, completes the others, and writes the tables and figures."""
    import os, signal, subprocess, sys, time
    import papermill as pm
    import yaml
    root = tmp_path / "study"
    run_params = {k: v for k, v in TINY.items() if k != "test_domains"} | {"cache_dir": str(tmp_path / "cache")}
    params = {"models": ["scan_t2i"], "losses": ["none", "ccs"], "seeds": 2, "test_domains": TINY["test_domains"],
              "run_params": run_params, "root": str(root), "n_boot": 100}
    nb = Path(__file__).resolve().parents[1] / "nbs" / "study.ipynb"
    p = subprocess.Popen([sys.executable, "-m", "papermill", str(nb), str(tmp_path / "first.ipynb"), "-y", yaml.safe_dump(params)],
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = root / "scan_t2i_none_seed0" / "metrics.json"
    try:
        for _ in range(600):
            if first.exists() or p.poll() is not None: break
            time.sleep(0.5)
        assert first.exists(), "the study did not finish its first run"
    finally:
        os.killpg(p.pid, signal.SIGKILL); p.wait()
    time.sleep(3)                                                        # orphaned kernels notice their parent is gone
    assert not (root / "runs.csv").exists()
    out = pm.execute_notebook(str(nb), str(tmp_path / "second.ipynb"), parameters=params, progress_bar=False, kernel_name="python3")
    logs = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    assert "scan_t2i_none_seed0: complete, skipped" in logs and "scan_t2i_ccs_seed1: running" in logs
    df = collect(root)
    assert sorted(df["run"].unique()) == sorted(run_name("scan_t2i", l, s) for l in ("none", "ccs") for s in (0, 1))
    for f in ("runs.csv", "summary.md", "deltas.md", "conclusion.md", "rsum_by_shift.png", "rsum_heatmap.png",
              "attention_vs_transfer.png", "training_curves.png"):
        assert (root / f).stat().st_size > 0, f
    assert "rSum" in (root / "conclusion.md").read_text()


def test_sgraf_ensemble_is_a_run_of_its_own(tmp_path):
    import torch
    from ccrlab.study import ensemble_run, ensemble_current
    from ccrlab.train import RunConfig, run_experiment, load_checkpoint, prepare_data
    from ccrlab.evaluate import evaluate_ensemble
    root = tmp_path / "study"
    tiny = {**TINY, "cache_dir": str(tmp_path / "cache")}
    for m in ("saf", "sgr"):
        run_experiment(RunConfig(model=m, loss="ccs", out_dir=str(root / run_name(m, "ccs", 0)), **tiny), progress=False, log=lambda *a: None)
    pair = [run_name("saf", "ccs", 0), run_name("sgr", "ccs", 0)]
    assert not ensemble_current(root, pair, "sgraf_ccs_seed0")
    m = ensemble_run(root, pair, "sgraf_ccs_seed0")
    assert ensemble_current(root, pair, "sgraf_ccs_seed0")
    members = []
    for p in pair:
        net, _, ck = load_checkpoint(root / p / "best.pt")
        members.append((net, prepare_data(RunConfig(**{**ck["run_config"], "resume": "auto"}), progress=False).tests["openmoji/B"]))
    ref = evaluate_ensemble(members)
    assert m["results"]["openmoji/B"]["rsum"] == pytest.approx(ref["rsum"]) and m["config"]["model"] == "sgraf"
    df = collect(root)
    assert set(df["model"]) == {"saf", "sgr", "sgraf"} and df[df["model"] == "sgraf"]["att_f1"].isna().all()
    (root / pair[1] / "metrics.json").touch()
    assert not ensemble_current(root, pair, "sgraf_ccs_seed0")
    other = {**tiny, "n_test": 12}
    run_experiment(RunConfig(model="sgr", loss="ccs", seed=1, out_dir=str(root / "sgr_other"), **other), progress=False, log=lambda *a: None)
    with pytest.raises(ValueError, match="seed, n_test differ"): ensemble_run(root, [pair[0], "sgr_other"], "x")
