# Outpost: the two commands are `make demo` and `make test`; both set up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-unit test-integration lint typecheck bench clean

setup: $(STAMP)
	@bash scripts/setup-debian.sh

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/outpost demo

test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

lint: setup
	$(VENV)/bin/ruff check appliance simulators tests benchmarks scripts
	$(VENV)/bin/mypy appliance simulators

bench: setup
	$(PY) -m appliance.cli bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
