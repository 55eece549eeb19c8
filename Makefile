# Two commands from a fresh clone (README, "Quick start"):
#   make run    set up .venv if needed, then sweep studies/alpha.yaml on its embedded defaults
#   make test   set up .venv if needed, then the default suite and the slow suite (what CI runs)
# Setup is scripts/setup.sh; it runs again when pyproject.toml or the script changes.

SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.gansweep-installed
STUDY ?= studies/alpha.yaml

.PHONY: setup run test test-default test-slow

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

run: $(STAMP)
	$(VENV)/bin/gansweep run $(STUDY)

# The slow tests are a separate step, so that a failure names its suite; each echoes when it
# finished, in seconds since `make test` started.
test: $(STAMP)
	@start=$$(date +%s); \
	$(PYTHON) -m pytest && echo "default suite done in $$(( $$(date +%s) - start ))s" && \
	$(PYTHON) -m pytest -m slow && echo "slow suite done at $$(( $$(date +%s) - start ))s"

test-default: $(STAMP)
	$(PYTHON) -m pytest

test-slow: $(STAMP)
	$(PYTHON) -m pytest -m slow
