# flnorm: `make run` and `make test` set up .venv on first use (offline after that).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.flnorm-installed
export FLWR_TELEMETRY_ENABLED ?= 0
export FLWR_DISABLE_UPDATE_CHECK ?= 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION ?= 1

# The default experiment of `make run`; override e.g. `make run RUN_ARGS="--norm bn"`.
RUN_ARGS ?= --norm ln --partition classes-2 --clients 10 --rounds 30

.PHONY: install run test test-fast bench bench-scale clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: install
	$(VENV)/bin/flnorm run $(RUN_ARGS)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) experiments/benchmark_overhead.py

bench-scale: install
	$(PY) experiments/benchmark_scale.py --clients 10 100 1000 --rounds 10

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
