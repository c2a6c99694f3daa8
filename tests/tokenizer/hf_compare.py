"""Our tokenizers against PyPI `tokenizers` (HF) on tokenizers trained here from wordnet text.

- SentencePiece-style BPE with byte fallback, Llama-2 layout (<unk> <s> </s>, 256 <0xNN> byte
  tokens, then the trained pieces), saved as tokenizer.json in three forms: the legacy normalizer
  Prepend("▁") + Replace(" ", "▁"), Metaspace(prepend_scheme "first", split false), and
  Metaspace("always", split true). Ours must give HF's ids on a varied corpus with <s> and </s> in
  the text (--special), and round-trip every byte string (legacy form).
- The same vocabulary as a GGUF file (tokenizer.ggml.model "llama", as llama.cpp's converter
  writes it: tokens, scores, token types). llama.cpp merges by score, not by merge rank; the scores
  are -rank of the merge that made a piece (0 for the rest), as llama.cpp's converter does for
  BPE-derived vocabularies. Ours from the GGUF must equal a naive score-merging reference written
  below, and (with these scores) the tokenizer.json path.
- Byte-level BPE trained with the ByteLevel pre-tokenizer, in GPT-2 form, SmolLM2 form (Digits
  then ByteLevel, with add_prefix_space) and Llama-3 form (Split with Llama-3's regex, then
  ByteLevel without regex, ignore_merges); and as a GGUF file (model "gpt2", merges).
- Word level: HF WordLevel with the Whitespace and WhitespaceSplit pre-tokenizers, and the same
  vocabulary as a *.txt word list, ids and decoded text.

usage: hf_compare.py TGA_BINARY
"""
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import corpus  # noqa: E402
import gguf  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

MARKER = "\u2581"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")


