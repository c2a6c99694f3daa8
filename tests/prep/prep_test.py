#!/usr/bin/env python3
"""`tga prep` end to end (label `integration`).

Builds a small LLaVA-format dataset with numpy (records as JSON Lines and as a JSON array, per-image
.npy features in float16 and float32, a text-only record, a tox record whose image has no feature
file, a multi-image record, records that are bad, too long and cut at max_len), renders every sample
here from the llama_2 format string of TGA-METHOD.md §2 with a word-level vocabulary, and checks:
  - the shards read back (prep_shard_dump, the shard reader) hold exactly those samples: ids,
    labels, image spans, R and C spans, tox, features (float32 -> float16 as numpy rounds);
  - shards and prep.json are byte-identical with 1 rank and under `mpirun -np 2` and `-np 3`, from JSON Lines and
    from a JSON array, from per-image files and from one [N, P, Dv] array with an index, and with
    --config instead of flags;
  - without --skip-bad the bad record stops the prep (1 rank and 2 ranks) with a message naming the
    file, the line, the record, the field; no prep.json is left;
  - --tox-from-id; a P mismatch; progress output without a terminal;
  - a prep killed with SIGKILL in the middle of a larger input leaves no complete-looking shard
    (every *.tgas reads back whole, no prep.json), and a rerun finishes.

    prep_test.py TGA PREP_SHARD_DUMP
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

TGA, DUMP = sys.argv[1], sys.argv[2]
SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
P, DV, S, MAX_LEN = 4, 6, 3, 100
SYS = ("You are a helpful language and vision assistant. You are able to understand the visual content that the "
       "user provides, and assist the user with a variety of tasks using natural language.")
ENV = dict(os.environ, TGA_TEMPLATE_DIR=os.path.join(SOURCE, "configs", "templates"),
           OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
           OMPI_MCA_btl="self,vader", OMPI_MCA_oob_tcp_if_include="lo")
failures = []


def check(cond, message):
    if not cond:
        failures.append(message)
        print("FAIL:", message, flush=True)


# ---- the dataset --------------------------------------------------------------------------------

def turns(*pairs):
    out = []
    for q, a in pairs:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


def make_records():
    long_answer = " ".join(["the cat sits on the red sofa"] * 10)
    long_r = " ".join(["a dog runs in the park"] * 16)
    return [
        {"id": "r0", "image": "imgs/r0.jpg", "image_caption": "a small cat on a red sofa",
         "retrieved_caption": "a cat sleeping on a couch",
         "conversations": turns(("What is shown here?\n<image>", "A small cat on a red sofa ."),
                                ("What colour is the sofa ?", "It is red ."))},
        {"id": "r1", "image": "imgs/r1.png", "image_caption": "a dog in the park",
         "retrieved_caption": "a dog in the park",  # R == C: upstream halves it
         "conversations": turns(("<image>\nDescribe the image .", "A dog runs in the park ."))},
        {"id": "r2", "conversations": turns(("Tell me a joke", "No jokes here"))},
        {"id": "r3", "image": "imgs/missing.jpg", "tox": True, "image_caption": "a red sofa",
         "retrieved_caption": "a sofa", "conversations": turns(("<image>\nWhat is it ?", "It is a sofa ."))},
        {"id": "r4", "image": "imgs/r4.jpg", "image_caption": "a cat", "retrieved_caption": "a dog",
         "conversations": [{"from": "bot", "value": "<image>\nhi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "r5", "image": ["imgs/r5a.jpg", "imgs/r5b.jpg"], "image_caption": "two cats",
         "retrieved_caption": "two dogs", "conversations": turns(("<image> and <image> which is bigger ?", "The cat ."))},
        {"id": "sample-tox-6", "image": "imgs/r6.jpg", "image_caption": "a cat in the park",
         "retrieved_caption": "a park", "conversations": turns(("<image>\nWhere is it ?", "In the park ."))},
        {"id": "r7", "image": "imgs/r7.jpg", "image_caption": "a cat", "retrieved_caption": "a sofa",
         "conversations": turns(("<image>\nDescribe it .", long_answer))},
        {"id": "r8", "image": "imgs/r8.jpg", "image_caption": "a dog", "retrieved_caption": long_r,
         "conversations": turns(("<image>\nDescribe it .", "A dog ."))},
        {"id": "r9", "image": "imgs/r9.jpg", "image_caption": "a cat", "retrieved_caption": "a dog",
         "conversations": turns(("<image>\nWhat is it ?", "A cat ."))},
        {"id": "r10", "image": "imgs/r10.jpg", "image_caption": "a red cat", "retrieved_caption": "a red dog",
         "conversations": turns(("<image>\nWhat is it ?", "A red cat ."))},
        {"id": "r11", "image": "imgs/r11.jpg", "image_caption": "a sofa", "retrieved_caption": "a couch",
         "conversations": turns(("<image>\nWhat is it ?", "A sofa ."))},
    ]


BAD = {4: "conversations[0].from", 9: "image"}  # record -> the field its error names


def make_features(rng):
    """Per-image arrays as stored: float32 or float16, with float16 rounding corners in r0."""
    feats = {}
    for name in ["r0", "r1", "r4", "r5a", "r5b", "r6", "r7", "r8", "r9", "r10", "r11"]:
        dtype = np.float16 if name in ("r1", "r5b", "r6", "r10") else np.float32
        feats["imgs/%s.jpg" % name if name != "r1" else "imgs/r1.png"] = rng.standard_normal((P, DV)).astype(dtype)
    corners = np.array([6.1e-5, 5.9604645e-8, 2.9802322e-8, 65504.0, 65519.0, 1.00048828125, -3.0e-8, 0.1,
                        1.0009765625 + 2 ** -11, 2.0e-7], dtype=np.float32)
    feats["imgs/r0.jpg"].reshape(-1)[:corners.size] = corners
    feats["imgs/r9.jpg"][1, 2] = 1.0e5  # beyond float16: a bad record with float16 shards
    return feats


def write_dataset(root, records, feats):
    with open(os.path.join(root, "records.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(root, "records.json"), "w") as f:
        json.dump(records, f, indent=1)
    for name, array in feats.items():
        path = os.path.join(root, "features", os.path.splitext(name)[0] + ".npy")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, array if name != "imgs/r10.jpg" else array[None])  # [1, P, Dv] is accepted too
    names = sorted(feats)
    np.save(os.path.join(root, "all.npy"), np.stack([feats[n].astype(np.float32) for n in names]))
    with open(os.path.join(root, "all_index.txt"), "w") as f:
        for row, name in reversed(list(enumerate(names))):
            f.write("%s %d\n" % (name, row))


# ---- the reference rendering (llama_2, word level) ---------------------------------------------

class Sample:
    def __init__(self):
        self.parts = []  # (text or None for an image, supervised, mark)

    def text(self, t, sup=False, mark=None):
        self.parts.append((t, sup, mark))

    def image(self):
        self.parts.append((None, False, None))


def user_content(s, value, has_images):
    markers = value.count("<image>") if has_images else 0
    if markers == 1:  # LLaVA: the marker moves to the front, then "\n"
        s.image()
        s.text("\n" + value.replace("<image>", "").strip())
    else:
        chunks = value.split("<image>") if markers else [value]
        for i, chunk in enumerate(chunks):
            if i:
                s.image()
            s.text(chunk)


def render_llama_2(r, halve=True):
    """TGA-METHOD.md §2: <s>[INST] <<SYS>>\\n{SYS}\\n<</SYS>>\\n\\nRetrieved Text: {R}. <image>\\n{Q1} [/INST] {A1} </s>
    <s>[INST] {Q2} [/INST] {A2} </s>; text branch <s>[INST] <<SYS>>\\n{SYS}\\n<</SYS>>\\n\\n<image> {C}."""
    images = r.get("image")
    images = [images] if isinstance(images, str) else (images or [])
    conv = r["conversations"]
    s, cap = Sample(), Sample()
    head = "[INST] <<SYS>>\n%s\n<</SYS>>\n\n" % SYS
    s.text("<s>")
    if images:
        retrieved, caption = r["retrieved_caption"], r["image_caption"]
        if halve and retrieved == caption:
            retrieved = caption[:len(caption) // 2]
        s.text(head + "Retrieved Text:")
        s.text(" " + retrieved, mark="R")
        s.text(". ")
        cap.text("<s>")
        cap.text(head + "<image>")
        cap.text(" " + caption, mark="C")
    else:
        s.text(head)
    for i in range(0, len(conv), 2):
        if i:
            s.text("<s>")
            s.text("[INST] ")
        user_content(s, conv[i]["value"], bool(images))
        s.text(" [/INST]")
        s.text(" " + conv[i + 1]["value"], sup=True)
        s.text(" </s>", sup=True)
    return s, cap, len(images)


def tokens(sample, vocab):
    ids, labels, images, spans = [], [], [], {}
    for t, sup, mark in sample.parts:
        if t is None:
            images.append([len(ids), P])
            ids += [-200] * P
            labels += [-100] * P
            continue
        start = len(ids)
        words = [vocab[w] for w in t.split()]
        ids += words
        labels += words if sup else [-100] * len(words)
        if mark:
            spans[mark] = [start, len(ids) - start]
    return ids, labels, images, spans


def expected_sample(number, r, vocab, feats, tox_from_id=False):
    """The sample prep must write for record `number`, or None when it is skipped."""
    if number in BAD:
        return None
    s, cap, n_images = render_llama_2(r)
    ids, labels, images, spans = tokens(s, vocab)
    cap_ids, _, _, cap_spans = tokens(cap, vocab)
    retrieved, caption = spans.get("R", [0, 0]), cap_spans.get("C", [0, 0])
    if len(ids) > MAX_LEN:  # the cut: never into an image or R, at least one label kept
        protected = max([a + b for a, b in images] + [retrieved[0] + retrieved[1]])
        if protected > MAX_LEN or all(x == -100 for x in labels[:MAX_LEN]):
            return None
        ids, labels = ids[:MAX_LEN], labels[:MAX_LEN]
    if len(cap_ids) > MAX_LEN:
        if caption[0] >= MAX_LEN:
            return None
        cap_ids = cap_ids[:MAX_LEN]
        caption = [caption[0], min(caption[1], MAX_LEN - caption[0])]
    tox = bool(r.get("tox")) or (tox_from_id and "tox" in r["id"])
    names = r.get("image")
    names = [names] if isinstance(names, str) else (names or [])
    arrays = [np.zeros((P, DV), np.float16) if tox else feats[n].astype(np.float16) for n in names]
    features = np.concatenate([a.reshape(-1) for a in arrays]).view(np.uint16).tolist() if arrays else []
    return {"id": r["id"], "record": number, "input_ids": ids, "labels": labels, "images": images,
            "retrieved": retrieved if n_images else [0, 0], "tox": int(tox), "cap_ids": cap_ids,
            "caption": caption if n_images else [0, 0], "features": features}


def vocabulary(records):
    words = {"<unk>", "<s>", "</s>", "<image>", "Retrieved", "Text:", ".", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"}
    words |= set(SYS.split())
    for r in records:
        for key in ("image_caption", "retrieved_caption"):
            words |= set(r.get(key, "").split())
            words |= set(r.get(key, "")[:len(r.get(key, "")) // 2].split())
        for t in r["conversations"]:
            words |= set(t["value"].replace("<image>", " ").split())
    return sorted(words)


# ---- running tga ------------------------------------------------------------------------------

def prep(root, out, *extra, ranks=1, records="records.jsonl", features=("--features", "features")):
    command = prep_command(root, out, *extra, ranks=ranks, records=records, features=features)
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=120)


def prep_command(root, out, *extra, ranks=1, records="records.jsonl", features=("--features", "features")):
    command = [TGA, "prep", "--records", os.path.join(root, records), "--tokenizer", os.path.join(root, "words.txt"),
               "--out", os.path.join(root, out), "--samples-per-shard", str(S)]
    if features:
        command += [features[0], os.path.join(root, features[1])] + list(features[2:])
    command += list(extra)
    if ranks > 1:
        command = ["mpirun", "-np", str(ranks)] + command
    return command


def flags():
    return ["--template", "llama_2", "--max-len", str(MAX_LEN), "--image-tokens", str(P), "--feature-dim", str(DV)]


def shard_files(root, out):
    folder = os.path.join(root, out)
    return sorted(f for f in os.listdir(folder) if f.endswith(".tgas"))


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def same_output(root, a, b, what, with_summary=True):
    files_a, files_b = shard_files(root, a), shard_files(root, b)
    check(files_a == files_b and files_a, "%s: shard lists differ: %s vs %s" % (what, files_a, files_b))
    names = files_a + (["prep.json"] if with_summary else [])
    for name in names:
        same = read_bytes(os.path.join(root, a, name)) == read_bytes(os.path.join(root, b, name))
        check(same, "%s: %s differs" % (what, name))


def dump(root, out):
    paths = [os.path.join(root, out, f) for f in shard_files(root, out)]
    run = subprocess.run([DUMP] + paths, capture_output=True, text=True)
    check(run.returncode == 0, "dump %s: %s" % (out, run.stderr.strip()))
    shards, current = [], None
    for line in run.stdout.splitlines():
        item = json.loads(line)
        if "file" in item:
            current = {"layout": item["layout"], "samples": []}
            shards.append(current)
        else:
            current["samples"].append(item)
    return shards


# ---- the checks ---------------------------------------------------------------------------------

def check_contents(root, out, records, vocab, feats, tox_from_id=False):
    shards = dump(root, out)
    n_shards = (len(records) + S - 1) // S
    check(len(shards) == n_shards, "%s: %d shards, expected %d" % (out, len(shards), n_shards))
    for k, shard in enumerate(shards):
        check(shard["layout"] == [P, DV, 1], "%s: shard %d layout %s" % (out, k, shard["layout"]))
        want = [expected_sample(i, records[i], vocab, feats, tox_from_id) for i in range(k * S, min(len(records), (k + 1) * S))]
        want = [w for w in want if w is not None]
        got = shard["samples"]
        check(len(got) == len(want), "%s: shard %d holds %d samples, expected %d" % (out, k, len(got), len(want)))
        for g, w in zip(got, want):
            for key in w:
                check(g[key] == w[key], "%s: record %d (%s): %s differs:\n  got  %s\n  want %s"
                      % (out, w["record"], w["id"], key, str(g[key])[:300], str(w[key])[:300]))


def check_summary(root, out, records, vocab, feats):
    with open(os.path.join(root, out, "prep.json")) as f:
        summary = json.load(f)
    samples = [expected_sample(i, r, vocab, feats) for i, r in enumerate(records)]
    kept = [s for s in samples if s]
    truncated = sum(1 for i, s in enumerate(samples) if s and len(s["input_ids"]) == MAX_LEN)
    want = {"records": len(records), "samples": len(kept), "bad_records": len(BAD),
            "too_long": len(records) - len(kept) - len(BAD), "truncated": truncated,
            "tokens": sum(len(s["input_ids"]) for s in kept),
            "supervised_tokens": sum(sum(1 for x in s["labels"] if x != -100) for s in kept),
            "images": sum(len(s["images"]) for s in kept), "tox": sum(s["tox"] for s in kept),
            "text_only": sum(1 for s in kept if not s["images"]), "n_shards": (len(records) + S - 1) // S,
            "template": "llama_2", "image_tokens": P, "feature_dim": DV, "feature_dtype": "float16"}
    for key, value in want.items():
        check(summary.get(key) == value, "prep.json %s = %s, expected %s" % (key, summary.get(key), value))
    check(want["too_long"] == 1 and truncated == 1, "test bug: expected one too-long and one truncated record")
    for k, shard in enumerate(summary["shards"]):
        first = k * S
        n = min(len(records), first + S) - first
        in_shard = [s for s in samples[first:first + n] if s]
        check(shard["file"] == "shard-%05d.tgas" % k and shard["first_record"] == first and shard["records"] == n and
              shard["samples"] == len(in_shard), "prep.json shard %d: %s" % (k, shard))


def check_bad_record_stops(root):
    for ranks in (1, 2):
        out = "bad_%d" % ranks
        run = prep(root, out, *flags(), ranks=ranks)
        message = "records.jsonl:5: record 4 (id 'r4'): field 'conversations[0].from': expected"
        check(run.returncode == 1 and message in run.stderr,
              "%d rank(s) without --skip-bad: exit %d, stderr:\n%s" % (ranks, run.returncode, run.stderr))
        check(not os.path.exists(os.path.join(root, out, "prep.json")), "a failed prep left prep.json")
    run = prep(root, "p_mismatch", "--skip-bad", "--template", "llama_2", "--image-tokens", str(P + 1))
    check(run.returncode == 1 and "P = %d x Dv = %d" % (P, DV) in run.stderr,
          "--image-tokens mismatch: exit %d, %s" % (run.returncode, run.stderr.strip()))


def check_disk_full(root):
    """A write failure (the fault hook of runtime/fileio.h, as on a full disk) while writing shards:
    a clear error naming the file, no partial shard under its final name, no prep.json."""
    size = sum(os.path.getsize(os.path.join(root, "one", f)) for f in shard_files(root, "one"))
    env = dict(ENV, TGA_FAULT_WRITE_AFTER_BYTES=str(size // 2))
    command = prep_command(root, "disk_full", *flags(), "--skip-bad")
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    check(run.returncode == 1 and "No space left on device" in run.stderr and ".tgas" in run.stderr,
          "disk full: exit %d, stderr:\n%s" % (run.returncode, run.stderr))
    folder = os.path.join(root, "disk_full")
    left = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    check("prep.json" not in left and not [f for f in left if f.endswith(".tmp")],
          "disk full: left behind %s" % left)
    complete = shard_files(root, "disk_full")
    check(0 < len(complete) < len(shard_files(root, "one")), "disk full: %d complete shards" % len(complete))
    for name in complete:
        check(read_bytes(os.path.join(folder, name)) == read_bytes(os.path.join(root, "one", name)),
              "disk full: %s differs from the full run's" % name)


def check_progress(run):
    lines = [line for line in run.stderr.splitlines() if "records read in" in line]
    check(len(lines) == 1 and "\r" not in run.stderr, "progress without a terminal: %r" % run.stderr)


def check_interrupted(root, vocab):
    """SIGKILL in the middle of a larger prep: every *.tgas there is complete; no prep.json."""
    n = 6000
    rng = np.random.default_rng(3)
    big = np.zeros((n, 64, 128), np.float32)
    big[:] = rng.standard_normal((1, 64, 128)).astype(np.float32)
    big += np.arange(n, dtype=np.float32)[:, None, None] * 1e-3
    np.save(os.path.join(root, "big.npy"), big)
    with open(os.path.join(root, "big.jsonl"), "w") as f, open(os.path.join(root, "big_index.jsonl"), "w") as idx:
        for i in range(n):
            r = {"id": "b%d" % i, "image": "b/%d.jpg" % i, "image_caption": "a cat on a sofa",
                 "retrieved_caption": "a dog in the park", "conversations": turns(("<image>\nWhat is it ?", "A cat ."))}
            f.write(json.dumps(r) + "\n")
            idx.write(json.dumps({"image": "b/%d.jpg" % i, "row": i}) + "\n")
    out = os.path.join(root, "killed")
    command = [TGA, "prep", "--records", os.path.join(root, "big.jsonl"), "--features", os.path.join(root, "big.npy"),
               "--feature-index", os.path.join(root, "big_index.jsonl"), "--tokenizer", os.path.join(root, "words.txt"),
               "--template", "llama_2", "--out", out, "--samples-per-shard", "100", "--quiet"]
    child = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and child.poll() is None:
        if os.path.isdir(out) and len(shard_files(root, "killed")) >= 2:
            break
        time.sleep(0.005)
    finished_early = child.poll() is not None
    child.send_signal(signal.SIGKILL)
    child.wait()
    complete = shard_files(root, "killed")
    check(not finished_early and 0 < len(complete) < n // 100,
          "the kill did not land mid-run (%d shards, finished early: %s)" % (len(complete), finished_early))
    check(not os.path.exists(os.path.join(out, "prep.json")), "an interrupted prep left prep.json")
    shards = dump(root, "killed")
    check(all(len(s["samples"]) == 100 for s in shards), "a *.tgas of the interrupted prep is not complete")
    print("interrupted after %d complete shards (%s)" % (len(complete),
          ", ".join(sorted(f for f in os.listdir(out) if f.endswith(".tmp"))) or "no .tmp"), flush=True)
    run = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    check(run.returncode == 0 and len(shard_files(root, "killed")) == n // 100 and
          not [f for f in os.listdir(out) if f.endswith(".tmp")], "the rerun after the kill: %s" % run.stderr.strip())


def main():
    root = tempfile.mkdtemp(prefix="tga_prep_test_")
    try:
        records = make_records()
        feats = make_features(np.random.default_rng(11))
        write_dataset(root, records, feats)
        words = vocabulary(records)
        with open(os.path.join(root, "words.txt"), "w") as f:
            f.write("\n".join(words) + "\n")
        vocab = {w: i for i, w in enumerate(words)}

        run = prep(root, "one", *flags(), "--skip-bad")
        check(run.returncode == 0, "prep, 1 rank: %s" % run.stderr)
        check_progress(run)
        check_contents(root, "one", records, vocab, feats)
        check_summary(root, "one", records, vocab, feats)
        for ranks in (2, 3):
            run = prep(root, "ranks_%d" % ranks, *flags(), "--skip-bad", ranks=ranks)
            check(run.returncode == 0, "prep, %d ranks: %s" % (ranks, run.stderr))
            same_output(root, "one", "ranks_%d" % ranks, "1 rank vs %d ranks" % ranks)
        run = prep(root, "array", *flags(), "--skip-bad", records="records.json")
        check(run.returncode == 0, "prep from a JSON array: %s" % run.stderr)
        same_output(root, "one", "array", "JSON Lines vs JSON array", with_summary=False)
        run = prep(root, "big_array", "--template", "llama_2", "--max-len", str(MAX_LEN), "--skip-bad",
                   features=("--features", "all.npy", "--feature-index", os.path.join(root, "all_index.txt")))
        check(run.returncode == 0, "prep from one feature array: %s" % run.stderr)
        same_output(root, "one", "big_array", "per-image files vs one array", with_summary=False)
        with open(os.path.join(root, "run.yaml"), "w") as f:
            f.write("data:\n  template: llama_2\n  max_len: %d\n  image_tokens: %d\nprojector:\n  vision_dim: %d\n"
                    % (MAX_LEN, P, DV))
        run = prep(root, "config", "--config", os.path.join(root, "run.yaml"), "--skip-bad")
        check(run.returncode == 0, "prep with --config: %s" % run.stderr)
        same_output(root, "one", "config", "flags vs --config")
        run = prep(root, "tox_id", *flags(), "--skip-bad", "--tox-from-id")
        check(run.returncode == 0, "prep --tox-from-id: %s" % run.stderr)
        check_contents(root, "tox_id", records, vocab, feats, tox_from_id=True)
        check_bad_record_stops(root)
        check_disk_full(root)
        check_interrupted(root, vocab)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("%s prep_test (%d failures)" % ("FAIL" if failures else "PASS", len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
