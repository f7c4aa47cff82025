#!/usr/bin/env bash
# Everything a GPU machine checks in one go, in under 10 minutes, with no network: print the
# machine, build the extension for this GPU, run the GPU tests of the CUDA and Triton backends,
# time the scan beside the authors' path. Every step is logged under $OUT; a failing step is
# recorded and the script goes on, so one call brings back as much as it can. Ends with a summary.
#
# usage (from anywhere; runs in the repository root):
#   OUT=/path/to/results benchmarks/gpu_check.sh
# environment:
#   OUT                     output folder (default: runs/gpu_check_<date> in the repository)
#   PYTHON                  interpreter with torch, triton and pytest (default: the first of
#                           python3, python that imports torch)
#   TORCH_CUDA_ARCH_LIST    architectures to build (default 9.0: the H100; 8.0 for an A100)
#   MAX_JOBS                parallel compile jobs (default: the number of CPUs)
#   GPU_CHECK_DEADLINE_S    total time budget in seconds (default 570); later steps get what is left
#   GPU_CHECK_TESTS         test files (default: tests/test_parity.py tests/test_cuda.py tests/test_triton.py)
#   GPU_CHECK_BUILD         0: use the extension as already built (no build step)
#   GPU_CHECK_BENCH         0: skip the benchmark
#   GPU_CHECK_PROFILE       1: also run Nsight Compute (ncu) on the scan kernels at one stage
#   GPU_CHECK_PROFILE_STAGE the MambaAD decoder stage to profile, 0 .. 3 (default 3: 64 x 64);
#                           MAMBAAD_CUDA_FWD=lanes profiles the lane-sequential forward instead
#   GPU_CHECK_MODEL         1: also time the whole MambaAD model (model_bench.py, B 16, 256 px, every
#                           scan path and the authors' path; forward and train step)
#   GPU_CHECK_WHERE         0: skip the where-the-time-goes steps after the benchmark (kernel_time.py:
#                           device vs wall time per call and the longest kernels; host_overhead.py:
#                           the host's time per call by entry point)
# If a mamba-ssm source distribution is in .carry/ (mamba_ssm-*.tar.gz) and
# benchmarks/build_mamba_ssm.sh exists, mamba-ssm's selective-scan extension is built in the
# background at the same time, for the authors'-path baseline of the benchmark.
# Outputs: env.txt, build.log, kernels.txt (registers / spills per kernel), tests.log,
# junit.xml, mamba_ssm_build.log, scan_bench.log, scan_bench.json, profile.log (if asked),
# kernel_time.log / .json, host_overhead.log / .json, model_bench.log / .json (if asked),
# summary.txt. Exit status: the build's if it failed, else the tests'.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_DEADLINE_S:-570}))
OUT="${OUT:-$ROOT/runs/gpu_check_$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"

export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
NPROC="$(nproc 2>/dev/null || echo 4)"
export MAX_JOBS="${MAX_JOBS:-$NPROC}"
TESTS="${GPU_CHECK_TESTS:-tests/test_parity.py tests/test_cuda.py tests/test_triton.py}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
# the interpreter: $PYTHON, else the first of python3 / python that imports torch
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    for cand in python3 python; do
        if command -v "$cand" > /dev/null && "$cand" -c "import torch" 2> /dev/null; then
            PY="$(command -v "$cand")"
            break
        fi
    done
fi
if [[ -z "$PY" ]]; then
    echo "[gpu_check] no python with torch found (set PYTHON)" | tee "$SUMMARY"
    exit 2
fi

left() { echo $((DEADLINE - $(date +%s))); }

# step NAME LIMIT_S LOG CMD...: run CMD with a time limit (capped by the deadline), tee to LOG,
# record "NAME rc=... seconds" in the summary.
step() {
    local name="$1" limit="$2" log="$3"
    shift 3
    local budget
    budget=$(left)
    if ((budget < 15)); then
        echo "[gpu_check] $name: skipped, no time left" | tee -a "$log"
        printf '%-14s skipped (deadline)\n' "$name" >> "$SUMMARY"
        return 124
    fi
    ((limit > budget)) && limit=$budget
    echo "[gpu_check] $name (limit ${limit}s): $*" | tee -a "$log"
    local t0=$(date +%s)
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    local dt=$(($(date +%s) - t0))
    local what="ok"
    ((rc == 124 || rc == 137)) && what="TIMED OUT"
    ((rc != 0 && rc != 124 && rc != 137)) && what="FAILED"
    printf '%-14s %-9s rc=%-3s %4ss  log: %s\n' "$name" "$what" "$rc" "$dt" "$(basename "$log")" >> "$SUMMARY"
    return "$rc"
}

# ---- 1. the machine --------------------------------------------------------------------------------
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
         "$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo '(with local changes)')"
    echo "host: $(hostname), $NPROC CPUs"
    nvidia-smi || echo "nvidia-smi failed"
    nvcc --version || echo "nvcc not on PATH"
    "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| torch CUDA", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:
    print("triton: not importable:", exc)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "| sm", f"{p.major}.{p.minor}", "|", p.multi_processor_count, "SMs |",
          round(p.total_memory / 2**30, 1), "GiB")
