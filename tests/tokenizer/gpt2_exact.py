"""GPT-2 byte-level BPE: `tga tokenize` against the reference encoder, id for id.

1. A varied corpus of more than 1 MB (corpus.py), cut into chunks joined by <|endoftext|>: ours
   encodes it in one run with --special (so each chunk is encoded on its own), the package's
   Encoder.js (node) encodes each chunk; every chunk must give identical ids.
2. U+0085 and U+FEFF, where JavaScript's \\s and Python's differ (Encoder.js treats U+FEFF as
   white space and U+0085 as punctuation; OpenAI's encoder.py, via Python's `regex`, the reverse)
   and U+180E (white space to PCRE2, not to Python): expected pieces derived by hand from Python's
   rules, cross-checked with HF tokenizers' ByteLevel pre-tokenizer (which agrees with `regex` on
   every assigned code point), then merged by a port of encoder.py's bpe() below.
3. <|endoftext|> without --special is plain text (as Encoder.js treats it).
4. encode -> decode is the identity on random bytes, invalid UTF-8 included.

usage: gpt2_exact.py TGA_BINARY   (TGA_ASSETS: the assets folder)
"""
import json
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import corpus  # noqa: E402

EOT = 50256


def bytes_to_unicode():
    """encoder.py's byte -> character map, written out again here."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Encoder:
    """The merge part of OpenAI's encoder.py (pieces are given, not found by its regex)."""

    def __init__(self, folder):
        with open(os.path.join(folder, "encoder.json")) as f:
            self.encoder = json.load(f)
        with open(os.path.join(folder, "vocab.bpe"), encoding="utf-8") as f:
            merges = [tuple(line.split()) for line in f.read().split("\n")[1:-1]]
        self.ranks = dict(zip(merges, range(len(merges))))
        self.byte_encoder = bytes_to_unicode()
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}

    def bpe(self, token):
        word = tuple(token)
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
        return word

    def encode_pieces(self, pieces):
        ids = []
        for piece in pieces:
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids

    def spell(self, token_id):
        text = self.decoder.get(token_id, "?")
        return bytes(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


NODE_DRIVER = """
const e = require(process.argv[1]);
const fs = require('fs');
const texts = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
fs.writeFileSync(process.argv[3], JSON.stringify(texts.map(t => e.encode(t))));
"""


def reference_js(checks, folder, texts):
    src, dst = checks.path("texts.json"), checks.path("ids.json")
    with open(src, "w", encoding="utf-8") as f:
        json.dump(texts, f, ensure_ascii=False)
    subprocess.run(["node", "-e", NODE_DRIVER, os.path.join(folder, "Encoder.js"), src, dst], check=True)
    with open(dst) as f:
        return json.load(f)


def split_at(ids, separator):
    parts, current = [], []
    for t in ids:
        if t == separator:
            parts.append(current)
            current = []
        else:
            current.append(t)
    return parts + [current]


def check_corpus(checks, tga, folder, enc):
    chunks = corpus.build(seed=20240601, prose_bytes=450_000, code_bytes=350_000, assorted_items=30_000,
                          unicode_chars=50_000, exclude=(0xFEFF, 0x85))
    text = "<|endoftext|>".join(chunks)
    size = len(text.encode())
    checks.check(size >= 1_000_000, f"corpus size {size} bytes in {len(chunks)} chunks")
    ours = split_at(common.encode(tga, folder, text.encode(), special=True), EOT)
    ref = reference_js(checks, folder, chunks)
    if not checks.check(len(ours) == len(ref), "one id list per chunk", f"{len(ours)} vs {len(ref)}"):
        return
    bad = [i for i in range(len(ref)) if ours[i] != ref[i]]
    total = sum(map(len, ref))
    if bad:
        i = bad[0]
        detail = f"{len(bad)} of {len(ref)} chunks differ; first: chunk {i}\n     " + common.describe_mismatch(
            ours[i], ref[i], enc.spell, chunks[i])
        checks.check(False, f"Encoder.js ids, chunk by chunk ({total} tokens)", detail)
    else:
        checks.check(True, f"Encoder.js ids, chunk by chunk ({total} tokens)")


# (text, its pieces under Python's rules). U+0085 is white space there; U+FEFF and U+180E are
# format characters (neither letter, number nor space), so they join punctuation runs.
PYTHON_CASES = [
    ("!\u0085", ["!", "\u0085"]),
    ("a\u0085\u0085b", ["a", "\u0085", "\u0085", "b"]),
    ("x\u0085 y", ["x", "\u0085", " y"]),
    ("end.\u0085\u0085\u0085", ["end", ".", "\u0085\u0085\u0085"]),
    ("\u0085Hello", ["\u0085", "Hello"]),
    ("\ufeff!", ["\ufeff!"]),
    ("a \ufeffb", ["a", " \ufeff", "b"]),
    ("\ufeff\ufeff  hello", ["\ufeff\ufeff", " ", " hello"]),
    ("1\u0085\ufeff2", ["1", "\u0085", "\ufeff", "2"]),
    ("\ufeffThe start", ["\ufeff", "The", " start"]),
    ("a\u180e\u180eb", ["a", "\u180e\u180e", "b"]),
    ("x \u180e y", ["x", " \u180e", " y"]),
]


def check_python_semantics(checks, tga, folder, enc):
    from tokenizers import pre_tokenizers
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    decoder = {v: k for k, v in bytes_to_unicode().items()}
    for text, pieces in PYTHON_CASES:
        hf = [bytes(decoder[c] for c in p).decode() for p, _ in byte_level.pre_tokenize_str(text)]
        checks.check(hf == pieces, f"HF pieces agree with the hand-derived ones for {ascii(text)}", f"HF {hf}")
    joined = "<|endoftext|>".join(t for t, _ in PYTHON_CASES).encode()
    ours = split_at(common.encode(tga, folder, joined, special=True), EOT)
    for (text, pieces), got in zip(PYTHON_CASES, ours):
        common.compare(checks, f"Python semantics for {ascii(text)}", got, enc.encode_pieces(pieces), enc.spell)


def check_plain_endoftext(checks, tga, folder):
    texts = ["a<|endoftext|>b", "<|endoftext|>", " <|endoftext|> x"]
    ref = reference_js(checks, folder, texts)
    for text, expected in zip(texts, ref):
        got = common.encode(tga, folder, text.encode())
        common.compare(checks, f"{text!r} without --special is text", got, expected)


def check_round_trip(checks, tga, folder):
    rng = random.Random(7)
    pieces = []
    for _ in range(3000):
        r = rng.random()
        if r < 0.4:
            pieces.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))))
        elif r < 0.6:  # truncated and overlong UTF-8 sequences, surrogates, stray continuation bytes
            pieces.append(rng.choice([b"\xe6\x97", b"\xf0\x9f\x8e", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80\x80", b"\xff",
                                      b"\xf4\x90\x80\x80", b"\xe0\x80\xaf"]))
        else:
            pieces.append(rng.choice(corpus.ASSORTED).encode())
    data = b"".join(pieces)
    ids = common.encode(tga, folder, data)
    back = common.decode(tga, folder, ids)
    checks.check(back == data, f"decode(encode(x)) == x on {len(data)} random bytes",
                 f"first difference at byte {common.first_difference(back, data)}")


def main():
    tga = sys.argv[1]
    folder = os.path.join(common.assets_dir(), "gpt2-bpe")
    checks = common.Checks("tokenizer.gpt2_exact")
    enc = Encoder(folder)
    check_corpus(checks, tga, folder, enc)
    check_python_semantics(checks, tga, folder, enc)
    check_plain_endoftext(checks, tga, folder)
    check_round_trip(checks, tga, folder)
    checks.finish()


if __name__ == "__main__":
    main()
