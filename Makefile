# Two commands: `make run` (the default experiment) and `make test` (every notebook and tests/).
# Both create .venv when it is missing and install the package with its dependencies;
# the install is skipped when setup.py and settings.ini have not changed since the last one.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ccrlab-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test test-slow test-soak bench readme lab kernel export clean-nbs check-sync

install: $(STAMP)

$(STAMP): setup.py settings.ini pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	mkdir -p _runs
	$(BIN)/papermill nbs/run.ipynb _runs/out.ipynb -p loss ccs

test: $(STAMP)
	$(BIN)/nbdev_test --n_workers 1 --do_print
	$(BIN)/python -m pytest tests -q

# Notebook cells flagged `#| slow` (the full default experiment), then the slow tests.
# Kill-and-resume soak test alone (a few minutes).
test-soak: $(STAMP)
	$(BIN)/python -m pytest tests/test_reliability.py -q -m slow --runslow

test-slow: $(STAMP)
	$(BIN)/nbdev_test --n_workers 1 --do_print --flags slow
	$(BIN)/python -m pytest tests -q -m slow --runslow

bench: $(STAMP)
	$(BIN)/python -m ccrlab.bench

# README.md is generated from nbs/index.ipynb (Quarto, which nbdev_readme needs, is not installable offline).
readme: $(STAMP)
	$(BIN)/jupyter nbconvert --to markdown --log-level WARN nbs/index.ipynb --output-dir . --output README

export: $(STAMP)
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(MAKE) readme

kernel: $(STAMP)
	$(BIN)/python -m ipykernel install --user --name ccrlab --display-name "Python (ccrlab)"

lab: kernel
	$(BIN)/jupyter lab nbs
