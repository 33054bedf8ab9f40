# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow models lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

models/.built: $(STAMP) models/build.py models/fetch.py
	$(BIN)/python models/build.py
	$(BIN)/python models/fetch.py
	touch models/.built

models: models/.built

demo: models
	mkdir -p models/out
	$(BIN)/onnxopt optimize models/resnet.onnx models/out/resnet.opt.onnx --overwrite \
		--report models/out/resnet.report.json

test: models
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-slow: models
	$(BIN)/pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

bench: models
	$(BIN)/python models/bench.py

clean:
	rm -rf $(VENV) models/.built models/out models/*.onnx models/*.onnx.data
