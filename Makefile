# One virtual environment, built on first use by every target that needs it.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format benchmarks clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

## demo: synthetic benchmark -> shards -> training -> registry (embedded defaults)
demo: $(STAMP)
	$(BIN)/lstc demo

## test: the whole suite (what CI runs)
test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/prep_throughput.py
	$(BIN)/python benchmarks/model_speed.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) outputs mlflow.db mlartifacts
