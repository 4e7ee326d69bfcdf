# Two commands from a clean checkout: `make run` (the main job) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: run test lint typecheck clean venv

# The separately installable plugins under plugins/astrid-<name>/ that `make test` installs, checks
# and tests. A new plugin adds its name here (its package is astrid_<name with - as _>).
PLUGINS := postgres openai anthropic mcp openai-agents claude-agent-sdk
PLUGIN_DIRS := $(foreach p,$(PLUGINS),plugins/astrid-$(p))
PLUGIN_PKGS := $(foreach p,$(PLUGINS),plugins/astrid-$(p)/astrid_$(subst -,_,$(p)))
PLUGIN_TESTS := $(foreach p,$(PLUGINS),plugins/astrid-$(p)/tests)

venv: $(STAMP)

# No "a new release of pip is available" notice in the output of make.
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# The virtualenv itself.
$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# `make run`: the runtime only (the core package and its dependencies).
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

# `make test` and `make lint`: the runtime, the development tools and every plugin; a venv made
# by `make run` is upgraded in place.
$(STAMP): pyproject.toml $(foreach d,$(PLUGIN_DIRS),$(d)/pyproject.toml) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(foreach d,$(PLUGIN_DIRS),-e '$(d)[test]')
	touch $(STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/astrid demo

lint: $(STAMP)
	$(BIN)/ruff check astrid tests examples
	$(BIN)/mypy astrid $(PLUGIN_PKGS)

typecheck: lint

# The PostgreSQL plugin's tests start a throwaway server on 127.0.0.1 (initdb/pg_ctl from
# Debian's postgresql package); outside CI they skip with a message when none can be started.
# The suite runs on every core up to four (pytest-xdist); PYTEST_ARGS= runs it in one process.
PYTEST_ARGS ?= -n auto --maxprocesses 4
test: $(STAMP) lint
	$(BIN)/python -m pytest -q tests $(PLUGIN_TESTS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (docs/performance.md). `make bench` is the scaled-down run; the full one is
# `make bench BENCH_ARGS=`. `make bench-peers` installs the peers into benchmarks/.peers-venv
# (never into .venv) together with this checkout, and compares in one run: the storage
# operations and the runtime's own cost per turn (benchmarks/peers_turn.py; alone:
# `make bench-peers PEERS_ARGS="--ops turn"`).
.PHONY: bench bench-peers
BENCH_ARGS ?= --quick
PEERS_ARGS ?= --quick
PEERS_VENV := benchmarks/.peers-venv
PEERS_STAMP := $(PEERS_VENV)/.installed

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# Event-loop stalls while the runtime saves (docs/performance.md): today's sync save on the
# loop next to store.asave, with another writer's lock, 20 000 messages, synchronous = FULL.
.PHONY: bench-loop-lag
LOOP_LAG_ARGS ?=
bench-loop-lag: $(STAMP)
	$(BIN)/python benchmarks/loop_lag.py $(LOOP_LAG_ARGS)

$(PEERS_STAMP): pyproject.toml plugins/astrid-openai/pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -e . -e plugins/astrid-openai
	@# Each peer on its own: one that fails to install is reported by peers.py and skipped.
	-$(PEERS_VENV)/bin/python -m pip install --quiet openai-agents
	-$(PEERS_VENV)/bin/python -m pip install --quiet --no-deps -e plugins/astrid-openai-agents
	-$(PEERS_VENV)/bin/python -m pip install --quiet langgraph langgraph-checkpoint-sqlite
	-$(PEERS_VENV)/bin/python -m pip install --quiet langchain-openai
	-$(PEERS_VENV)/bin/python -m pip install --quiet 'pydantic-ai-slim[openai]'
	-$(PEERS_VENV)/bin/python -m pip install --quiet 'google-adk[db]' aiosqlite 'sqlalchemy[asyncio]'
	-$(PEERS_VENV)/bin/python -m pip install --quiet pyinstrument
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP)
	$(PEERS_VENV)/bin/python benchmarks/peers.py $(PEERS_ARGS)
