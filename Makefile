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

# Generated clients (buf.gen.yaml). The Go protoc plugins are pinned here, and only here,
# and installed into tools/bin; protoc-gen-es is pinned in clients/typescript/package.json.
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GO_PLUGINS_STAMP := tools/bin/.go-plugins-$(PROTOC_GEN_GO_VERSION)-$(PROTOC_GEN_GO_GRPC_VERSION)
# helm, for the chart's tests (tests/deploy/test_helm_chart.py): built from source with the Go
# module proxy (about 2.5 min the first time), pinned here and only here.
HELM_VERSION := v3.19.0
HELM_STAMP   := tools/bin/.helm-$(HELM_VERSION)
TS_DIR           := clients/typescript
TS_STAMP         := $(TS_DIR)/node_modules/.installed
GO_GEN_DIR       := clients/go/igbuttonv1
TS_GEN_DIR       := $(TS_DIR)/src/gen
CLIENT_GEN_DIRS  := $(GO_GEN_DIR) $(TS_GEN_DIR)
# The one gRPC service config (retries); Go embeds a copy (go:embed cannot reach outside its
# module), the Java build copies it into its jar, the TypeScript retry interceptor's test
# compares its policy with it.
SERVICE_CONFIG   := clients/service_config.json
GO_SERVICE_CONFIG := clients/go/igbutton/service_config.json

# The container. CONTAINER_ENGINE: podman (or buildah) if installed, else docker. BASE_IMAGE
# empty: the Dockerfile's pinned default. PIP_CERT (pip's own variable): a CA bundle for a
# TLS-inspecting proxy, passed to the build as a secret, never stored in the image.
CONTAINER_ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
IMAGE            ?= igbutton:latest
BASE_IMAGE       ?=
DOCKER_BUILD_ARGS = $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
  $(if $(filter podman buildah,$(notdir $(CONTAINER_ENGINE))),--format docker) \
  $(if $(and $(PIP_CERT),$(wildcard $(PIP_CERT))),--secret id=pip_cert$(comma)src=$(PIP_CERT))
comma := ,

.PHONY: help venv tools helm run sandbox test lint format proto proto-check proto-breaking clients clients-check docker docker-test bench clean

help:
	@echo "make run      start igbutton with the embedded defaults (SQLite + local sandbox)"
	@echo "make test     install everything and run the whole test suite"
	@echo "make lint     ruff, mypy, buf lint, go vet and a check that generated code is current"
	@echo "make proto    regenerate the Python stubs from proto/"
	@echo "make clients  regenerate the Go and TypeScript clients from proto/ (Java: in its mvn build)"
	@echo "make bench    run the benchmarks (results under bench/results/)"
	@echo "make docker   build the container image (Docker or Podman: CONTAINER_ENGINE=...)"
	@echo "make docker-test  build it and run the container smoke test against it"
	@echo "make helm     build the pinned helm into tools/bin (make test does it too)"

$(PY_STAMP): pyproject.toml setup.py VERSION clients/python/pyproject.toml clients/python/setup.py constraints.txt
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

$(GO_PLUGINS_STAMP):
	rm -f tools/bin/.go-plugins-*
	GOBIN=$(CURDIR)/tools/bin go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/tools/bin go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	touch $@

# Without Go the chart's tests are skipped (they fail under IGBUTTON_REQUIRE_TOOLCHAINS=1).
$(HELM_STAMP):
	@if command -v go >/dev/null; then \
	  rm -f tools/bin/.helm-* && \
	  GOBIN=$(CURDIR)/tools/bin go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION) && touch $@; \
	else echo "go not found: helm $(HELM_VERSION) not built, the Helm chart tests will be skipped"; fi

helm: $(HELM_STAMP)

$(TS_STAMP): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

venv: $(PY_STAMP)
tools: $(TOOLS_STAMP)

run: venv
	$(BIN)/igbutton-server --sandbox

test: venv tools $(TS_STAMP) $(HELM_STAMP)
	$(BIN)/python -m pytest

lint: venv tools proto-check clients-check proto-breaking
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	tools/node_modules/.bin/buf lint
	cd clients/go && go vet ./...

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

# The Go and TypeScript clients (the Java client generates its stubs in its Maven build).
# The TypeScript error decoder also needs google/rpc/error_details.proto, taken from the
# pinned googleapis-common-protos in the venv (buf wants it under its import path).
clients: venv tools $(GO_PLUGINS_STAMP) $(TS_STAMP)
	tools/node_modules/.bin/buf lint
	rm -rf $(CLIENT_GEN_DIRS)
	tools/node_modules/.bin/buf generate
	cp $(SERVICE_CONFIG) $(GO_SERVICE_CONFIG)
	@rpc=$$(mktemp -d) && mkdir -p $$rpc/google/rpc && \
	  cp "$$($(BIN)/python -c 'import google.rpc.error_details_pb2 as m; print(m.__file__.removesuffix("_pb2.py") + ".proto")')" $$rpc/google/rpc/ && \
	  tools/node_modules/.bin/buf generate $$rpc --template buf.gen.googleapis.yaml; \
	  status=$$?; rm -rf $$rpc; exit $$status

# Regenerate, then fail if that changed anything tracked or added anything new.
clients-check: clients
	git diff --exit-code -- $(CLIENT_GEN_DIRS) $(GO_SERVICE_CONFIG)
	@test -z "$$(git status --porcelain -- $(CLIENT_GEN_DIRS) $(GO_SERVICE_CONFIG))" || \
	  (echo "generated clients are stale: run 'make clients' and commit" && git status --porcelain -- $(CLIENT_GEN_DIRS) $(GO_SERVICE_CONFIG) && exit 1)

# Once the contract has a release (a tag v*), every change must be wire- and source-compatible.
proto-breaking: tools
	@tag=$$(git tag --list 'v*' --sort=-v:refname | head -n1); \
	if [ -z "$$tag" ]; then echo "buf breaking: no release tag (v*) yet, nothing to compare against"; \
	else echo "buf breaking against $$tag"; \
	  tools/node_modules/.bin/buf breaking --against "$$(git rev-parse --path-format=absolute --git-common-dir)#tag=$$tag"; fi

# --format docker (Podman, Buildah): the OCI image format has no HEALTHCHECK.
docker:
	$(CONTAINER_ENGINE) build $(DOCKER_BUILD_ARGS) -t $(IMAGE) .

# Builds the image (through `make docker`, on a base built from Debian packages when the
# pinned one cannot be pulled) and runs tests/container against it; see README "Deploying".
docker-test: venv
	CONTAINER_ENGINE=$(CONTAINER_ENGINE) IGBUTTON_CONTAINER_TEST=1 \
	  $(BIN)/python -m pytest tests/container -p no:randomly -v -s

clean:
	rm -rf $(VENV) tools/node_modules tools/bin $(TS_DIR)/node_modules $(TS_DIR)/dist clients/java/target .mypy_cache .ruff_cache .pytest_cache

# Not part of `make test`: ~10 minutes on 2 cores (BENCH_QUICK=1: about one minute).
# Knobs: IGBUTTON_BENCH_UVLOOP=1, IGBUTTON_BENCH_WORKERS=N, BENCH_BACKENDS=sqlite,nats.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench
