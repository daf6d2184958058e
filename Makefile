# Two entry points: `make demo` and `make test`. Both build .venv from scratch when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test servers lint bench crash-bench server-bench clean

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

# The server-store tests run real servers from Debian's packages: installed here once,
# non-interactively (as root in CI; through sudo elsewhere), and started by tests/servers.py.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
servers:
	@if ! command -v redis-server >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
			|| ! [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			redis-server postgresql rabbitmq-server </dev/null; \
	fi

test: $(VENV)/.installed-test servers
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-test
	$(BIN)/python bench/queue_throughput.py
	$(BIN)/python bench/executor_throughput.py
	$(BIN)/python bench/crash_recovery.py
	$(BIN)/python bench/schedule_bench.py

crash-bench: $(VENV)/.installed-test
	$(BIN)/python bench/crash_recovery.py

server-bench: $(VENV)/.installed-test servers
	$(BIN)/python bench/server_bench.py
	$(BIN)/python bench/rabbitmq_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
