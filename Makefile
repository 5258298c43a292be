# The two commands of the quick start: `make run` and `make test`.
# Everything either needs is installed by the targets below, on a fresh Debian machine.
# The fast loop: `make unit` (the venv only) and `make check` (lint + unit).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SYNAPSE_VENV := .venv-synapse
NODE_DIR := tests/browser
EC_NODE_DIR := tests/element_call
APT_PACKAGES := chromium iproute2 iptables openssl coturn caddy redis-server

.PHONY: run test venv synapse-venv system-deps build-deps node-deps lint unit check clean fuzz

# The install compiles C extensions (setup.py: sfu/media/_fastpath.c, _fastrecv.c, loadtest/_rx.c) with
# the machine's compiler, in place for the editable install; a change to its source reinstalls.
$(VENV)/.installed: pyproject.toml setup.py sfu/media/_fastpath.c sfu/media/_fastrecv.c sfu/media/_sockaddr.h loadtest/_rx.c | build-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[test,loadtest,focus]'
	touch $@

venv: $(VENV)/.installed

$(SYNAPSE_VENV)/.installed:
	$(PYTHON) -m venv $(SYNAPSE_VENV)
	$(SYNAPSE_VENV)/bin/pip install -q -U pip
	$(SYNAPSE_VENV)/bin/pip install -q 'matrix-synapse==1.163.2'
	touch $@

synapse-venv: $(SYNAPSE_VENV)/.installed

# Debian packages: the tests drive chromium (livekit-client, Playwright), openssl (an independent
# check of TURN credentials), coturn (TURN relay tests), caddy (deploy/Caddyfile, the TLS proxy in
# front of a test call), iproute2 (`ip netns`: the relayed browsers run in a namespace that
# cannot reach the SFU's UDP port; `tc`: the media-quality tests' rate caps), iptables (their
# NFQUEUE rule: loss and delay in user space, tests/harness/shaper.py, as this kernel has no
# netem qdisc) and redis-server (the auth service's store of delegated leaves; the SFU nodes'
# shared registry in the cluster tests) for real.
system-deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# A C compiler and the headers of $(PYTHON), for sfu/media/_fastpath.c. Without them the install
# still succeeds (the extension is optional) and rtc.fast_path: auto forwards in pure Python.
# libnetfilter-queue-dev: the test extra's netfilterqueue (the media-quality tests' loss and
# delay shaper) compiles against it.
build-deps:
	@if ! command -v cc >/dev/null 2>&1 || ! $(PYTHON) -c 'import os, sys, sysconfig; \
	    sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	    || [ ! -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ]; then \
	  echo "installing a C compiler, Python and libnetfilter_queue headers (compiled extensions)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq gcc python3-dev libnetfilter-queue-dev >/dev/null; \
	fi

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Element Call's embedded (widget) build and matrix-widget-api for its test host
# (tests/element_call, tests/integration/test_element_call.py).
$(EC_NODE_DIR)/node_modules/.installed: $(EC_NODE_DIR)/package.json $(EC_NODE_DIR)/package-lock.json
	cd $(EC_NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-deps: $(NODE_DIR)/node_modules/.installed $(EC_NODE_DIR)/node_modules/.installed

lint: venv
	$(VENV)/bin/ruff check sfu auth_service loadtest tests benchmarks scripts fuzz
	$(VENV)/bin/ruff format --check sfu auth_service loadtest tests benchmarks scripts fuzz
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: venv synapse-venv system-deps node-deps lint
	$(VENV)/bin/pytest -p no:cacheprovider --durations=30 tests

# Unit tests: nothing but the venv (no apt, Synapse, browser or npm), under a minute. Tests that
# need Synapse or Chromium are marked slow (tests/conftest.py) and left out; pointing the
# harnesses at paths that do not exist makes an unmarked one fail here instead of passing
# because this machine happens to have them.
UNIT_TESTS := tests/sfu tests/auth_service tests/loadtest $(wildcard tests/test_*.py)
unit: venv
	SYNAPSE_PYTHON=/nonexistent/synapse-python SFU_TEST_CHROMIUM=/nonexistent/chromium \
	  $(VENV)/bin/pytest -p no:cacheprovider -q -m "not slow" $(UNIT_TESTS)

check: lint unit

run: venv node-deps
	$(PY) scripts/dev_run.py

# Coverage-guided fuzzing (fuzz/README.md): every target for FUZZ_SECONDS each, one at a time;
# the corpus it keeps is replayed by `make test`. atheris' wheel bundles libFuzzer (no clang).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: venv
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf $(VENV) $(SYNAPSE_VENV) $(NODE_DIR)/node_modules $(EC_NODE_DIR)/node_modules .mypy_cache .ruff_cache .pytest_cache .run build sfu/media/_fastpath*.so sfu/media/_fastrecv*.so loadtest/_rx.*.so