else:
    print("no CUDA device visible to torch")
EOF
} 2>&1 | tee "$OUT/env.txt"

# ---- 2. mamba-ssm's extension, in the background (authors' path baseline) --------------------------
MAMBA_PID=""
SDIST="$(ls -1 "$ROOT"/.carry/mamba_ssm-*.tar.gz 2>/dev/null | sort | tail -n 1)"
if [[ -n "$SDIST" && -x "$ROOT/benchmarks/build_mamba_ssm.sh" ]]; then
    echo "[gpu_check] building mamba-ssm's selective scan in the background from $SDIST"
    (MAX_JOBS=$(( (MAX_JOBS + 1) / 2 )) PYTHON="$PY" \
        timeout -k 10 "$(( $(left) > 400 ? 400 : $(left) ))" \
        "$ROOT/benchmarks/build_mamba_ssm.sh" "$SDIST" > "$OUT/mamba_ssm_build.log" 2>&1;
     echo "rc=$?" >> "$OUT/mamba_ssm_build.log") &
    MAMBA_PID=$!
else
    echo "[gpu_check] no .carry/mamba_ssm-*.tar.gz or benchmarks/build_mamba_ssm.sh: the benchmark" \
         "times the authors' path without mamba-ssm's kernel if it can" | tee "$OUT/mamba_ssm_build.log"
    printf '%-14s skipped (no sdist in .carry/)\n' "mamba_ssm" >> "$SUMMARY"
fi

# ---- 3. our extension, for this GPU only -----------------------------------------------------------
if [[ "${GPU_CHECK_BUILD:-1}" == "0" ]]; then
    printf '%-14s skipped (GPU_CHECK_BUILD=0: the extension as built)\n' "build" >> "$SUMMARY"
    BUILD_RC=0
else
    step build 330 "$OUT/build.log" "$PY" setup.py build_ext --inplace
    BUILD_RC=$?
fi

# registers, spills and shared memory of every kernel, from the built library
{
    "$PY" - <<'EOF'
import mambaad_kernels as mk
from mambaad_kernels import cuda as ext
print("load_error:", ext.load_error())
print("cuda backends:", mk.available_backends("cuda"))
from mambaad_kernels import _C
print("library:", _C.__file__)
EOF
    SO="$("$PY" -c 'import mambaad_kernels._C as c; print(c.__file__)' 2>/dev/null)"
    CUOBJDUMP="$(command -v cuobjdump || true)"
    [[ -z "$CUOBJDUMP" && -x "${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump" ]] && \
        CUOBJDUMP="${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump"
    if [[ -n "$SO" && -n "$CUOBJDUMP" ]]; then
        "$CUOBJDUMP" --list-elf "$SO"
        # one line per kernel: registers, spill stack, shared memory (STACK > 0 means spills)
        "$CUOBJDUMP" --dump-resource-usage "$SO" | grep -E "Function|REG" | sed 's/^[[:space:]]*//' | paste - -
    else
        echo "no cuobjdump (or no library): no per-kernel resource usage"
    fi
} > "$OUT/kernels.txt" 2>&1

# ---- 4. GPU tests: CUDA and Triton backends (the emulated-kernel tests ran in CI already) ---------
# per-test time limit only where pytest-timeout is installed (an unknown option would fail the run)
TIMEOUT_ARG=()
"$PY" -c "import pytest_timeout" 2> /dev/null && TIMEOUT_ARG=(--timeout=150)
# shellcheck disable=SC2086
step tests 240 "$OUT/tests.log" "$PY" -m pytest $TESTS -k "(cuda or triton) and not emulated" \
    -q -rs ${TIMEOUT_ARG[@]+"${TIMEOUT_ARG[@]}"} --durations=15 -p no:cacheprovider --junitxml="$OUT/junit.xml"
TESTS_RC=$?

# ---- 4b. optional: Nsight Compute on the scan kernels at one MambaAD stage (GPU_CHECK_PROFILE=1) ----
if [[ "${GPU_CHECK_PROFILE:-0}" == "1" ]] && command -v ncu > /dev/null; then
    PROFILE_PY='
import os, torch
import mambaad_kernels as mk
from tests.parity import make_params
stage = int(os.environ.get("GPU_CHECK_PROFILE_STAGE", "3"))
d, hw, r = [(1024, 8, 32), (512, 16, 16), (256, 32, 8), (128, 64, 4)][stage]
gen = torch.Generator().manual_seed(0)
x = torch.randn(16, d, hw, hw, generator=gen).cuda().requires_grad_()
params = [p.requires_grad_() for p in make_params(d, 16, r, 8, False, "cuda", torch.float32, gen)]
mk.hss_scan(x, *params, backend="cuda").sum().backward()
torch.cuda.synchronize()
print("profiled stage", stage, ": B 16, D", d, ", H = W =", hw, ", R", r, ", K 8, N 16, fp32")
'
    step profile 150 "$OUT/profile.log" ncu --target-processes all -k "regex:hss_(fwd|bwd|fwd_lanes)_kernel" \
        -c 2 --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
        "$PY" -c "$PROFILE_PY"
