#!/usr/bin/env bash
# Exact resume: a run killed (SIGKILL) right after a checkpoint and resumed with --resume auto (the
# default) ends with bitwise the same parameters and AdamW state as the uninterrupted run: killed on
# 1 rank after step 8 and resumed on 1 and on 2 ranks; killed on 2 ranks after step 4 (the epoch of
# 8 steps is then not finished) and resumed on 1 and on 4 ranks. metrics.jsonl of a resumed run
# holds each step once: the lines the killed run wrote after its checkpoint are dropped.
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
ensure_common


# Runs NP ranks into RUN_DIR until checkpoint STEP is complete, then SIGKILLs every rank.
kill_after_checkpoint() { # NP RUN_DIR STEP
    train_bg "$1" "$2"
    advance_until "$job" "$1" has_done "$2" "$3" || fail "the $1-rank run ended before its step-$3 checkpoint"
    kill -KILL "${held[@]}"
    wait_job "$job" 30
    [ -d "$(ckpt_dir "$2" "$STEPS")" ] && fail "the $1-rank run was not interrupted: it reached step $STEPS"
    note "$1-rank run killed after its step-$3 checkpoint (mpirun exit $job_rc)"
}

resume_on() { # KILLED_RUN_DIR STEP NP
    local run=$1-resumed-on-$3 first
    cp -a "$1" "$run"
    # as if the killed run had logged one more step and was killed in the middle of the next line
    printf '{"kind":"train","step":%d,"loss":1}\n{"kind":"tra' $(($2 + 1)) >>"$run/metrics.jsonl"
    train "$3" "$run" || fail "the resumed run on $3 rank(s) failed (log: $run.log)"
    expect_log "$run.log" "resumed from $(ckpt_dir "$run" "$2") (step $2)" "resume on $3 rank(s)"
    # it continued where the checkpoint ends, rather than retraining from step 1 to the same result
    first=$(grep -o -m 1 "step [0-9]*/$STEPS |" "$run.log")
    [ "$first" = "step $(($2 + 1))/$STEPS |" ] || fail "resume on $3 rank(s): the first step logged is '$first'"
    expect_final_equal "$run" "$common/reference-1" "killed after step $2 on $(basename "$1"), resumed on $3 rank(s)"
    steps=$(grep -o '"kind":"train","step":[0-9]*' "$run/metrics.jsonl" | grep -o '[0-9]*$' | tr '\n' ' ')
    [ "$steps" = "$(seq -s ' ' 1 "$STEPS") " ] || fail "resume on $3 rank(s): metrics.jsonl holds train steps '$steps'"
}

kill_after_checkpoint 1 "$work/killed-1" 8
resume_on "$work/killed-1" 8 1
resume_on "$work/killed-1" 8 2
kill_after_checkpoint 2 "$work/killed-2" 4
resume_on "$work/killed-2" 4 1
resume_on "$work/killed-2" 4 4
pass "resumed runs (1->1, 1->2 from step 8; 2->1, 2->4 from step 4) end bitwise equal to the uninterrupted run"
