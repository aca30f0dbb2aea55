# Everything a new machine needs: Python 3.11, 3.12 or 3.13 and Node 20 with npm. `make demo` and `make test` do the rest.
# The development default is the newest supported Python this machine really runs (3.13 if it has one: the local host
# then runs the functions through Microsoft's worker runtime, as Azure does on 3.13); another: make PYTHON=python3.11 ...
# (tools/pythons.py says which versions are supported, and why).
ifeq ($(origin PYTHON),undefined)
PYTHON := $(or $(shell python3 tools/pythons.py preferred 2>/dev/null),python3)
endif
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
# The same tests against the lowest versions requirements.txt allows (see test-lowest).
LOWEST    := .venv-lowest
LOWEST_PY := $(LOWEST)/bin/python
# The unit and function tests again on the other end of the supported range (see test-other-python).
OTHER     := .venv-other
OTHER_PY  := $(OTHER)/bin/python

.PHONY: check-python setup setup-lowest demo check test test-lowest test-other-python unit integration reliability bench emulator host clean

setup: check-python $(VENV)/.installed node_modules/.installed

## check-python: $(PYTHON) is a supported version (a plain reason if not); a .venv made by another Python is made
## again, since requirements.txt picks azure-functions 1.x or 2.x by version
check-python:
	@$(PYTHON) tools/pythons.py check
	@if [ -x $(PY) ] && [ "$$($(PY) -c 'import sys; print(sys.version_info[:2])')" != "$$($(PYTHON) -c 'import sys; print(sys.version_info[:2])')" ]; then \
		echo "$(VENV) was made with another Python: making it again with $(PYTHON)"; rm -rf $(VENV) $(LOWEST); fi

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) tools/pythons.py check
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## setup-lowest: .venv-lowest/, on .venv's Python: every direct dependency in requirements.txt at its lower bound
## (floors.txt; their own dependencies resolve as usual), the test tools from requirements-dev.txt as usual
setup-lowest: $(LOWEST)/.installed node_modules/.installed

$(LOWEST)/.installed: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(UV) venv --quiet --clear --python $(PY) $(LOWEST)
	$(UV) pip compile --quiet --python $(LOWEST_PY) --resolution lowest-direct --no-deps --no-header --no-annotate \
		requirements.txt -o $(LOWEST)/floors.txt
	$(UV) pip install --quiet --strict --python $(LOWEST_PY) -r requirements-dev.txt -c $(LOWEST)/floors.txt
	touch $@

## check: the inner loop, under a minute once .venv exists: ruff (lint and format), mypy, and the unit tests with a
## short model run and fewer cancellation times for the poll schedule's lag bound. Python only: no Node, no Azurite,
## no sockets (a fresh clone builds .venv and nothing else).
CHECK_MODEL_EXAMPLES ?= 200
CHECK_SCHEDULE_EXAMPLES ?= 100
check: check-python $(VENV)/.installed
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/ruff format --check --quiet .
	@echo "mypy, beside the unit tests (MODEL_EXAMPLES=$(CHECK_MODEL_EXAMPLES) SCHEDULE_EXAMPLES=$(CHECK_SCHEDULE_EXAMPLES)):"
	@$(VENV)/bin/mypy > $(VENV)/mypy.out 2>&1 & types=$$!; \
	MODEL_EXAMPLES=$(CHECK_MODEL_EXAMPLES) SCHEDULE_EXAMPLES=$(CHECK_SCHEDULE_EXAMPLES) \
		$(PY) -m pytest -q -n auto tests/unit; tests=$$?; \
	wait $$types; typed=$$?; echo "mypy:"; cat $(VENV)/mypy.out; [ $$tests -eq 0 ] && [ $$typed -eq 0 ]

## demo: Azurite + the Partner Center emulator + the local host; watch one customer being deleted
demo: setup
	$(PY) -m tools.demo

## test: every test (unit, function and integration tests; Azurite and the emulator are started by the run, one
## of each per worker), in TEST_WORKERS parallel workers, then test-lowest, then test-other-python
TEST_WORKERS ?= 4
test: setup setup-lowest
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup
	@$(MAKE) --no-print-directory test-lowest
	@$(MAKE) --no-print-directory test-other-python

## test-lowest: the unit and function tests in .venv-lowest/, which proves requirements.txt's lower bounds (the model
## with OTHER_MODEL_EXAMPLES histories: the full 2,000 run once, in `test`, on .venv's versions)
OTHER_MODEL_EXAMPLES ?= 500
test-lowest: setup-lowest
	@echo "lowest allowed versions (.venv-lowest/floors.txt):" $$(cat $(LOWEST)/floors.txt)
	MODEL_EXAMPLES=$(OTHER_MODEL_EXAMPLES) $(LOWEST_PY) -m pytest -n auto --dist loadgroup tests/unit tests/functions

## test-other-python: the unit, function and integration tests in .venv-other/, on the other end of the supported range
## from .venv's Python (3.11 for 3.13 and newer, 3.13 for 3.11 or 3.12), when this machine has it (python3.X on PATH, or
## pyenv's): so the whole app runs end to end on both workers, Microsoft's runtime (3.13) and the local host's own
## (3.11, the template's default)
test-other-python: setup
	@other=$$($(PY) tools/pythons.py other-end); \
	if [ -z "$$other" ]; then \
		echo "test-other-python: skipped, no Python at the other end of the supported range was found (see tools/pythons.py)"; exit 0; fi; \
	if [ ! -f $(OTHER)/.installed ] || [ "$$(cat $(OTHER)/.installed)" != "$$other" ] || [ requirements.txt -nt $(OTHER)/.installed ] \
		|| [ requirements-dev.txt -nt $(OTHER)/.installed ]; then \
		$(UV) venv --quiet --clear --python "$$other" $(OTHER) && \
		$(UV) pip install --quiet --python $(OTHER_PY) -r requirements-dev.txt && echo "$$other" > $(OTHER)/.installed || exit 1; fi; \
	echo "other end of the supported range: $$($(OTHER_PY) --version), azure-functions $$($(OTHER_PY) -c 'from importlib.metadata import version; print(version("azure-functions"))')"; \
	MODEL_EXAMPLES=$(OTHER_MODEL_EXAMPLES) $(OTHER_PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup tests/unit tests/functions tests/integration

## unit: the unit tests with the whole model (2,000 histories); Python only, like check
unit: check-python $(VENV)/.installed
	$(PY) -m pytest -n auto tests/unit

integration: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup tests/functions tests/integration

## reliability: many deletions under injected faults, outages and host kills, in both profiles (one: PROFILES=harsh);
## prints the tables kept in docs/reliability.md
PROFILES ?= standard harsh
reliability: setup
	@for profile in $(PROFILES); do $(PY) -m tools.reliability --profile $$profile || exit 1; done

## bench: this app side by side with Microsoft's busy loop on the emulator, a full sandbox under the rate limit, and
## cold start; prints the tables kept in docs/performance.md (about 20 minutes; exit status 1 if a gated target is missed)
bench: setup
	$(PY) -m tools.bench

## emulator / host: run one piece by hand (see docs/local-development.md)
emulator: setup
	$(PY) -m tools.pc_emulator --port 8443 --state-dir .local/emulator

host: setup
	$(PY) -m tools.local_host --settings local.settings.json

clean:
	rm -rf $(VENV) $(LOWEST) $(OTHER) node_modules .local .pytest_cache .hypothesis .mypy_cache .ruff_cache
