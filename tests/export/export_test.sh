#!/usr/bin/env bash
# `tga export` end to end: small runs written by make_run the way `tga train` writes them, exported in
# every form and read back by export_check.py; then the command's usage errors.
#   export_test.sh TGA MAKE_RUN WORK_DIR        (TGA_PYTHON: python with safetensors, torch, numpy, yaml)
set -uo pipefail
tga=$1 make_run=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
python=${TGA_PYTHON:-/usr/bin/python3}
failed=0

rm -rf "$work" && mkdir -p "$work" || exit 1
# a tiny decoder; the runs below change what each case is about
tiny=(--set model.dim=32 --set model.n_layers=3 --set model.n_heads=4 --set model.n_kv_heads=4
      --set model.ffn_dim=40 --set model.vocab_size=50 --set model.init_std=0.1 --set model.max_seq_len=64
      --set data.max_len=64 --set projector.vision_dim=12)

step() { # step DESCRIPTION COMMAND...: runs it, counts a failure
    local what=$1
    shift
    if ! "$@" >"$work/last.log" 2>&1; then
        cat "$work/last.log"
        echo "FAIL: $what"
        failed=$((failed + 1))
        return 1
    fi
    grep -E "^(FAIL|export_check|tga export|  )" "$work/last.log"
    return 0
}

check() { # check RUN DUMP EXPORT export_check.py-options...
    step "export_check $3" "$python" "$here/export_check.py" --run "$1" --dump "$2" --export "$3" "${@:4}"
}

usage_error() { # usage_error DESCRIPTION EXPECTED-MESSAGE tga-arguments...: must exit 2 with the message
    local what=$1 message=$2
    shift 2
    "$tga" export "$@" >"$work/err.log" 2>&1
    local rc=$?
    if [ "$rc" -ne 2 ] || ! grep -qF -- "$message" "$work/err.log"; then
        cat "$work/err.log"
        echo "FAIL: $what: exit $rc (expected 2 and '$message')"
        failed=$((failed + 1))
    else
        echo "ok    $what: $(tail -n 1 "$work/err.log")"
    fi
}

# lm: the decoder alone, untied, MHA. auto = the model; a shard size small enough for many shards.
step "make_run lm" "$make_run" "$work/lm" "$work/lm.dump" "${tiny[@]}" --set train.trainable=lm --set train.seed=11 \
    --set tga.mode=off
step "export lm" "$tga" export --run "$work/lm" --out "$work/lm.model" --shard-size 10KB
check "$work/lm" "$work/lm.dump" "$work/lm.model" --parts model --shards multi

# stage 1 on the lm run: its checkpoint holds only the projector; the decoder comes from the chain
# (and this run's own seed draws a different random decoder, which must not show).
step "make_run s1" "$make_run" "$work/s1" "$work/s1.dump" "${tiny[@]}" --set train.trainable=stage1 \
    --set train.seed=12 --set train.init_from="$work/lm"
step "export s1" "$tga" export --run "$work/s1" --out "$work/s1.projector"
check "$work/s1" "$work/s1.dump" "$work/s1.projector" --parts projector
step "export s1 model" "$tga" export --run "$work/s1/checkpoints/step-00000007" --what model --out "$work/s1.model"
check "$work/s1" "$work/s1.dump" "$work/s1.model" --parts model,projector

# stage 1 from the lm run's export, a Hugging Face directory (sharded, with its index): train.init_from
# reads the decoder by HF names, and it must be the lm run's decoder exactly; the run's own export
# finds the decoder through its base, the directory.
step "make_run s1hf" "$make_run" "$work/s1hf" "$work/s1hf.dump" "${tiny[@]}" --set train.trainable=stage1 \
    --set train.seed=15 --set train.init_from="$work/lm.model"
step "s1hf decoder from the HF directory" "$python" - "$work/lm.dump" "$work/s1hf.dump" <<'PY'
import glob, os, sys
import numpy as np
lm, hf = sys.argv[1], sys.argv[2]
names = [os.path.basename(p) for p in glob.glob(lm + "/param.*.npy") if "projector" not in p]
same = [n for n in names if np.array_equal(np.load(f"{lm}/{n}"), np.load(f"{hf}/{n}"))]
print(f"  decoder loaded from the HF export: {len(same)} of {len(names)} tensors equal the lm run's")
sys.exit(0 if names and len(same) == len(names) else 1)
PY
# ... and the run's checkpoint names that directory as its base, which export then loads again
step "export s1hf model" "$tga" export --run "$work/s1hf" --what model --out "$work/s1hf.model"
check "$work/s1hf" "$work/s1hf.dump" "$work/s1hf.model" --parts model,projector

# stage 1 on a random-init base (reproduced from train.seed), GQA, a linear projector, bos/eos from
# a tokenizer.
printf '<unk>\nhello\n<s>\nworld\n</s>\n' >"$work/words.txt"
step "make_run s1rand" "$make_run" "$work/s1rand" "$work/s1rand.dump" "${tiny[@]}" --set train.trainable=stage1 \
    --set train.seed=13 --set model.n_kv_heads=2 --set projector.type=linear
step "export s1rand" "$tga" export --run "$work/s1rand" --what model --tokenizer "$work/words.txt" \
    --out "$work/s1rand.model"
check "$work/s1rand" "$work/s1rand.dump" "$work/s1rand.model" --parts model,projector --bos 2 --eos 4

# stage 2: everything trained; tied embeddings, GQA, head_dim * n_heads != dim; Mistral; f32 in one
# file and bf16 in shards.
s2=(--set train.trainable=stage2 --set train.seed=14 --set model.tie_embeddings=true --set model.dim=48
    --set model.head_dim=16 --set model.n_kv_heads=2)
step "make_run s2" "$make_run" "$work/s2" "$work/s2.dump" "${tiny[@]}" "${s2[@]}"
step "export s2 f32" "$tga" export --run "$work/s2" --arch mistral --out "$work/s2.f32"
check "$work/s2" "$work/s2.dump" "$work/s2.f32" --parts model,projector --arch mistral
step "export s2 bf16" "$tga" export --run "$work/s2" --arch mistral --dtype bf16 --shard-size 0.012MB \
    --out "$work/s2.bf16"
check "$work/s2" "$work/s2.dump" "$work/s2.bf16" --parts model,projector --arch mistral --dtype bf16 --shards multi

usage_error "an lm run has no trained projector" "never trained" --run "$work/lm" --what projector --out "$work/x1"
usage_error "--out must be new or empty" "is not empty" --run "$work/lm" --out "$work/lm.model"
usage_error "--dtype" "expected f32 or bf16" --run "$work/lm" --dtype f16 --out "$work/x2"
usage_error "--shard-size" "expected a size" --run "$work/lm" --shard-size 2XB --out "$work/x3"
usage_error "--what" "expected auto, projector or model" --run "$work/lm" --what all --out "$work/x4"
usage_error "--out is required" "needs --out" --run "$work/lm"
usage_error "--run must hold a checkpoint" "no complete checkpoint" --run "$work" --out "$work/x5"
for x in x1 x2 x3 x4 x5; do
    [ ! -e "$work/$x" ] || { echo "FAIL: a failed export left $work/$x behind"; failed=$((failed + 1)); }
done

if [ "$failed" -eq 0 ]; then
    echo "PASS: tga export ($work)"
else
    echo "FAIL: tga export: $failed failure(s)"
    exit 1
fi
