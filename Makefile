# Fresh machine: `make run` (venv + install + the main job), `make test` (the same + the test suite).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: run test venv test-env bench clean test-gpu bench-gpu docs-report bench-cpu-zoo

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

# `make bench-cpu-zoo`: cnnrt's CPU path against ONNX Runtime and PyTorch eager on the model zoo (Deep MNIST,
# ResNet-20, MobileNetV2 96x96, ResNet-18) and the thread-scaling curve (1..16 threads), with whatever python3
# has them (no venv: e.g. the 16-core device host, `make bench-cpu-zoo ZOO_OUT=$$OUT`). Several minutes.
ZOO_PY ?= python3
ZOO_OUT ?= docs
bench-cpu-zoo:
	PYTHONPATH=. $(ZOO_PY) benchmarks/cpu_zoo.py --json $(ZOO_OUT)/cpu_zoo.json
	PYTHONPATH=. $(ZOO_PY) benchmarks/cpu_zoo.py --scaling --json $(ZOO_OUT)/cpu_scaling.json
	PYTHONPATH=. $(ZOO_PY) benchmarks/cpu_zoo.py --render $(ZOO_OUT)/cpu_zoo.json $(ZOO_OUT)/cpu_scaling.json \
		--chart $(ZOO_OUT)/cpu_scaling.png --markdown $(ZOO_OUT)/cpu_zoo.md

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
	PYTHONPATH=. $(GPU_PY) -m pytest -q -m gpu tests/test_cuda.py -rs

bench-gpu:
	PYTHONPATH=. $(GPU_PY) bench/bench_gpu.py --json $(GPU_OUT)/bench_gpu.json

clean:
	rm -rf $(VENV) build *.egg-info
