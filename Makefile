# Fresh machine: `make run` (venv + install + the main job), `make test` (the same + the test suite).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: run test venv test-env bench clean test-gpu bench-gpu bench-gpu-zoo docs-report

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) -e '.[test]'
	touch $@

venv: $(VENV)/.core
test-env: $(VENV)/.test

run: $(VENV)/.core
	$(VENV)/bin/cnnrt eval

test: $(VENV)/.test
	$(VENV)/bin/cnnrt eval
	$(PY) -m pytest -q

# `make bench`: cnnrt against TensorFlow, ONNX Runtime and PyTorch on this machine; refreshes the
# cpu-bench section of docs/benchmarks.md, its chart and the raw JSON. Takes several minutes.
$(VENV)/.bench: $(VENV)/.core
	$(PIP) -e '.[bench]' 'torch==2.13.0'
	touch $@

bench: $(VENV)/.bench
	$(VENV)/bin/cnnrt bench --chart docs/bench_cpu.png --json-out docs/bench_cpu.json --doc docs/benchmarks.md

# `make docs-report`: docs/report.png, the page `cnnrt eval --report` writes, as chromium shows it.
$(VENV)/.report: $(VENV)/.core
	$(PIP) -e '.[report]'
	touch $@

docs-report: $(VENV)/.report
	PY=$(PY) dev/report_screenshot.sh

# GPU targets run on the device machine with its own python3 (CuPy, PyTorch, JAX there); no venv.
GPU_PY ?= python3
GPU_OUT ?= bench/out

test-gpu:
	PYTHONPATH=. $(GPU_PY) -m pytest -q -m gpu tests/test_cuda.py tests/test_cuda_graph.py -rs

bench-gpu:
	PYTHONPATH=. $(GPU_PY) bench/bench_gpu.py --json $(GPU_OUT)/bench_gpu.json

# the model zoo (Deep MNIST ... ResNet-18, MobileNetV3-small): cnnrt fp16/fp32 against PyTorch and JAX
bench-gpu-zoo:
	PYTHONPATH=. $(GPU_PY) benchmarks/gpu_zoo.py --json $(GPU_OUT)/gpu_zoo.json $(ZOO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
