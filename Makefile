# The two commands a newcomer types: `make run` and `make test`.
# Variables (override as `make run PORT=8080` or `PORT=8080 make run`):
#   PYTHON    interpreter that creates .venv (>= 3.11)    PORT      port `make run` serves on
#   WORKDIR   workdir for the demo bundle, MLflow, ...    PROFILES  demo world size (profiles)
#   DAYS      demo world length in days                   VENV      virtualenv folder
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= models
PROFILES ?= 20000
DAYS ?= 150
PORT ?= 3000
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

EXTRAS ?= dev,scale,bench
LOCK := requirements.lock

.PHONY: install run test test-quick lock notebook lint format docs bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "dmp-ml needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

# Every package at the version pinned in requirements.lock (constraints: same versions every time).
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/dmp-ml demo-data $(WORKDIR)/demo --profiles $(PROFILES) --days $(DAYS)
	$(BIN)/dmp-ml train --workdir $(WORKDIR) --as-of end \
		--events $(WORKDIR)/demo/events.parquet \
		--profiles $(WORKDIR)/demo/profiles.parquet \
		--consent $(WORKDIR)/demo/consent.parquet
	$(BIN)/dmp-ml serve --workdir $(WORKDIR) --port $(PORT)

test: install
	$(BIN)/python -m pytest -q --nbmake tests notebooks

test-quick: install
	$(BIN)/python -m pytest -q -m "not slow" tests

# Re-resolve requirements.lock from pyproject.toml, keeping every pin that still fits
# (`make lock UPGRADE=1` moves everything to the newest versions that resolve).
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c $(LOCK) uv
	$(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 \
		--custom-compile-command "make lock" --quiet -o $(LOCK) $(if $(UPGRADE),--upgrade)

# JupyterLab over notebooks/ (installs the `notebook` extra from the lock on first use).
notebook: install
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[$(EXTRAS),notebook]"
	$(BIN)/jupyter lab notebooks

docs: install
	$(BIN)/python docs/make_figures.py

lint: install
	$(BIN)/ruff format --check src tests bench docs notebooks
	$(BIN)/ruff check src tests bench docs notebooks

format: install
	$(BIN)/ruff format src tests bench docs notebooks
	$(BIN)/ruff check --fix src tests bench docs notebooks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# A Bento of the HTTP service (bentofile.yaml): the dmp-ml wheel into dist/, then `bentoml build`,
# into the BentoML store of BENTOML_HOME (default ~/bentoml).
.PHONY: bento
bento: install
	rm -f dist/dmp_ml-*.whl
	$(BIN)/python -m pip wheel --no-deps --quiet -w dist .
	$(BIN)/bentoml build .
