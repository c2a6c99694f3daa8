"""Bad tokenizer files and bad command lines through `tga tokenize`: each must fail with the right
exit code (1 for a bad file, 2 for a bad command line), exactly one line on stderr that names the
file (where there is one) and says what was wrong, and no crash.

usage: malformed.py TGA_BINARY
"""
import json
import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_bytes(kvs, n_tensors=0, magic=b"GGUF", version=3):
    """A GGUF header with (key, type, encoded value) entries."""
    out = magic + struct.pack("<IQQ", version, n_tensors, len(kvs))
    for key, type_id, value in kvs:
        out += gguf_string(key) + struct.pack("<I", type_id) + value
    return out


def string_array(items):
    return struct.pack("<IQ", 8, len(items)) + b"".join(gguf_string(s) for s in items)


def float_array(items):
    return struct.pack("<IQ", 6, len(items)) + struct.pack(f"<{len(items)}f", *items)


def llama_gguf(model="llama"):
    tokens = ["<unk>", "<s>", "</s>", "\u2581", "a", "\u2581a"]
    return gguf_bytes([("tokenizer.ggml.model", 8, gguf_string(model)),
                       ("tokenizer.ggml.tokens", 9, string_array(tokens)),
                       ("tokenizer.ggml.scores", 9, float_array([0.0] * len(tokens)))])


class Case:
    def __init__(self, checks, tga, work):
        self.checks, self.tga, self.work = checks, tga, work

    def write(self, name, data):
        path = os.path.join(self.work, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        return path

    def expect(self, label, args, code, *wanted, stdin=b"hello world"):
        r = common.run_tga(self.tga, args, stdin)
        err = r.stderr.decode(errors="replace")
        lines = err.count("\n")
        missing = [w for w in wanted if w not in err]
        self.checks.check(r.returncode == code and lines == 1 and not missing, f"{label}: {err.strip()}",
                          f"exit {r.returncode} (want {code}), {lines} stderr lines, missing {missing}")


def main():
    tga = sys.argv[1]
    checks = common.Checks("tokenizer.malformed")
    c = Case(checks, tga, checks.tmp.name)
    gpt2 = os.path.join(common.assets_dir(), "gpt2-bpe")

    only_vocab = os.path.dirname(c.write("only_vocab/encoder.json", '{"a": 0}'))
    c.expect("folder without its merges file", ["--tokenizer", only_vocab], 1, "only_vocab", "vocab.bpe", "missing merges")
    vocab_json = c.write("pair/vocab.json", '{"a": 0}')
    c.expect("vocab.json without merges.txt", ["--tokenizer", vocab_json], 1, "merges.txt", "missing merges")
    empty = os.path.join(c.work, "empty_dir")
    os.makedirs(empty)
    c.expect("folder without a tokenizer", ["--tokenizer", empty], 1, "empty_dir", "no tokenizer")
    c.expect("missing path", ["--tokenizer", os.path.join(c.work, "nope.json")], 1, "nope.json", "cannot open")

    c.expect("JSON syntax error", ["--tokenizer", c.write("bad/tokenizer.json", '{"model": {"vocab": {"a": 0,}}}')],
             1, "bad/tokenizer.json:1:", "invalid JSON")
    c.expect("JSON without a model", ["--tokenizer", c.write("nomodel.json", '{"version": "1.0"}')], 1,
             "nomodel.json", "model")
    unigram = {"model": {"type": "Unigram", "vocab": {"a": 0}}}
    c.expect("unknown model type", ["--tokenizer", c.write("unigram.json", json.dumps(unigram))], 1,
             "unigram.json", "Unigram", "not supported")
    gap = {"model": {"type": "WordLevel", "vocab": {"a": 0, "b": 5}, "unk_token": "a"}}
    c.expect("ids with a gap", ["--tokenizer", c.write("gap.json", json.dumps(gap))], 1, "gap.json", "token ids")
    dup = '{"model": {"type": "WordLevel", "vocab": {"a": 0, "a": 1}}}'
    c.expect("duplicate vocabulary key", ["--tokenizer", c.write("dup.json", dup)], 1, "dup.json", "duplicate")
    bpe = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}}
    c.expect("merge of an unknown token", ["--tokenizer", c.write("merge.json", json.dumps(bpe))], 1, "merge.json",
             "'c' is not in the vocabulary")
    nfc = {"normalizer": {"type": "NFC"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}
    c.expect("unsupported normalizer", ["--tokenizer", c.write("nfc.json", json.dumps(nfc))], 1, "nfc.json", "NFC")
    regex = {"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"},
             "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}
    c.expect("regex that does not compile", ["--tokenizer", c.write("regex.json", json.dumps(regex))], 1,
             "regex.json", "does not compile")

    os.makedirs(os.path.join(c.work, "badmerges"))
    shutil.copy(os.path.join(gpt2, "encoder.json"), os.path.join(c.work, "badmerges", "encoder.json"))
    c.write("badmerges/vocab.bpe", "#version: 0.2\nĠ t\nthree parts here\n")
    c.expect("malformed merges line", ["--tokenizer", os.path.join(c.work, "badmerges")], 1, "vocab.bpe:3:",
             "LEFT RIGHT")

    c.expect("GGUF bad magic", ["--tokenizer", c.write("magic.gguf", b"GGUX" + llama_gguf()[4:])], 1, "magic.gguf",
             "bad magic")
    good = llama_gguf()
    c.expect("GGUF truncated metadata", ["--tokenizer", c.write("cut.gguf", good[:len(good) - 7])], 1, "cut.gguf",
             "truncated")
    c.expect("GGUF version 1", ["--tokenizer", c.write("v1.gguf", b"GGUF" + struct.pack("<I", 1) + good[8:])], 1,
             "v1.gguf", "version 1")
    huge = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 60) + b"x" * 16
    c.expect("GGUF string length past the end", ["--tokenizer", c.write("huge.gguf", huge)], 1, "huge.gguf", "length")
    c.expect("GGUF unknown tokenizer model", ["--tokenizer", c.write("bert.gguf", llama_gguf("bert"))], 1,
             "bert.gguf", "'bert' is not supported")
    no_tok = gguf_bytes([("general.name", 8, gguf_string("x"))])
    c.expect("GGUF without tokenizer metadata", ["--tokenizer", c.write("notok.gguf", no_tok)], 1, "notok.gguf",
             "tokenizer.ggml.model")

    c.expect("empty word list", ["--tokenizer", c.write("empty.txt", "")], 1, "empty.txt", "empty")
    c.expect("word list with a blank line", ["--tokenizer", c.write("blank.txt", "a\n\nb\n")], 1, "blank.txt:2:",
             "empty line")
    c.expect("unknown file type", ["--tokenizer", c.write("model.bin", "xyz")], 1, "model.bin", "unknown tokenizer")
    nounk = c.write("nounk.txt", "hello\n")
    c.expect("word without unk", ["--tokenizer", nounk], 1, "nounk.txt", "no unk")

    c.expect("no --tokenizer", [], 2, "--tokenizer")
    c.expect("unknown option", ["--tokenizer", gpt2, "--fast"], 2, "--fast")
    c.expect("option without value", ["--tokenizer"], 2, "--tokenizer")
    c.expect("--special with --decode", ["--tokenizer", gpt2, "--decode", "--special"], 2, "--special")
    c.expect("id outside the vocabulary", ["--tokenizer", gpt2, "--decode"], 1, "50257", "vocabulary",
             stdin=b"15496 50257")
    c.expect("not an id", ["--tokenizer", gpt2, "--decode"], 1, "standard input", "12x", stdin=b"15496 12x")
    c.expect("missing input file", ["--tokenizer", gpt2, "--file", os.path.join(c.work, "none.txt")], 1, "none.txt")
    checks.finish()


if __name__ == "__main__":
    main()
