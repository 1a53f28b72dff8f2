# Two commands a reader needs: `make lab` opens the series, `make test` checks it.
# Both create the virtual environment in .venv on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup lab test lint format benchmark clean-data student rerun

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# JupyterLab refuses to start as root (common in containers) without --allow-root.
lab: setup
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

lint: setup
	$(PY) -m ruff check helpers tests tools notebooks benchmarks conftest.py
	$(PY) -m ruff format --check helpers tests tools notebooks benchmarks conftest.py

format: setup
	$(PY) -m ruff format helpers tests tools notebooks benchmarks conftest.py
	$(PY) -m ruff check --fix helpers tests tools notebooks benchmarks conftest.py

# Unit tests, then every notebook re-executed by nbval; only cells tagged
# nbval-check-output have their outputs compared (see the README).
test: lint
	$(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=600

benchmark: setup
	$(PY) benchmarks/run.py
	$(PY) benchmarks/privacy_bench.py
	$(PY) benchmarks/secagg_bench.py

clean-data:
	rm -rf data/cache data/synthetic-*

# The notebooks without their solution cells and outputs, for learners.
student: setup
	$(PY) -m tools.student

# Every notebook, or NOTEBOOKS="01 02", executed on DATASET (and DATA_ROOT) into
# build/rerun-$(DATASET)/; SET="SEED=1 ROUNDS=5" replaces further settings.
DATASET ?= synthetic
rerun: setup
	$(PY) -m tools.rerun --dataset "$(DATASET)" \
		$(if $(DATA_ROOT),--data-root "$(DATA_ROOT)") \
		$(addprefix --set ,$(SET)) $(NOTEBOOKS)