elif [[ "${GPU_CHECK_PROFILE:-0}" == "1" ]]; then
    printf '%-14s skipped (no ncu on PATH)\n' "profile" >> "$SUMMARY"
fi

# ---- 5. the benchmark --------------------------------------------------------------------------------
if [[ -n "$MAMBA_PID" ]]; then
    echo "[gpu_check] waiting for the mamba-ssm build (at most until 150 s before the deadline)"
    while kill -0 "$MAMBA_PID" 2> /dev/null && (($(left) > 150)); do sleep 2; done
    if kill -0 "$MAMBA_PID" 2> /dev/null; then
        echo "[gpu_check] mamba-ssm build still running: stopped, benchmarking without it"
        pkill -TERM -P "$MAMBA_PID" 2> /dev/null  # timeout passes the signal on to the build
        printf '%-14s TIMED OUT (benchmark ran without it)\n' "mamba_ssm" >> "$SUMMARY"
    else
        printf '%-14s %s\n' "mamba_ssm" "$(tail -n 1 "$OUT/mamba_ssm_build.log")" >> "$SUMMARY"
        MS_DIR="$(tail -n 2 "$OUT/mamba_ssm_build.log" | head -n 1)"
        [[ -d "$MS_DIR" ]] && export PYTHONPATH="$MS_DIR${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
if [[ "${GPU_CHECK_BENCH:-1}" == "0" ]]; then
    printf '%-14s skipped (GPU_CHECK_BENCH=0)\n' "scan_bench" >> "$SUMMARY"
elif [[ -f "$ROOT/benchmarks/scan_bench.py" ]]; then
    BUDGET=$(( ($(left) - 150) / 12 ))  # 4 shapes x 2 modes, with warm-ups; 90 s for step 5b
    ((BUDGET > 10)) && BUDGET=10
    ((BUDGET < 2)) && BUDGET=2
    step scan_bench 300 "$OUT/scan_bench.log" "$PY" benchmarks/scan_bench.py --json "$OUT/scan_bench.json" \
        --budget-s "$BUDGET"
else
    echo "[gpu_check] benchmarks/scan_bench.py does not exist yet: no benchmark" | tee "$OUT/scan_bench.log"
    printf '%-14s skipped (no benchmarks/scan_bench.py)\n' "scan_bench" >> "$SUMMARY"
fi

# ---- 5b. where the time goes: GPU time vs wall time per call, and the host's share ------------------
if [[ "${GPU_CHECK_WHERE:-1}" == "1" ]]; then
    step kernel_time 120 "$OUT/kernel_time.log" "$PY" benchmarks/dev/kernel_time.py \
        --json "$OUT/kernel_time.json"
    step host_overhead 60 "$OUT/host_overhead.log" "$PY" benchmarks/dev/host_overhead.py --device cuda \
        --rounds 9 --calls 100 --json "$OUT/host_overhead.json"
fi

# ---- 5c. optional: the whole model on the GPU (GPU_CHECK_MODEL=1) ------------------------------------
if [[ "${GPU_CHECK_MODEL:-0}" == "1" ]]; then
    step model_bench 150 "$OUT/model_bench.log" "$PY" benchmarks/model_bench.py --device cuda \
        --batch 16 --paths auto authors --json "$OUT/model_bench.json"
fi

# ---- 6. summary ----------------------------------------------------------------------------------------
{
    echo
    echo "================ gpu_check summary ($(($(date +%s) - START)) s, results in $OUT) ================"
    head -n 3 "$OUT/env.txt" | tail -n 2
    grep -E "^(python|device)" "$OUT/env.txt"
    cat "$SUMMARY"
    echo "--- tests:"
    grep -E "passed|failed|error|skipped" "$OUT/tests.log" 2>/dev/null | tail -n 3
    grep -E "^(FAILED|ERROR)" "$OUT/tests.log" 2>/dev/null | head -n 20
    echo "--- benchmark:"
    tail -n 25 "$OUT/scan_bench.log" 2>/dev/null
    echo "--- where the time goes:"
    grep -v "^\[gpu_check\]" "$OUT/kernel_time.log" 2>/dev/null
    grep -v "^\[gpu_check\]" "$OUT/host_overhead.log" 2>/dev/null
    tail -n 12 "$OUT/model_bench.log" 2>/dev/null
} | tee -a "$OUT/summary_full.txt"
# exit status: the build's if it failed, else the tests' (the benchmark's is in the summary)
((BUILD_RC != 0)) && exit "$BUILD_RC"
exit "$TESTS_RC"
