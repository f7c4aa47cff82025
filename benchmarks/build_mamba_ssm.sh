#!/usr/bin/env bash
# Build mamba-ssm's selective-scan CUDA extension (`selective_scan_cuda`) from its source
# distribution, for the authors'-path baseline of benchmarks/scan_bench.py, without network access
# and without the rest of mamba-ssm (its Python package needs tilelang, quack, transformers...,
# which the benchmark does not: benchmarks/authors_path.py calls the extension's fwd / bwd itself).
#
# usage: benchmarks/build_mamba_ssm.sh [SDIST]
#   SDIST   mamba_ssm-*.tar.gz (default: the newest .carry/mamba_ssm-*.tar.gz); fetch it once on a
#           machine with network: pip download --no-deps --no-binary :all: --no-build-isolation \
#           mamba-ssm -d .carry/
# environment:
#   PYTHON                 interpreter whose torch the extension is built against (default: python,
#                          else python3)
#   MAMBA_SS_ARCH          GPU architectures, TORCH_CUDA_ARCH_LIST syntax (default 9.0: sm_90 only;
#                          the caller's TORCH_CUDA_ARCH_LIST, meant for other builds, is not used)
#   MAMBA_SS_DTYPES        fp32 (default: the fp32 forward + real fp32 backward kernels, which is all
#                          the authors run; the other dtype entry points raise if called) or all
#   MAX_JOBS               parallel compile jobs (default: the number of CPUs)
#   MAMBA_SS_DIR           output directory (default: python benchmarks/authors_path.py
#                          --print-build-dir, i.e. .carry/selective_scan_cuda/py<XY>-torch<version>;
#                          a change of architectures or flags rebuilds what it affects)
#
# The sources are unpacked under /tmp; the build directory (ninja files, objects and the
# selective_scan_cuda*.so) is kept, so a second call rebuilds nothing. The last line printed is the
# directory to put on PYTHONPATH; benchmarks/authors_path.py also looks in the default directory
# by itself. Nothing here goes into git (.carry/ is ignored).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$(command -v python || command -v python3)}"
SDIST="${1:-$(ls -1 "$ROOT"/.carry/mamba_ssm-*.tar.gz 2>/dev/null | sort | tail -n 1 || true)}"
DTYPES="${MAMBA_SS_DTYPES:-fp32}"
export TORCH_CUDA_ARCH_LIST="${MAMBA_SS_ARCH:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

if [[ -z "$SDIST" || ! -f "$SDIST" ]]; then
    echo "build_mamba_ssm.sh: no mamba-ssm source distribution (got '${SDIST}'); download one with" >&2
    echo "  pip download --no-deps --no-binary :all: --no-build-isolation mamba-ssm -d .carry/" >&2
    exit 2
fi
case "$DTYPES" in
    fp32|all) ;;
    *) echo "build_mamba_ssm.sh: MAMBA_SS_DTYPES must be fp32 or all" >&2; exit 2;;
esac
if [[ -z "${CUDA_HOME:-}" ]]; then
    # torch guesses CUDA_HOME from nvcc's directory, wrong when nvcc on PATH is a wrapper script
    for guess in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent)")")")" \
                 /usr/local/cuda; do
        if [[ -f "$guess/include/cuda_runtime.h" ]]; then export CUDA_HOME="$guess"; break; fi
    done
fi
[[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]] || {
    echo "build_mamba_ssm.sh: no CUDA toolkit found (set CUDA_HOME)" >&2; exit 2; }

OUT="${MAMBA_SS_DIR:-$("$PY" "$ROOT/benchmarks/authors_path.py" --print-build-dir)}"
mkdir -p "$OUT"
# One build per directory at a time: an flock on build.flock (released by the kernel when its holder
# dies, so never stale) serialises two calls; a second call waits for the first (at most
# MAMBA_SS_LOCK_WAIT_S, default 900 s), then finds everything built.
if command -v flock > /dev/null; then
    exec 9> "$OUT/build.flock"
    flock -w "${MAMBA_SS_LOCK_WAIT_S:-900}" 9 || {
        echo "build_mamba_ssm.sh: another build into $OUT still holds $OUT/build.flock" >&2; exit 3; }
fi
# torch's own build lock ($OUT/lock, a plain file): left behind by a build that was killed, it would
# make this one wait forever. Holding the flock, no other build of ours is running, so it is stale.
# (Without flock, do not run two builds into one directory at once.)
rm -f "$OUT/lock"
SRC="/tmp/mamba_ssm_src/$(basename "$SDIST" .tar.gz)"
rm -rf "$SRC" && mkdir -p "$SRC"
tar xzf "$SDIST" -C "$SRC" --strip-components=1
SS="$SRC/csrc/selective_scan"
[[ -f "$SS/selective_scan.cpp" ]] || {
    echo "build_mamba_ssm.sh: $SDIST has no csrc/selective_scan" >&2; exit 2; }

