# The two commands a new machine needs: `make serve` (the service on the embedded default) and `make test`.
# Both create .venv and install everything on first use.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# Test processes: most tests wait on services, subprocesses and trainers, so more processes than cores pay off.
TEST_PROCESSES ?= 4

.PHONY: serve test lint services compose-test mutation

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/vitq serve

services:
	bash .ci/services

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP) services lint
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -rs --durations=25 -n $(TEST_PROCESSES) --dist loadfile

# docker compose up --build, a job, two workers, down -v (tests/compose). Needs a Docker engine with Compose v2;
# on a machine without Docker Hub, run ../shared/tools/local-docker.sh first (base image stand-ins).
compose-test: $(STAMP)
	$(VENV)/bin/pytest -q -rs -m compose tests/compose

# Mutation testing (mutmut) of the core modules, each against its own tests: tens of minutes, so not part of
# `make test`. Prints the killed / survived table the README's "Test quality" section shows.
mutation: $(STAMP)
	nice -n 15 $(VENV)/bin/python tools/mutation.py
