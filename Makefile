# Entry points, each self-installing into .venv:
#   make run         the main job on its default config
#   make test        the whole fast test suite (what CI runs first)
#   make test-seeds  the statistical tests under 5 further seeds (--stat-seed 1..5)
#   make test-slow   the slow tier only;  make test-slow-ci: its part CI runs;  make test-all: fast, then slow
#   make mutation    mutation scores of the core modules (mutmut; MUTATION_ARGS="losses --max-children 1")
#   (tiers, seeds and times: docs/testing.md)
# The install includes the `interop` extra (diffusers, safetensors: ~19 s of CPU time) and
# k-diffusion without its declared dependencies (torchvision would replace the pinned torch; the
# modules sde_gen.interop loads need only torchsde and trampoline: ~5 s), so that the interop and
# export tests run.
# TORCH_SPEC pins the CPU wheel on CPU-only machines; on a GPU machine use e.g.
#   make test TORCH_SPEC=torch   (or install the package into your own environment).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= -c constraints-cpu.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-seeds test-slow test-slow-ci test-all bench clean mutation

STAT_SEEDS ?= 1 2 3 4 5

$(STAMP): setup.cfg pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC) -e '.[test,interop]'
	$(PY) -m pip install -q --no-deps k-diffusion torchsde trampoline
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m sde_gen.train

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

test-seeds: $(STAMP)
	set -e; for s in $(STAT_SEEDS); do echo "--stat-seed $$s"; $(PY) -m pytest -q -m "statistical and not slow" --stat-seed $$s; done

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# the part of the slow tier CI can afford: end-to-end fault injection and the notebooks run in fast mode (~4-5 min)
test-slow-ci: $(STAMP)
	$(PY) -m pytest -q -m slow tests/test_faults.py tests/test_notebooks.py

test-all: test test-slow

# mutation testing: the `mutation` extra on top of the test install, then each core module
# against its focused tests (tools/mutation.py; scores and times in docs/testing.md)
MUTATION_STAMP := $(VENV)/.installed-mutation
MUTATION_ARGS ?=
$(MUTATION_STAMP): $(STAMP)
	$(PY) -m pip install -q $(TORCH_SPEC) -e '.[test,mutation]'
	touch $(MUTATION_STAMP)

mutation: $(MUTATION_STAMP)
	$(PY) tools/mutation.py $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) outputs multirun mutants .mutation
