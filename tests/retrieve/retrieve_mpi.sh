#!/usr/bin/env bash
# `tga retrieve` end to end: a random corpus and records built with numpy, retrieval with 1 rank
# (no mpirun) and with 2 and 3 ranks (mpirun): the outputs must be byte-identical, and equal the
# brute-force answer computed here in numpy (cosine in float64, own caption excluded after trimming,
# ties to the lower corpus row), with every other field of every record unchanged; for JSON array
# and JSONL records. Then bad inputs: each must fail with exit code 1 or 2 and a message naming the
# file, also when only one rank's shard is bad.
#   tests/retrieve/retrieve_mpi.sh TGA_BINARY     (env: TGA_PYTHON, default /usr/bin/python3)
set -euo pipefail
tga=${1:?usage: retrieve_mpi.sh TGA_BINARY}
python=${TGA_PYTHON:-/usr/bin/python3}
work=$(mktemp -d /tmp/tga_retrieve_XXXXXX)
trap 'rm -rf "$work"' EXIT
mpi=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader --mca oob_tcp_if_include lo)
failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

# ---- data: captions that reappear in the corpus (with extra white space, several times), corpus
# rows close to the image embeddings of their captions' records (so excluding them matters), exact
# duplicate rows under different texts (exact ties), and records with fields to preserve.
"$python" - "$work" <<'EOF'
import json, sys
import numpy as np

work = sys.argv[1]
rng = np.random.default_rng(7)
N, M, D = 120, 700, 24
caption_pool = [f"a photo of thing {i}" for i in range(90)]
captions = [caption_pool[rng.integers(len(caption_pool))] for _ in range(N)]
queries = rng.standard_normal((N, D)).astype(np.float32)
corpus = rng.standard_normal((M, D)).astype(np.float32)
texts = [f"corpus text {j}" for j in range(M)]
for i in range(N):
    # two or three corpus rows hold record i's caption, padded differently, next to its image
    for copy in range(2 + i % 2):
        j = int(rng.integers(M))
        texts[j] = [" ", "\t", ""][copy] + captions[i] + ["", "  ", "\n"][copy]
        corpus[j] = queries[i] + 0.05 * rng.standard_normal(D).astype(np.float32)
for j in range(0, M - 1, 37):  # exact ties under different texts
    corpus[j + 1] = corpus[j]
np.save(f"{work}/queries.npy", queries)
np.save(f"{work}/corpus.npy", corpus)
with open(f"{work}/texts.jsonl", "w") as f:
    for j, t in enumerate(texts):
        f.write(json.dumps({"id": j, "caption": t, "source": "test"}) + "\n")
records = [{"id": f"r{i}", "image": f"img/{i}.jpg",
            "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "ünïcode ✓"}],
            "image_caption": captions[i], "score": i * 0.5, "nested": {"z": 1, "a": [1, 2, {"b": None}]}}
           for i in range(N)]
records[3]["retrieved_caption"] = "stale"
with open(f"{work}/records.json", "w") as f:
    json.dump(records, f, indent=1)
with open(f"{work}/records.jsonl", "w") as f:
    for r in records:
        f.write(json.dumps(r) + "\n")
EOF

check_answer() { # records output k
    "$python" - "$work" "$1" "$2" "$3" <<'EOF'
import json, sys
import numpy as np

work, records_path, out_path, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def load(path):
    text = open(path, encoding="utf-8").read()
    return json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines()]
