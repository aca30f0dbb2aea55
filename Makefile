# Everything a new machine needs: Python 3.10-3.12 and Node 20 with npm. `make demo` and `make test` do the rest.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
# The same tests against the lowest versions requirements.txt allows (see test-lowest).
LOWEST    := .venv-lowest
LOWEST_PY := $(LOWEST)/bin/python

.PHONY: setup setup-lowest demo test test-lowest unit integration reliability bench emulator host clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), "Python 3.10-3.12 is needed (azure-functions 1.x), found " + sys.version.split()[0]'
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

## demo: Azurite + the Partner Center emulator + the local host; watch one customer being deleted
demo: setup
	$(PY) -m tools.demo

## test: every test (unit, function and integration tests; Azurite and the emulator are started by the run),
## then test-lowest
test: setup setup-lowest
	$(PY) -m pytest
	@$(MAKE) --no-print-directory test-lowest

## test-lowest: the unit and function tests in .venv-lowest/, which proves requirements.txt's lower bounds
test-lowest: setup-lowest
	@echo "lowest allowed versions (.venv-lowest/floors.txt):" $$(cat $(LOWEST)/floors.txt)
	$(LOWEST_PY) -m pytest tests/unit tests/functions

unit: setup
	$(PY) -m pytest tests/unit

integration: setup
	$(PY) -m pytest tests/functions tests/integration

## reliability: many deletions under injected faults, outages and host kills, in both profiles (one: PROFILES=harsh);
## prints the tables kept in the README
PROFILES ?= standard harsh
reliability: setup
	@for profile in $(PROFILES); do $(PY) -m tools.reliability --profile $$profile || exit 1; done

## bench: this app side by side with Microsoft's busy loop on the emulator, a full sandbox under the rate limit, and
## cold start; prints the tables kept in the README (about 10 minutes; exit status 1 if a gated target is missed)
bench: setup
	$(PY) -m tools.bench

## emulator / host: run one piece by hand (see the README)
emulator: setup
	$(PY) -m tools.pc_emulator --port 8443 --state-dir .local/emulator

host: setup
	$(PY) -m tools.local_host --settings local.settings.json

clean:
	rm -rf $(VENV) $(LOWEST) node_modules .local .pytest_cache .hypothesis
