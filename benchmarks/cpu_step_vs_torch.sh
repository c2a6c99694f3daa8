#!/usr/bin/env bash
# CPU training step, tga vs PyTorch: the same model, synthetic batch and step on both sides
# (shape in benchmarks/configs/step_bench.yaml), stage1 and stage2, each side at 1 and 2 threads.
# Each side's best (lowest median) thread setting counts; ratio = best torch ms / best tga ms,
# so > 1 means tga is faster. The last line reads `stage1 ratio X stage2 ratio Y`.
#
# Environment: TGA_BUILD_DIR (default build; configured and built as Release only when it holds
# no tga yet, so a shared tree's half-written files cannot break a run: rebuild it yourself),
# TORCH_PYTHON (default /usr/bin/python3, Debian's torch), STEPS (>= 10, default 15),
# WARMUP (>= 3, default 3), THREADS (default "1 2"). OMP_WAIT_POLICY and OPENBLAS_CORETYPE are
# left as found, for both sides.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${TGA_BUILD_DIR:-build}
[[ $build_dir = /* ]] || build_dir=$root/$build_dir
python=${TORCH_PYTHON:-/usr/bin/python3}
config=$root/benchmarks/configs/step_bench.yaml
steps=${STEPS:-15}
warmup=${WARMUP:-3}
threads_list=${THREADS:-1 2}
images=2 # per sample; step_bench.yaml's data.max_len leaves room for them

die() { echo "cpu_step_vs_torch: $*" >&2; exit 1; }

(( steps >= 10 && warmup >= 3 )) || die "STEPS must be >= 10 and WARMUP >= 3 (got $steps, $warmup)"

build_tga_if_missing() {
    local log type
    if [[ ! -f $build_dir/CMakeCache.txt ]]; then
        log=$(cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTGA_CUDA=OFF 2>&1) ||
            { echo "$log" >&2; die "configuring $build_dir failed"; }
    fi
    type=$(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$build_dir/CMakeCache.txt")
    [[ $type == Release ]] || die "$build_dir is a '$type' build; point TGA_BUILD_DIR at a Release one"
    [[ -x $build_dir/tga ]] && return
    log=$(cmake --build "$build_dir" --target tga -j 2 2>&1) || { echo "$log" >&2; die "building tga in $build_dir failed"; }
}

# Prints "median_ms min_ms peak_rss_mb" from a side's `median_ms X min_ms Y steps N peak_rss_mb Z` line.
measurement() {
    awk '$1 == "median_ms" { print $2, $4, $8; found = 1 } END { exit !found }'
}

run_tga() { # stage threads
    OMP_NUM_THREADS=$2 "$build_dir/tga" bench step --config "$config" --set train.trainable="$1" \
        --steps "$steps" --warmup "$warmup" --images "$images" --threads "$2"
}

# OpenBLAS (torch's BLAS) prefers OPENBLAS_NUM_THREADS to OMP_NUM_THREADS: drop it, so that torch's
# BLAS runs the thread count asked for.
run_torch() { # stage threads
    env -u OPENBLAS_NUM_THREADS OMP_NUM_THREADS="$2" "$python" "$root/benchmarks/torch_step.py" \
        --tga-config "$config" --stage "$1" --steps "$steps" --warmup "$warmup" --images "$images" \
        --threads "$2"
}

# Runs one side and prints "median_ms min_ms peak_rss_mb"; its full output goes to stderr on failure.
measure() { # side stage threads
    local out
    out=$("run_$1" "$2" "$3" 2>&1) || { echo "$out" >&2; die "$1 $2 with $3 threads failed"; }
    measurement <<<"$out" || { echo "$out" >&2; die "$1 $2 printed no median_ms line"; }
}

echo "CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(nproc) CPUs online"
echo "OPENBLAS_CORETYPE: ${OPENBLAS_CORETYPE:-unset}"
echo "shape: $config, $images images per sample; $steps measured steps after $warmup warm-up"
build_tga_if_missing
echo "tga: $("$build_dir/tga" version 2>&1 | head -n 1) ($build_dir)"
echo "torch: $("$python" -c 'import torch; print(torch.__version__)') ($python)"

declare -A ratio
for stage in stage1 stage2; do
    best_tga="" best_torch=""
    for threads in $threads_list; do
        # the two sides alternate so that both see the same load on a shared machine
        for side in tga torch; do
            result=$(measure "$side" "$stage" "$threads") # a failure ends the script here (set -e)
            read -r ms min_ms rss <<<"$result"
            printf '  %-6s %-5s threads %s: median %8.1f ms (min %8.1f), peak RSS %6.1f MB\n' \
                "$stage" "$side" "$threads" "$ms" "$min_ms" "$rss"
            best_var=best_$side
            if [[ -z ${!best_var} ]] || awk -v a="$ms" -v b="${!best_var%% *}" 'BEGIN { exit !(a < b) }'; then
                printf -v "$best_var" '%s %s %s' "$ms" "$threads" "$rss"
            fi
        done
    done
    read -r tga_ms tga_threads tga_rss <<<"$best_tga"
    read -r torch_ms torch_threads torch_rss <<<"$best_torch"
    ratio[$stage]=$(awk -v t="$torch_ms" -v g="$tga_ms" 'BEGIN { printf "%.2f", t / g }')
    printf '%s: tga %.1f ms (threads %s), torch %.1f ms (threads %s), ratio %s; peak RSS tga %.1f MB, torch %.1f MB\n' \
        "$stage" "$tga_ms" "$tga_threads" "$torch_ms" "$torch_threads" "${ratio[$stage]}" "$tga_rss" "$torch_rss"
done
echo "stage1 ratio ${ratio[stage1]} stage2 ratio ${ratio[stage2]}"
