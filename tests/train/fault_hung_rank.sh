#!/usr/bin/env bash
# A hung rank (SIGSTOP) in a 2-rank run with runtime.collective_timeout = 5 s: the watchdog of the
# rank left waiting ends the job with a message naming that rank and the collective it waited in,
# no sooner than the timeout and within timeout + 15 s, and no process of the job is left (the
# stopped one included). Once with rank 1 stopped (rank 0 waits), once with rank 0 stopped while it
# writes the step-8 checkpoint (rank 1 waits for the checkpoint to finish), and once with rank 1
# stopped under train.grad_sync bucketed (rank 0's communication thread waits in a bucket's
# all-reduce while its main thread waits for the thread).
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
ensure_common
readonly TIMEOUT_S=5
readonly BOUND_S=$((TIMEOUT_S + 15))

writing() { [ -d "$(ckpt_dir "$1" "$2").tmp" ]; } # RUN_DIR STEP

# hang_rank NAME RANK CONDITION...: stops RANK once CONDITION holds, lets the other run
hang_rank() {
    local name=$1 victim_rank=$2 run=$work/$1 victim waiter started elapsed
    shift 2
    train_bg 2 "$run" --set "runtime.collective_timeout=$TIMEOUT_S" "${extra_args[@]}"
    advance_until "$job" 2 "$@" || fail "$name: the job ended before the point to hang it"
    victim=${held[$victim_rank]}
    waiter=$((1 - victim_rank))
    kill -CONT "${held[$waiter]}"
    started=$(date +%s.%N)
    wait_job "$job" "$BOUND_S"
    elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    [ "$job_rc" -ne 0 ] || fail "$name: the job exited 0 with a hung rank"
    grep -E "^\[rank $waiter\] error: watchdog: [a-z]+ \([^)]+\) has not completed in $TIMEOUT_S s" "$(rank_log "$run" "$waiter")" >"$run.watchdog" || {
        cat "$run.log"
        fail "$name: no watchdog message from rank $waiter naming the collective"
    }
    awk -v e="$elapsed" -v t="$TIMEOUT_S" 'BEGIN { exit !(e >= t - 0.5) }' || fail "$name: the watchdog fired after $elapsed s, before the $TIMEOUT_S s timeout"
    expect_no_leftovers "$run" "$name (the stopped rank $victim_rank is pid $victim)"
    note "$name: job ended after $elapsed s (exit $job_rc): $(head -n 1 "$run.watchdog")"
}

extra_args=()
hang_rank rank1-stopped 1 has_done "$work/rank1-stopped" 4
hang_rank rank0-stopped-writing 0 writing "$work/rank0-stopped-writing" 8
extra_args=(--set train.grad_sync=bucketed --set train.bucket_mb=0.01)
hang_rank rank1-stopped-bucketed 1 has_done "$work/rank1-stopped-bucketed" 4
grep -qF "allreduce (gradient bucket)" "$work/rank1-stopped-bucketed.watchdog" ||
    fail "bucketed: the watchdog did not name the bucket all-reduce: $(cat "$work/rank1-stopped-bucketed.watchdog")"
pass "the watchdog ended the three hung jobs within $BOUND_S s, naming the waiting rank and the collective"
