# `make serve` runs the demo; `make test` runs the checks and tests. Each sets up what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,export,test
OAM := $(wildcard ../shared/data/oam)
ROOTS := $(CURDIR)/.dinotiles/data$(if $(OAM),:$(abspath $(OAM)))
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test demo lint bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

demo: $(BIN)/.installed
	$(BIN)/dinotiles demo

serve: $(BIN)/.installed node_modules/.installed demo
	DINOTILES_LOCAL_ROOTS=$(ROOTS) $(BIN)/dinotiles serve --host $(HOST) --port $(PORT)

lint: $(BIN)/.installed
	$(BIN)/ruff check service export tests benchmarks
	$(BIN)/mypy

test: $(BIN)/.installed node_modules/.installed demo lint
	$(BIN)/pytest -q

bench: $(BIN)/.installed demo
	$(BIN)/python -m benchmarks.render_vs_seed
	$(BIN)/python -m benchmarks.tiles

clean:
	rm -rf $(VENV) node_modules .dinotiles
