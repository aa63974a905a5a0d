# The two commands a newcomer types: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= models
PROFILES ?= 20000
DAYS ?= 150
PORT ?= 3000
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format docs bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "dmp-ml needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,scale,bench]"
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
