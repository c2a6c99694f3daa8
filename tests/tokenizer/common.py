"""Shared helpers of the tokenizer tests: running `tga tokenize`, comparing id sequences with
context on a mismatch, and one PASS/FAIL line per script."""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def assets_dir():
    return os.environ.get("TGA_ASSETS") or os.path.join(ROOT, "..", "shared", "assets")


class Checks:
    def __init__(self, name):
        self.name, self.failures, self.passed = name, 0, 0
        self.tmp = tempfile.TemporaryDirectory(prefix="tga-tok-")

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def check(self, ok, label, detail=""):
        if ok:
            self.passed += 1
            print(f"ok   {label}")
        else:
            self.failures += 1
            print(f"FAIL {label}: {detail}")
        sys.stdout.flush()
        return ok

    def finish(self):
        print(f"{'PASS' if self.failures == 0 else 'FAIL'} {self.name} ({self.passed} passed, {self.failures} failed)")
        self.tmp.cleanup()
        sys.exit(1 if self.failures else 0)


def run_tga(tga, args, stdin_bytes=None):
    return subprocess.run([tga, "tokenize"] + args, input=stdin_bytes, capture_output=True)


def encode(tga, tokenizer, data, special=False, work=None):
    """Our ids for bytes `data` (passed through a file, as a user would)."""
    fd, path = tempfile.mkstemp(dir=work)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    r = run_tga(tga, ["--tokenizer", tokenizer, "--file", path] + (["--special"] if special else []))
    os.unlink(path)
    if r.returncode != 0:
        raise RuntimeError(f"tga tokenize failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    out = r.stdout.decode()
    if not out.endswith("\n") or "  " in out:
        raise RuntimeError("tga tokenize output is not one line of ids separated by single spaces")
    return [int(x) for x in out.split()]


def decode(tga, tokenizer, ids):
    r = run_tga(tga, ["--tokenizer", tokenizer, "--decode"], " ".join(map(str, ids)).encode())
    if r.returncode != 0:
        raise RuntimeError(f"tga tokenize --decode failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r.stdout


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def describe_mismatch(ours, ref, spell=None, text=None):
    """Where two id lists part, with the ids and (given a spelling function) the tokens around it."""
    i = first_difference(ours, ref)
    lo, hi = max(0, i - 6), i + 6
    parts = [f"first difference at token {i} of {len(ref)} (ours has {len(ours)})",
             f"ours {ours[lo:hi]}", f"ref  {ref[lo:hi]}"]
    if spell:
        parts.append(f"ours spelled {json.dumps([spell(t) for t in ours[lo:hi]], ensure_ascii=False)}")
        parts.append(f"ref  spelled {json.dumps([spell(t) for t in ref[lo:hi]], ensure_ascii=False)}")
    if text is not None and spell:
        offset = len("".join(spell(t) for t in ref[:i]))
        parts.append(f"text near there: {json.dumps(text[max(0, offset - 40):offset + 40], ensure_ascii=False)}")
    return "\n     ".join(parts)


def compare(checks, label, ours, ref, spell=None, text=None):
    same = ours == ref
    return checks.check(same, f"{label} ({len(ref)} tokens)", "" if same else describe_mismatch(ours, ref, spell, text))
