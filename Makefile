# ingestd: every target bootstraps its own virtual environment from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv with ingestd and the test tools

test: $(STAMP)  ## lint, type-check and run the whole test suite
	$(BIN)/ruff check ingestd tests bench
	$(BIN)/ruff format --check ingestd tests bench
	$(BIN)/mypy ingestd
	$(BIN)/pytest -q

demo: $(STAMP)  ## sandbox EHR + daemon + sample files, end to end
	$(BIN)/ingestd demo

bench: $(STAMP)  ## run the benchmarks (figures go to stdout; see bench/RESULTS.md)
	$(BIN)/python bench/memory.py

fmt: $(STAMP)  ## format and autofix
	$(BIN)/ruff format ingestd tests bench
	$(BIN)/ruff check --fix ingestd tests bench

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info

.PHONY: help venv test demo bench fmt clean
