# make test   set up .venv (torch 2.14.1, requirements, this package with its extension, the optional
#             extras of requirements-extras.txt), run the tests
# make bench  the same set-up, then the scan benchmark at its built-in default
# make demo   the same set-up, then the Magnetic Tile demo on the CPU (train mambaad_test, evaluate)
# make wheel  a binary wheel in dist/, built against .venv's torch (install it where that torch is)
# make test-oldtorch  the tests on the oldest supported torch (OLD_TORCH), against its installed wheel
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.14.1
# The oldest torch the package supports (setup.py MIN_TORCH) and the torchvision of its release.
OLD_TORCH := torch==2.4.0 torchvision==0.19.0
OLD_VENV := .venv-oldtorch
OLD_PY := $(OLD_VENV)/bin/python
# What the OLD_TORCH pass runs (docs/portability.md, "Torch versions", says why): the op, the extension, the
# dispatcher, the parity grid, the modules and models; not Triton (torch 2.4 brings triton 3.0, whose
# interpreter rejects our kernels), nor the slow CLI / benchmark / CUDA-emulator files, nor the tests that
# import the checkout in a subprocess (the checkout's extension is built for .venv's torch), nor a model
# test whose seeded drop-path draw differs on torch 2.4 (docs/portability.md).
OLD_TESTS ?= tests/test_ops.py tests/test_fused_op.py tests/test_extension.py tests/test_parity.py \
  tests/test_reference.py tests/test_paths.py tests/test_modules.py tests/test_portability.py \
  tests/test_model.py tests/test_mmad.py tests/test_data.py tests/test_metrics.py tests/test_cpu_isa.py \
  -k "(not triton or portability) and not fragment_coexist and not fakes_registered_by_the_extension \
  and not mmad_test_forward_backward_64 and not environment_forces and not bad_request \
  and not automatic_choice"
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/*.cu csrc/*.cuh csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)

.PHONY: test bench demo setup ext wheel test-oldtorch clean test-tools clang-check

MT_ROOT ?= ../shared/data/magnetic_tile
DEMO ?= runs/magnetic_tile

$(VENV)/.deps: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The optional extras (requirements-extras.txt: anomalib, huggingface_hub, the ONNX exporter and the
# onnxruntime / OpenVINO runtimes), torch held at $(TORCH)
$(VENV)/.extras: requirements-extras.txt $(VENV)/.deps
	printf '%s\n' $(TORCH) > $(VENV)/constraints.txt
	$(PY) -m pip install -q -r requirements-extras.txt -c $(VENV)/constraints.txt
	touch $@

$(VENV)/.installed: $(VENV)/.deps setup.py $(EXT_SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.installed

ext: $(VENV)/.deps  # incremental rebuild of the extension while developing
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) setup.py -q build_ext --inplace

test: setup $(VENV)/.extras test-tools clang-check
	$(PY) -m pytest tests -q -ra

# The tools of tests/test_aarch64.py and clang-check besides Python, from Debian (the list is also in
# tests/aarch64/build.py): GCC's aarch64 cross compiler, qemu's user-mode emulator, clang and its
# OpenMP headers. Nothing when they are installed; installed as root; otherwise the command is shown
# (the aarch64 tests then skip, or fail under CI=true).
APT_TOOLS := g++-aarch64-linux-gnu qemu-user clang libomp-dev

test-tools:
	@if dpkg -s $(APT_TOOLS) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "apt-get install -y $(APT_TOOLS)"; export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends $(APT_TOOLS) >/dev/null \
	  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(APT_TOOLS) >/dev/null; }; \
	else echo "not installed (needs root): apt-get install -y $(APT_TOOLS)"; fi

# The extension's C++ sources compiled, not linked, by clang++ as well (the compiler of macOS), with
# setup.py's flags and our warnings as errors (tests/aarch64/build.py, clang_check)
clang-check: $(VENV)/.deps test-tools
	$(PY) -m tests.aarch64.build clang-check

wheel: $(VENV)/.deps
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip wheel --no-build-isolation --no-deps -w dist .

# A venv with OLD_TORCH (its own build directory, so that .venv's build and in-place extension stay),
# the C++ extension only (this nvcc is newer than OLD_TORCH's CUDA), built as a wheel with the pip
# command docs/portability.md gives and installed, then the tests run against the installed package:
# pytest's --import-mode=append puts the checkout after site-packages.
$(OLD_VENV)/.deps: requirements.txt
	$(PYTHON) -m venv $(OLD_VENV)
	printf '%s\n' $(OLD_TORCH) > $(OLD_VENV)/constraints.txt
	$(OLD_PY) -m pip install -q $(OLD_TORCH)
	$(OLD_PY) -m pip install -q -r requirements.txt -c $(OLD_VENV)/constraints.txt
	printf '[build]\nbuild_base = $(OLD_VENV)/build\n' > $(OLD_VENV)/build.cfg
	touch $@

test-oldtorch: $(OLD_VENV)/.deps
	rm -rf $(OLD_VENV)/dist
	DIST_EXTRA_CONFIG=$(CURDIR)/$(OLD_VENV)/build.cfg MAMBAAD_BUILD_CUDA=0 MAX_JOBS=$${MAX_JOBS:-2} \
	  $(OLD_PY) -m pip wheel -q --no-build-isolation --no-deps -w $(OLD_VENV)/dist .
	$(OLD_PY) -m pip install -q --force-reinstall --no-deps $(OLD_VENV)/dist/mambaad-*.whl
	MAMBAAD_TEST_INSTALLED=1 $(OLD_VENV)/bin/pytest -q -ra --import-mode=append $(OLD_TESTS)

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
