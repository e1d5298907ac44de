# Two commands on a fresh machine:
#   make run    install into .venv (runtime dependencies only) and serve the app (tiny model, CPU)
#               on http://127.0.0.1:8000
#   make test   install into .venv with the test extras (and redis-server, chromium via apt) and run
#               the whole test suite
# `make wheel` builds dist/wan_serve-*.whl: `pip install dist/wan_serve-*.whl` (or `pip install .`),
# then `wan-video serve` from any directory (docs/cli.md, "Installing").
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# One stamp per install level: `make run` never brings pytest, playwright, moto...; `make test`
# adds them on top of the runtime install.
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install install-test run lint test test-deps test-unit test-integration test-cluster wheel clean

$(RUN_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): $(RUN_STAMP) pyproject.toml
	$(PY) -m pip install -q -e ".[test]"
	touch $(TEST_STAMP)

install: $(RUN_STAMP)

install-test: $(TEST_STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/wan-video serve

# redis-server and chromium come from apt, not pip (scripts/test-deps.sh).
test-deps:
	bash scripts/test-deps.sh

# ruff (lint, format) and mypy (strict on settings, params, policy, errors, handles): pyproject.toml.
lint: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: $(TEST_STAMP) test-deps lint
	$(PY) -m pytest

test-unit: $(TEST_STAMP) test-deps
	$(PY) -m pytest tests/unit

test-integration: $(TEST_STAMP) test-deps
	$(PY) -m pytest tests/integration

# A wheel of the project alone (its dependencies come from PyPI when it is installed).
wheel: $(RUN_STAMP)
	$(PY) -m pip wheel -q --no-deps -w dist .

# configs/serve_cluster.yaml on two Ray nodes of this machine, one lost mid-job (docs/ray-cluster.md);
# `make test` runs it too.
test-cluster: $(TEST_STAMP) test-deps
	$(PY) -m pytest tests/integration/test_serve_cluster.py

clean:
	rm -rf $(VENV) data .pytest_cache build dist *.egg-info
