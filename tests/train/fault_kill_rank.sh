#!/usr/bin/env bash
# A rank killed (SIGKILL) in the middle of a 2-rank run: launch/supervise.sh restarts the job
# (launch/local.sh), which resumes from the newest complete checkpoint. Rank 1 is killed after the
# step-4 checkpoint, then rank 0 (the one that writes checkpoints) of the restarted job after the
# step-8 one. The job ends with exit 0 after 2 restarts, bitwise equal to the uninterrupted run.
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
ensure_common
run=$work/run

TGA_BIN=$tga TGA_SUPERVISE_DELAY=0 "$repo/launch/supervise.sh" 3 "$repo/launch/local.sh" 2 "$config" \
    --set "data.train=$data" --set "train.out_dir=$run" >"$run.log" 2>&1 &
supervisor=$!
started_pids+=("$supervisor")

# Kills rank RANK of the current attempt once checkpoint STEP is complete; waits until that
# attempt's mpirun has exited.
kill_rank_after() { # RANK STEP
    advance_until "$supervisor" 2 has_done "$run" "$2" || fail "the job ended before its step-$2 checkpoint"
    local victim attempt
    victim=${held[$1]}
    attempt=$(ps -o ppid= -p "$victim" | tr -d ' ')
    kill -KILL "$victim"
    resume_ranks
    while alive "$attempt"; do nap 0.05; done
    [ -d "$(ckpt_dir "$run" "$STEPS")" ] && fail "the job was not interrupted: it reached step $STEPS"
    note "rank $1 (pid $victim) killed after the step-$2 checkpoint"
}

kill_rank_after 1 4
kill_rank_after 0 8
wait_job "$supervisor" 120
[ "$job_rc" -eq 0 ] || {
    tail -n 30 "$run.log"
    fail "launch/supervise.sh exited $job_rc"
}
expect_log "$run.log" "supervise: done after 2 restart(s)" "supervise"
expect_log "$run.log" "resumed from $(ckpt_dir "$run" 4) (step 4)" "first restart"
expect_log "$run.log" "resumed from $(ckpt_dir "$run" 8) (step 8)" "second restart"
expect_final_equal "$run" "$common/reference-2" "after two killed ranks and two restarts"
pass "supervise.sh restarted the job twice after SIGKILLed ranks; final state bitwise equal"
