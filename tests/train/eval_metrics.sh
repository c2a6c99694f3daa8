#!/usr/bin/env bash
# Evaluation every N steps (train.eval_every 4 on a held-out set; the test uses the training
# shards): eval lines at steps 4, 8 and 12 in metrics.jsonl with a finite loss and the
# image-caption cosine of both aligned layers; the same numbers on 1 and 2 ranks (each rank
# evaluates its slice, the sums are added in rank order), and a loss that training lowered.
# shellcheck source=tests/train/lib.sh
source "$(dirname "$0")/lib.sh"
ensure_common

eval_lines() { grep -F '"kind":"eval"' "$1/metrics.jsonl"; } # RUN_DIR
for np in 1 2; do
    train "$np" "$work/eval-$np" --set "data.eval=$data" --set train.eval_every=4 ||
        fail "the $np-rank run with evaluation failed (log: $work/eval-$np.log)"
    steps=$(eval_lines "$work/eval-$np" | grep -o '"step":[0-9]*' | grep -o '[0-9]*' | tr '\n' ' ')
    [ "$steps" = "4 8 12 " ] || fail "$np rank(s): eval lines at steps '$steps', expected 4 8 12"
    eval_lines "$work/eval-$np" | grep -q '"image_caption_cos":\[{"layer":1,"cos":[-0-9.e]*},{"layer":2,"cos":' ||
        fail "$np rank(s): eval lines lack the cosine of layers 1 and 2: $(eval_lines "$work/eval-$np" | head -n 1)"
    expect_log "$work/eval-$np.log" "eval step 12 | loss" "$np rank(s)"
done
/usr/bin/python3 - "$work/eval-1/metrics.jsonl" "$work/eval-2/metrics.jsonl" <<'PY' || fail "eval metrics disagree"
import json, math, sys
runs = [[json.loads(l) for l in open(p) if '"kind":"eval"' in l] for p in sys.argv[1:]]
for a, b in zip(*runs):
    for x, y in [(a["loss"], b["loss"])] + [(c["cos"], d["cos"]) for c, d in zip(a["image_caption_cos"], b["image_caption_cos"])]:
        assert math.isfinite(x) and abs(x - y) <= 1e-6 * max(1.0, abs(x)), f"step {a['step']}: {x} (1 rank) vs {y} (2 ranks)"
first, last = runs[0][0]["loss"], runs[0][-1]["loss"]
assert last < first, f"eval loss did not go down: {first} at step 4, {last} at step 12"
print(f"eval loss {first:.4f} (step 4) -> {last:.4f} (step 12); equal on 1 and 2 ranks")
PY
pass "eval every 4 steps: steps 4, 8, 12 logged with loss and per-layer cosine, the same on 1 and 2 ranks"
