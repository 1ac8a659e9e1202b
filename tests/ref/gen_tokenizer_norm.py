#!/usr/bin/env python3
"""Golden fixtures for tests/test_tokenizer_norm.c: Unicode normalizers (NFC,
NFD, NFKC, NFKD, Lowercase, StripAccents, Strip) and the Qwen2/Qwen2.5
tokenizer.json layout, made with Hugging Face `tokenizers`.

Run from the repository root:  python3 tests/ref/gen_tokenizer_norm.py
Writes into tests/data/tok/ (see the README.md there):
  qwen2ish/tokenizer.json, tokenizer_config.json     trained byte-level BPE, Qwen2.5 layout (NFC)
  nfkc-sp/tokenizer.json, tokenizer_config.json      trained SentencePiece-style BPE with NFKC
  nfd-lower/tokenizer.json, tokenizer_config.json    trained byte-level BPE, NFD + StripAccents + Lowercase
  golden-norm.json                                   their goldens and those of normalizer variants
Deterministic (BPE training included): re-running rewrites identical files.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenizers  # noqa: E402
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,  # noqa: E402
                        pre_tokenizers, processors, trainers)

from gen_tokenizer import TRICKY, decode_skip, fnv1a64, training_text  # noqa: E402

OUT = "tests/data/tok"
STDLIB = "tests/data/text/python-stdlib-eval.txt"
# Qwen2 / Qwen2.5 / Qwen3 tokenizer.json Split pattern (transformers' Qwen2Tokenizer PRETOKENIZE_REGEX)
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2.5's added tokens, in its order, after the model vocab: (content, special)
QWEN_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
              ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
              ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
              ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
              ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
              ("<|repo_name|>", False), ("<|file_sep|>", False)]
QWEN_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}")

# Normalization-sensitive strings, added to gen_tokenizer.TRICKY.
UNICODE_TRICKY = [
    ("nfc_composed", "café naïve résumé Ångström ñ ü ệ ự Tiếng Việt"),
    ("nfc_decomposed", "cafe\u0301 nai\u0308ve re\u0301sume\u0301 A\u030angstro\u0308m n\u0303 u\u0308 e\u0323\u0302 "
                       "u\u031b\u0323 Tie\u0302\u0301ng Vie\u0323\u0302t"),
    ("mark_order", "e\u0302\u0323 e\u0323\u0302 a\u0316\u0301 a\u0301\u0316 q\u0307\u0323 x\u0323\u0307 "
                   "\u05e9\u05b8\u05c1 \u05e9\u05c1\u05b8"),
    ("singletons", "\u212b \u212a \u2126 \u1fbb \u0340\u0341 \u0374 \u037e \u0387 \u2000\u2001 \uf900 \U0002f800"),
    ("exclusions", "\u0958 \u0915\u093c \u09dc \u09a1\u09bc \u0f43 \ufb1d \u2adc \U0001d15e"),
    ("hangul", "한국어 텍스트 안녕하세요 \u1112\u1161\u11ab\u1100\u116e\u11a8 \uac00\u11a8 \uac00\u11a7 "
               "\u1100\u1161\u11a7 \u1100\u1161 \uac01\u11a8 ㅎㅏㄴ ㄱ ㈜ ㉠"),
    ("compat_ligatures", "ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ œ æ Ĳ ǆ ǅ Ǆ ŉ \ufdfa \ufdfb \ufefc"),
    ("compat_circled", "① ② ⑩ ⑳ ⑴ ⒜ Ⓐ ⓐ ㈱ ㊀ ❶ 🄰 🅐"),
    ("fullwidth", "Ｈｅｌｌｏ　ｗｏｒｌｄ！ １２３ ＡＢＣ ａｂｃ （）［］｛｝ ｶﾀｶﾅ ｶﾞ ﾊﾟ ﾞ"),
    ("compat_misc", "x² H₂O ½ ¼ ⅞ ™ ℠ ℡ Ⅻ ⅻ µ ſ ẛ ℃ ℉ ㎞ ㎏ ㍱ … ‥ ′″ ¨ ´ ¸ ˘ \u00a0nbsp\u2002en\u3000ideo"),
    ("kelvin_ohm", "273 \u212a = 0 °C, 5 \u2126, \u212bngstr\u00f6m, \u212a\u212a\u212a kelvin"),
    ("kana", "が ぎ か\u3099 き\u3099 ガ カ\u3099 ヷ ゛ ゜ ゟ ヿ"),
    ("emoji_zwj", "👍🏽 👨\u200d👩\u200d👧 🏳\ufe0f\u200d🌈 ❤\ufe0f ☺\ufe0e 🇯🇵 ©\ufe0f 1\ufe0f\u20e3 #\ufe0f\u20e3 🧑🏿\u200d💻"),
    ("marks_at_start", "\u0301abc \u0301\u0316x"),
    ("mark_only", "\u0301"),
    ("marks_alone", "\u0316\u0301\u0323\u0302"),
    ("greek", "Ελληνικά ΆΈΉ ά έ ή ΐ ΰ Σίσυφος ΣΑΣ ὈΔΥΣΣΕΎΣ ᾼ ῼ ῷ"),
    ("case", "Straße ẞ İstanbul ıi IJ Ǳ ǲ ǳ ΣΑΣ Σ ﬀ ŉ ǰ ΐ ᾈ ᾀ Ꭰꭰ Ⰰ 𐐀 𞤀"),
    ("indic", "हिन्दी क़ ख़ ঢ় বাংলা தமிழ் கொ கோ கௌ ക്ഷ ൻ ശ്രീ ඛ ෙ\u0dca ไทย ພາສາລາວ ཀྵ"),
    ("arabic_hebrew", "مرحبا بالعالم \u0627\u0653 \u0622 \ufe8d\ufe8e \u0644\u0627 שָׁלוֹם \ufb2a \ufb4f"),
    ("cjk_compat", "你好世界 \uf900\uf901 \u2f00 \u2e9f \u3280 \u32ff \u3300 \u337f 令和"),
    ("math", "𝐀𝐁𝐂 𝔸𝕏 𝒜 ℍ ℕ ∮ ≠ ≮ <\u0338 =\u0338 ≤ ⩽ ∞ √ ∑ ∫∫ ∬ ⁿ ₙ"),
    ("zero_width", "a\u200bb\u200cc\u200dd\u2060e\ufefff\u00adg\u034fh\u180ei \ufe00j \U000e0100k"),
    ("post_unicode9", "\u0c3c\u0c15 \u0d3b \u09fe \u1ac1 \U0001fbf0\U0001fbf9 \ua7f2 \U00011935\U00011930 "
                      "\U00011938 \U00010d50 \u1c89 \ua7cb \u1cf2 \u08ca\u0301 a\u0c3c\u0301 \u0301\u0c3c "
                      "x\u0301\u1dfa \u0915\u0301\u0c3c\u0316 \u09fe\u0316"),
    ("nonchars", "\ufffe\uffff \U0001fffe \ue000 \U000f0000 \U0010ffff \ufffd x"),
    ("code_crlf_tabs", "def café(ß):\r\n\tif ß:\r\n\t\treturn 'ﬁ'  # Ｋ\r\n\t \treturn \"e\u0301\"\t\r\n\r\n"),
    ("ws_unicode", " \u00a0 lead\u2003trail \u3000 \u1680x\u2028y\u2029z\u0085 "),
    ("qwen_chat", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                  "Café ﬁ ① Ｋ<|im_end|>\n<|im_start|>assistant\n"),
    ("qwen_specials_marks", "<|im_end|>\u0301x<|endoftext|>e\u0301<tool_call>\u0301</tool_call> <|fim_prefix|>ﬁ"
                            "<|fim_suffix|> <|file_sep|>"),
    ("qwen_digits", "1234567890 ١٢٣ ४५६ ½ ² 1\u20e3 x2y3 3.14"),
    ("added_norm", "CAFÉ Café cafe\u0301 CAFE\u0301 <MASK> <mask> <Mask> ﬁx fix ＦＩＸ"),
    ("mixed_scripts", "Hello мир 世界 🌍 مرحبا שלום नमस्ते こんにちは 안녕 Ελλάδα ñandú"),
]
TEXTS = [(n, raw) for n, raw in TRICKY] + [(n, s.encode()) for n, s in UNICODE_TRICKY]


def multilingual():
    return ("Ελληνικά ΆΈΉ ή ῆ ῷ русский текст ёлка йод 你好世界 日本語のテキスト がぎぐ カタカナ 한국어 텍스트 안녕하세요 "
            "café naïve résumé Ångström Tiếng Việt ệ ự Straße İstanbul ışık Ñandú çà שָׁלוֹם مرحبا हिन्दी தமிழ் கொ ไทย "
            "“quotes” … €100 ﬁ ① Ｈｅｌｌｏ ½ ² 👍🏽\n")


def train_text():
    return training_text() + [multilingual()] * 50


def all_chars_pieces():
    """Every code point of [U+0080, U+20000), [U+2F800, U+2FA20),
    [U+E0000, U+E01F0), U+F0000 and U+10FFFD (no surrogates), each followed by
    a separator that depends on its index i: i%16 == 15 a space, 5 U+0301, 9
    U+0316, 12 U+0301 U+0316. tests/test_tokenizer_norm.c builds the same."""
    cps = [c for c in range(0x80, 0x20000) if not 0xD800 <= c <= 0xDFFF]
    cps += list(range(0x2F800, 0x2FA20)) + list(range(0xE0000, 0xE01F0)) + [0xF0000, 0x10FFFD]
    sep = {15: " ", 5: "\u0301", 9: "\u0316", 12: "\u0301\u0316"}
    return [chr(c) + sep.get(i % 16, "") for i, c in enumerate(cps)]


CHUNK = 4096  # code points per chunk of the all-code-points text


def bytelevel_bpe(normalizer, pre, vocab):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_text(), trainer)
    return tok


def train_qwen2ish():
    tok = bytelevel_bpe(normalizers.NFC(), pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]), 2000)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for content, special in QWEN_ADDED:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    # as in Qwen2.5's file: empty prefix/suffix strings, "a b" merge strings, decoder options
    d = json.loads(tok.to_str())
    d["model"].update(continuing_subword_prefix="", end_of_word_suffix="")
    d["model"]["merges"] = [" ".join(m) for m in d["model"]["merges"]]
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return d


def train_nfd_lower():
    tok = bytelevel_bpe(normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()]),
                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), 1000)
    tok.add_special_tokens(["<|endoftext|>"])
    # normalized added tokens: matched in the normalized text as their normalized content
    tok.add_tokens([AddedToken("Café", normalized=True, special=False),
                    AddedToken("<MASK>", normalized=True, special=True)])
    return tok


def train_nfkc_sp():
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.NFKC()
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    specials = ["<unk>", "<s>", "</s>"]
    byte_toks = ["<0x%02X>" % b for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=1000, show_progress=False, special_tokens=specials + byte_toks)
    base.train_from_iterator(train_text(), trainer)
    d = json.loads(base.to_str())
    d["added_tokens"] = [a for a in d["added_tokens"] if a["content"] in specials]
    d["model"].update(byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"}, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}]}
    tok = Tokenizer.from_str(json.dumps(d, ensure_ascii=False))
    tok.add_tokens([AddedToken("ﬁx", normalized=True, special=False)])  # normalized content "fix"
    return tok


def save(tok, name, config):
    """tok: a Tokenizer, or a tokenizer.json dict written as it is."""
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    if isinstance(tok, dict):
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tok, f, indent=2, ensure_ascii=False)
            f.write("\n")
    else:
        tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return Tokenizer.from_file(os.path.join(d, "tokenizer.json"))  # the goldens are of what is shipped


def hexs(s):
    return s.encode().hex()


def encode_cases(tok):
    cases = []
    for _, raw in TEXTS:
        text = raw.decode("utf-8", "replace")
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_sp = tok.encode(text, add_special_tokens=True).ids
        dec = tok.decode(ids, skip_special_tokens=False)
        cases.append({"ids": ids, "ids_special": ids_sp, "decode": hexs(dec),
                      "decode_special_skip": hexs(decode_skip(tok, ids_sp))})
    return cases


def chunk_hashes(tok):
    pieces = all_chars_pieces()
    out = []
    for i in range(0, len(pieces), CHUNK):
        ids = tok.encode("".join(pieces[i:i + CHUNK]), add_special_tokens=False).ids
        out.append([len(ids), fnv1a64(ids)])
    return out


def stdlib_100k(tok):
    raw = open(STDLIB, "rb").read()[:100 * 1024]
    raw = raw[:raw.rindex(b"\n") + 1]
    ids = tok.encode(raw.decode(), add_special_tokens=False).ids
    dec = tok.decode(ids, skip_special_tokens=False).encode()
    return {"bytes": len(raw), "count": len(ids), "fnv1a64": fnv1a64(ids), "first": ids[:16],
            "decode_len": len(dec), "decode_fnv1a64": fnv1a64_bytes(dec), "lossless": dec == raw}


def fnv1a64_bytes(b):
    h = 0xCBF29CE484222325
    for x in b:
        h ^= x
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


STRIP = lambda l, r: {"type": "Strip", "strip_left": l, "strip_right": r}  # noqa: E731
NSEQ = lambda *n: {"type": "Sequence", "normalizers": list(n)}  # noqa: E731

# Normalizer variants: a base tokenizer.json with "normalizer" (and sometimes
# more) replaced.
VARIANTS = [
    ("nfd", "qwen2ish", {"normalizer": {"type": "NFD"}}),
    ("nfkc", "qwen2ish", {"normalizer": {"type": "NFKC"}}),
    ("nfkd", "qwen2ish", {"normalizer": {"type": "NFKD"}}),
    ("lowercase", "qwen2ish", {"normalizer": {"type": "Lowercase"}}),
    ("strip_accents", "qwen2ish", {"normalizer": {"type": "StripAccents"}}),
    ("strip_both", "qwen2ish", {"normalizer": STRIP(True, True)}),
    ("strip_left", "qwen2ish", {"normalizer": STRIP(True, False)}),
    ("nfkc_lower_strip", "qwen2ish", {"normalizer": NSEQ({"type": "NFKC"}, {"type": "Lowercase"}, STRIP(False, True))}),
    ("nfkd_strip_accents_nfc", "qwen2ish", {"normalizer": NSEQ({"type": "NFKD"}, {"type": "StripAccents"},
                                                               {"type": "NFC"})}),
    ("no_normalizer", "qwen2ish", {"normalizer": None}),
    ("sp_nfkc_prepend", "metaspace", {
        "normalizer": NSEQ({"type": "NFKC"}, {"type": "Prepend", "prepend": "▁"},
                           {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}),
        "pre_tokenizer": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}}),
]


def variants():
    out = []
    for vname, base, patch in VARIANTS:
        d = json.load(open(os.path.join(OUT, base, "tokenizer.json"), encoding="utf-8"))
        d.update(patch)
        tok = Tokenizer.from_str(json.dumps(d, ensure_ascii=False))
        cases = []
        for _, raw in TEXTS:
            ids = tok.encode(raw.decode("utf-8", "replace"), add_special_tokens=False).ids
            cases.append({"ids": ids, "decode": hexs(tok.decode(ids, skip_special_tokens=False))})
        out.append({"name": vname, "base": base, "patch": patch, "cases": cases, "all_chars": chunk_hashes(tok)})
        print("  variant", vname)
    return out


def main():
    if not os.path.exists(STDLIB):
        sys.exit("run from the repository root")
    qw = save(train_qwen2ish(), "qwen2ish", {
        "add_prefix_space": False, "bos_token": None, "chat_template": QWEN_TEMPLATE,
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None})
    nl = save(train_nfd_lower(), "nfd-lower", {"eos_token": "<|endoftext|>", "bos_token": None,
                                               "tokenizer_class": "PreTrainedTokenizerFast"})
    nk = save(train_nfkc_sp(), "nfkc-sp", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                           "add_bos_token": False, "tokenizer_class": "PreTrainedTokenizerFast"})
    byte_pieces = [qw.token_to_id(p) for p in ("Ã", "©", "Ã", "Ġ")]
    decode_only = {
        "qwen2ish": [byte_pieces[:2], byte_pieces[:1], byte_pieces[2:],
                     [qw.token_to_id(p) for p in ("<|im_start|>", "<tool_call>", "<|endoftext|>", "</tool_call>")]],
        "nfd-lower": [[nl.token_to_id(p) for p in ("Café", "<MASK>", "Ġ", "<|endoftext|>")]],
        "nfkc-sp": [[nk.token_to_id(p) for p in ("ﬁx", "<s>", "<0xE2>", "<0x84>", "<0xAA>", "<unk>")]],
    }
    for ids in decode_only.values():
        assert all(i is not None for x in ids for i in x), decode_only
    toks = []
    for name, tok in (("qwen2ish", qw), ("nfd-lower", nl), ("nfkc-sp", nk)):
        toks.append({"name": name, "cases": encode_cases(tok), "all_chars": chunk_hashes(tok),
                     "stdlib_100k": stdlib_100k(tok),
                     "decode_only": [{"ids": ids, "decode": hexs(tok.decode(ids, skip_special_tokens=False)),
                                      "decode_skip": hexs(decode_skip(tok, ids))} for ids in decode_only[name]]})
        print("  tokenizer", name)
    with open(os.path.join(OUT, "golden-norm.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizers_version": tokenizers.__version__, "names": [n for n, _ in TEXTS],
                   "texts_hex": [r.hex() for _, r in TEXTS], "chunk": CHUNK, "tokenizers": toks,
                   "variants": variants()}, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")
    print("tokenizers", tokenizers.__version__, "; wrote", OUT)


if __name__ == "__main__":
    main()
