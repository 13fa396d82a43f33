# Conveniences over scripts/ (the README's two commands are scripts/run.sh and scripts/test.sh,
# which need nothing but bash on a fresh machine).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup models test test-fast lint demo bench clean

setup:
	bash scripts/setup.sh

models: setup
	$(BIN)/smartspec models fetch

test:
	bash scripts/test.sh

test-fast: setup
	$(BIN)/python -m pytest -m "not realpair"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

demo: models
	bash scripts/demo.sh

bench: models
	$(BIN)/python bench/engine_microbench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
