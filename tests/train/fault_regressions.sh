#!/usr/bin/env bash
# Failures of `tga train` found by these tests, each checked the way a user meets it (2 ranks):
#  1. --fresh over an old run, then a crash: the automatic resume must continue the new run (its
#     step-4 checkpoint), never the old run's newer step 12; the result must equal an uninterrupted
#     run of the new config (train.lr 1e-2).
#  2. A set-up I/O error on rank 0 alone (train.out_dir under /dev/full): the job's exit code must be
#     the I/O error's (1, worth a restart), not a configuration error's (2, which stops
#     launch/supervise.sh) -- whichever rank mpirun happens to see exit first.
#  3. Resuming with another train.seed: the error (exit 2) names the checkpoint's seed and
#     train.init_from ('' here) correctly on both ranks.
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
ensure_common
failures=0
problem() {
    echo "FAIL $test_name: $*"
    failures=$((failures + 1))
}

# 1.
train 2 "$work/new-config" --set train.lr=1e-2 || fail "the uninterrupted lr 1e-2 run failed"
run=$work/fresh
cp -a "$common/reference-2" "$run"
train_bg 2 "$run" --fresh --set train.lr=1e-2
# the copied reference already has a step-4 checkpoint: wait for the new run's own one, written
# after --fresh moved the old checkpoints aside
fresh_step4_done() { compgen -G "$1/checkpoints.replaced-*" >/dev/null && has_done "$1" 4; }
advance_until "$job" 2 fresh_step4_done "$run" || fail "the --fresh run ended before its step-4 checkpoint"
kill -KILL "${held[@]}"
wait_job "$job" 30
train 2 "$run" --set train.lr=1e-2 || fail "the run after the crash failed (log: $run.log)"
if cmp -s "$(ckpt_dir "$run" 12)/params.tgat" "$(ckpt_dir "$work/new-config" 12)/params.tgat"; then
    note "--fresh then a crash: resumed from the new run's checkpoint"
else
    problem "--fresh then a crash: the resume chose a checkpoint of the run that --fresh replaced ($(grep -F "resumed from" "$run.log" | tail -n 1); $(grep -F "already complete" "$run.log" | tail -n 1))"
fi

# 2.
for attempt in 1 2 3; do
    run=$work/dev-full-$attempt
    train 2 "$run" --set train.out_dir=/dev/full/run
    rc=$?
    [ "$rc" -eq 1 ] || { problem "I/O error on rank 0 (attempt $attempt): job exit $rc, expected 1"; break; }
    grep -F "config error" "$(rank_log "$run" 1)" >/dev/null &&
        { problem "I/O error on rank 0: rank 1 calls it a config error: $(cat "$(rank_log "$run" 1)")"; break; }
done

# 3.
run=$work/other-seed
mkdir -p "$run/checkpoints"
cp -a "$(ckpt_dir "$common/reference-2" 8)" "$run/checkpoints/"
train 2 "$run" --set train.seed=5
rc=$?
[ "$rc" -eq 2 ] || problem "another train.seed: exit $rc, expected 2"
for rank in 0 1; do
    grep -F "was trained with train.seed 77 and train.init_from ''; this run has 5 and ''" \
        "$(rank_log "$run" "$rank")" >/dev/null ||
        problem "another train.seed: rank $rank's message is wrong: $(cat -v "$(rank_log "$run" "$rank")")"
done

[ "$failures" -eq 0 ] || fail "$failures problem(s)"
pass "--fresh fences old checkpoints; set-up exit codes are the failing rank's; the resume mismatch message is right"
