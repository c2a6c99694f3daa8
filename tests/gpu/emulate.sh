#!/usr/bin/env bash
# gpu_check on the CPU: the CUDA backend's own sources (kernels/cuda) compiled as C++ against a
# host emulation of CUDA (tests/gpu/emulator: SIMT fibers with CUDA's barrier and warp semantics,
# mma.sync from the PTX fragment layouts, cuBLASLt's column-major GEMM and its operand checks, a
# stable sort for CUB), and checked against the CPU ops exactly as on a GPU. It checks indexing,
# masking, fragment layouts, launch configurations and host logic; it cannot check timing, real
# hardware behaviour or the real cuBLASLt/CUB, so a pass here does not make an op verified on GPU.
#
#   tests/gpu/emulate.sh [gpu_check options]     (default: --small; TGA_BUILD_DIR names a build
#                                                 folder whose libtga_core.a holds the CPU reference;
#                                                 TGA_EMULATOR_ASYNC / TGA_EMULATOR_RUNS choose
#                                                 when wgmma and TMA complete, emulator/simt.h)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${TGA_BUILD_DIR:-$ROOT/build-cuda}
[ -f "$BUILD/libtga_core.a" ] || { echo "emulate.sh: no $BUILD/libtga_core.a (build tga_core first)"; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 "$ROOT/tests/gpu/emulator/translate.py" "$ROOT/kernels/cuda" "$WORK/kernels/cuda"
INCLUDES=(-I"$ROOT/tests/gpu/emulator" -I"$WORK" -I"$ROOT")
# -ffp-contract=off: the kernels' separately rounded operations stay separate, as on the device
CXXFLAGS=(-std=c++17 -O2 -g -fno-strict-aliasing -ffp-contract=off -DTGA_CUDA_HOST_EMULATION -w)
CFLAGS=(-std=c17 -O2 -g -ffp-contract=off -DTGA_CUDA_HOST_EMULATION -Wall -Wextra -Wno-unused-parameter)

compile() { # out source compiler flags...
    local out=$1 src=$2
    shift 2
    "$@" "${INCLUDES[@]}" -c "$src" -o "$WORK/$out"
}
pids=()
for src in "$WORK"/kernels/cuda/*.cu; do
    compile "$(basename "$src").o" "$src" g++ -x c++ "${CXXFLAGS[@]}" &
    pids+=($!)
    if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
for src in memory.c backend.c gemm.c; do compile "$src.o" "$WORK/kernels/cuda/$src" gcc "${CFLAGS[@]}"; done
compile simt.o "$ROOT/tests/gpu/emulator/simt.cpp" g++ "${CXXFLAGS[@]}"
compile cublaslt.o "$ROOT/tests/gpu/emulator/cublaslt.cpp" g++ "${CXXFLAGS[@]}"
compile load_backend.o "$ROOT/tests/gpu/emulator/load_backend.c" gcc "${CFLAGS[@]}"
for src in gpu_check.c gpu_check_model.c; do compile "$src.o" "$ROOT/tests/gpu/$src" gcc "${CFLAGS[@]}"; done
compile testutil.o "$ROOT/tests/testutil.c" gcc "${CFLAGS[@]}"

LIBS=(-lyaml -lzstd -lpcre2-8 -ljansson -fopenmp -lm -ldl -lpthread)
grep -q '^TGA_MPI:BOOL=ON' "$BUILD/CMakeCache.txt" && read -ra MPI_LIBS <<<"$(mpicc --showme:link)" && LIBS+=("${MPI_LIBS[@]}")
g++ -o "$WORK/gpu_check_emulated" "$WORK"/*.o "$BUILD/libtga_core.a" "${LIBS[@]}"

if [ $# -eq 0 ]; then set -- --small; fi
# TGA_EMULATOR_RUNS="deferred wgmma": one run per TGA_EMULATOR_ASYNC mode (emulator/simt.h), built
# once; every run must pass
if [ -n "${TGA_EMULATOR_RUNS:-}" ]; then
    status=0
    for mode in $TGA_EMULATOR_RUNS; do
        echo "emulate.sh: TGA_EMULATOR_ASYNC=$mode"
        TGA_EMULATOR_ASYNC=$mode "$WORK/gpu_check_emulated" "$@" || status=1
    done
    exit $status
fi
"$WORK/gpu_check_emulated" "$@"
