# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned, so the package's range never pulls a CUDA build from the registry
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python data/generate.py --check
	bash bench/demo.sh

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check nmt_cli tests bench data
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check nmt_cli tests bench data
	$(BIN)/ruff format --check nmt_cli tests bench data

bench: $(STAMP)
	$(BIN)/nmt bench train --steps 60 --json

clean:
	rm -rf runs work .pytest_cache
