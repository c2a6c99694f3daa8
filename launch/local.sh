#!/usr/bin/env bash
# Runs tga train on this machine with NPROC ranks (mpirun as root, oversubscribed, loopback only),
# one OpenMP thread budget per rank when ranks share cores.
#   launch/local.sh NPROC CONFIG [--set section.key=value ...] [--resume auto|none] [--fresh]
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: launch/local.sh NPROC CONFIG [tga train options]" >&2
    exit 2
fi
nproc=$1 config=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
tga=${TGA_BIN:-$root/build/tga}
[ -x "$tga" ] || { echo "launch/local.sh: $tga not found: build first (cmake -S . -B build && cmake --build build)" >&2; exit 2; }
cores=$(nproc)
threads=$(( cores / nproc )); [ "$threads" -ge 1 ] || threads=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo
export NCCL_SOCKET_IFNAME=lo
exec mpirun -np "$nproc" --bind-to none -x OMP_NUM_THREADS="$threads" "$tga" train --config "$config" "$@"