records, out = load(records_path), load(out_path)
q = np.load(f"{work}/queries.npy").astype(np.float64)
c = np.load(f"{work}/corpus.npy").astype(np.float64)
texts = [json.loads(l)["caption"] for l in open(f"{work}/texts.jsonl", encoding="utf-8")]
q /= np.linalg.norm(q, axis=1, keepdims=True)
c /= np.linalg.norm(c, axis=1, keepdims=True)
scores = q @ c.T
strip = lambda s: s.strip(" \t\n\r\f\v")
bad = 0
assert len(out) == len(records), f"{len(out)} records written, {len(records)} read"
for i, (rec, got) in enumerate(zip(records, out)):
    allowed = [j for j in range(len(texts)) if strip(texts[j]) != strip(rec["image_caption"])]
    ranked = sorted(allowed, key=lambda j: (-scores[i, j], j))[:k]
    gaps = np.abs(np.diff(scores[i, sorted(allowed, key=lambda j: (-scores[i, j], j))[:k + 1]]))
    assert np.all((gaps == 0) | (gaps > 1e-5)), f"record {i}: near-tie in the test data; change the seed"
    want = [texts[j] for j in ranked]
    kept = {key: v for key, v in rec.items() if key not in ("retrieved_caption", "retrieved_captions")}
    got_kept = {key: v for key, v in got.items() if key not in ("retrieved_caption", "retrieved_captions")}
    if list(got_kept.items()) != list(kept.items()):
        print(f"record {i}: other fields changed: {got_kept} vs {kept}"); bad += 1
    if got.get("retrieved_caption") != want[0]:
        print(f"record {i}: retrieved_caption {got.get('retrieved_caption')!r}, expected {want[0]!r}"); bad += 1
    if k > 1 and got.get("retrieved_captions") != want:
        print(f"record {i}: retrieved_captions {got.get('retrieved_captions')}, expected {want}"); bad += 1
    if k == 1 and "retrieved_captions" in got:
        print(f"record {i}: retrieved_captions written with k = 1"); bad += 1
sys.exit(1 if bad else 0)
EOF
}

run_retrieve() { # ranks records out k
    local ranks=$1 records=$2 out=$3 k=$4
    local args=(retrieve --queries "$work/queries.npy" --corpus "$work/corpus.npy" --texts "$work/texts.jsonl"
        --text-key caption --records "$records" --out "$out" --k "$k" --threads 1)
    if [ "$ranks" = 1 ]; then
        "$tga" "${args[@]}"
    else
        timeout 120 "${mpi[@]}" -np "$ranks" "$tga" "${args[@]}"
    fi
}

for records in records.json records.jsonl; do
    for k in 1 4; do
        for ranks in 1 2 3; do
            run_retrieve "$ranks" "$work/$records" "$work/out.$ranks.$records" "$k" 2>"$work/log" ||
                { fail "$records k=$k ranks=$ranks: exit $?: $(tail -3 "$work/log")"; continue; }
        done
        cmp -s "$work/out.1.$records" "$work/out.2.$records" || fail "$records k=$k: 1 and 2 ranks differ"
        cmp -s "$work/out.1.$records" "$work/out.3.$records" || fail "$records k=$k: 1 and 3 ranks differ"
        check_answer "$work/$records" "$work/out.2.$records" "$k" || fail "$records k=$k: wrong answer"
        [ ! -e "$work/out.2.$records.tmp" ] || fail "$records: temporary file left behind"
    done
done
head -c1 "$work/out.1.records.json" | grep -q '\[' || fail "JSON array records did not give a JSON array"

# ---- bad inputs: exit code, the file in the message, no output, no hang (timeout)
expect_error() { # name expected-exit message-pattern ranks [tga arguments...]
    local name=$1 code=$2 pattern=$3 ranks=$4
    shift 4
    rm -f "$work/bad.out"
    local rc=0
    if [ "$ranks" = 1 ]; then
        "$tga" retrieve "$@" >"$work/log" 2>&1 || rc=$?
    else
        timeout 120 "${mpi[@]}" -np "$ranks" "$tga" retrieve "$@" >"$work/log" 2>&1 || rc=$?
    fi
    if [ "$ranks" = 1 ] && [ "$rc" != "$code" ]; then fail "$name: exit $rc, expected $code: $(cat "$work/log")"; fi
    if [ "$rc" = 0 ] || [ "$rc" = 124 ]; then fail "$name: exit $rc with $ranks ranks"; fi
    grep -q -- "$pattern" "$work/log" || fail "$name: message does not match '$pattern': $(cat "$work/log")"
    [ ! -e "$work/bad.out" ] || fail "$name: an output was written"
}
"$python" - "$work" <<'EOF'
import json, sys
import numpy as np
work = sys.argv[1]
np.save(f"{work}/queries_short.npy", np.load(f"{work}/queries.npy")[:-1])
np.save(f"{work}/queries_wide.npy", np.zeros((120, 25), np.float32))
corpus = np.load(f"{work}/corpus.npy")
corpus[-1, 3] = np.nan  # in the last rank's shard only
np.save(f"{work}/corpus_nan.npy", corpus)
lines = open(f"{work}/texts.jsonl").read().splitlines()
open(f"{work}/texts_bad.jsonl", "w").write("\n".join(lines[:650] + ["[1, 2]"] + lines[651:]) + "\n")
open(f"{work}/texts_short.jsonl", "w").write("\n".join(lines[:-1]) + "\n")
records = json.load(open(f"{work}/records.json"))
json.dump([7] + records[1:], open(f"{work}/records_number.json", "w"))
open(f"{work}/texts_same.jsonl", "w").write(
    "".join(json.dumps({"caption": records[0]["image_caption"] + " "}) + "\n" for _ in lines))
