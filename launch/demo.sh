#!/usr/bin/env bash
# The main job on the embedded default (README's first command). On the synthetic world
# (`tga prep --synthetic`), under mpirun -np 2 on this machine's CPUs:
#   (i)   pretrain a tiny LLM on text: it learns to answer, and to refuse harmful requests in text;
#   (ii)  align a projector with cross-entropy only (the LLaVA baseline, stage 1: decoder frozen);
#   (iii) align one with TGA (cross-entropy + the alignment terms);
# then print, for both: image DSR (refusals to harmful requests about images), text DSR (the same
# requests in text), accuracy on benign image questions, and the per-layer cosine between image and
# caption hidden states. Checkpoints are written along the way; running the command again resumes
# (finished steps are skipped) unless told to start fresh.
#   launch/demo.sh [--quick] [--fresh] [--np N] [--out DIR]
# TGA_BIN=path/to/tga skips installing and building (the test suite runs the quick demo that way).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
quick=0 fresh=0 np=2 out=
while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1 ;;
    --fresh) fresh=1 ;;
    --np) np=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "usage: launch/demo.sh [--quick] [--fresh] [--np N] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "${TGA_BIN:-}" ]; then
    tga=$TGA_BIN
else
    # shellcheck source=tests/deps.sh
    source "$root/tests/deps.sh"
    tga_install_deps
    build=${TGA_BUILD_DIR:-$root/build}
    cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" -j "$(nproc)" --target tga
    tga="$build/tga"
fi
cd "$root"

if [ "$quick" = 1 ]; then
    out=${out:-runs/demo-quick} world_args=(--pretrain 3000 --align 800 --eval 40) lm_steps=250 align_steps=120
else
    out=${out:-runs/demo} world_args=(--pretrain 8000 --align 2000 --eval 100) lm_steps=1000 align_steps=500
fi
[ "$fresh" = 1 ] && rm -rf "$out"
mkdir -p "$out"
world=$out/world data=$out/data
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo
mpi=(mpirun -np "$np" --bind-to none -x OMP_NUM_THREADS=1)
"$tga" --version

echo "== data: the synthetic world, retrieval, shards"
[ -f "$world/world.json" ] || "$tga" prep --synthetic "$world" "${world_args[@]}"
[ -f "$world/align_retrieved.jsonl" ] || "${mpi[@]}" "$tga" retrieve --queries "$world/retrieval_queries.npy" \
    --corpus "$world/retrieval_corpus.npy" --texts "$world/retrieval_corpus.jsonl" --records "$world/align.jsonl" \
    --out "$world/align_retrieved.jsonl" --k 1
common=(--tokenizer "$world/vocab.txt" --template mistral_instruct --max-len 96 --quiet)
[ -f "$data/pretrain/prep.json" ] || "${mpi[@]}" "$tga" prep --records "$world/pretrain.jsonl" --out "$data/pretrain" "${common[@]}"
[ -f "$data/align/prep.json" ] || "${mpi[@]}" "$tga" prep --records "$world/align_retrieved.jsonl" --features "$world/features.npy" \
    --feature-index "$world/features_index.txt" --feature-dtype f32 --out "$data/align" "${common[@]}"

train() { # config out_dir steps [--set ...]
    local config=$1 dir=$2 steps=$3
    shift 3
    # the effective config goes to stdout (and into the run directory); the progress log is stderr
    "${mpi[@]}" "$tga" train --config "$config" --set "train.out_dir=$dir" --set "train.steps=$steps" \
        --set train.log_every=50 "$@" >"$dir.stdout.txt"
}
echo "== (i) pretrain the LLM on text (lm)"
train configs/demo/lm.yaml "$out/lm" "$lm_steps" --set "data.train=$data/pretrain"
echo "== (ii) align a projector with cross-entropy only (the LLaVA baseline)"
train configs/demo/align.yaml "$out/align_ce" "$align_steps" --set tga.mode=off --set "data.train=$data/align" \
    --set "train.init_from=$out/lm"
echo "== (iii) align a projector with TGA"
train configs/demo/align.yaml "$out/align_tga" "$align_steps" --set tga.mode=intended --set "data.train=$data/align" \
    --set "train.init_from=$out/lm"

echo "== evaluation (greedy decoding)"
for run in align_ce align_tga; do
    "$tga" eval --run "$out/$run" --records "$world/eval_image_dsr.jsonl" --records "$world/eval_text_dsr.jsonl" \
        --records "$world/eval_utility.jsonl" --features "$world/features.npy" --feature-index "$world/features_index.txt" \
        --tokenizer "$world/vocab.txt" --template mistral_instruct --out "$out/eval_$run.json" >/dev/null
done
/usr/bin/python3 tools/demo_table.py "$out/eval_align_ce.json" "$out/eval_align_tga.json"
