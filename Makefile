# Two commands do all the setup: `make demo` and `make test`. Both create .venv if missing.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= demo_out
# The lock files, both written by `make lock` from pyproject.toml:
#   requirements.lock      [project] dependencies + the aws extra: what infra/Dockerfile installs
#   requirements-dev.lock  the same pins + the dev extra: what `make install` installs
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
UV_COMPILE := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --quiet \
	--custom-compile-command 'make lock'

.PHONY: install lock demo test test-fast lint typecheck bench clean

install: $(STAMP)

# Everything from the lock, then avtime itself without resolving again; `pip check` fails when
# pyproject.toml asks for something the lock lacks.
$(STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r $(DEV_LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip check || { echo "pyproject.toml and $(DEV_LOCK) disagree: run make lock" >&2; exit 1; }
	touch $(STAMP)

# Rewrite both lock files from pyproject.toml. Pins that still satisfy pyproject.toml are kept;
# `make lock UPGRADE=1` moves every package to the newest allowed version. The dev lock is
# compiled under the image's pins (-c), so the packages the two share have the same versions.
lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install -q "$$(grep -m1 -o '^uv==[^ ;]*' $(DEV_LOCK) || echo uv)"
	$(UV_COMPILE) $(if $(UPGRADE),--upgrade) --extra aws -o $(LOCK)
	$(UV_COMPILE) $(if $(UPGRADE),--upgrade) --extra aws --extra dev -c $(LOCK) -o $(DEV_LOCK)

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
	$(BIN)/python -m pytest --durations=15 tests

test-fast: install
	$(BIN)/python -m pytest -m unit tests

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(WORKDIR)
