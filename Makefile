# Two entry points, each self-installing into .venv:
#   make run    the main job on its default config
#   make test   the whole fast test suite
# TORCH_SPEC pins the CPU wheel on CPU-only machines; on a GPU machine use e.g.
#   make test TORCH_SPEC=torch   (or install the package into your own environment).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= -c constraints-cpu.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-slow bench clean

$(STAMP): setup.cfg pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC) -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m sde_gen.train

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) outputs multirun
