#!/usr/bin/env bash
# A stop signal in the middle of a 2-rank run without periodic checkpoints (train.checkpoint_every 0,
# sent after step 4): every rank stops after the same step, a checkpoint of that step is written,
# the job exits 0, and the resumed run ends bitwise equal to the uninterrupted run. Three ways to deliver it:
# SIGTERM to every rank (what srun / SLURM does), SIGTERM to rank 1 alone (one rank's signal
# stops all), and SIGUSR1 to mpirun (which forwards it to the ranks).
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
ensure_common

steps_logged() { [ -f "$1/metrics.jsonl" ] && [ "$(wc -l <"$1/metrics.jsonl")" -ge "$2" ]; } # RUN_DIR N

# stop_and_resume NAME HOW: HOW is all-ranks, rank-1 or mpirun-usr1
stop_and_resume() {
    local name=$1 run=$work/$1 stopped_at
    train_bg 2 "$run" --set train.checkpoint_every=0
    advance_until "$job" 2 steps_logged "$run" 4 || fail "$name: the job ended before step 4"
    case $2 in
    all-ranks) kill -TERM "${held[@]}" ;;
    rank-1) kill -TERM "${held[1]}" ;;
    mpirun-usr1) kill -USR1 "$job" ;;
    esac
    resume_ranks
    wait_job "$job" 60
    [ "$job_rc" -eq 0 ] || {
        tail -n 20 "$run.log"
        fail "$name: exit $job_rc after the stop signal, expected 0"
    }
    stopped_at=$(sed -n 's/.*stop requested by signal: checkpoint at step \([0-9]*\) written; exiting.*/\1/p' "$run.log")
    [ -n "$stopped_at" ] || fail "$name: no 'stop requested by signal' message (log: $run.log)"
    if [ "$stopped_at" -lt 4 ] || [ "$stopped_at" -ge "$STEPS" ]; then fail "$name: stopped at step $stopped_at, not mid-run"; fi
    has_done "$run" "$stopped_at" || fail "$name: no complete checkpoint of step $stopped_at"
    expect_no_leftovers "$run" "$name"
    train 2 "$run" --set train.checkpoint_every=0 || fail "$name: the resumed run failed (log: $run.log)"
    expect_log "$run.log" "resumed from $(ckpt_dir "$run" "$stopped_at") (step $stopped_at)" "$name"
    expect_final_equal "$run" "$common/reference-2" "$name: stopped at step $stopped_at, resumed"
}

stop_and_resume sigterm-all-ranks all-ranks
stop_and_resume sigterm-rank-1 rank-1
stop_and_resume sigusr1-mpirun mpirun-usr1
pass "stop signals wrote a checkpoint and exited 0; resumed runs ended bitwise equal"
