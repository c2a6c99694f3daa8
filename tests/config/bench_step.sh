#!/usr/bin/env bash
# `tga bench step` reports its throughput right: tokens/s from B x T and the median step time, model
# TFLOP/s as 4 N per token with N the decoder's matmul parameters (computed here from the dims set
# below: q and o dim x heads x head_dim, k and v dim x kv_heads x head_dim, gate/up/down dim x ffn),
# and the MFU against --peak-tflops.
set -uo pipefail
tga=$1 config=$(cd "$(dirname "$0")/../.." && pwd)/benchmarks/configs/step_bench.yaml
fail() { echo "FAIL bench_step: $*"; exit 1; }
dims=(--set model.dim=64 --set model.n_layers=3 --set model.n_heads=4 --set model.n_kv_heads=2
      --set model.head_dim=16 --set model.ffn_dim=96 --set train.micro_batch=2 --set data.max_len=96)
out=$("$tga" bench step --config "$config" "${dims[@]}" --threads 1 --steps 3 --warmup 1 --peak-tflops 2 2>&1) ||
    fail "the run failed: $out"
median=$(awk '/^median_ms/ {print $2}' <<<"$out")
line=$(grep '^throughput:' <<<"$out") || fail "no throughput line in: $out"
[ -n "$median" ] || fail "no median_ms line in: $out"
number='([0-9.e+-]+)'
pattern=".* $number tokens/s, $number TFLOP/s .*N = ${number}M .*MFU $number% .*"
read -r tokens tflops n_million mfu < <(sed -E "s|$pattern|\1 \2 \3 \4|" <<<"$line")
awk -v ms="$median" -v tok="$tokens" -v tf="$tflops" -v nm="$n_million" -v mfu="$mfu" 'BEGIN {
    n = 3 * (2 * 64 * 4 * 16 + 2 * 64 * 2 * 16 + 3 * 64 * 96)
    want_tok = 2 * 96 / (ms / 1000)
    want_tf = 4 * n * want_tok / 1e12
    want_mfu = 100 * want_tf / 2 # percent of --peak-tflops 2
    ok = (nm * 1e6 == n) && (tok / want_tok > 0.999 && tok / want_tok < 1.001) &&
         (tf / want_tf > 0.999 && tf / want_tf < 1.001) && (mfu / want_mfu > 0.99 && mfu / want_mfu < 1.01)
    exit !ok }' || fail "expected N = 92160, tokens/s from 2 x 96 tokens in $median ms and 4 N per token: $line"
echo "PASS bench_step: $line"
