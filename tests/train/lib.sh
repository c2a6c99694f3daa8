# Shared by the tests/train/*.sh scripts (sourced, not run): arguments, MPI settings, the common
# data and reference runs, and helpers that start, pause, interrupt and check `tga train` jobs.
#
# Every script takes the same arguments:
#   SCRIPT TGA MAKE_TEST_SHARDS COMPARE_CHECKPOINTS WORK_ROOT
# WORK_ROOT/common holds the shards and the uninterrupted reference runs (prepare.sh rebuilds it;
# any other script builds it when it is missing); WORK_ROOT/<script name> is the script's own
# scratch directory, emptied at its start.
#
# Pausing a job at a chosen point: a tiny step takes milliseconds, far too short to hit "after the
# step-4 checkpoint" or "while step 8 is being written" with a sleep. advance_until runs the ranks in
# slices of a few milliseconds (SIGCONT, wait, SIGSTOP) and tests its condition while every rank is
# stopped, so a state the job passes through is seen and held. Stopping changes when a rank runs,
# never what it computes.
set -uo pipefail

if [ $# -ne 4 ]; then
    echo "usage: $(basename "$0") TGA MAKE_TEST_SHARDS COMPARE_CHECKPOINTS WORK_ROOT" >&2
    exit 2
fi
# shellcheck disable=SC2034 # some of these are used only by the scripts that source this file
tga=$1 make_test_shards=$2 compare_checkpoints=$3 work_root=$4
test_name=$(basename "$0" .sh)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # used by the scripts
repo=$(cd "$here/../.." && pwd)
config=$here/tiny.yaml
common=$work_root/common
work=$work_root/$test_name
data=$common/data

# MPI as root, oversubscribed, loopback only; one OpenMP thread per rank (tiny.yaml says so too).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader} OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl_tcp_if_include=lo
export OMP_NUM_THREADS=1

readonly STEPS=12 # tiny.yaml's train.steps: the final checkpoint is step-00000012
started_pids=()   # what this script started in the background (cleaned up at exit)

note() { echo "[$test_name] $*"; }
fail() {
    echo "FAIL $test_name: $*"
    exit 1
}
pass() { echo "PASS $test_name: $*"; }

ckpt_dir() { printf '%s/checkpoints/step-%08d' "$1" "$2"; } # RUN_DIR STEP
has_done() { [ -f "$(ckpt_dir "$1" "$2")/DONE" ]; }              # RUN_DIR STEP

flip_byte() { # FILE OFFSET: xor the byte at OFFSET with 1
    local byte
    byte=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    [ -n "$byte" ] || fail "flip_byte: $1 has no byte $2"
    # shellcheck disable=SC2059
    printf "$(printf '\\%03o' $((byte ^ 1)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# ---- processes ------------------------------------------------------------------------------------

children() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' '; }

descendants() { # PID: every process below it, depth first
    local child
    for child in $(children "$1"); do
        echo "$child"
        descendants "$child"
    done
}

# The pid of rank RANK of the mpirun below (or equal to) JOB_PID, or nothing yet.
rank_pid() { # JOB_PID RANK
    local pid
    for pid in "$1" $(descendants "$1"); do
        if tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

rank_pids() { # JOB_PID NP: all NP rank pids, or fails while some are not started yet
    local r pid pids=()
    for ((r = 0; r < $2; r++)); do
        pid=$(rank_pid "$1" "$r") || return 1
        pids+=("$pid")
    done
    echo "${pids[@]}"
}

alive() { kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]; }

# Kills what is left of the jobs this script started, stopped ranks included: the jobs, their
# descendants and the ranks advance_until saw (a rank outlives a killed mpirun). Only processes whose
# command line still names this script's work directory, in case a pid was reused.
cleanup() {
    local pid
    for pid in $(for job in "${started_pids[@]}"; do echo "$job"; descendants "$job"; done | sort -u); do
        tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "train.out_dir=$work/" || continue
        kill -CONT "$pid" 2>/dev/null
        kill -KILL "$pid" 2>/dev/null
    done
    return 0
}
trap cleanup EXIT

# A pipe nobody writes to: `read -t` on it is a sub-millisecond sleep without a fork.
exec {never_fd}<> <(:)
nap() { read -r -t "$1" -u "$never_fd" _; }

# Runs the ranks of JOB_PID in slices until CONDITION... succeeds, testing it while every rank is
# stopped. Returns 0 with every rank stopped (held[r] is the pid of rank r), 1 when the job ended
# first.
advance_until() { # JOB_PID NP CONDITION...
    local job=$1 np=$2 deadline=$((SECONDS + 120)) pids pid
    shift 2
    until pids=$(rank_pids "$job" "$np"); do
        alive "$job" || return 1
        [ "$SECONDS" -lt "$deadline" ] || fail "the ranks of job $job did not start"
        nap 0.005
    done
    read -ra held <<<"$pids"
    started_pids+=("${held[@]}")
    while :; do
        kill -STOP "${held[@]}" 2>/dev/null
        "$@" && return 0
        for pid in "${held[@]}"; do alive "$pid" || return 1; done
        [ "$SECONDS" -lt "$deadline" ] || fail "job $job did not reach: $*"
        kill -CONT "${held[@]}" 2>/dev/null
        nap 0.003
    done
}

resume_ranks() { kill -CONT "${held[@]}" 2>/dev/null; } # the ranks advance_until left stopped

# ---- runs -------------------------------------------------------------------------------------------

# mpirun's options for a run into RUN_DIR. Besides the merged log, each rank's output of the latest
# run goes to its own file (rank_log): main.c writes "[rank N] " and an error message in two
# writes, so in the merged output two ranks' error lines can interleave.
mpirun_options() { echo --bind-to none --output-filename "$1.ranks"; } # RUN_DIR
rank_log() { echo "$1.ranks/1/rank.$2/stderr"; }                         # RUN_DIR RANK

# tga train on NP ranks into RUN_DIR (merged log: RUN_DIR.log, appended); extra tga train arguments
# follow. Foreground; bounded by a 120 s timeout; returns tga's exit status.
train() { # NP RUN_DIR [args...]
    local np=$1 run=$2
    shift 2
    # shellcheck disable=SC2046
    timeout -k 5 120 mpirun -np "$np" $(mpirun_options "$run") "$tga" train --config "$config" \
        --set "data.train=$data" --set "train.out_dir=$run" "$@" >>"$run.log" 2>&1
}

# The same in the background; the mpirun pid is in $job.
train_bg() { # NP RUN_DIR [args...]
    local np=$1 run=$2
    shift 2
    # shellcheck disable=SC2046
    mpirun -np "$np" $(mpirun_options "$run") "$tga" train --config "$config" --set "data.train=$data" \
        --set "train.out_dir=$run" "$@" >>"$run.log" 2>&1 &
    job=$!
    started_pids+=("$job")
}

# Waits for JOB_PID to end within SECONDS; its exit status is in $job_rc.
wait_job() { # JOB_PID SECONDS
    local deadline=$((SECONDS + $2))
    while alive "$1"; do
        [ "$SECONDS" -lt "$deadline" ] || fail "job $1 still running after $2 s"
        nap 0.05
    done
    wait "$1"
    # shellcheck disable=SC2034 # read by the caller
    job_rc=$?
}

# ---- checks ----------------------------------------------------------------------------------------

# RUN_DIR's step-12 parameters and optimizer state are bitwise those of REFERENCE_DIR's.
expect_final_equal() { # RUN_DIR REFERENCE_DIR WHAT
    local file a b
    for file in params.tgat optim.tgat; do
        a=$(ckpt_dir "$1" "$STEPS")/$file b=$(ckpt_dir "$2" "$STEPS")/$file
        [ -f "$a" ] || fail "$3: $a is missing (log: $1.log)"
        cmp -s "$a" "$b" || {
            "$compare_checkpoints" "$a" "$b" 0 | tail -n 5
            fail "$3: $file differs from the uninterrupted run's ($b)"
        }
    done
    note "$3: final params.tgat and optim.tgat bitwise equal to the uninterrupted run"
}

# Two checkpoint files agree within TOLERANCE (compare_checkpoints: max|a - b| / max|a| per tensor);
# the verdict is noted, and the whole comparison printed before failing.
compare() { # FILE_A FILE_B TOLERANCE WHAT
    "$compare_checkpoints" "$1" "$2" "$3" >"$work/compare.txt"
    local rc=$?
    note "$4: $(tail -n 1 "$work/compare.txt")"
    [ "$rc" -eq 0 ] || {
        cat "$work/compare.txt"
        fail "$4: outside $3"
    }
}

expect_log() { # LOG_FILE FIXED_STRING WHAT
    grep -qF -- "$2" "$1" 2>/dev/null || {
        tail -n 20 "$1"
        fail "$3: '$2' is not in $1"
    }
}

# Rank RANK's error line of the latest run into RUN_DIR says MESSAGE.
expect_rank_error() { # RUN_DIR RANK MESSAGE WHAT
    grep -F "[rank $2] tga train:" "$(rank_log "$1" "$2")" 2>/dev/null | grep -qF -- "$3" || {
        tail -n 20 "$1.log"
        fail "$4: rank $2 did not say '$3' (its output: $(rank_log "$1" "$2"))"
    }
}

# No process of the job that wrote RUN_DIR is left (its command line names RUN_DIR) a few seconds
# after the job ended: mpirun may exit while the ranks it killed are still going.
expect_no_leftovers() { # RUN_DIR WHAT
    local left deadline=$((SECONDS + 5))
    while left=$(pgrep -f -- "train.out_dir=$1( |$)") && [ "$SECONDS" -lt "$deadline" ]; do nap 0.1; done
    [ -z "$left" ] || fail "$2: processes left behind: $(ps -o pid=,stat=,args= -p "$(echo "$left" | tr '\n' ',')")"
}

# ---- the common data and reference runs ------------------------------------------------------------

build_common() {
    rm -rf "$common"
    mkdir -p "$data"
    "$make_test_shards" "$data" 64 2 20240607 >/dev/null || fail "make_test_shards failed"
    local np
    for np in 1 2; do
        train "$np" "$common/reference-$np" --fresh || {
            tail -n 20 "$common/reference-$np.log"
            fail "the uninterrupted reference run on $np rank(s) failed"
        }
        has_done "$common/reference-$np" "$STEPS" || fail "reference-$np has no step-$STEPS checkpoint"
    done
}

ensure_common() {
    has_done "$common/reference-2" "$STEPS" || build_common
    rm -rf "$work"
    mkdir -p "$work"
}
