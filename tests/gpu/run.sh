#!/usr/bin/env bash
# The GPU check, made for a short window on a machine with one GPU (design/GPU.md); about 5
# minutes on an H200:
#   1. environment: driver, device, toolkit, and the shared libraries of the binaries;
#   2. gpu_check: every CUDA op against the CPU reference (several shapes, poisoned outputs), then
#      a small model's forward/backward and two optimizer steps on both backends, attention on the
#      mma.sync kernels; then, in a process of its own, the Hopper wgmma attention kernels and the
#      model on them (gpu_check_wgmma.txt; SKIP on other GPUs, FAIL on sm_90); gpu_check_nccl:
#      the NCCL collectives on one rank (values and stream ordering); gpu_check_cudnn: cuDNN's
#      attention (model.attention: cudnn) against the CPU;
#   3. gpu_check again for the GEMM-based ops with TGA_CUDA_GEMM=fp32 (tight limits);
#   4. bench_kernels --quick: each op at 7B stage-1 shapes next to its ceiling;
#   5. tga bench step on the CUDA backend: the tiny config, and a 7B-shaped 2-layer model with
#      model.dtype bf16 (bf16 GEMMs; with and without recompute) and fp32 (TF32 GEMMs): ms/step and
#      the bench's throughput line, MFU counted as 4 N per token over the decoder layers' matmul
#      parameters N, against 989 TFLOP/s dense bf16 (--peak-tflops).
# Output goes to stdout and to $OUT (default: gpu-out/ in the repository): run.log holds
# everything; gpu_check.txt, gpu_check_wgmma.txt, gpu_check_fp32.txt, gpu_check_nccl.txt,
# gpu_check_cudnn.txt, bench_kernels.txt, bench_step.txt each part.
# Exit code: gpu_check's, else the wgmma check's (0 when every check passed; 2 when no CUDA
# backend could be loaded).
#
#   tests/gpu/run.sh --prepare   on the development machine: configure and build build-gpu/ (CUDA
#                                on, MPI and OpenBLAS off, libyaml/zstd/pcre2/jansson linked
#                                statically so that the binaries start on the GPU machine's image),
#                                then send build-gpu along (device tool: carry ["build-gpu"]).
#   tests/gpu/run.sh             on the GPU machine: use build-gpu/ if its binaries start there
#                                (looking for missing CUDA libraries in the Python wheels too),
#                                else build build-gpu-local/ there with CMake + ninja.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PREBUILT=$ROOT/build-gpu
BINARIES=(tga libtga_cuda.so tests/gpu/gpu_check tests/gpu/gpu_check_nccl tests/gpu/gpu_check_cudnn benchmarks/bench_kernels)
TARGETS=(tga tga_cuda gpu_check gpu_check_nccl gpu_check_cudnn bench_kernels)

configure_and_build() { # build_dir jobs [extra cmake args...]
    local dir=$1 jobs=$2
    shift 2
    cmake -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTGA_CUDA=ON -DTGA_MPI=OFF -DTGA_OPENBLAS=OFF \
        "$@" && ninja -C "$dir" -j "$jobs" "${TARGETS[@]}"
}

if [ "${1:-}" = "--prepare" ]; then
    # pkg_check_modules keeps the library it found in these cache entries: point them at the archives
    configure_and_build "$PREBUILT" 2 \
        -Dpkgcfg_lib_YAML_yaml="$(gcc -print-file-name=libyaml.a)" \
        -Dpkgcfg_lib_ZSTD_zstd="$(gcc -print-file-name=libzstd.a)" \
        -Dpkgcfg_lib_PCRE2_pcre2-8="$(gcc -print-file-name=libpcre2-8.a)" \
        -Dpkgcfg_lib_JANSSON_jansson="$(gcc -print-file-name=libjansson.a)" || exit 1
    du -sh "$PREBUILT"
    echo "built $PREBUILT; run tests/gpu/run.sh on the GPU machine with build-gpu carried along"
    exit 0
fi

OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1

section() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

has_binaries() { for f in "${BINARIES[@]}"; do [ -f "$1/$f" ] || return 1; done; }
missing_libraries() { (cd "$1" && ldd "${BINARIES[@]}" 2>&1 | grep "not found"); }

# CUDA libraries that exist only inside Python wheels (nvidia-* packages, torch's dependencies).
wheel_library_path() {
    python3 - <<'EOF' 2>/dev/null
import os
try:
    import nvidia
except ImportError:
    raise SystemExit
dirs = sorted({os.path.join(p, d, "lib") for p in nvidia.__path__ for d in os.listdir(p)
               if os.path.isdir(os.path.join(p, d, "lib"))})
print(":".join(dirs))
EOF
}

section "environment"
date -u
uname -srm
git -C "$ROOT" log -1 --format='commit %H %s' 2>/dev/null || echo "commit: unknown (no git here)"
git -C "$ROOT" status --short 2>/dev/null | head -20
if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
else
    echo "nvidia-smi: not installed"
fi
command -v nvcc >/dev/null && nvcc --version | tail -2

section "binaries"
BUILD=""
if has_binaries "$PREBUILT"; then
    if [ -z "$(missing_libraries "$PREBUILT")" ]; then
        BUILD=$PREBUILT
    else
        WHEELS=$(wheel_library_path)
        if [ -n "$WHEELS" ]; then
            export LD_LIBRARY_PATH=$WHEELS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
            echo "LD_LIBRARY_PATH += CUDA wheel folders: $WHEELS"
        fi
        if [ -z "$(missing_libraries "$PREBUILT")" ]; then
            BUILD=$PREBUILT
        else
            echo "the prebuilt binaries lack libraries here:"
            missing_libraries "$PREBUILT"
        fi
    fi
