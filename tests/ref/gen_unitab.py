#!/usr/bin/env python3
"""gen_unitab.py -- src/text/tokenizer_unitab.c: the Unicode facts of Hugging Face
`tokenizers` that gq's normalizers need on top of libutf8proc.

Run from the repository root:  python3 tests/ref/gen_unitab.py
(needs `tokenizers` and libutf8proc2; deterministic: re-running rewrites the
same file for the same versions).

Why tables at all: `tokenizers` does not share utf8proc's Unicode version.
  - NFC/NFD/NFKC/NFKD come from the Rust crate unicode-normalization-alignments,
    whose tables are Unicode 9.0: a character assigned later (e.g. U+0C3C, a
    nukta of Unicode 14 with combining class 7, or U+1FBF0, a digit of Unicode
    13 with a compatibility decomposition) is an inert starter there, while
    utf8proc (Unicode 15 in libutf8proc 2.8) reorders or decomposes it. gq
    therefore hands utf8proc only the characters `tokenizers` has data for
    (gq_uni_norm_known, from U+0300 on; everything under U+0300 is older than
    Unicode 9 and identical in both) and copies every other character as is.
    An inert starter blocks reordering and composition across it, so the text
    between two of them normalizes on its own. Unicode's stability policy
    makes utf8proc agree with Unicode 9 on every character Unicode 9 had, so
    the result does not depend on utf8proc's version (9.0 or later).
  - StripAccents removes the crate's combining marks (General_Category M,
    Unicode 9.0): gq_uni_marks, the whole set.
  - Lowercase is Rust's char::to_lowercase (the Unicode of the Rust release
    that built the wheel, 16.0 for tokenizers 0.23.3): utf8proc_tolower plus
    gq_uni_lower_ex, the characters where the two differ (U+0130 -> "i̇", and
    the case pairs of Unicode 16). This one table depends on the utf8proc
    version it is made with (a newer utf8proc only makes entries redundant).
gq_uni_norm_known is the set of characters that the crate decomposes (NFKD), that
have a non-zero combining class there (they reorder next to U+0301 or
U+0316), or that appear in a canonical decomposition (so may compose).

The script checks its tables before writing them: it re-implements gq's
segmentation with utf8proc (through ctypes) and asserts that it equals
`tokenizers` on every code point alone and in three contexts, and on the
all-code-points text of tests/test_tokenizer_norm.c.
"""
import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenizers  # noqa: E402
from tokenizers import normalizers as N  # noqa: E402

from gen_tokenizer_norm import all_chars_pieces  # noqa: E402

OUT = "src/text/tokenizer_unitab.c"
U = ctypes.CDLL("libutf8proc.so.2")
LIBC = ctypes.CDLL("libc.so.6")
U.utf8proc_version.restype = ctypes.c_char_p
U.utf8proc_unicode_version.restype = ctypes.c_char_p
U.utf8proc_tolower.restype = ctypes.c_int32
U.utf8proc_tolower.argtypes = [ctypes.c_int32]
U.utf8proc_map.restype = ctypes.c_ssize_t
U.utf8proc_map.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
STABLE, COMPAT, COMPOSE, DECOMPOSE = 1 << 1, 1 << 2, 1 << 3, 1 << 4
OPTS = {"NFC": STABLE | COMPOSE, "NFD": STABLE | DECOMPOSE, "NFKC": STABLE | COMPOSE | COMPAT,
        "NFKD": STABLE | DECOMPOSE | COMPAT}

# every scalar value except "\n", the batch separator below
CPS = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF and c != 10]


def hf_batch(norm, strings):
    """norm over many strings at once (joined by newlines: no normalizer of
    these touches a newline, and a newline blocks composition)."""
    out = []
    for i in range(0, len(strings), 8192):
        part = strings[i:i + 8192]
        r = norm.normalize_str("\n".join(part)).split("\n")
        assert len(r) == len(part)
        out += r
    return out


def ranges(cps):
    out = []
    for c in sorted(cps):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def in_ranges(rs, c, _cache={}):
    key = id(rs)
    if key not in _cache:
        _cache[key] = set(x for lo, hi in rs for x in range(lo, hi + 1))
    return c in _cache[key]


def norm_known():
    chars = [chr(c) for c in CPS]
    known = set()
    for c, kd in zip(CPS, hf_batch(N.NFKD(), chars)):
        if kd != chr(c):
            known.add(c)
    for c, d in zip(CPS, hf_batch(N.NFD(), chars)):
        if d != chr(c):
            known.update(ord(x) for x in d)
    after = hf_batch(N.NFD(), ["a\u0301" + ch for ch in chars])
    before = hf_batch(N.NFD(), [ch + "\u0316" for ch in chars])
    for c, x, y in zip(CPS, after, before):
        if x != "a\u0301" + chr(c) or y != chr(c) + "\u0316":
            known.add(c)
    return ranges(c for c in known if c >= 0x300)


