#!/usr/bin/env bash
# Write errors while checkpointing: a clear error naming the file, a non-zero exit of the whole
# 2-rank job, and the previous checkpoint left intact (bitwise the reference run's, and it still
# verifies: the next run resumes from it and ends bitwise equal to the uninterrupted run).
#  1. The fault hook of runtime/fileio.h (TGA_FAULT_WRITE_AFTER_BYTES): the "disk" fills up halfway
#     through step 8's params.tgat (ENOSPC).
#  2. A real failing write(2): each rank runs under a file-size limit (ulimit -f, SIGXFSZ ignored)
#     that step 12's params.tgat fits and its optim.tgat does not (EFBIG). The ranks talk over TCP
#     here, because Open MPI's shared-memory transport needs files larger than the limit.
#  3. train.out_dir under /dev/full (not a directory): the run stops before training, naming it.
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
ensure_common
ref=$common/reference-2

file_size() { stat -c %s "$1"; }
dir_bytes() { cat "$1"/* | wc -c; }

# Checkpoint STEP is complete and holds the reference run's tensors and state (config.yaml differs:
# it names the run's own out_dir).
expect_intact() { # RUN_DIR STEP WHAT
    local file
    has_done "$1" "$2" || fail "$3: step $2 lost its DONE"
    for file in params.tgat optim.tgat state.json; do
        cmp -s "$(ckpt_dir "$ref" "$2")/$file" "$(ckpt_dir "$1" "$2")/$file" || fail "$3: step $2's $file changed"
    done
}

expect_failed_write() { # RUN_DIR STEP FILE ERRNO_TEXT WHAT
    expect_rank_error "$1" 0 "I/O error: cannot write $(ckpt_dir "$1" "$2").tmp/$3: $4" "$5"
    expect_rank_error "$1" 1 "I/O error: checkpoint step $2 failed on rank 0" "$5"
    [ -d "$(ckpt_dir "$1" "$2")" ] && fail "$5: a step-$2 checkpoint exists after the failed write"
}

resume_after_failure() { # RUN_DIR FROM_STEP WHAT
    train 2 "$1" || fail "$3: the run after the failure failed (log: $1.log)"
    expect_log "$1.log" "resumed from $(ckpt_dir "$1" "$2") (step $2)" "$3"
    expect_final_equal "$1" "$ref" "$3"
}

# 1. the hook: everything of step 4 (its files, the rank's file list, DONE's temporary) fits, then
# half of step 8's params.tgat
run=$work/enospc
budget=$(($(dir_bytes "$(ckpt_dir "$ref" 4)") + 4096 + $(file_size "$(ckpt_dir "$ref" 8)/params.tgat") / 2))
TGA_FAULT_WRITE_AFTER_BYTES=$budget train 2 "$run" && fail "ENOSPC: the run succeeded although the disk was full"
expect_failed_write "$run" 8 params.tgat "No space left on device" "ENOSPC in step 8"
expect_intact "$run" 4 "ENOSPC in step 8"
note "ENOSPC after $budget bytes: $(grep -F "tga train:" "$(rank_log "$run" 0)")"
resume_after_failure "$run" 4 "resumed after ENOSPC"

# 2. a real file-size limit
run=$work/efbig
mkdir -p "$run/checkpoints"
cp -a "$(ckpt_dir "$ref" 4)" "$(ckpt_dir "$ref" 8)" "$run/checkpoints/"
params=$(file_size "$(ckpt_dir "$ref" 12)/params.tgat") optim=$(file_size "$(ckpt_dir "$ref" 12)/optim.tgat")
limit_kib=$(((params + optim) / 2 / 1024))
if [ $((limit_kib * 1024)) -le "$params" ] || [ $((limit_kib * 1024)) -ge "$optim" ]; then
    fail "no file-size limit separates params.tgat ($params bytes) from optim.tgat ($optim bytes)"
fi
# shellcheck disable=SC2016 # $0 and $@ belong to the inner shell
# shellcheck disable=SC2046
OMPI_MCA_btl=self,tcp timeout -k 5 120 mpirun -np 2 $(mpirun_options "$run") \
    bash -c 'ulimit -f "$0" && trap "" XFSZ && exec "$@"' "$limit_kib" "$tga" train --config "$config" \
    --set "data.train=$data" --set "train.out_dir=$run" >>"$run.log" 2>&1 &&
    fail "EFBIG: the run succeeded over the file-size limit"
expect_failed_write "$run" 12 optim.tgat "File too large" "EFBIG in step 12"
expect_intact "$run" 8 "EFBIG in step 12"
note "EFBIG at $limit_kib KiB: $(grep -F "tga train:" "$(rank_log "$run" 0)")"
resume_after_failure "$run" 8 "resumed after EFBIG"

# 3. no directory to write into
run=$work/dev-full
train 2 "$run" --set train.out_dir=/dev/full/run && fail "a run with train.out_dir under /dev/full succeeded"
expect_rank_error "$run" 0 "cannot create /dev/full/run" "out_dir under /dev/full"
grep -q "step 1/$STEPS" "$run.log" && fail "out_dir under /dev/full: training started"
note "out_dir under /dev/full: $(grep -F "tga train:" "$(rank_log "$run" 0)")"
pass "failed checkpoint writes named the file, stopped both ranks, and left the previous checkpoint verifying"
