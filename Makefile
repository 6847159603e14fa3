# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each installs what it needs: Debian packages, the venv from the pins, the CDK CLI from npm.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
CHECKOV_VENV := .venv-checkov
TORCH_VENV := .venv-torch
PY := $(VENV)/bin/python
SHELL_SCRIPTS := $(shell git ls-files '*.sh' '.ci/run' 2>/dev/null)
# command:package; only the packages whose command is missing are installed
APT_COMMANDS := shellcheck:shellcheck aria2c:aria2 mkfs.ext4:e2fsprogs losetup:util-linux curl:curl node:nodejs npm:npm
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help deps system-deps lint test test-torch test-fast demo bench bench-deps aws-smoke clean

help:
	@echo "make demo   - set up and run the whole job on synthetic ILSVRC2012 archives (local HTTP + AWS emulator)"
	@echo "make test   - set up and run linters and every test"
	@echo "make test-torch - every format under PyTorch (torchvision, DALI, webdataset) and the README's training snippets"
	@echo "make bench  - benchmarks vs im2rec, the by-hand chain, curl and aria2c; writes bench/results.json"
	@echo "make aws-smoke - REAL AWS: the whole pipeline on a tiny dataset in your account (~15 min, <2 cents), then"
	@echo "                 everything deleted; asks first (ARGS='--yes', '--keep', '--region eu-west-1')"

$(VENV)/.installed: requirements.txt requirements-dev.txt bootstrap/requirements.txt bootstrap/requirements-attach.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

# checkov pins an older boto3 than ours, so it lives in a venv of its own
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q -r requirements-checkov.txt
	touch $@

# PyTorch, torchvision, DALI and webdataset (6.7 GB) only for `make test-torch`
$(TORCH_VENV)/.installed: requirements-torch.txt
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install -q -r requirements-torch.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Debian packages: shellcheck (lint), aria2 (download benchmark peer), e2fsprogs/util-linux (loop volumes),
# nodejs/npm (the CDK CLI).
system-deps:
	@missing=""; \
	for pair in $(APT_COMMANDS); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages; run: sudo apt-get install$$missing"; exit 1; fi; \
	fi

deps: system-deps $(VENV)/.installed $(CHECKOV_VENV)/.installed node_modules/.installed

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	shellcheck $(SHELL_SCRIPTS)

test: lint
	$(PY) -m pytest -q -rs

# the readers under PyTorch (tests/torch; --confcutdir keeps the main suite's moto and mxnet fixtures out)
test-torch: $(TORCH_VENV)/.installed
	$(TORCH_VENV)/bin/python -m pytest -q --confcutdir=tests/torch tests/torch

test-fast: deps
	$(PY) -m pytest -q -x -m "not slow"

demo: deps
	$(PY) -m tests.demo

# libturbojpeg0: the benchmark's decode-scale and YUV measurements (bench/turbojpeg.py); skipped without it
bench-deps:
	@/sbin/ldconfig -p | grep -q libturbojpeg.so.0 || { [ "$$(id -u)" = 0 ] \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libturbojpeg0 >/dev/null; } \
	  || echo "libturbojpeg0 is missing (sudo apt-get install libturbojpeg0): those two benchmarks will be skipped"

bench: deps bench-deps
	$(PY) -m bench.run

# Real AWS, with your credentials: see README, "First, a smoke test in your account". Never run by `make test`.
aws-smoke: deps
	$(PY) -m scripts smoke $(ARGS)

clean:
	rm -rf cdk.out demo-output smoke-output $(CHECKOV_VENV) $(TORCH_VENV) bench/work .mypy_cache .ruff_cache .pytest_cache