def utf8proc(form, s):
    b = s.encode()
    dst = ctypes.c_void_p()
    n = U.utf8proc_map(b, len(b), ctypes.byref(dst), OPTS[form])
    assert n >= 0, (form, s)
    r = ctypes.string_at(dst, n).decode()
    LIBC.free(dst)
    return r


LIMIT = {"NFC": 0x300, "NFD": 0xC0, "NFKC": 0xA0, "NFKD": 0xA0}


def gq_normalize(form, s, known):
    """gq's algorithm (src/text/unicode.c gq_uni_normalize) in Python: runs of
    characters that `tokenizers` knows go through utf8proc (unless all of
    them are below LIMIT, which the form leaves alone), the others are
    copied."""
    out, run, plain = [], [], True

    def flush():
        if run:
            out.append("".join(run) if plain else utf8proc(form, "".join(run)))

    for ch in s:
        c = ord(ch)
        if c >= 0x300 and not in_ranges(known, c):
            flush()
            out.append(ch)
            run, plain = [], True
        else:
            run.append(ch)
            plain = plain and c < LIMIT[form]
    flush()
    return "".join(out)


def all_chars_text():
    """The all-code-points text of tests/test_tokenizer_norm.c."""
    return "".join(all_chars_pieces())


def check_norm(known):
    chars = [chr(c) for c in CPS]
    for form in ("NFC", "NFD", "NFKC", "NFKD"):
        hf = getattr(N, form)()
        for ctx in ("%s", "a\u0301%s", "%s\u0316", "\u0301%s\u0301"):
            texts = [ctx % ch for ch in chars]
            for i in range(0, len(texts), 8192):
                part = "\n".join(texts[i:i + 8192])
                got, exp = gq_normalize(form, part, known).split("\n"), hf.normalize_str(part).split("\n")
                bad = [t for t, g, e in zip(texts[i:i + 8192], got, exp) if g != e]
                assert not bad and len(got) == len(exp), (form, ctx, ["%04X" % ord(t[0]) for t in bad[:20]])
        text = all_chars_text()
        assert gq_normalize(form, text, known) == hf.normalize_str(text), form
        print("  %s: gq's segmentation == tokenizers on all code points and the all-code-points text" % form)


def marks():
    chars = [chr(c) for c in CPS]
    return ranges(c for c, x in zip(CPS, hf_batch(N.StripAccents(), chars)) if x == "")


def lower_ex():
    chars = [chr(c) for c in CPS]
    out = []
    for c, x in zip(CPS, hf_batch(N.Lowercase(), chars)):
        if x != chr(U.utf8proc_tolower(c)):
            assert 1 <= len(x) <= 3, (c, x)
            out.append((c, [ord(y) for y in x]))
    return out


def c_ranges(name, rs, comment):
    lines = ["/* %s */" % comment, "const gq_uni_range %s[] = {" % name]
    for i in range(0, len(rs), 6):
        lines.append("    " + " ".join("{0x%04X, 0x%04X}," % (lo, hi) for lo, hi in rs[i:i + 6]))
    lines += ["};", "const size_t %s_n = %d;" % (name, len(rs)), ""]
    return lines


def main():
    if not os.path.isdir("src"):
        sys.exit("run from the repository root")
    uver = U.utf8proc_unicode_version().decode()
    print("tokenizers", tokenizers.__version__, "; libutf8proc", U.utf8proc_version().decode(), "Unicode", uver)
    known = norm_known()
    check_norm(known)
    mk = marks()
    assert mk[0][0] >= 0x300, "gq_uni_strip_marks skips everything below U+0300"
    lo = lower_ex()
    lines = [
        "/*",
        " * tokenizer_unitab.c -- GENERATED by tests/ref/gen_unitab.py from Hugging Face",
        " * tokenizers %s and libutf8proc %s (Unicode %s). Do not edit; see that" % (
            tokenizers.__version__, U.utf8proc_version().decode(), uver),
        " * script for why each table exists. Used by src/text/unicode.c.",
        " */",
        "#include \"unicode.h\"",
        "",
    ]
    lines += c_ranges("gq_uni_norm_known", known,
                      "characters from U+0300 on that the normalization tables of `tokenizers`\n"
                      " * (Unicode 9.0) know: they decompose, have a combining class or may compose")
    lines += c_ranges("gq_uni_marks", mk,
                      "combining marks (General_Category M, Unicode 9.0), as StripAccents of\n"
                      " * `tokenizers` removes them")
    lines += ["/* Lowercase of `tokenizers` (Rust char::to_lowercase) where it differs from utf8proc_tolower of",
              " * libutf8proc %s (unused slots 0) */" % U.utf8proc_version().decode(),
              "const gq_uni_case gq_uni_lower_ex[] = {"]
    for c, m in lo:
        lines.append("    {0x%04X, {%s}}," % (c, ", ".join("0x%04X" % x for x in m + [0] * (3 - len(m)))))
    lines += ["};", "const size_t gq_uni_lower_ex_n = %d;" % len(lo), ""]
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print("wrote %s: %d known ranges, %d mark ranges, %d lowercase exceptions" % (OUT, len(known), len(mk), len(lo)))


if __name__ == "__main__":
    main()
