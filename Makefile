# `make serve` runs the demo; `make test` runs the checks and tests. Each sets up what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,export,batch,test
OAM := $(wildcard ../shared/data/oam)
ROOTS := $(CURDIR)/.dinotiles/data$(if $(OAM),:$(abspath $(OAM)))
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test demo lint bench bench-load gpu-kit clean vendor image image-gpu image-ray image-test wheelhouse

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

# Front-end files the package serves (viewer, /docs, /redoc), copied from npm's pinned versions into the
# package so a wheel works offline; committed. tests/test_packaging.py checks they match node_modules.
STATIC := service/dinotiles/server/static
vendor: node_modules/.installed
	mkdir -p $(STATIC)/leaflet $(STATIC)/swagger-ui $(STATIC)/redoc
	cp node_modules/leaflet/dist/leaflet.js node_modules/leaflet/dist/leaflet.css node_modules/leaflet/LICENSE $(STATIC)/leaflet/
	cp -r node_modules/leaflet/dist/images $(STATIC)/leaflet/
	cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css \
	   node_modules/swagger-ui-dist/favicon-32x32.png node_modules/swagger-ui-dist/LICENSE $(STATIC)/swagger-ui/
	cp node_modules/redoc/bundles/redoc.standalone.js node_modules/redoc/bundles/redoc.standalone.js.LICENSE.txt \
	   node_modules/redoc/LICENSE $(STATIC)/redoc/

demo: $(BIN)/.installed
	$(BIN)/dinotiles demo

serve: $(BIN)/.installed node_modules/.installed demo
	DINOTILES_LOCAL_ROOTS=$(ROOTS) $(BIN)/dinotiles serve --host $(HOST) --port $(PORT)

lint: $(BIN)/.installed
	$(BIN)/ruff check service export tests benchmarks infrastructure
	$(BIN)/mypy

test: $(BIN)/.installed node_modules/.installed demo lint
	$(BIN)/pytest -q

# the unit tests only (no real weights, imagery, servers or browser): well under a minute
.PHONY: test-fast
test-fast: $(BIN)/.installed
	$(BIN)/pytest -q -m "not slow"

bench: $(BIN)/.installed demo
	$(BIN)/python -m benchmarks.render_vs_seed
	$(BIN)/python -m benchmarks.tiles

# a real server under load: batching on vs off, 10,000 cached tiles, RSS (about 10 minutes on 2 cores)
bench-load: $(BIN)/.installed demo
	$(BIN)/python -m benchmarks.load

# what benchmarks/gpu.sh needs on a bare GPU machine (two loads under 64 MiB each; see its header)
gpu-kit: $(BIN)/.installed demo
	$(BIN)/python -m benchmarks.gpu_kit

clean:
	rm -rf $(VENV) node_modules .dinotiles .gpukit

# -- container images (podman through ../shared/tools/oci.sh; any OCI builder reads the same Dockerfile)
OCI := ../shared/tools/oci.sh
wheelhouse: build/wheelhouse/.done
build/wheelhouse/.done:
	mkdir -p build/wheelhouse
	$(PYTHON) -m pip download -q --no-deps -d build/wheelhouse torch==2.13.0
	touch $@

image: wheelhouse
	$(OCI) setup
	eval "$$($(OCI) env)" && podman build -q --format docker --target cpu -t localhost/dinotiles:cpu \
	  --secret id=cabundle,src=/etc/ssl/certs/ca-certificates.crt .

image-gpu: wheelhouse
	$(OCI) setup
	eval "$$($(OCI) env)" && podman build -q --format docker --target gpu -t localhost/dinotiles:gpu \
	  --secret id=cabundle,src=/etc/ssl/certs/ca-certificates.crt .

image-ray: wheelhouse
	$(OCI) setup
	eval "$$($(OCI) env)" && podman build -q --format docker --target ray -t localhost/dinotiles:ray \
	  --secret id=cabundle,src=/etc/ssl/certs/ca-certificates.crt .

# the image alone (read-only, non-root, a real tile), then the base manifests through `podman kube play`
image-test: image $(BIN)/.installed
	infrastructure/image-test.sh
	infrastructure/kube-play.sh
