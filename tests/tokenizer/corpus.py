"""Varied test text for the tokenizer comparisons, built deterministically from a seed.

Sources: English prose (Debian's wordnet-base glosses), C source (/usr/include), and generated text:
whitespace runs, digit runs, punctuation, accents, CJK, emoji, CRLF, and random code points. Random
code points are drawn only from those assigned in Python's Unicode tables (14.0 in Python 3.11, the
same version as PCRE2 10.42's): engines with newer tables (node, Oniguruma, the `regex` module)
classify later additions as letters or numbers where PCRE2 sees unassigned code points.
"""
import glob
import os
import random
import unicodedata

WORDNET = "/usr/share/wordnet"


def wordnet_glosses():
    """Every gloss of data.{noun,verb,adj,adv}, in file order."""
    glosses = []
    for part in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(WORDNET, "data." + part), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or "| " not in line:
                    continue  # the license header
                glosses.append(line.split("| ", 1)[1].rstrip())
    return glosses


def prose(rng, nbytes, glosses=None):
    glosses = glosses or wordnet_glosses()
    out, size = [], 0
    while size < nbytes:
        paragraph = " ".join(rng.choice(glosses).capitalize() + "." for _ in range(rng.randint(1, 6)))
        out.append(paragraph)
        size += len(paragraph.encode()) + 2
    return "\n\n".join(out)


def source_code(rng, nbytes):
    headers = sorted(glob.glob("/usr/include/*.h") + glob.glob("/usr/include/*/*.h"))
    out, size = [], 0
    while size < nbytes and headers:
        with open(rng.choice(headers), encoding="utf-8", errors="replace") as f:
            text = f.read(rng.randint(2000, 12000))
        out.append(text)
        size += len(text.encode())
    return "".join(out)


ASSORTED = [
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t ", "          ",
    "0", "7", "42", "1999", "3.14159", "1,000,000", "0x7fff", "1e-9", "２０２４", "٣٤٥", "Ⅻ", "½",
    ".", ",", "!", "?", "...", "--", "—", "“", "”", "'", "\"", "(", ")", "[]", "{}", "<>", "@#$%^&*", "~`|\\/",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "don't", "it's", "y'all", "''", "'", "’s",
    "café", "naïve", "Ünïcödé", "façade", "Ångström", "señor", "Øresund", "İstanbul", "straße",
    "日本語", "中文字符", "한국어", "ひらがな", "カタカナ", "Ελληνικά", "Русский", "עברית", "العربية", "हिन्दी",
    "🎉", "👍🏽", "👨‍👩‍👧‍👦", "🇯🇵", "❤️", "😀😃😄", "🤖", "∑∫√∞", "→⇒", "©®™", "\u00a0", "\u3000", "\u2028",
    "\u200b", "\u180e", "\u200d", "e\u0301", "\u0000", "\x1c\x1d\x1e\x1f", "\x0b\x0c",
    "hello", "Hello", "HELLO", "world", " the", " of", "tokenizer", "GPT", "internationalization",
]


def assorted(rng, n, extra=()):
    pool = ASSORTED + list(extra)
    return "".join(rng.choice(pool) + (" " if rng.random() < 0.3 else "") for _ in range(n))


_ASSIGNED = None


def assigned_code_points():
    global _ASSIGNED
    if _ASSIGNED is None:
        _ASSIGNED = [c for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    return _ASSIGNED


def random_unicode(rng, n, exclude=()):
    """n random assigned code points, mixed with spaces and ASCII so that pieces have context."""
    points, exclude = assigned_code_points(), set(exclude)
    out = []
    while len(out) < n:
        r = rng.random()
        if r < 0.15:
            c = " "
        elif r < 0.35:
            c = chr(rng.randint(0x21, 0x7E))
        elif r < 0.45:
            c = chr(rng.choice(points[:2000]))  # Latin, Greek, Cyrillic, combining marks...
        else:
            c = chr(rng.choice(points))
        if ord(c) not in exclude:
            out.append(c)
    return "".join(out)


def build(seed, prose_bytes, code_bytes, assorted_items, unicode_chars, exclude=(), chunk=2000):
    """A list of text chunks of about `chunk` characters, the sources interleaved."""
    rng = random.Random(seed)
    parts = [prose(rng, prose_bytes), source_code(rng, code_bytes), assorted(rng, assorted_items),
             random_unicode(rng, unicode_chars, exclude)]
    excluded = set(exclude)
    parts = ["".join(c for c in p if ord(c) not in excluded) for p in parts]
    chunks = []
    for p in parts:
        i = 0
        while i < len(p):
            n = rng.randint(chunk // 4, chunk)
            chunks.append(p[i:i + n])
            i += n
    rng.shuffle(chunks)
    return chunks
