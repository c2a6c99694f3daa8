#!/usr/bin/env bash
# Builds one libFuzzer target with clang (coverage + AddressSanitizer + UBSan) and runs it for a
# fixed time on its corpus. A harness tests/fuzz/fuzz_NAME.c names the project sources it needs on
# a line "// sources: a.c b.c" (paths from the repository root); the corpus is tests/fuzz/corpus/NAME
# (read-only here: new inputs go to a scratch folder, so runs stay reproducible).
#   run_fuzz.sh NAME SECONDS WORKDIR
set -euo pipefail
name=$1 seconds=$2 work=$3
root=$(cd "$(dirname "$0")/../.." && pwd)
harness="$root/tests/fuzz/fuzz_$name.c"
sources=$(sed -n 's|^// sources: ||p' "$harness")
mkdir -p "$work/new"
flags=$(pkg-config --cflags --libs yaml-0.1 libzstd libpcre2-8 jansson)
# shellcheck disable=SC2086
clang -std=c17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$root" "$harness" $(for s in $sources; do echo "$root/$s"; done) $flags -lm -o "$work/fuzz_$name"
corpus="$root/tests/fuzz/corpus/$name"
ASAN_OPTIONS=detect_leaks=1 "$work/fuzz_$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "$work/new" "$corpus" 2>&1 | tail -25
