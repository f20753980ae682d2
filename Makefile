# Every target first makes sure .venv matches pyproject.toml, so each one works as the
# first command on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-from-pyproject

.PHONY: venv train lint test test-fast bench bench-quick loadtest app serve clean-data

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

# The style gate: ruff's settings are in pyproject.toml; `ruff format .` fixes what format --check finds.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The suite runs in one pytest-xdist worker per core this process may use (at most 8; xdist's own `auto`
# counts the machine's cores), each with its share of torch's threads (tests/conftest.py);
# `make test ARGS="-n 0"` runs it in this process, as a plain `pytest` does.
CORES := $(shell $(PYTHON) -c "import os; print(min(8, len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()))")
WORKERS := -n $(CORES) --dist worksteal

test: lint
	$(PY) -m pytest $(WORKERS) $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest $(WORKERS) -m "not slow" $(ARGS)

# Benchmarks: every figure as a ratio against its reference, written to experiments/benchmarks/.
bench: $(STAMP)
	$(PY) -m ctl_lightning.benchmarks

bench-quick: $(STAMP)
	$(PY) -m ctl_lightning.benchmarks --quick --out .bench-data/quick

# Load test of a real ctl-serve on 127.0.0.1: 64 clients for 30 s, a reload halfway; it prints and writes .bench-data/loadtest/
# (LOADTEST.md, loadtest.json, server.log). RUN_DIR=<run> serves that run instead of two small ones built offline;
# ARGS="--clients 8 --seconds 5". `make bench` runs it too (step loadtest) and records it in RESULTS.md.
loadtest: $(STAMP)
	$(PY) -m ctl_lightning.benchmarks.loadtest $(RUN_DIR) $(ARGS)

# Streamlit app on localhost: the latest `make train` run, or RUN_DIR=outputs/train/runs/<time>;
# DATA_ROOT=<folder> when the run's dataset has moved since it ran.
app: $(STAMP)
	$(PY) -m streamlit run src/ctl_lightning/app/streamlit_app.py --server.headless true --client.toolbarMode viewer -- $(if $(RUN_DIR),--run-dir $(RUN_DIR),) $(if $(DATA_ROOT),--data-root $(DATA_ROOT),)

# HTTP API on http://127.0.0.1:8000 (docs at /docs): the latest `make train` run, or RUN_DIR=outputs/train/runs/<time>.
serve: $(STAMP)
	$(VENV)/bin/ctl-serve $(RUN_DIR) $(ARGS)

clean-data:
	rm -rf data/synthetic