fi
if [ -z "$BUILD" ]; then
    BUILD=$ROOT/build-gpu-local
    echo "building $BUILD here"
    SECONDS=0
    configure_and_build "$BUILD" "$(nproc)" || { echo "FAIL build"; exit 1; }
    echo "build took ${SECONDS}s"
fi
echo "using $BUILD"
(cd "$BUILD" && for f in "${BINARIES[@]}"; do echo "--- ldd $f"; ldd "$f"; done)
export TGA_CUDA_LIBRARY=$BUILD/libtga_cuda.so

section "gpu_check (every op, then the model; attention on the mma.sync kernels)"
timeout 300 "$BUILD/tests/gpu/gpu_check" --attention mma | tee "$OUT/gpu_check.txt"
CHECK_STATUS=${PIPESTATUS[0]}

# The wgmma kernels (H100/H200) in a process of their own: a trap there ends its process, and
# must not take the other families' results with it.
section "gpu_check --attention wgmma (the Hopper attention kernels, then the model on them)"
timeout 120 "$BUILD/tests/gpu/gpu_check" --attention wgmma --only attention,model | tee "$OUT/gpu_check_wgmma.txt"
WGMMA_STATUS=${PIPESTATUS[0]}

section "gpu_check with TGA_CUDA_GEMM=fp32 (GEMM-based ops)"
TGA_CUDA_GEMM=fp32 timeout 120 "$BUILD/tests/gpu/gpu_check" --only gemm,linear,lm_head | tee "$OUT/gpu_check_fp32.txt"
FP32_STATUS=${PIPESTATUS[0]}

section "gpu_check_nccl (device collectives, one rank; SKIP without libnccl.so.2)"
timeout 60 "$BUILD/tests/gpu/gpu_check_nccl" | tee "$OUT/gpu_check_nccl.txt"
NCCL_STATUS=${PIPESTATUS[0]}

section "gpu_check_cudnn (cuDNN attention against the CPU; SKIP without libcudnn.so.9)"
timeout 120 "$BUILD/tests/gpu/gpu_check_cudnn" | tee "$OUT/gpu_check_cudnn.txt"
CUDNN_STATUS=${PIPESTATUS[0]}

section "bench_kernels --quick"
timeout 240 "$BUILD/benchmarks/bench_kernels" --quick | tee "$OUT/bench_kernels.txt"

section "training steps on the GPU (tga bench step)"
{
    timeout 120 "$BUILD/tga" bench step --config "$ROOT/configs/tiny.yaml" --device cuda --steps 20 --warmup 3
    # a 7B-shaped slice: Mistral-7B layers, 8 samples of 576 image patches + 104 text tokens
    # (bf16 weights with and without recompute: the MFU below counts 4 N tokens either way, so
    # recompute's extra forward is overhead; fp32 weights with recompute, as before)
    B=8 T=680 LAYERS=2
    for run in "bf16 true" "bf16 false" "fp32 true"; do
        read -r dtype recompute <<<"$run"
        step_7b_slice() { # extra --set arguments...
            timeout 200 "$BUILD/tga" bench step --config "$ROOT/configs/mistral7b_stage1.yaml" --device cuda \
                --set model.n_layers=$LAYERS --set tga.layers=1-2 --set train.micro_batch=$B --set data.max_len=$T \
                --set train.recompute=$recompute --set model.dtype=$dtype --steps 5 --warmup 2 --images 1 \
                --peak-tflops 989 "$@" |
                tee "$OUT/step_7b_slice.tmp"
            return "${PIPESTATUS[0]}"
        }
        # the backend's own choice of attention kernels (wgmma on H100/H200); if that run fails,
        # once more on the mma.sync kernels, so that a wgmma failure still leaves a step time
        label="$dtype, recompute $recompute"
        if ! step_7b_slice; then
            echo "7B slice, $label: failed; again with model.attention=tga-mma"
            label="$label, model.attention=tga-mma"
            step_7b_slice --set model.attention=tga-mma
        fi
        # tga bench step's own count: 4 N per token over the decoder's matmul parameters N
        awk -v label="$label" '/^median_ms/ {ms = $2}
            /^throughput:/ {sub(/^throughput: /, ""); printf "7B slice, %s: %.1f ms/step, %s\n", label, ms, $0}' \
            "$OUT/step_7b_slice.tmp"
        rm -f "$OUT/step_7b_slice.tmp"
    done
} 2>&1 | tee "$OUT/bench_step.txt"

section "summary"
grep -E '^gpu_check: [0-9]+ checks|^FAIL|^SKIP' "$OUT/gpu_check.txt" "$OUT/gpu_check_wgmma.txt" \
    "$OUT/gpu_check_fp32.txt" "$OUT/gpu_check_nccl.txt" "$OUT/gpu_check_cudnn.txt"
echo "gpu_check exit $CHECK_STATUS, wgmma attention check exit $WGMMA_STATUS, fp32 GEMM check exit $FP32_STATUS," \
    "NCCL check exit $NCCL_STATUS," \
    "cuDNN check exit $CUDNN_STATUS" \
    "(0 pass, 1 failures, 2 no CUDA backend);" \
    "files in $OUT"
exit $((CHECK_STATUS != 0 ? CHECK_STATUS : WGMMA_STATUS))
