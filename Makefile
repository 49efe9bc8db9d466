# Two commands for a newcomer: `make demo` and `make test`.  Each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint install bench default-model clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[train,dicom,serve,ray,dicomnode,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fracdet predict samples/ --out samples-predictions.csv

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/lint-imports

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

default-model: $(STAMP)
	$(BIN)/fracdet train ../shared/data/fracatlas --out runs/default-fracatlas --epochs1 3 --epochs2 10 --patience 3
	$(BIN)/python scripts/ship_model.py runs/default-fracatlas

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
