#!/usr/bin/env bash
# model.dtype bf16 under `tga train`. tiny.yaml trains stage 2, so every matrix is a bf16 copy of an
# fp32 master that AdamW updates; the copies must follow the masters after every step, after the
# ZeRO-1 all-gather (host) and broadcast (device collectives), and after a resume.
#   - 1 rank: the log says so; the parameters differ from the fp32 reference run's (the bf16
#     products ran) but stay within 0.1 of them (compare_checkpoints' max|a - b| / max|a| per tensor;
#     measured 3.3e-2), and the final loss is within 0.01 of the fp32 run's (measured 1e-4).
#   - 2 ranks, ordered sync: bitwise the 1-rank bf16 run.
#   - ZeRO-1 on 2 ranks shards the fp32 masters with the moments; params.tgat still holds them
#     whole (gathered from the shards when the checkpoint is written): within 1e-6 of the 1-rank
#     run's (bf16 values would be 3.5e-3 away). Resumed from its step-8 checkpoint on 1 rank
#     without ZeRO-1 it ends within 1e-6 of the 1-rank run; resumed on its 2 ranks, bitwise the
#     uninterrupted ZeRO-1 run. Over the device-collective interface (bf16 broadcasts of the
#     owners' slices): params within 1e-6 of the host path's.
#   - tga export of the 1-rank run writes the decoder's fp32 masters, not their bf16 copies.
#   - resumed from its step-8 checkpoint: bitwise the uninterrupted bf16 run (the copies are
#     rounded again from the saved masters).
#   - stage 1 (the decoder frozen: bf16 only, no masters) trains; its checkpoint holds the
#     projector, which changed between steps 4 and 12, and no decoder weights.
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
ensure_common
bf16=(--set model.dtype=bf16)

final_loss() { grep -o "step $STEPS/$STEPS | loss [0-9.]*" "$1.log" | grep -o '[0-9.]*$'; } # RUN_DIR

one=$work/bf16-1
train 1 "$one" "${bf16[@]}" || fail "the 1-rank bf16 run failed (log: $one.log)"
expect_log "$one.log" "(bf16 matrices, fp32 masters)" "1 rank"
ref_params=$(ckpt_dir "$common/reference-1" "$STEPS")/params.tgat
cmp -s "$ref_params" "$(ckpt_dir "$one" "$STEPS")/params.tgat" &&
    fail "the bf16 run ended with the fp32 run's parameters: the bf16 products did not run"
compare "$ref_params" "$(ckpt_dir "$one" "$STEPS")/params.tgat" 0.1 "bf16 vs fp32, params"
fp32_loss=$(final_loss "$common/reference-1") bf16_loss=$(final_loss "$one")
awk -v a="$fp32_loss" -v b="$bf16_loss" 'BEGIN { d = a - b; exit !(d < 0.01 && d > -0.01) }' ||
    fail "final loss $bf16_loss (bf16) is not within 0.01 of $fp32_loss (fp32)"
note "final loss: fp32 $fp32_loss, bf16 $bf16_loss"

train 2 "$work/bf16-2" "${bf16[@]}" || fail "the 2-rank bf16 run failed (log: $work/bf16-2.log)"
expect_final_equal "$work/bf16-2" "$one" "2 ranks, ordered"

zero=$work/bf16-zero-2
train 2 "$zero" "${bf16[@]}" --set train.zero_stage=1 || fail "the ZeRO-1 bf16 run failed (log: $zero.log)"
final=$(ckpt_dir "$zero" "$STEPS")
compare "$(ckpt_dir "$one" "$STEPS")/params.tgat" "$final/params.tgat" 1e-6 "ZeRO-1 bf16, 2 ranks, params"

cut=$work/bf16-zero-to-1
cp -a "$zero" "$cut"
rm -rf "$(ckpt_dir "$cut" 12)"
train 1 "$cut" "${bf16[@]}" || fail "the ZeRO-1 bf16 checkpoint did not resume on 1 rank (log: $cut.log)"
compare "$(ckpt_dir "$one" "$STEPS")/params.tgat" "$(ckpt_dir "$cut" "$STEPS")/params.tgat" 1e-6 \
    "ZeRO-1 bf16, resumed from step 8 on 1 rank, params"
