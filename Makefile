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

# The whole chain on the embedded corpus: prepare -> train -> translate -> evaluate -> attention.
DEMO := runs/demo
demo: $(STAMP)
	@mkdir -p $(DEMO)
	$(BIN)/nmt prepare --src data/train.en --tgt data/train.de --vocab-size 300 -o $(DEMO)/prep
	$(BIN)/nmt train --preset toy --data $(DEMO)/prep \
		--dev-src data/dev.en --dev-tgt data/dev.de \
		--time-budget 150 --overwrite -o $(DEMO)
	$(BIN)/nmt translate -m $(DEMO)/model.nmt data/test.en -o $(DEMO)/test.hyp.de
	$(BIN)/nmt evaluate -r data/test.de $(DEMO)/test.hyp.de | tee $(DEMO)/test.scores
	$(BIN)/nmt attention -m $(DEMO)/model.nmt "the woman knows that the small dog sees the old man ." \
		-o $(DEMO)/attention.png
	$(BIN)/nmt attention -m $(DEMO)/model.nmt "the woman knows that the small dog sees the old man ."
	@echo "model: $(DEMO)/model.nmt  translations: $(DEMO)/test.hyp.de  scores: $(DEMO)/test.scores  heatmap: $(DEMO)/attention.png"

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
