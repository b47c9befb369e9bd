# issuer — `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run serve test lint bench soak clean node services chromium

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP) ## development mode on 127.0.0.1:8000 with the WeChat emulator
	$(BIN)/issuer dev --host 127.0.0.1 --port 8000

serve: $(STAMP) ## production mode under gunicorn (configure ISSUER_* first)
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: $(STAMP) node services chromium ## the whole test suite
	$(BIN)/pytest

node: ## Node.js and npm for the JavaScript client and example tests (Debian's, when missing)
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  echo "installing Node.js and npm from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }

chromium: ## Debian's chromium for the console's browser test (no browser is ever downloaded)
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || { \
	  echo "installing chromium from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

services: ## PostgreSQL and Redis binaries for the store and rate-limit tests (Debian's, when missing)
	@# The tests start throwaway instances of their own: the packages' services stay stopped
	@# (a policy-rc.d forbids starting them while apt installs, unless one is already there).
	@if { command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1 \
	  && command -v redis-server >/dev/null 2>&1; then :; else \
	  echo "installing PostgreSQL and Redis from Debian"; \
	  policy=/usr/sbin/policy-rc.d; made=; \
	  if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' >$$policy && chmod +x $$policy && made=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server; \
	  status=$$?; if [ -n "$$made" ]; then rm -f $$policy; fi; exit $$status; fi

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP) ## throughput against a bare Flask floor, load from wrk (Debian's, when missing)
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "installing wrk from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	$(BIN)/python -m bench $(BENCH_ARGS)

soak: $(STAMP) ## ten minutes of mixed load against gunicorn (not part of make test)
	$(BIN)/python -m bench.soak

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
