# issuer — `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run serve test lint bench clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP) ## development mode on 127.0.0.1:8000 with the WeChat emulator
	$(BIN)/issuer dev --host 127.0.0.1 --port 8000

serve: $(STAMP) ## production mode under gunicorn (configure ISSUER_* first)
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: $(STAMP) ## the whole test suite
	$(BIN)/pytest

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP) ## throughput against a bare Flask floor
	$(BIN)/python -m tests.bench

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
