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
	$(BIN)/lint-imports
	tests/tools.sh
	$(BIN)/pytest -q -n 4 --dist worksteal

demo: $(STAMP)  ## sandbox EHR + daemon + sample files, end to end
	$(BIN)/ingestd demo

bench: $(STAMP)  ## run the benchmarks, ~15 min (figures go to stdout; see bench/RESULTS.md)
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/daemon_memory.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/backlog.py
	$(BIN)/python bench/idle.py

fmt: $(STAMP)  ## format and autofix
	$(BIN)/ruff format ingestd tests bench
	$(BIN)/ruff check --fix ingestd tests bench

deb:  ## build the Debian package into dist/ (build dependencies: make deb-deps)
	packaging/build-deb.sh

deb-deps:  ## install the Debian package's build dependencies with apt (as root)
	packaging/build-deb.sh deps

security:  ## rate the systemd unit's hardening (CI fails above 1.5)
	systemd-analyze security --offline=true --threshold=15 systemd/ingestd.service

man:  ## render docs/ingestd.8, failing on any groff warning
	@out=$$(LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z docs/ingestd.8 2>&1); \
	if [ -n "$$out" ]; then echo "$$out"; exit 1; fi; echo "docs/ingestd.8: no warnings"

clean:  ## remove the virtual environment, caches and package builds
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info build dist

.PHONY: help venv test demo bench fmt clean deb deb-deps security man
