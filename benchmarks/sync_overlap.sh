#!/usr/bin/env bash
# Gradient sync on 2 MPI ranks (one OpenMP thread each), stage 2 of benchmarks/configs/sync_bench.yaml:
# ms per optimizer step for train.grad_sync ordered / allreduce / bucketed, each also with ZeRO-1. Each mode runs ROUNDS times, interleaved with the others so that load changes hit all
# of them; a run's value is the median of its steps 3-12 (metrics.jsonl), a mode's the median of its
# runs. Ratios are against allreduce (> 1: slower than allreduce). The bucketed runs also print how
# many buckets a step sent and how long the step waited for them after its backward pass.
#   benchmarks/sync_overlap.sh [BUILD_DIR]      (default build; needs tga and tests/train/train_make_test_shards)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
rounds=${ROUNDS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo
export OMP_NUM_THREADS=1
mkdir -p "$work/data"
"$build/tests/train/train_make_test_shards" "$work/data" 256 2 7 >/dev/null

modes=("ordered 0" "allreduce 0" "bucketed 0" "ordered 1" "allreduce 1" "bucketed 1")
declare -A runs
for ((round = 1; round <= rounds; round++)); do
    for mode in "${modes[@]}"; do
        read -r sync zero <<<"$mode"
        out=$work/$sync-$zero-$round
        mpirun -np 2 --bind-to none "$build/tga" train --config "$root/benchmarks/configs/sync_bench.yaml" \
            --set "data.train=$work/data" --set "train.out_dir=$out" --set "train.grad_sync=$sync" \
            --set "train.zero_stage=$zero" --set train.bucket_mb=4 >"$out.log" 2>&1 ||
            { tail -n 20 "$out.log"; exit 1; }
        ms=$(/usr/bin/python3 -c "import json,statistics,sys; r=[json.loads(l) for l in open(sys.argv[1])]; \
print(statistics.median(x['ms'] for x in r if x.get('kind')=='train' and x['step']>=3))" "$out/metrics.jsonl")
        runs[$mode]="${runs[$mode]:-} $ms"
        [ "$sync" = bucketed ] && grep -o "gradient sync: .*" "$out.log" | head -n 1 | sed 's/^/  bucketed: /'
        rm -rf "$out"
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
base=$(median <<<"${runs[allreduce 0]}")
printf '%-22s %12s %10s   %s\n' mode "ms/step" "vs allred." "runs (ms)"
for mode in "${modes[@]}"; do
    read -r sync zero <<<"$mode"
    m=$(median <<<"${runs[$mode]}")
    printf '%-22s %12.1f %10.3f  %s\n' "$sync$([ "$zero" = 1 ] && echo ' + ZeRO-1')" "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN {print a / b}')" "${runs[$mode]}"
done