def train(lines, pre_tokenizer, trainer):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.train_from_iterator(lines, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def save(tok, folder, config=None, string_merges=False):
    """tokenizer.json (+ tokenizer_config.json); string_merges: "A B" merges, as before tokenizers 0.20."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "tokenizer.json")
    tok.save(path)
    if string_merges:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
    if config:
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)
    return folder


# ---- SentencePiece-style -----------------------------------------------------------------------

def llama_layout(trained_vocab, merges):
    """<unk> <s> </s>, <0x00>..<0xFF>, then the trained pieces in their order."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [t for t, _ in sorted(trained_vocab.items(), key=lambda kv: kv[1]) if t not in tokens]
    return {t: i for i, t in enumerate(tokens)}, merges


def spm_tokenizer(vocab, merges, form):
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if form == "legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend(MARKER), normalizers.Replace(" ", MARKER)])
        tok.decoder = decoders.Sequence([decoders.Replace(MARKER, " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:
        scheme, split = ("first", False) if form == "metaspace_first" else ("always", True)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=MARKER, prepend_scheme=scheme, split=split)
        tok.decoder = decoders.Metaspace(replacement=MARKER, prepend_scheme=scheme, split=split)
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


def merge_scores(vocab, merges):
    """-rank of the merge that made each piece; 0 for pieces no merge makes."""
    scores = [0.0] * len(vocab)
    for rank, (a, b) in enumerate(merges):
        scores[vocab[a + b]] = -float(rank)
    return scores


def write_llama_gguf(path, vocab, scores):
    tokens = sorted(vocab, key=vocab.get)
    types = [2 if t == "<unk>" else 3 if t in ("<s>", "</s>") else 6 if t.startswith("<0x") else 1 for t in tokens]
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def score_merge_reference(text, vocab, scores):
    """llama.cpp's SentencePiece merging, naively: repeatedly merge the adjacent pair whose joined
    text is the highest-scoring token (leftmost among equals); leftovers become byte tokens."""
    symbols = list(MARKER + text.replace(" ", MARKER))
    while True:
        best = None
        for i in range(len(symbols) - 1):
            joined = symbols[i] + symbols[i + 1]
            if joined in vocab and (best is None or scores[vocab[joined]] > best[0]):
                best = (scores[vocab[joined]], i)
        if best is None:
            break
        i = best[1]
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    ids = []
    for s in symbols:
        ids.extend([vocab[s]] if s in vocab else [vocab[f"<0x{b:02X}>"] for b in s.encode()])
    return ids


def with_specials(rng, chunks, specials):
    """The chunks joined by special tokens, with a few more inside them."""
    out = []
    for c in chunks:
        if rng.random() < 0.2:
            i = rng.randrange(len(c) + 1)
            c = c[:i] + rng.choice(specials) + c[i:]
        out.append(c)
    return "".join(c + rng.choice(specials) for c in out)


def check_spm(checks, tga, lines, text, work):
    base_vocab, merges = train(lines, pre_tokenizers.Metaspace(replacement=MARKER, prepend_scheme="always"),
                               trainers.BpeTrainer(vocab_size=2500, limit_alphabet=70, show_progress=False))
    vocab, merges = llama_layout(base_vocab, merges)
    spell = {i: t for t, i in vocab.items()}.get
    for form in ("legacy", "metaspace_first", "metaspace_split"):
        hf = spm_tokenizer(vocab, merges, form)
        folder = save(hf, os.path.join(work, "spm_" + form), {"bos_token": "<s>", "eos_token": "</s>"},
                      string_merges=form == "metaspace_split")
        ours = common.encode(tga, folder, text.encode(), special=True)
        common.compare(checks, f"SentencePiece BPE ({form}) vs tokenizers", ours, hf.encode(text).ids, spell, text)
    legacy = os.path.join(work, "spm_legacy")
    rng = random.Random(3)
    data = b"".join(rng.choice([bytes([rng.randrange(256)]), rng.choice(corpus.ASSORTED).encode()])
                    for _ in range(20000)).replace(MARKER.encode(), b"")
    back = common.decode(tga, legacy, common.encode(tga, legacy, data))
    checks.check(back == data, f"SentencePiece decode(encode(x)) == x on {len(data)} random bytes",
                 f"first difference at byte {common.first_difference(back, data)}")
    check_spm_gguf(checks, tga, vocab, merges, text, work, spell)


def check_spm_gguf(checks, tga, vocab, merges, text, work, spell):
    path = os.path.join(work, "spm.gguf")
    scores = merge_scores(vocab, merges)
    write_llama_gguf(path, vocab, scores)
    rng = random.Random(5)
    short = [c[:rng.randint(20, 300)] for c in text.split("</s>") if c and "<s>" not in c][:300]
    joined = "</s>".join(short)
    ours = common.encode(tga, path, joined.encode(), special=True)
    ref = []
    for i, s in enumerate(short):
        ref += score_merge_reference(s, vocab, scores) + ([vocab["</s>"]] if i + 1 < len(short) else [])
    common.compare(checks, "GGUF llama (merge by score) vs a naive score-merging reference", ours, ref, spell, joined)
    from_json = common.encode(tga, os.path.join(work, "spm_legacy"), text.encode(), special=True)
    common.compare(checks, "GGUF llama vs the same vocabulary's tokenizer.json",
                   common.encode(tga, path, text.encode(), special=True), from_json, spell, text)


# ---- byte-level ----------------------------------------------------------------------------------

def byte_level_tokenizer(vocab, merges, form):
    ignore = form == "llama3"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore))
    if form == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif form == "smollm2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=True)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


def write_gpt2_gguf(path, vocab, merges):
    tokens = sorted(vocab, key=vocab.get)
    w = gguf.GGUFWriter(path, arch="gpt2")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_byte_level(checks, tga, lines, text, work):
    vocab, merges = train(lines, pre_tokenizers.ByteLevel(add_prefix_space=False),
                          trainers.BpeTrainer(vocab_size=2500, special_tokens=["<|endoftext|>"], show_progress=False,
                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    gpt2 = None
    for form in ("gpt2", "smollm2", "llama3"):
        hf = byte_level_tokenizer(vocab, merges, form)
        gpt2 = gpt2 or hf
        folder = save(hf, os.path.join(work, "bl_" + form))
        ours = common.encode(tga, folder, text.encode(), special=True)
        spell = lambda i, hf=hf: hf.decode([i], skip_special_tokens=False)  # noqa: E731
        common.compare(checks, f"byte-level BPE ({form}) vs tokenizers", ours, hf.encode(text).ids, spell, text)
    path = os.path.join(work, "bl.gguf")
    write_gpt2_gguf(path, vocab, merges)
    ours = common.encode(tga, path, text.encode(), special=True)
    common.compare(checks, "GGUF gpt2 vs tokenizers", ours, gpt2.encode(text).ids)


# ---- word level ----------------------------------------------------------------------------------

def check_word_level(checks, tga, lines, work):
    rng = random.Random(11)
    counts = {}
    for line in lines:
        for w in pre_tokenizers.Whitespace().pre_tokenize_str(line):
            counts[w[0]] = counts.get(w[0], 0) + 1
    words = ["[UNK]", "[PAD]"] + sorted(counts, key=lambda w: (-counts[w], w))[:3000]
    vocab = {w: i for i, w in enumerate(words)}
    text = "\n".join(rng.sample(lines, 400)) + " café 42 x\u00a0y\t\tend"
    for pre in ("Whitespace", "WhitespaceSplit"):
        hf = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
        hf.pre_tokenizer = getattr(pre_tokenizers, pre)()
        folder = save(hf, os.path.join(work, "word_" + pre))
        ours = common.encode(tga, folder, text.encode())
        ref = hf.encode(text).ids
        common.compare(checks, f"word level ({pre}) vs tokenizers", ours, ref, words.__getitem__, text)
        back = common.decode(tga, folder, ref).decode()
        checks.check(back == hf.decode(ref), f"word level ({pre}) decode vs tokenizers")
    listing = os.path.join(work, "words.txt")
    with open(listing, "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")
    common.compare(checks, "word list (*.txt) vs tokenizers WordLevel + WhitespaceSplit",
                   common.encode(tga, listing, text.encode()), hf.encode(text).ids, words.__getitem__, text)


def main():
    tga = sys.argv[1]
    checks = common.Checks("tokenizer.hf_compare")
    glosses = corpus.wordnet_glosses()
    lines = random.Random(1).sample(glosses, 12000)
    chunks = corpus.build(seed=77, prose_bytes=120_000, code_bytes=50_000, assorted_items=6000, unicode_chars=12000)
    check_spm(checks, tga, lines, with_specials(random.Random(2), chunks, ["<s>", "</s>"]), checks.tmp.name)
    check_byte_level(checks, tga, lines, with_specials(random.Random(4), chunks, ["<|endoftext|>"]), checks.tmp.name)
    check_word_level(checks, tga, glosses, checks.tmp.name)
    checks.finish()


if __name__ == "__main__":
    main()
