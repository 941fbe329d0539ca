# Fresh machine: `make run` (venv + install + the main job), `make test` (the same + the test suite).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: run test venv test-env bench clean

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

clean:
	rm -rf $(VENV) build *.egg-info
