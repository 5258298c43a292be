# The two commands of the quick start: `make run` and `make test`.
# Everything either needs is installed by the targets below, on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SYNAPSE_VENV := .venv-synapse
NODE_DIR := tests/browser
APT_PACKAGES := redis-server chromium iproute2 openssl
# what `pip install -e .` needs to compile the extension modules of setup.py
BUILD_PACKAGES := gcc python3-dev

.PHONY: run test venv synapse-venv system-deps build-deps node-deps lint unit check clean fuzz

$(VENV)/.installed: pyproject.toml setup.py loadtest/_rx.c | build-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

$(SYNAPSE_VENV)/.installed:
	$(PYTHON) -m venv $(SYNAPSE_VENV)
	$(SYNAPSE_VENV)/bin/pip install -q -U pip
	$(SYNAPSE_VENV)/bin/pip install -q 'matrix-synapse==1.163.2'
	touch $@

synapse-venv: $(SYNAPSE_VENV)/.installed

# Debian packages: the tests drive chromium (livekit-client) and openssl (test certificates) for
# real. redis-server and iproute2 are installed but no test uses them yet: Redis routing is
# reserved (single node only), and this kernel has no netem qdisc (tc's tbf and htb work, in
# network namespaces), so loss and jitter are tested only by unit rigs, not end to end.
system-deps build-deps: PACKAGES = $(if $(filter build-deps,$@),$(BUILD_PACKAGES),$(APT_PACKAGES))
system-deps build-deps:
	@missing=""; \
	for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-deps: $(NODE_DIR)/node_modules/.installed

lint: venv
	$(VENV)/bin/ruff check sfu auth_service loadtest tests benchmarks scripts fuzz
	$(VENV)/bin/ruff format --check sfu auth_service loadtest tests benchmarks scripts fuzz
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: venv synapse-venv system-deps node-deps lint
	$(VENV)/bin/pytest -p no:cacheprovider tests

run: venv
	$(PY) scripts/dev_run.py

# Coverage-guided fuzzing (fuzz/README.md): every target for FUZZ_SECONDS each, one at a time;
# the corpus it keeps is replayed by `make test`. atheris' wheel bundles libFuzzer (no clang).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: venv
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf $(VENV) $(SYNAPSE_VENV) $(NODE_DIR)/node_modules .mypy_cache .ruff_cache .pytest_cache .run build loadtest/_rx.*.so