if [[ "$DTYPES" == fp32 ]]; then
    # Our own stand-ins for the instantiations an fp32-only build leaves out: selective_scan.cpp
    # dispatches on every input / weight type, so each must exist; these raise if ever called.
    cat > "$OUT/fp32_only_stubs.cpp.new" <<'CPP'
// Written by mambaad's benchmarks/build_mamba_ssm.sh (MAMBA_SS_DTYPES=fp32).
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <c10/util/complex.h>
#include <cuda_runtime_api.h>
#include <cstdint>
#include "selective_scan.h"

template <typename input_t, typename weight_t>
void selective_scan_fwd_cuda(SSMParamsBase &, cudaStream_t) {
    TORCH_CHECK(false, "selective_scan_cuda was built with MAMBA_SS_DTYPES=fp32: fp32 real only");
}
template <typename input_t, typename weight_t>
void selective_scan_bwd_cuda(SSMParamsBwd &, cudaStream_t) {
    TORCH_CHECK(false, "selective_scan_cuda was built with MAMBA_SS_DTYPES=fp32: fp32 real only");
}
using cfloat = c10::complex<float>;
template void selective_scan_fwd_cuda<at::Half, float>(SSMParamsBase &, cudaStream_t);
template void selective_scan_fwd_cuda<at::Half, cfloat>(SSMParamsBase &, cudaStream_t);
template void selective_scan_fwd_cuda<at::BFloat16, float>(SSMParamsBase &, cudaStream_t);
template void selective_scan_fwd_cuda<at::BFloat16, cfloat>(SSMParamsBase &, cudaStream_t);
template void selective_scan_bwd_cuda<float, cfloat>(SSMParamsBwd &, cudaStream_t);
template void selective_scan_bwd_cuda<at::Half, float>(SSMParamsBwd &, cudaStream_t);
template void selective_scan_bwd_cuda<at::Half, cfloat>(SSMParamsBwd &, cudaStream_t);
template void selective_scan_bwd_cuda<at::BFloat16, float>(SSMParamsBwd &, cudaStream_t);
template void selective_scan_bwd_cuda<at::BFloat16, cfloat>(SSMParamsBwd &, cudaStream_t);
CPP
    # kept in the build directory, rewritten only when it changes, so a rebuild stays incremental
    if cmp -s "$OUT/fp32_only_stubs.cpp.new" "$OUT/mambaad_fp32_only_stubs.cpp"; then
        rm "$OUT/fp32_only_stubs.cpp.new"
    else
        mv "$OUT/fp32_only_stubs.cpp.new" "$OUT/mambaad_fp32_only_stubs.cpp"
    fi
    SOURCES="selective_scan.cpp selective_scan_fwd_fp32.cu selective_scan_bwd_fp32_real.cu"
    SOURCES="$SOURCES $OUT/mambaad_fp32_only_stubs.cpp"
else
    SOURCES="selective_scan.cpp $(cd "$SS" && ls selective_scan_fwd_*.cu selective_scan_bwd_*.cu | tr '\n' ' ')"
fi

echo "build_mamba_ssm.sh: $(basename "$SDIST") -> $OUT (arch ${TORCH_CUDA_ARCH_LIST}, ${DTYPES}," \
     "MAX_JOBS ${MAX_JOBS})" >&2
START=$(date +%s)
# torch.utils.cpp_extension.load: ninja, incremental (an unchanged build dir rebuilds nothing), the
# nvcc flags of mamba-ssm's setup.py less its -std (torch picks the standard its headers need);
# the architectures come from TORCH_CUDA_ARCH_LIST (set above from MAMBA_SS_ARCH).
SS_DIR="$SS" SS_SOURCES="$SOURCES" SS_OUT="$OUT" "$PY" - >&2 <<'PYCODE'
import os
from torch.utils import cpp_extension

ss = os.environ["SS_DIR"]
cpp_extension.load(
    name="selective_scan_cuda",
    sources=[os.path.join(ss, s) for s in os.environ["SS_SOURCES"].split()],
    extra_include_paths=[ss],
    extra_cflags=["-O3"],
    extra_cuda_cflags=[
        "-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
        "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo",
    ],
    build_directory=os.environ["SS_OUT"],
    verbose=os.environ.get("VERBOSE", "0") == "1",
)
PYCODE
echo "build_mamba_ssm.sh: built in $(( $(date +%s) - START )) s" >&2
ls "$OUT"/selective_scan_cuda*.so >/dev/null
echo "$OUT"
