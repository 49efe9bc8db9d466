# Two commands for a newcomer: `make demo` and `make test`.  Each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint install bench default-model maphead-candidate clean

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

# issue 13: a map head (stride 16) and a new image head on the shipped model's backbone at 384 px,
# trained on cached backbone maps of its recorded train split; chosen and calibrated on validation
maphead-candidate: $(STAMP)
	$(BIN)/python scripts/maphead_cache.py --size 384
	$(BIN)/python scripts/maphead_fit.py --stride 16 --epochs 8 --fuse 0,0.25,0.5,0.75,1 --name finalist-cover-s16-w1 --save

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
