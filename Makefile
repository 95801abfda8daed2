# Two commands do all the set-up on a fresh machine:
#   make demo   - set up .venv, fetch glomeruli-pas (mirror or download), run notebooks 01..05, render HTML reports
#   make test   - set up .venv and run the test suite
# Set-up is idempotent: a second run installs nothing (the stamp depends on pyproject.toml).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.glomlib-installed
PROFILE ?= quick-cpu
PYTEST_ARGS ?=

.PHONY: setup demo test clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,openslide]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/glomlib data fetch glomeruli-pas
	$(VENV)/bin/glomlib run --profile $(PROFILE)

test: $(STAMP)
	$(VENV)/bin/ruff check glomlib tests benchmarks
	$(VENV)/bin/ruff format --check glomlib tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
