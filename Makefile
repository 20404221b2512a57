# batchboard: `make run` starts the dashboard on the built-in sandbox, `make test` runs lint and every test.
PYTHON_VERSION := $(shell cat .python-version)
PYTHON ?= $(shell pyenv which python 2>/dev/null || command -v python$(PYTHON_VERSION) || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# make run V=2 shows every sync pass and every request.
V ?= 1

.PHONY: run test test-sqlite test-postgres system-packages lint format install install-dev migrate clean screenshots bench

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "batchboard needs Python 3.12 or newer; found " + sys.version)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Each stamp holds the requirements it installed: a checkout that only touched a file (a newer date, the same pins)
# runs no pip at all.
$(VENV)/.installed: requirements.txt | $(BIN)/python
	@cmp -s requirements.txt $@ || $(BIN)/pip install --quiet -r requirements.txt
	@cp requirements.txt $@

$(VENV)/.installed-dev: requirements-dev.txt requirements.txt | $(BIN)/python
	@cat requirements.txt requirements-dev.txt | cmp -s - $@ || $(BIN)/pip install --quiet -r requirements-dev.txt
	@cp requirements.txt $(VENV)/.installed
	@cat requirements.txt requirements-dev.txt > $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# migrate also creates the database cache's table. A local install keeps its secret key in var/secret_key.
migrate: install
	$(BIN)/python manage.py ensure_secret_key
	$(BIN)/python manage.py migrate --no-input

# `BATCHBOARD_CONNECTIONS=connections.example.toml make run`: the example's two connections, to the sandbox's two
# organisations under their public keys, and a user per team of the file (on the sandbox only).
ifneq ($(BATCHBOARD_CONNECTIONS),)
run: export SANDBOX_RESEARCH_KEY ?= sk-sandbox
run: export SANDBOX_FINANCE_KEY ?= sk-sandbox-second
endif

run: migrate
	$(BIN)/python manage.py ensure_admin --url http://$(HOST):$(PORT)/
	$(if $(BATCHBOARD_CONNECTIONS),$(BIN)/python manage.py ensure_team_users --url http://$(HOST):$(PORT)/)
	$(BIN)/python manage.py collectstatic --no-input --verbosity 0
	$(BIN)/python manage.py serve --host $(HOST) --port $(PORT) -v $(V)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Chromium, PostgreSQL and redis-server: installed with apt when missing (as root on Debian), else the command to run.
system-packages:
	@scripts/system-packages

# Every test on SQLite and again on a throwaway PostgreSQL cluster that pg_virtualenv creates and removes, the two
# halves at once: alone, a half leaves a quarter of two cores idle (tests waiting on the live servers, browsers and
# processes they start) and its slowest last tests leave a worker waiting; together they fill those gaps. Each half's
# report is printed whole when it ends.
test: system-packages lint
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(MAKE) --no-print-directory --jobs=2 --output-sync=target test-sqlite test-postgres

# The suite keeps its bytecode (whatever the environment says): later runs reuse pytest's rewritten test modules
# instead of rewriting them in every worker (5 s of CPU each).
test-sqlite test-postgres: export PYTHONDONTWRITEBYTECODE :=

test-sqlite: install-dev
	$(BIN)/pytest -n 2

test-postgres: install-dev
	pg_virtualenv -t -o fsync=off -o synchronous_commit=off -o full_page_writes=off \
		sh -c 'DATABASE_URL="postgres://$$PGUSER:$$PGPASSWORD@$$PGHOST:$$PGPORT/$$PGDATABASE" $(BIN)/pytest -n 2'

bench: system-packages install
	$(BIN)/python -m benchmarks

screenshots: install-dev
	$(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
