#!/usr/bin/env bash
# Restarts a failed training job from its newest complete checkpoint, up to N times; stops for
# good on a configuration or usage error (exit code 2), which a restart cannot fix.
#   launch/supervise.sh N COMMAND...     e.g. launch/supervise.sh 3 launch/local.sh 2 configs/tiny.yaml
# The command must resume by itself (tga train does: --resume auto is the default).
set -uo pipefail
if [ $# -lt 2 ]; then
    echo "usage: launch/supervise.sh MAX_RESTARTS COMMAND..." >&2
    exit 2
fi
max=$1
shift
attempt=0
while :; do
    "$@"
    rc=$?
    [ "$rc" -eq 0 ] && { echo "supervise: done after $attempt restart(s)"; exit 0; }
    if [ "$rc" -eq 2 ]; then
        echo "supervise: configuration or usage error (exit 2): not restarting" >&2
        exit 2
    fi
    if [ "$attempt" -ge "$max" ]; then
        echo "supervise: failed with exit $rc after $attempt restart(s); giving up" >&2
        exit "$rc"
    fi
    attempt=$((attempt + 1))
    # a restart resumes: drop --fresh, which would otherwise start over on every restart
    args=()
    for a in "$@"; do [ "$a" = "--fresh" ] || args+=("$a"); done
    set -- "${args[@]}"
    echo "supervise: exit $rc; restart $attempt of $max from the newest complete checkpoint" >&2
    sleep "${TGA_SUPERVISE_DELAY:-1}"
done
