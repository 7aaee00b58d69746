# make demo   set up (first time) and run the whole notebook chain on the embedded demo
# make test   set up (first time) and run the tests
# make lab    open the repository in JupyterLab (notebooks/ and the runs' outputs/)
# make hooks  keep notebook outputs out of git (pre-commit hook)
# make rehearsal  abaw10 at real model sizes, random weights, on the CPU (~1.5 h on 2 cores; make test skips it)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PARAMS ?= params/demo.yaml

.PHONY: setup demo test test-fast rehearsal lint lab hooks clean-demo

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m kitlib.run $(PARAMS) $(ARGS)

test: $(STAMP) lint
	$(BIN)/python -m pytest

test-fast: $(STAMP) lint
	$(BIN)/python -m pytest -m "not slow"

rehearsal: $(STAMP)
	KIT_REHEARSAL=1 $(BIN)/python -m pytest -m rehearsal tests/test_rehearsal.py

lint: $(STAMP)
	$(BIN)/ruff check --select F,E9 kitlib tests benchmarks
	$(BIN)/python -m kitlib.tools.notebooks check notebooks/*.ipynb

# JupyterLab refuses to start as root without --allow-root (GPU boxes, containers): passed there, and said so
AS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

lab: $(STAMP)
	@if [ -n "$(AS_ROOT)" ]; then echo "running as root: starting JupyterLab with --allow-root"; fi
	$(BIN)/jupyter lab --notebook-dir=. $(AS_ROOT)

hooks:
	git config core.hooksPath .githooks

clean-demo:
	rm -rf outputs/demo data/demo
