# Each target bootstraps .venv from pyproject.toml by itself (and re-installs when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.resnet50.workflow --cpu --force

test: $(STAMP)
	$(BIN)/python -m pytest

# Each module measures side by side in one run and rewrites its own section of BENCHMARKS.md (bench/sections.py).
bench: $(STAMP)
	$(BIN)/python -m bench.run --force
	$(BIN)/python -m bench.memory --force
	$(BIN)/python -m bench.cpu_target --force
	$(BIN)/python -m bench.transformer --force
	$(BIN)/python -m bench.sensitivity --force

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
