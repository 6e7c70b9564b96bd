"""Generated files must match their sources: ccrlab/ and README.md come from nbs/, notebooks are kept clean."""
import filecmp, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _copy_project(dst):
    for name in ("nbs", "ccrlab"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    for name in ("settings.ini", "setup.py", "pyproject.toml"):
        shutil.copy(ROOT / name, dst / name)
    return dst


def test_export_is_in_sync(tmp_path):
    proj = _copy_project(tmp_path)
    subprocess.run([str(BIN / "nbdev_export")], cwd=proj, check=True, capture_output=True)
    changed = [p.name for p in sorted((ROOT / "ccrlab").glob("*.py")) if not filecmp.cmp(p, proj / "ccrlab" / p.name, shallow=False)]
    assert not changed, f"ccrlab/ differs from what nbdev_export writes (run `make export`): {changed}"


def test_notebooks_are_clean(tmp_path):
    proj = _copy_project(tmp_path)
    subprocess.run([str(BIN / "nbdev_clean")], cwd=proj, check=True, capture_output=True)
    dirty = [p.name for p in sorted((ROOT / "nbs").glob("*.ipynb")) if p.read_bytes() != (proj / "nbs" / p.name).read_bytes()]
    assert not dirty, f"notebooks not cleaned (run `nbdev_clean`): {dirty}"


def test_readme_is_generated_from_index(tmp_path):
    subprocess.run([str(BIN / "jupyter"), "nbconvert", "--to", "markdown", "--log-level", "WARN", str(ROOT / "nbs" / "index.ipynb"),
                    "--output-dir", str(tmp_path), "--output", "README"], check=True, capture_output=True)
    assert (tmp_path / "README.md").read_text() == (ROOT / "README.md").read_text(), "README.md is stale: run `make readme`"
