# igbutton — every entry point a developer or CI needs.
# `make run` and `make test` install what they need on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

PY_STAMP    := $(VENV)/.installed
TOOLS_STAMP := tools/node_modules/.installed
PY_GEN_DIR  := clients/python/src
PROTO_FILES := $(sort $(wildcard proto/igbutton/v1/*.proto))

.PHONY: help venv tools run sandbox test lint format proto proto-check clients clients-check docker bench clean

help:
	@echo "make run      start igbutton with the embedded defaults (SQLite + local sandbox)"
	@echo "make test     install everything and run the whole test suite"
	@echo "make lint     ruff, mypy, buf lint and a check that generated code is current"
	@echo "make proto    regenerate the Python stubs from proto/"
	@echo "make clients  regenerate every language's client from proto/"
	@echo "make bench    run the benchmarks (results under bench/results/)"
	@echo "make docker   build the container image"

$(PY_STAMP): pyproject.toml clients/python/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e clients/python -e '.[dev]'
	touch $@

$(TOOLS_STAMP): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	touch $@

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(PY_STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	touch $@

venv: $(PY_STAMP)
tools: $(TOOLS_STAMP)

run: venv
	$(BIN)/igbutton-server --sandbox

test: venv tools
	$(BIN)/python -m pytest

lint: venv tools proto-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	tools/node_modules/.bin/buf lint

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

proto: venv tools
	tools/node_modules/.bin/buf lint
	rm -rf $(PY_GEN_DIR)/igbutton/v1
	mkdir -p $(PY_GEN_DIR)/igbutton/v1
	$(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=$(PY_GEN_DIR) --mypy_out=quiet:$(PY_GEN_DIR) \
	  --grpc_python_out=$(PY_GEN_DIR) --mypy_grpc_out=quiet:$(PY_GEN_DIR) \
	  $(PROTO_FILES)
	printf '"""Generated from proto/igbutton/v1 by `make proto`. Do not edit."""\n' > $(PY_GEN_DIR)/igbutton/v1/__init__.py

# Regenerate, then fail if that changed anything tracked or added anything new.
proto-check: proto
	git diff --exit-code -- $(PY_GEN_DIR)/igbutton/v1
	@test -z "$$(git status --porcelain -- $(PY_GEN_DIR)/igbutton/v1)" || \
	  (echo "generated Python stubs are stale: run 'make proto' and commit" && git status --porcelain -- $(PY_GEN_DIR)/igbutton/v1 && exit 1)

docker:
	docker build -t igbutton:latest .

clean:
	rm -rf $(VENV) tools/node_modules .mypy_cache .ruff_cache .pytest_cache

# Not part of `make test`: ~10 minutes on 2 cores (BENCH_QUICK=1: about one minute).
# Knobs: IGBUTTON_BENCH_UVLOOP=1, IGBUTTON_BENCH_WORKERS=N, BENCH_BACKENDS=sqlite,nats.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench
