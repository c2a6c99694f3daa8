#!/usr/bin/env bash
# A crash in the middle of a checkpoint never leaves a checkpoint that the next run would choose.
#  1. A 2-rank job is SIGKILLed (every rank) while rank 0 is writing step-00000008.tmp/ (some of its
#     files written, not renamed yet). The next run resumes from step 4, removes the partial
#     directory, and ends bitwise equal to the uninterrupted run.
#  2. The crash window after the rename and before DONE: a step-00000008/ with every file but DONE
#     (made from the reference run's own step 8). The next run ignores it with a warning, resumes from
#     step 4, replaces it, and ends bitwise equal.
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
ensure_common

partly_written() { # RUN_DIR STEP: the step's .tmp directory holds at least one file
    local tmp
    tmp=$(ckpt_dir "$1" "$2").tmp
    [ -d "$tmp" ] && [ -n "$(ls -A "$tmp" 2>/dev/null)" ]
}

run=$work/killed
train_bg 2 "$run"
advance_until "$job" 2 partly_written "$run" 8 || fail "the job ended before it was seen writing step 8"
note "killing the job while step-00000008.tmp holds: $(find "$(ckpt_dir "$run" 8).tmp" -type f -printf '%f ')"
kill -KILL "${held[@]}"
wait_job "$job" 30
[ -d "$(ckpt_dir "$run" 8)" ] && fail "step 8 was completed before the kill"
has_done "$run" 4 || fail "step 4 is not complete"
train 2 "$run" || fail "the run after the crash failed (log: $run.log)"
expect_log "$run.log" "resumed from $(ckpt_dir "$run" 4) (step 4)" "after a crash during the step-8 write"
expect_log "$run.log" "removing $(ckpt_dir "$run" 8).tmp, left by an interrupted checkpoint" "the partial directory"
expect_final_equal "$run" "$common/reference-2" "crash during the step-8 write"

run=$work/no-done
mkdir -p "$run/checkpoints"
cp -a "$(ckpt_dir "$common/reference-2" 4)" "$(ckpt_dir "$common/reference-2" 8)" "$run/checkpoints/"
rm "$(ckpt_dir "$run" 8)/DONE"
train 2 "$run" || fail "the run with a step-8 directory without DONE failed (log: $run.log)"
expect_log "$run.log" "ignoring the incomplete checkpoint step 8" "step 8 without DONE"
expect_log "$run.log" "resumed from $(ckpt_dir "$run" 4) (step 4)" "step 8 without DONE"
expect_final_equal "$run" "$common/reference-2" "step 8 without DONE"
pass "partial checkpoints (.tmp, and no DONE) were never chosen; both runs ended bitwise equal"
