#!/usr/bin/env bash
# The 7B stage-1 config plans on this machine without allocating (tga train --dry-run), and the plan
# follows the options: --ranks 8 derives grad_accum 1 for global batch 256 at micro-batch 32, and
# ZeRO-1 over 8 ranks holds 1/8 of the AdamW moments of a stage-2 run, model.dtype bf16 (the
# config's) holds the frozen weights in half the memory of fp32, and bf16 with ZeRO-1 shards the
# fp32 masters with the moments (stage 2: bf16 weights whole, masters and moments 1/8 each), and
# stage 1 (frozen decoder) keeps fewer activations per layer than stage 2 and fits micro-batch 32
# without recompute on one H200.
set -uo pipefail
tga=$1 config=$(cd "$(dirname "$0")/../.." && pwd)/configs/mistral7b_stage1.yaml
fail() { echo "FAIL plan_7b: $*"; exit 1; }
optimizer_gib() { awk '/^memory plan per rank \(with recompute/ {p = 1} p && /optimizer state/ {print $3; exit}'; }
parameters() { awk '/^memory plan per rank \(with recompute/ {p = 1} p && /^ *parameters/ {print $2, $3; exit}'; }

out=$("$tga" train --config "$config" --dry-run 2>&1) || fail "the dry run failed: $out"
grep -q "global batch 256 = micro-batch 32 x grad_accum 8 x 1 ranks; dry run: nothing allocated" <<<"$out" ||
    fail "unexpected batch line: $(tail -n 1 <<<"$out")"
grep -q "^memory plan per rank (with recompute" <<<"$out" || fail "no memory plan printed"
out=$("$tga" train --config "$config" --dry-run --ranks 8 2>&1) || fail "the 8-rank dry run failed: $out"
grep -q "global batch 256 = micro-batch 32 x grad_accum 1 x 8 ranks" <<<"$out" || fail "--ranks 8: $(tail -n 1 <<<"$out")"
stage2=(--set train.trainable=stage2 --set train.micro_batch=4 --set model.dtype=fp32)
whole=$("$tga" train --config "$config" --dry-run --ranks 8 "${stage2[@]}" 2>&1 | optimizer_gib)
sharded=$("$tga" train --config "$config" --dry-run --ranks 8 "${stage2[@]}" --set train.zero_stage=1 2>&1 | optimizer_gib)
[ -n "$whole" ] && [ -n "$sharded" ] || fail "no optimizer state line (whole '$whole', sharded '$sharded')"
awk -v a="$whole" -v b="$sharded" 'BEGIN { r = a / b; exit !(r > 7.99 && r < 8.01) }' ||
    fail "ZeRO-1 over 8 ranks: optimizer state $sharded GiB vs $whole GiB replicated, expected 1/8"
"$tga" train --config "$config" --ranks 8 >/dev/null 2>&1 && fail "--ranks without --dry-run was accepted"
bf16_stage2=("${stage2[@]}" --set model.dtype=bf16 --set train.zero_stage=1)
bf16_optimizer=$("$tga" train --config "$config" --dry-run --ranks 8 "${bf16_stage2[@]}" 2>&1 | optimizer_gib)
bf16_params=$("$tga" train --config "$config" --dry-run --ranks 8 "${bf16_stage2[@]}" 2>&1 | parameters)
# moments (8 bytes) and masters (4 bytes) of 1/8 of the parameters; the weights whole in bf16 only
awk -v a="$bf16_optimizer" -v b="$sharded" 'BEGIN { r = a / b; exit !(r > 1.49 && r < 1.51) }' ||
    fail "bf16 + ZeRO-1 on 8 ranks: optimizer state $bf16_optimizer GiB, expected 1.5 x the $sharded GiB of moments"
