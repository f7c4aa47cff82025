# make test   set up .venv (torch 2.14.1, requirements, this package with its extension), run the tests
# make bench  the same set-up, then the scan benchmark at its built-in default
# make demo   the same set-up, then the Magnetic Tile demo on the CPU (train mambaad_test, evaluate)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.14.1
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/*.cu csrc/*.cuh csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

.PHONY: test bench demo setup ext clean

MT_ROOT ?= ../shared/data/magnetic_tile
DEMO ?= runs/magnetic_tile

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

# 5 epochs of mambaad_test with the offline MobileNetV2 (TFLite) encoder, then the seven metrics and
# figures under $(DEMO); --resume continues an interrupted run from $(DEMO)/last.pt
demo: setup
	$(PY) -m mambaad.cli train --root $(MT_ROOT) --dataset magnetic_tile --model mambaad_test \
	  --encoder mobilenetv2_tflite --image-size 256 --batch-size 8 --epochs 5 --workers 1 \
	  --save-every 5 --resume --output $(DEMO)
	$(PY) -m mambaad.cli eval --checkpoint $(DEMO)/last.pt --output $(DEMO)/eval --save-maps 4 --workers 1

clean:
	rm -rf build *.egg-info mambaad_kernels/_C*.so
