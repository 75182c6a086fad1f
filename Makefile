# Switchyard: `make run` serves the example tenants, `make test` tests.
# Every target that needs Python packages depends on `setup`, which creates
# .venv/ and installs what is missing.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup run dev test test-browser bench soak wrk lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv/ and install the project with its dev tools

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "switchyard needs Python 3.11 or newer; set PYTHON=..." >&2; exit 1; }
	@/sbin/ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || \
		{ echo "switchyard needs the system library libseccomp.so.2:" \
			"install the Debian package libseccomp2" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

TOKEN := state/admin.token

# A random management API token for local runs, made once, readable by us only.
$(TOKEN):
	@mkdir -p state
	@umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' > $@

# customer-d's adapter delivers to a closed port on 127.0.0.1 (see its
# tenant.toml): loopback is allowed for that one address, for local runs.
RUN_ARGS := --tenants tenants --state state --admin-token-file $(TOKEN) \
	--allow-private-egress 127.0.0.1/32

run: setup $(TOKEN) ## serve tenants/ on 127.0.0.1:8787, the API on :8788
	$(BIN)/switchyard run $(RUN_ARGS)

dev: setup $(TOKEN) ## like run, with debug logs
	$(BIN)/switchyard run $(RUN_ARGS) --log-level debug

test: setup ## run the test suite (the browser tests aside)
	$(BIN)/pytest -q -m 'not browser'

BROWSER_STAMP := $(VENV)/.installed-browser
CHROMIUM := /usr/bin/chromium

$(BROWSER_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,browser]'
	@touch $@

# Debian's Chromium, driven by Playwright; as root with apt-get, .ci/run
# installs it. Missing here is a failure, never a skip.
test-browser: setup $(BROWSER_STAMP) ## the console in headless Chromium
	@test -x $(CHROMIUM) || \
		{ echo "make test-browser needs $(CHROMIUM): install the Debian" \
			"package 'chromium'" >&2; exit 1; }
	SWITCHYARD_BROWSER_TESTS=required $(BIN)/pytest -q -m browser

# wrk is the load generator; as root with apt-get it is installed here.
wrk:
	@command -v wrk >/dev/null || [ "$$(id -u)" != 0 ] || \
		! command -v apt-get >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq wrk; }
	@command -v wrk >/dev/null || \
		{ echo "make bench needs wrk: install the Debian package 'wrk'" >&2; exit 1; }

bench: setup wrk ## measure throughput, cold starts, memory, deploys, deliveries
	$(BIN)/python bench/dispatch_bench.py --write docs/BENCHMARKS.md
	$(BIN)/python bench/deploy_latency.py --append docs/BENCHMARKS.md
	$(BIN)/python bench/delivery_bench.py --append docs/BENCHMARKS.md

MINUTES ?= 10
soak: setup wrk ## saturate 200 recycling tenants for MINUTES (default 10)
	$(BIN)/python bench/soak.py --minutes $(MINUTES)

lint: setup ## ruff format check, ruff check, mypy --strict
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

clean: ## remove the venv, state and caches
	rm -rf $(VENV) state .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
