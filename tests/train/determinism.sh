#!/usr/bin/env bash
# Determinism across world sizes. With train.grad_sync ordered, the same config and global batch
# give bitwise identical parameters and AdamW state at every checkpoint (steps 4, 8, 12): global
# batch 8 (micro-batch 2) on 1, 2 and 4 ranks, and global batch 6 on 1 and 3 ranks (a world that
# is not a power of two). With train.grad_sync allreduce (MPI's summation order) the model still
# trains the same: parameters within 1e-6 and optimizer state within 1e-5 of the ordered run
# (compare_checkpoints: max|a - b| / max|a| per tensor) on 2, 3 and 4 ranks.
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
ensure_common

expect_same_checkpoints() { # RUN_DIR REFERENCE_DIR WHAT
    local step file
    for step in 4 8 12; do
        for file in params.tgat optim.tgat; do
            [ -f "$(ckpt_dir "$1" "$step")/$file" ] || fail "$3: step $step $file is missing (log: $1.log)"
            cmp -s "$(ckpt_dir "$2" "$step")/$file" "$(ckpt_dir "$1" "$step")/$file" ||
                fail "$3: step $step $file differs from the 1-rank run"
        done
    done
}

expect_close() { # RUN_DIR REFERENCE_DIR WHAT: params within 1e-6, optimizer state within 1e-5
    local file tolerance rc
    for file in params optim; do
        tolerance=$([ "$file" = params ] && echo 1e-6 || echo 1e-5)
        "$compare_checkpoints" "$(ckpt_dir "$2" 12)/$file.tgat" "$(ckpt_dir "$1" 12)/$file.tgat" "$tolerance" \
            >"$1.$file.compare"
        rc=$?
        note "$3, $file.tgat: $(tail -n 1 "$1.$file.compare")"
        [ "$rc" -eq 0 ] || {
            cat "$1.$file.compare"
            fail "$3: $file.tgat is too far from the ordered run's"
        }
    done
}

train 4 "$work/ordered-4" || fail "the 4-rank run failed (log: $work/ordered-4.log)"
expect_log "$work/ordered-4.log" "micro 2 x accum 1 x 4" "4 ranks"
expect_same_checkpoints "$common/reference-2" "$common/reference-1" "ordered, 2 ranks"
expect_same_checkpoints "$work/ordered-4" "$common/reference-1" "ordered, 4 ranks"
note "ordered, global batch 8: steps 4, 8, 12 bitwise equal on 1, 2 and 4 ranks"

for np in 1 3; do
    train "$np" "$work/batch6-ordered-$np" --set train.global_batch=6 || fail "the $np-rank global-batch-6 run failed"
done
expect_same_checkpoints "$work/batch6-ordered-3" "$work/batch6-ordered-1" "ordered, global batch 6, 3 ranks"
note "ordered, global batch 6: steps 4, 8, 12 bitwise equal on 1 and 3 ranks"

# Training moved the weights, so equal files mean equal training and not an untouched model.
"$compare_checkpoints" "$(ckpt_dir "$common/reference-1" 4)/params.tgat" \
    "$(ckpt_dir "$common/reference-1" 12)/params.tgat" 1e-3 >/dev/null &&
    fail "the parameters barely changed between steps 4 and 12"

for np in 2 4; do
    train "$np" "$work/allreduce-$np" --set train.grad_sync=allreduce || fail "the $np-rank allreduce run failed"
    expect_close "$work/allreduce-$np" "$common/reference-1" "allreduce, $np ranks"
done
train 3 "$work/allreduce-3" --set train.global_batch=6 --set train.grad_sync=allreduce ||
    fail "the 3-rank allreduce run failed"
expect_close "$work/allreduce-3" "$work/batch6-ordered-1" "allreduce, 3 ranks (global batch 6)"
cmp -s "$(ckpt_dir "$work/allreduce-3" 12)/params.tgat" "$(ckpt_dir "$work/batch6-ordered-1" 12)/params.tgat" &&
    note "(allreduce on 3 ranks happened to add in the ordered tree's order: the tolerance was not exercised)"
pass "ordered: bitwise identical on 1, 2, 4 ranks and on 1, 3 ranks; allreduce within tolerance on 2, 3, 4 ranks"
