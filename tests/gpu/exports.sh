#!/usr/bin/env bash
# The CUDA backend library exports every symbol the rest of tga looks up in it with dlsym (the
# library is built with hidden visibility, so a function that lacks its visibility("default")
# mark links fine and is missing only at run time, on the GPU machine). The names are taken from
# the dlsym calls in the sources, so a new lookup is checked without editing this script.
#   tests/gpu/exports.sh LIBTGA_CUDA_SO
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LIB=$1
[ -f "$LIB" ] || { echo "FAIL exports: no library $LIB"; exit 1; }
mapfile -t wanted < <(grep -rhoE 'dlsym\([a-z_]+, "tga_cuda_[a-z_0-9]+"' "$ROOT/runtime" "$ROOT/trainer" "$ROOT/dist" \
    "$ROOT/benchmarks" "$ROOT/tests" --include='*.c' | grep -oE 'tga_cuda_[a-z_0-9]+' | sort -u)
[ ${#wanted[@]} -gt 0 ] || { echo "FAIL exports: found no dlsym lookups of tga_cuda_* symbols"; exit 1; }
exported=$(nm -D --defined-only "$LIB" | awk '$2 == "T" {print $3}')
missing=0
for sym in "${wanted[@]}"; do
    if grep -qx "$sym" <<<"$exported"; then
        echo "PASS exports: $sym"
    else
        echo "FAIL exports: $sym is looked up with dlsym but not exported by $LIB"
        missing=1
    fi
done
[ $missing -eq 0 ] && echo "PASS exports (${#wanted[@]} symbols)"
exit $missing
