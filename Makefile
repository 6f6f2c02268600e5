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
# The Debian-packaged corpora (linux_doc_en, gcide_en, kjv_en; docs/data.md): installed by the
# set-up where it runs as root with apt-get (CI, Colab, a container); elsewhere their tests are
# skipped with the apt command to run. DEBIAN_DATA=0 leaves the system alone.
DEBIAN_DATA ?= 1
DEBIAN_PACKAGES := linux-doc-6.1 dict-gcide bible-kjv

.PHONY: setup debian-data run test clean

setup: $(STAMP) debian-data

# Idempotent: dpkg says what is installed, so an installed system costs nothing. A failed install
# (no Debian mirror) warns and goes on: only the three corpus-count tests need the packages.
debian-data:
	@if [ "$(DEBIAN_DATA)" != 1 ] || [ "$$(dpkg-query -W -f '$${db:Status-Abbrev}\n' \
	    $(DEBIAN_PACKAGES) 2>/dev/null | grep -c '^ii')" = "$(words $(DEBIAN_PACKAGES))" ]; then exit 0; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing the Debian corpora: $(DEBIAN_PACKAGES)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null) \
	  || echo "warning: apt-get could not install $(DEBIAN_PACKAGES); their corpora's tests skip"; \
	else echo "note: not root with apt-get: the Debian corpora ($(DEBIAN_PACKAGES)) are not" \
	  "installed and their tests skip (sudo apt-get install $(DEBIAN_PACKAGES))"; fi

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