cut=$work/bf16-zero-resumed
cp -a "$zero" "$cut"
rm -rf "$(ckpt_dir "$cut" 12)"
train 2 "$cut" "${bf16[@]}" --set train.zero_stage=1 || fail "the resumed ZeRO-1 bf16 run failed (log: $cut.log)"
for file in params.tgat optim.rank-00000.tgat optim.rank-00001.tgat; do
    cmp -s "$final/$file" "$(ckpt_dir "$cut" "$STEPS")/$file" ||
        fail "ZeRO-1 bf16 resumed on 2 ranks: $file differs from the uninterrupted run's"
done
note "ZeRO-1 bf16, resumed from step 8 on 2 ranks: bitwise the uninterrupted run"

dev=$work/bf16-zero-dev-2
TGA_DEVICE_COLLECTIVES=mpi train 2 "$dev" "${bf16[@]}" --set train.zero_stage=1 --set train.grad_sync=allreduce ||
    fail "the ZeRO-1 bf16 run over the device-collective interface failed (log: $dev.log)"
expect_log "$dev.log" "over the device collectives" "ZeRO-1 over the device collectives"
compare "$final/params.tgat" "$(ckpt_dir "$dev" "$STEPS")/params.tgat" 1e-6 \
    "ZeRO-1 bf16 over the device collectives, params"

# export: the masters of a stage-2 run, in fp32 (a bf16 copy has its low 16 bits zero)
"$tga" export --run "$one" --out "$work/export" --what model >"$work/export.log" 2>&1 ||
    fail "tga export of the bf16 run failed: $(tail -n 3 "$work/export.log")"
/usr/bin/python3 - "$work/export" <<'PY' || fail "tga export wrote bf16-rounded decoder weights"
import json, struct, sys, glob
import numpy as np
path = sorted(glob.glob(sys.argv[1] + "/model*.safetensors"))[0]
blob = open(path, "rb").read()
size = struct.unpack("<Q", blob[:8])[0]
header = json.loads(blob[8:8 + size])
name = next(k for k in header if k.endswith("q_proj.weight"))
lo, hi = header[name]["data_offsets"]
bits = np.frombuffer(blob[8 + size + lo:8 + size + hi], np.uint32)
sys.exit(0 if header[name]["dtype"] == "F32" and np.any(bits & 0xFFFF) else 1)
PY
note "tga export of the bf16 run: fp32 masters"

# resume: the run as if killed after its step-8 checkpoint
cut=$work/bf16-resumed
cp -a "$one" "$cut"
rm -rf "$(ckpt_dir "$cut" 12)"
train 1 "$cut" "${bf16[@]}" || fail "the resumed bf16 run failed (log: $cut.log)"
expect_log "$cut.log" "resumed from $(ckpt_dir "$cut" 8) (step 8)" "bf16 resume"
expect_final_equal "$cut" "$one" "bf16, resumed from step 8"

stage1=$work/bf16-stage1
train 1 "$stage1" "${bf16[@]}" --set train.trainable=stage1 || fail "the stage-1 bf16 run failed (log: $stage1.log)"
"$compare_checkpoints" "$(ckpt_dir "$stage1" 4)/params.tgat" "$(ckpt_dir "$stage1" "$STEPS")/params.tgat" 0 \
    >"$work/stage1.txt"
grep -q '^projector.2.weight ' "$work/stage1.txt" || fail "stage 1: the checkpoint does not hold projector.2.weight"
grep -q '^layers\.' "$work/stage1.txt" && fail "stage 1: the checkpoint holds frozen decoder weights"
grep -q 'projector.2.weight *0 of' "$work/stage1.txt" && fail "stage 1: the projector did not train"
pass "bf16: trains like fp32 (loss $bf16_loss vs $fp32_loss), bitwise on 2 ranks and after resume; ZeRO-1 with" \
    "sharded masters resumes exactly on 1 and 2 ranks; stage 1 trains"