del records[5]["image_caption"]
open(f"{work}/records_bad.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in records))
EOF
q=(--queries "$work/queries.npy")
c=(--corpus "$work/corpus.npy")
t=(--texts "$work/texts.jsonl" --text-key caption)
r=(--records "$work/records.json")
o=(--out "$work/bad.out")
expect_error "missing option" 2 "--corpus is required" 1 "${q[@]}" "${t[@]}" "${r[@]}" "${o[@]}"
expect_error "bad --k" 2 "--k 0" 1 "${q[@]}" "${c[@]}" "${t[@]}" "${r[@]}" "${o[@]}" --k 0
expect_error "row count" 1 "queries_short.npy has 119 rows" 1 --queries "$work/queries_short.npy" "${c[@]}" "${t[@]}" "${r[@]}" "${o[@]}"
expect_error "dimension" 1 "queries_wide.npy has dimension 25" 1 --queries "$work/queries_wide.npy" "${c[@]}" "${t[@]}" "${r[@]}" "${o[@]}"
expect_error "texts line" 1 "texts_bad.jsonl:651: corpus row 650: expected a JSON object" 1 "${q[@]}" "${c[@]}" --texts "$work/texts_bad.jsonl" --text-key caption "${r[@]}" "${o[@]}"
expect_error "texts count" 1 "texts_short.jsonl has 699 lines" 1 "${q[@]}" "${c[@]}" --texts "$work/texts_short.jsonl" --text-key caption "${r[@]}" "${o[@]}"
expect_error "text key" 1 "texts.jsonl:1: corpus row 0: no field \"text\"" 1 "${q[@]}" "${c[@]}" --texts "$work/texts.jsonl" "${r[@]}" "${o[@]}"
expect_error "caption" 1 "records_bad.jsonl:6: record 5: no field \"image_caption\"" 1 "${q[@]}" "${c[@]}" "${t[@]}" --records "$work/records_bad.jsonl" "${o[@]}"
expect_error "record type" 1 "records_number.json:1: record 0: expected a JSON object" 1 "${q[@]}" "${c[@]}" "${t[@]}" --records "$work/records_number.json" "${o[@]}"
expect_error "nothing left" 1 "record 0: every text of .*texts_same.jsonl equals its image_caption" 1 "${q[@]}" "${c[@]}" --texts "$work/texts_same.jsonl" --text-key caption "${r[@]}" "${o[@]}"
expect_error "npy" 1 "corpus_nan.npy: row 699 holds a NaN" 1 "${q[@]}" --corpus "$work/corpus_nan.npy" "${t[@]}" "${r[@]}" "${o[@]}"
expect_error "npy, 2 ranks" 1 "corpus_nan.npy: row 699 holds a NaN" 2 "${q[@]}" --corpus "$work/corpus_nan.npy" "${t[@]}" "${r[@]}" "${o[@]}"
expect_error "records, 2 ranks" 1 "records_bad.jsonl:6: record 5" 2 "${q[@]}" "${c[@]}" "${t[@]}" --records "$work/records_bad.jsonl" "${o[@]}"
expect_error "texts line, 2 ranks" 1 "texts_bad.jsonl:651: corpus row 650" 2 "${q[@]}" "${c[@]}" --texts "$work/texts_bad.jsonl" --text-key caption "${r[@]}" "${o[@]}"

if [ "$failures" -gt 0 ]; then
    echo "FAIL retrieve_mpi ($failures failures)"
    exit 1
fi
echo "PASS retrieve_mpi"
