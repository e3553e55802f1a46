# Two commands do all the setup: `make demo` and `make test`. Both create .venv if missing.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= demo_out

.PHONY: install demo test test-fast lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/avtime demo --workdir $(WORKDIR)

lint: install
	$(BIN)/ruff check pipelines models training tests bench
	$(BIN)/ruff format --check pipelines models training tests bench

# mypy cannot follow the editable install's import hook, so it reads the `avtime` namespace
# through a tree of links to the three package folders.
typecheck: install
	mkdir -p build/typecheck/avtime
	for pkg in pipelines models training; do ln -sfn ../../../$$pkg build/typecheck/avtime/$$pkg; done
	MYPYPATH=build/typecheck $(BIN)/mypy -p avtime.pipelines -p avtime.models -p avtime.training

test: lint typecheck
	$(BIN)/python -m pytest tests

test-fast: install
	$(BIN)/python -m pytest -m unit tests

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(WORKDIR)
