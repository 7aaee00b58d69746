# make demo   set up (first time) and run the whole notebook chain on the embedded demo
# make test   set up (first time) and run the tests
# make lab    open the notebooks in JupyterLab
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PARAMS ?= params/demo.yaml

.PHONY: setup demo test test-fast lab clean-demo

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt -e .
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m kitlib.run $(PARAMS) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean-demo:
	rm -rf outputs/demo data/demo
