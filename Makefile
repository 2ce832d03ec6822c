# Two commands matter: `make run` and `make check`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKERS ?= 2

.PHONY: run check lint typecheck test unit docs soak bench bench-peers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/unicornish --app examples/testapp.py --workers $(WORKERS)

lint: $(STAMP)
	$(VENV)/bin/ruff check unicornish tests examples bench
	$(VENV)/bin/ruff format --check unicornish tests examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# System tools some tests drive for real: systemd-analyze verifies the unit
# files, logrotate rotates a live log, faketime jumps the wall clock,
# prometheus scrapes --metrics and promtool checks its output, wrk loads --asgi
# and --wsgi while the master reloads, upgrades and scales them.
# Installed only where missing.
TOOLS_STAMP := $(VENV)/.tools
$(TOOLS_STAMP): $(STAMP)
	@missing=""; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v logrotate >/dev/null || missing="$$missing logrotate"; \
	command -v faketime >/dev/null || missing="$$missing faketime"; \
	{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } \
		|| missing="$$missing prometheus"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			(apt-get update -qq && apt-get install -y -qq $$missing) >/dev/null; \
		else echo "please install:$$missing (tests need them)"; exit 1; fi; \
	fi
	touch $(TOOLS_STAMP)

# Two pytest workers: the tests mostly wait for real processes (a master starting,
# a worker booting, a signal acted on), so two run side by side on 2 cores in
# about 60 % of the time of one. `make test TEST_JOBS=0` runs them one by one.
TEST_JOBS ?= 2
test: $(STAMP) $(TOOLS_STAMP)
	$(PY) -m pytest -q $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS))

check: lint typecheck test

# The unit layer alone: no master is started, a few seconds.
unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# The options and control protocol tables of docs/reference.md, written from
# the declarations in unicornish/config.py and unicornish/ctl/commands.py
# (tests/test_docs.py fails until it is).
docs: $(STAMP)
	$(PY) docs/options_table.py

soak: $(STAMP)
	$(PY) -m pytest -q tests/chaos --soak

bench:
	bash bench/setup.sh
	bench/.venv/bin/python bench/run.py $(if $(QUICK),--quick)
	bench/.venv/bin/python bench/http_wsgi.py $(if $(QUICK),--quick)

bench-peers:
	bash bench/peers.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