bf16=$("$tga" train --config "$config" --dry-run 2>&1 | parameters)
fp32=$("$tga" train --config "$config" --dry-run --set model.dtype=fp32 2>&1 | parameters)
[ "${bf16#* }" = GiB ] && [ "${fp32#* }" = GiB ] || fail "parameters: '$bf16' (bf16), '$fp32' (fp32)"
# 7.24 G parameters: 4 bytes each in fp32; 2 in bf16 except the fp32 projector (21 M) and norms
awk -v a="${fp32% *}" -v b="${bf16% *}" 'BEGIN { r = a / b; exit !(r > 1.98 && r < 2.0) }' ||
    fail "model.dtype bf16: parameters $bf16 vs $fp32 in fp32, expected about half"
# stage 2: every matrix in bf16 only (the projector's and the norms' masters sharded too, or fp32)
awk -v a="${fp32% *}" -v b="${bf16_params% *}" 'BEGIN { r = a / b; exit !(r > 1.99 && r < 2.01) }' ||
    fail "bf16 + ZeRO-1 stage 2: parameters $bf16_params vs $fp32 in fp32, expected half"
# stage 1 without recompute keeps no per-layer inputs of the frozen linear layers (h1, h2 [N, D],
# act [N, F]): 32 layers x N (2 D + F) values fewer activations than stage 2 at the same shape,
# fp32 values with model.dtype fp32 and bf16 ones with bf16 (which stores those inputs in bf16)
acts() { awk '/^memory plan per rank \(without recompute/ {p = 1} p && /^ *activations/ {print $2, $3; exit}'; }
shape=(--set train.micro_batch=8 --set data.max_len=680)
for dtype_bytes in "fp32 4" "bf16 2"; do
    read -r dtype bytes <<<"$dtype_bytes"
    acts1=$("$tga" train --config "$config" --dry-run "${shape[@]}" --set model.dtype=$dtype 2>&1 | acts)
    acts2=$("$tga" train --config "$config" --dry-run "${shape[@]}" --set model.dtype=$dtype \
        --set train.trainable=stage2 2>&1 | acts)
    [ "${acts1#* }" = GiB ] && [ "${acts2#* }" = GiB ] ||
        fail "activations ($dtype): '$acts1' (stage 1), '$acts2' (stage 2)"
    awk -v a="${acts1% *}" -v b="${acts2% *}" -v bytes="$bytes" 'BEGIN {
        want = 32 * 8 * 680 * (2 * 4096 + 14336) * bytes / 2 ^ 30
        exit !(b - a > want - 0.01 && b - a < want + 0.01) }' ||
        fail "stage 1 without recompute ($dtype): activations $acts1 vs $acts2 in stage 2;" \
            "expected the linear inputs fewer"
done
# upstream's micro-batch 32 (at the ~680 tokens of a LLaVA pretraining sample) without recompute fits
# one H200 (about 140 GiB as the driver reports it; 131 GiB leaves room for the CUDA context, the
# cuBLASLt workspace and the allocator) with bf16 weights and bf16 activations where they are kept
total() { awk '/^memory plan per rank \(without recompute/ {p = 1} p && /^ *total/ {print $2, $3; exit}'; }
total32=$("$tga" train --config "$config" --dry-run --set train.micro_batch=32 --set data.max_len=680 2>&1 | total)
[ "${total32#* }" = GiB ] && awk -v t="${total32% *}" 'BEGIN { exit !(t < 131) }' ||
    fail "stage 1 at 32 x 680 tokens without recompute plans $total32 per rank, more than an H200 holds"
echo "plan_7b: stage 1 without recompute at 8 x 680 tokens: activations $acts1 (stage 2: $acts2); at 32 x 680: $total32"
echo "PASS plan_7b: 7B stage 1 plans here; ZeRO-1 on 8 ranks: AdamW state $sharded GiB instead of $whole GiB;" \
    "parameters $bf16 in bf16 instead of $fp32; stage 2 bf16 + ZeRO-1: parameters $bf16_params," \
    "moments and masters $bf16_optimizer GiB"
