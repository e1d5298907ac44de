# Two commands on a fresh machine:
#   make run    install into .venv and serve the app (tiny model, CPU) on http://127.0.0.1:8000
#   make test   install into .venv (and redis-server, chromium via apt) and run the whole test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install run lint test test-deps test-unit test-integration test-cluster clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/serve run serve_config.yaml

# redis-server and chromium come from apt, not pip (scripts/test-deps.sh).
test-deps:
	bash scripts/test-deps.sh

# ruff (lint, format) and mypy (strict on settings, params, policy, errors, handles): pyproject.toml.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: $(STAMP) test-deps lint
	$(PY) -m pytest

test-unit: $(STAMP) test-deps
	$(PY) -m pytest tests/unit

test-integration: $(STAMP) test-deps
	$(PY) -m pytest tests/integration

# configs/serve_cluster.yaml on two Ray nodes of this machine, one lost mid-job (docs/ray-cluster.md);
# `make test` runs it too.
test-cluster: $(STAMP) test-deps
	$(PY) -m pytest tests/integration/test_serve_cluster.py

clean:
	rm -rf $(VENV) data .pytest_cache
