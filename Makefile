# `make demo` and `make test` set everything up on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_DATA := runs/demo_data
DEMO_DIR := runs/demo

.PHONY: demo test lint bench clean plan-tpu

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Stamps make the installs idempotent: pip runs again only when a requirements file changes.
$(VENV)/.run-installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.run-installed
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

demo: $(VENV)/.run-installed
	$(BIN)/twlv demo --workdir $(DEMO_DIR) --data $(DEMO_DATA)

test: $(VENV)/.dev-installed $(VENV)/.tpu-installed
	$(BIN)/python -m pytest -n 2 --durations=15 tests

# `twlv plan` for TPU targets: libtpu at the version jax[tpu] pins for our JAX (a 213 MB
# wheel, 684 MB installed, about 13 s from a local index). JAX still runs on the CPU here.
LIBTPU := libtpu==0.0.42.*
$(VENV)/.tpu-installed: $(VENV)/.run-installed
	$(BIN)/pip install -q "$(LIBTPU)"
	touch $@

plan-tpu: $(VENV)/.tpu-installed

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

bench: $(VENV)/.dev-installed
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/data.py
	$(BIN)/python benchmarks/embed.py
	$(BIN)/python benchmarks/motion_features.py

clean:
	rm -rf runs
