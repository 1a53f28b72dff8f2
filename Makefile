# Two commands a reader needs: `make lab` opens the series, `make test` checks it.
# Both create the virtual environment in .venv on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup lab test lint format benchmark clean-data

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

lint: setup
	$(PY) -m ruff check helpers tests notebooks benchmarks conftest.py
	$(PY) -m ruff format --check helpers tests notebooks benchmarks conftest.py

format: setup
	$(PY) -m ruff format helpers tests notebooks benchmarks conftest.py
	$(PY) -m ruff check --fix helpers tests notebooks benchmarks conftest.py

# Unit tests, then every notebook re-executed by nbval; only cells tagged
# nbval-check-output have their outputs compared (see the README).
test: lint
	$(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=600

benchmark: setup
	$(PY) benchmarks/run.py

clean-data:
	rm -rf data/cache data/synthetic-*
