#!/usr/bin/env bash
# How much the demo's comparison moves with the alignment seed: on a finished demo's world, shards
# and pretrained LLM (launch/demo.sh first), trains the cross-entropy and TGA projectors again with
# train.seed = each SEED (the order of the data and the projector's init), evaluates them as the demo
# does, and prints each run's image DSR, text DSR, utility and mean cosine over the aligned layers,
# then the mean and spread per mode. Runs go to DEMO_DIR/seeds/.
#   tools/demo_seeds.sh DEMO_DIR SEED...          e.g. tools/demo_seeds.sh runs/demo 1 2 3
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: tools/demo_seeds.sh DEMO_DIR SEED..." >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
demo=$1
shift
tga=${TGA_BIN:-$root/build/tga}
world=$demo/world data=$demo/data
[ -n "$(ls "$demo"/lm/checkpoints/step-*/DONE 2>/dev/null)" ] ||
    { echo "demo_seeds: no finished demo LLM in $demo/lm (run launch/demo.sh first)" >&2; exit 2; }
steps=$(sed -n 's/^  steps: *//p' "$demo/align_tga/config.effective.yaml")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo
mpi=(mpirun -np 2 --bind-to none -x OMP_NUM_THREADS=1)
summaries=()
for seed in "$@"; do
    for mode in off intended; do
        run=$demo/seeds/align_${mode}_seed$seed
        mkdir -p "$(dirname "$run")"
        "${mpi[@]}" "$tga" train --config "$root/configs/demo/align.yaml" --set "train.out_dir=$run" \
            --set "train.steps=$steps" --set train.log_every=100 --set "train.seed=$seed" --set "tga.mode=$mode" \
            --set "data.train=$data/align" --set "train.init_from=$demo/lm" >"$run.stdout.txt" 2>"$run.log"
        "$tga" eval --run "$run" --records "$world/eval_image_dsr.jsonl" --records "$world/eval_text_dsr.jsonl" \
            --records "$world/eval_utility.jsonl" --features "$world/features.npy" \
            --feature-index "$world/features_index.txt" --tokenizer "$world/vocab.txt" --template mistral_instruct \
            --out "$run.eval.json" >/dev/null 2>>"$run.log"
        summaries+=("$run.eval.json")
    done
done
/usr/bin/python3 - "$root/configs/demo/align.yaml" "${summaries[@]}" <<'PY'
import json, os, statistics, sys
rows = {}
for path in sys.argv[2:]:
    s = json.load(open(path))
    sets = {os.path.basename(x["records_file"]).split(".")[0]: x for x in s["sets"]}
    name = os.path.basename(s["run"].rstrip("/"))
    mode = "TGA" if "intended" in name else "CE only"
    cos = sets["eval_image_dsr"]["probe"]["cosine_by_layer"]
    row = (sets["eval_image_dsr"]["refusal_rate"], sets["eval_text_dsr"]["refusal_rate"],
           sets["eval_utility"]["accuracy"], sum(cos[1:4]) / 3)
    rows.setdefault(mode, []).append((name, row))
print(f"{'run':<26} {'image DSR':>10} {'text DSR':>9} {'utility':>8} {'cos l1-3':>9}")
for mode, runs in rows.items():
    for name, r in runs:
        print(f"{name:<26} {r[0]:>10.3f} {r[1]:>9.3f} {r[2]:>8.3f} {r[3]:>9.3f}")
for mode, runs in rows.items():
    cols = list(zip(*[r for _, r in runs]))
    spread = lambda c: statistics.stdev(c) if len(c) > 1 else 0.0
    print(f"{mode + ' mean (sd)':<26} " + " ".join(f"{statistics.mean(c):.3f} ({spread(c):.3f})" for c in cols))
PY
