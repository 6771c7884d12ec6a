# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
# Both install what they need (venv + pip, npm ci) idempotently: a second run skips what is done.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
PYTEST_ARGS ?=

.PHONY: install runtime-deps test-deps test reliability cluster-test bench lint format unit integration demo up down screenshots diagram clean

install: $(PY_STAMP) $(NPM_STAMP) runtime-deps

# Debian packages, installed when run as root (CI, the dev machines); otherwise a clear message
# says what to install. Tesseract does the receipts' OCR (the demo and the tests); Chromium runs
# the inbox page's browser tests.
RUNTIME_APT := tesseract-ocr jq
TEST_APT := chromium

define apt_install
	@missing=""; for pkg in $(1); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "apt-get install$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null; \
	else echo "missing Debian packages; run: sudo apt-get install$$missing" >&2; exit 1; fi
endef

$(PY_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

runtime-deps:
	$(call apt_install,$(RUNTIME_APT))

test-deps:
	$(call apt_install,$(TEST_APT))

lint: $(PY_STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy app tools deploy tests common bench
	$(BIN)/lint-imports --no-cache

format: $(PY_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Two workers (the machine's two cores); a test file stays on one worker, so a module's stack is
# started once. `make reliability` runs serially: its figures are timings.
PARALLEL := -n 2 --dist loadfile

test: install test-deps lint
	$(BIN)/pytest $(PARALLEL) $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

integration: install test-deps
	$(BIN)/pytest -m integration $(PYTEST_ARGS)

# The reliability suite in full (the replay corpus's 100+ cases; `make test` runs a tenth of it)
# and its report, docs/reliability.md, written from the run.
RELIABILITY_TESTS := tests/integration/test_replay_determinism.py tests/integration/test_bad_input.py \
	tests/integration/test_crash.py tests/integration/test_expense_crash.py \
	tests/integration/test_parked_tasks.py tests/integration/test_approvals.py tests/integration/test_engine.py \
	tests/integration/test_crash_matrix.py tests/integration/test_journal_guard.py \
	tests/integration/test_dependency_faults.py tests/integration/test_load.py tests/integration/test_security.py \
	tests/integration/test_outages.py tests/integration/test_versions.py tests/integration/test_storage.py \
	tests/integration/test_cluster.py
# `python -m pytest` puts the checkout on sys.path, so the report plugin (tests/) can be loaded.
reliability: install test-deps
	RELIABILITY_FULL=1 $(BIN)/python -m pytest -p tests.reliability_report $(RELIABILITY_TESTS) $(PYTEST_ARGS)

# Scale-out proof: three restate-server processes on loopback as one replicated cluster (replication
# 2, the production configuration deploy/k8s/base/restate.toml), the services on PostgreSQL, one node
# SIGKILLed mid-run and restarted; its figures go to docs/cluster.md. `make reliability` runs it too.
cluster-test: install test-deps
	RELIABILITY_FULL=1 RELIABILITY_REPORT=docs/cluster.md RELIABILITY_COMMAND="make cluster-test" \
		$(BIN)/python -m pytest -p tests.reliability_report tests/integration/test_cluster.py $(PYTEST_ARGS)

# What durability costs, against the engine's floor in the same run: bench/results.json and
# docs/performance.md (both generated). `make test` runs its smoke (tests/bench/).
bench: install test-deps
	$(BIN)/python -m bench

demo: install
	$(BIN)/python -m deploy.demo

# The stack left running to explore: prints the console's URL, the sign-ins, Restate's UI and how
# to stop it (`make down`); `source var/up/env` gives a shell its addresses and credentials.
up: install
	$(BIN)/python -m deploy.up up

down:
	@test -x $(BIN)/python || { echo "nothing to stop (no .venv)"; exit 0; }; $(BIN)/python -m deploy.up down

# The console's screenshots in docs/images (the README shows them), from its browser tests.
screenshots: install test-deps
	CONSOLE_SCREENSHOT_DIR=docs/images $(BIN)/pytest tests/integration/test_console_browser.py

diagram: $(PY_STAMP)
	@$(BIN)/python -m app diagram ExpenseReport
	@$(BIN)/python -m app diagram AgentTask

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
