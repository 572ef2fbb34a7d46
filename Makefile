# The two commands:  `make run` (serve with demo data on :8000)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install lint e2e-deps

$(STAMP): pyproject.toml agent/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The machine agent and client library (standard library only), for `manage.py agents`
	# and the tests that run `simsched-agent` as a real process.
	$(BIN)/python -m pip install --quiet -e ./agent
	touch $(STAMP)

install: $(STAMP)

## Install, migrate, seed demo data, and serve on http://127.0.0.1:8000 with the scheduler
## and demo agents running beside the server.
run: install
	bin/serve

## Install everything and run the whole test suite.
test: install
	bin/test

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
