#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds tga, prints the memory plan
# of the tiny default model and of the 7B stage-1 recipe, and runs training steps of the tiny model
# (stage 1: projector trained with cross-entropy + the TGA alignment terms) on the CPU.
#   launch/demo.sh [--threads N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tests/deps.sh
source "$root/tests/deps.sh"
tga_install_deps
build=${TGA_BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc)" --target tga
tga="$build/tga"
"$tga" --version
echo "== memory plan: the embedded default (configs/tiny.yaml)"
"$tga" plan --config "$root/configs/tiny.yaml"
echo "== memory plan: Mistral-7B stage 1 with CLIP ViT-L/14-336 features (configs/mistral7b_stage1.yaml)"
"$tga" plan --config "$root/configs/mistral7b_stage1.yaml"
echo "== training steps of the embedded default (synthetic batch, stage 1, TGA intended)"
"$tga" bench step --config "$root/configs/tiny.yaml" --steps 20 --warmup 2 "$@"
