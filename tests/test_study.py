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
