# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
# Both install what they need (venv + pip, npm ci) idempotently: a second run skips what is done.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
PYTEST_ARGS ?=

.PHONY: install system-deps test lint format unit integration demo diagram clean

install: $(PY_STAMP) $(NPM_STAMP)

# Debian packages the tests use: Chromium for the inbox page's browser tests. Installed when run
# as root (CI, the dev machines); otherwise a clear message says what to install.
APT_PACKAGES := chromium
system-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	else echo "missing Debian packages: sudo apt-get install $(APT_PACKAGES)" >&2; exit 1; fi

$(PY_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

lint: $(PY_STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy app tools deploy tests

format: $(PY_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install system-deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

integration: install system-deps
	$(BIN)/pytest -m integration $(PYTEST_ARGS)

demo: install
	$(BIN)/python -m deploy.demo

diagram: $(PY_STAMP)
	@$(BIN)/python -m app diagram AgentTask

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
