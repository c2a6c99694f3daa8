#!/usr/bin/env bash
# Bad configs and bad data under `mpirun -np 2`: every rank stops with its own clear message
# before training starts (no step is logged, no checkpoint written), the job exits with 2 for a
# configuration error (a missing data path included: the fix is in the config) and non-zero otherwise,
# within 20 s, and no rank is left behind. Last, data
# that go bad mid-run (a corrupted sample frame, read by one rank only): that rank names the shard
# and the sample, and the whole job ends within 20 s.
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
ensure_common
readonly BOUND_S=20

# expect_setup_failure NAME EXIT MESSAGE [tga train args...]: MESSAGE on both ranks
expect_setup_failure() {
    local name=$1 want_rc=$2 message=$3 run=$work/$1 started rank
    shift 3
    started=$SECONDS
    train_bg 2 "$run" "$@"
    wait_job "$job" "$BOUND_S"
    [ "$job_rc" -eq "$want_rc" ] || {
        cat "$run.log"
        fail "$name: exit $job_rc, expected $want_rc"
    }
    for rank in 0 1; do expect_rank_error "$run" "$rank" "$message" "$name"; done
    grep -q "step 1/$STEPS" "$run.log" && fail "$name: training started"
    [ -d "$run/checkpoints" ] && fail "$name: a checkpoint directory was created"
    expect_no_leftovers "$run" "$name"
    note "$name: exit $job_rc in $((SECONDS - started)) s; $(grep -F "[rank 0] tga train:" "$(rank_log "$run" 0)")"
}

missing=$work/no-such-data
expect_setup_failure out_of_range 2 "--set train.lr: -1 is out of range" --set train.lr=-1
expect_setup_failure cross_key 2 "model.n_heads (4) must be a multiple of model.n_kv_heads (3)" --set model.n_kv_heads=3
expect_setup_failure missing_config 2 "cannot open config file $work/missing.yaml" --config "$work/missing.yaml"
expect_setup_failure batch_geometry 2 "train.global_batch 8 is not a multiple of train.micro_batch 3 x 2 ranks" \
    --set train.micro_batch=3
expect_setup_failure image_shape 2 "holds images of 4 patches x 8 features, but data.image_tokens is 5" \
    --set data.image_tokens=5
expect_setup_failure missing_data 2 "$missing" --set "data.train=$missing"

corrupt=$work/corrupt-header
cp -a "$data" "$corrupt"
flip_byte "$corrupt/shard-00001.tgas" 20 # inside the header (n_samples): caught by the header checksum
expect_setup_failure corrupt_shard_header 1 "$corrupt/shard-00001.tgas" --set "data.train=$corrupt"

corrupt=$work/corrupt-frame
cp -a "$data" "$corrupt"
flip_byte "$corrupt/shard-00001.tgas" 100 # inside the first frame of shard 1: sample test-00032
run=$work/corrupt_frame
started=$SECONDS
train_bg 2 "$run" --set "data.train=$corrupt"
wait_job "$job" "$BOUND_S"
[ "$job_rc" -ne 0 ] || fail "corrupt_frame: the run succeeded on corrupted data"
cat "$(rank_log "$run" 0)" "$(rank_log "$run" 1)" | grep -E "^\[rank [01]\] tga train: format error: " | grep -qF "$corrupt/shard-00001.tgas: sample 0 (id 'test-00032')" || {
    cat "$run.log"
    fail "corrupt_frame: no rank named the shard and the sample"
}
expect_no_leftovers "$run" "corrupt_frame"
note "corrupt_frame: exit $job_rc in $((SECONDS - started)) s; $(cat "$(rank_log "$run" 0)" "$(rank_log "$run" 1)" | grep -F "format error")"
pass "bad configs and data stopped both ranks with their own message within $BOUND_S s; nothing left running"
