# Two entry points: `make demo` and `make test`. Both build .venv from scratch when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench crash-bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python examples/crash_recovery_demo.py

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-test
	$(BIN)/python bench/queue_throughput.py
	$(BIN)/python bench/executor_throughput.py
	$(BIN)/python bench/crash_recovery.py

crash-bench: $(VENV)/.installed-test
	$(BIN)/python bench/crash_recovery.py

clean:
	rm -rf $(VENV) build *.egg-info
