#!/usr/bin/env bash
# Damaged checkpoints are reported and skipped (copies of the 2-rank reference run, which holds
# steps 4, 8 and 12, each damaged differently; every run is on 2 ranks):
#  1. one flipped byte in step 12's params.tgat: a warning names the file, the run falls back to
#     step 8, recomputes steps 9-12 and ends bitwise equal to the uninterrupted run;
#  2. step 12's optim.tgat cut short by one byte and one flipped byte in step 8's state.json: both
#     files are named, the run falls back to step 4 and ends bitwise equal;
#  3. a flipped byte in every checkpoint: the run refuses to start (exit 2, which the supervisor
#     does not retry, and an error saying no checkpoint verifies) instead of silently training from
#     step 0, and deletes nothing.
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
ensure_common

damaged_copy() { # NAME: a copy of the reference run
    cp -a "$common/reference-2" "$work/$1"
    echo "$work/$1"
}
middle() { echo $(($(stat -c %s "$1") / 2)); }

expect_rejected() { # RUN_DIR STEP FILE
    expect_log "$1.log" "checkpoint $(ckpt_dir "$1" "$2") failed verification" "damaged step $2"
    grep -F "$(ckpt_dir "$1" "$2") failed verification" "$1.log" | grep -qF "$3" ||
        fail "the warning about step $2 does not name $3: $(grep -F "step-0000000$2 failed" "$1.log")"
}

run=$(damaged_copy flipped-12)
file=$(ckpt_dir "$run" 12)/params.tgat
flip_byte "$file" "$(middle "$file")"
train 2 "$run" || fail "the run with a damaged step 12 failed (log: $run.log)"
expect_rejected "$run" 12 params.tgat
expect_log "$run.log" "resumed from $(ckpt_dir "$run" 8) (step 8)" "damaged step 12"
expect_final_equal "$run" "$common/reference-2" "a flipped byte in step 12's params.tgat"

run=$(damaged_copy truncated-12-flipped-8)
file=$(ckpt_dir "$run" 12)/optim.tgat
truncate -s -1 "$file"
file=$(ckpt_dir "$run" 8)/state.json
flip_byte "$file" "$(middle "$file")"
train 2 "$run" || fail "the run with damaged steps 8 and 12 failed (log: $run.log)"
expect_rejected "$run" 12 optim.tgat
expect_rejected "$run" 8 state.json
expect_log "$run.log" "resumed from $(ckpt_dir "$run" 4) (step 4)" "damaged steps 8 and 12"
expect_final_equal "$run" "$common/reference-2" "damaged steps 8 and 12"

run=$(damaged_copy all-damaged)
for step in 4 8 12; do
    file=$(ckpt_dir "$run" "$step")/params.tgat
    flip_byte "$file" "$(middle "$file")"
done
train 2 "$run"
rc=$?
[ "$rc" -eq 2 ] || fail "every checkpoint damaged: exit code $rc, expected 2 (final: a restart cannot help)"
expect_log "$run.log" "no checkpoint in $run/checkpoints verifies" "every checkpoint damaged"
grep -qF "starting from step 0" "$run.log" && fail "every checkpoint damaged: the run restarted from step 0"
for step in 4 8 12; do [ -d "$(ckpt_dir "$run" "$step")" ] || fail "every checkpoint damaged: step $step was deleted"; done
note "every checkpoint damaged: $(grep -F "no checkpoint in" "$run.log" | head -n 1)"
pass "damaged checkpoints were named and skipped; runs ended bitwise equal; none verifying stops the run"
