# Two commands on a fresh machine: `make run` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint unit docs docs-serve bench system-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The torch pin first, alone: on this project's machines it resolves to the CPU wheel on disk.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --progress-bar off -e '.[all,test,docs]'
	@rm -f $(VENV)/.deps-* && touch $@

system-deps:
	@bash scripts/system-deps.sh

run: $(STAMP)
	$(BIN)/sdworker serve --model demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check sdworker tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not live and not browser" $(PYTEST_ARGS)

# The documentation site (mkdocs-material, strict: a broken link or anchor fails): build/site.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict  # not --quiet: it hides the warnings strict counts

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache test-output
