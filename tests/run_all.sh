#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages), configures, builds and runs every
# test with ctest. Works on a fresh Debian 12 machine as root. Ends with ctest's summary line.
#   tests/run_all.sh [extra ctest arguments, e.g. -L unit]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tests/deps.sh
source "$root/tests/deps.sh"
tga_install_deps

build=${TGA_BUILD_DIR:-$root/build}
mkdir -p "$build"
python=$(tga_python_env "$build/pyenv")
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTGA_PYTHON="$python" ${TGA_CMAKE_ARGS:-}
cmake --build "$build" -j "$(nproc)"

# MPI as root, oversubscribed, loopback only (ENV.md); OpenBLAS core type is left as the machine has it.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo
export NCCL_SOCKET_IFNAME=lo
export TGA_ASSETS=${TGA_ASSETS:-$root/../shared/assets}
cd "$build"
ctest --output-on-failure --no-tests=error -j 2 "$@"
