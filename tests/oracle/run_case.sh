#!/usr/bin/env bash
# One oracle case: write fresh inputs (make_case.py), run the C driver, compare with the PyTorch
# reference (compare.py). Usage: run_case.sh DRIVER WORKDIR [--recompute] -- MAKE_CASE_ARGS...
set -euo pipefail
driver=$1 work=$2
shift 2
driver_flags=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do driver_flags+=("$1"); shift; done
[ $# -gt 0 ] && shift
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work" && mkdir -p "$work"
python=${TGA_PYTHON:-/usr/bin/python3}
"$python" "$here/make_case.py" --out "$work" "$@"
"$driver" "$work" "${driver_flags[@]}"
"$python" "$here/compare.py" "$work"
