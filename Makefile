# Two commands do all the set-up on a fresh machine:
#   make demo   - set up .venv, fetch glomeruli-pas (mirror or download), run notebooks 01..05, render HTML reports
#   make test   - set up .venv and run the test suite
#   make screenshots [RUN=reports/<run>] - a full-height PNG of every page at 1,024 px -> <run>/screenshots/
#   make report-check [RUN=reports/<run>] - every leftover a reader would meet (text, tables, alt, size, browser)
# Set-up is idempotent: a second run installs nothing (the stamp depends on pyproject.toml).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.glomlib-installed
PROFILE ?= quick-cpu
PYTEST_ARGS ?=
# the newest rendered report (the folder of the most recently written reports/*/index.html)
RUN ?= $(patsubst %/index.html,%,$(firstword $(shell ls -1t reports/*/index.html 2>/dev/null)))

.PHONY: setup demo test screenshots report-check clean-venv

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

screenshots: $(STAMP)
	@test -n "$(RUN)" -a -f "$(RUN)/index.html" || { echo "no report found: make demo, or RUN=reports/<run>"; exit 2; }
	$(PY) tests/test_browser.py --screenshots $(RUN)/screenshots $(RUN)

report-check: $(STAMP)
	@test -n "$(RUN)" -a -f "$(RUN)/index.html" || { echo "no report found: make demo, or RUN=reports/<run>"; exit 2; }
	$(PY) tests/report_scan.py $(RUN); a=$$?; $(PY) tests/test_browser.py --check $(RUN); b=$$?; \
	test $$a -eq 0 -a $$b -eq 0

clean-venv:
	rm -rf $(VENV)
