# make test   set up .venv (torch 2.14.1, requirements, this package with its extension), run the tests
# make bench  the same set-up, then the scan benchmark at its built-in default
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.14.1
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/*.cu csrc/*.cuh csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

.PHONY: test bench setup ext clean

$(VENV)/.deps: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed: $(VENV)/.deps setup.py $(EXT_SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.installed

ext: $(VENV)/.deps  # incremental rebuild of the extension while developing
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) setup.py -q build_ext --inplace

test: setup
	$(PY) -m pytest tests -q -ra

bench: setup
	$(PY) benchmarks/scan_bench.py

clean:
	rm -rf build *.egg-info mambaad_kernels/_C*.so
