#!/usr/bin/env python3
"""Golden fixtures for tests/test_tokenizer.c, made with Hugging Face `tokenizers`.

Run from the repository root:  python3 tests/ref/gen_tokenizer.py
Writes tests/data/tok/ (see the README.md written there):
  llama3ish/tokenizer.json, tokenizer_config.json   small trained byte-level BPE, Llama-3 layout
  metaspace/tokenizer.json, tokenizer_config.json   small trained Metaspace BPE with byte fallback
  golden-<name>.json                                 encode/decode goldens of the tricky strings
  golden-variants.json                               the same for pipeline variants (patched tokenizer.json)
  pycoder-stdlib.ids.gz, pycoder-stdlib-bos.ids.gz   ids of the whole stdlib text (int32 LE, gzip)
  stdlib-hashes.json                                 count + FNV-1a-64 of the stdlib ids, per tokenizer
Everything is deterministic (BPE training included); re-running rewrites identical files.
"""
import gzip
import json
import os
import struct
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

OUT = "tests/data/tok"
STDLIB = "tests/data/text/python-stdlib-eval.txt"
PYCODER = "tests/data/pycoder-5m/tokenizer.json"
LLAMA2 = "tests/data/tokenizers/llama2/tokenizer.json"
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# (name, bytes). Texts are bytes so that invalid UTF-8 can be given; HF sees
# bytes.decode("utf-8", "replace"), which is what gq does internally.
TRICKY = [
    ("empty", b""),
    ("space", b" "),
    ("two_spaces", b"  "),
    ("newline", b"\n"),
    ("tab", b"\t"),
    ("hello", b"Hello world"),
    ("hello_lead_space", b" Hello world"),
    ("crlf", b"line one\r\nline two\r\n\r\nend\r"),
    ("tabs", b"def f(x):\n\tif x:\n\t\treturn 1\n\t \treturn 2\n"),
    ("ws_run", b"x" + b" " * 100 + b"y"),
    ("ws_mixed", b"  \t \n  \n\n   a  \t\t b\n \n" + b"\n" * 40 + b"   "),
    ("ws_trailing", b"end   "),
    ("cjk", "你好，世界！日本語のテキスト、한국어 텍스트。中文字符测试".encode()),
    ("emoji", "smile 😀 thumbs 👍🏽 family 👨\u200d👩\u200d👧\u200d👦 flag 🏳️\u200d🌈 heart ❤️ 🇩🇪".encode()),
    ("combining", "e\u0301 a\u0308 n\u0303 Z\u0351\u036b\u0343a\u0352l\u0350g\u0344o \u0915\u094d\u0937".encode()),
    ("special_inside", b"a<s>b</s>c <s> </s>  <s><s></s><unk>"),
    ("special_only", b"<s>"),
    ("special_start", b"<s>hello </s>world"),
    ("llama3_specials", b"<|begin_of_text|>Hello<|eot_id|> <|end_of_text|>x"),
    ("special_like", b"<s <s/> </ s> <S> <<s>>"),
    ("invalid_utf8", b"abc\xff\xfedef \xc3\x28 \xe2\x82\xa1\xe2\x82 x\xf0\x9f\x98 \xed\xa0\x80 \xc0\xaf \x80end"),
    ("invalid_tail", b"tail \xe2\x82"),
    ("long_word", b"a" * 1000),
    ("long_word2", b"supercalifragilistic" * 40),
    ("long_mixed", ("Pneumonoultramicroscopicsilicovolcanoconiosis" * 8 + " ").encode() * 3),
    ("digits", b"1234567890123 3.14159 2024-01-01 1,000,000 007 x2y3 0x1F"),
    ("apostrophes", b"it's he'll I'M we'LL they'Re 'S 'd don't O'Neil rock'n'roll ''' 's"),
    ("long_s", "'\u017f '\u017fs \u212a".encode()),
    ("scripts", "Ελληνικά русский текст العربية हिन्दी ภาษาไทย ١٢٣ ४५६ ⅷ ² ½ ௰".encode()),
    ("unicode_ws", "a\u0085b \u00a0c\u2003d\u3000e\u200bf\ufeffg\u2028h\u2029i\u1680j \u202fk".encode()),
    ("nul", b"a\x00b\x01c\x7f"),
    ("python", b"import os\n\nclass Foo(object):\n    def __init__(self, x=1):\n        self.x = x  # comment\n"
               b"        return {'a': [1, 2.5e-3], \"b\": None}\n\n\nif __name__ == '__main__':\n    print(Foo())\n"),
    ("punct", b"!!! ??? ... --- ___ *** @@@ ### $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}} ||| ~~~ ``` <<< >>>"),
    ("markup", b"<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>"),
    ("url", b"https://example.com/path?q=1&r=two#frag user@example.org"),
    ("mixed_lang", "The café naïve résumé — “quotes” ‘single’ … €100 ¥200 £300".encode()),
    ("added_flags", b"x [R]  y a  <mask> b [w] word1 a[w]b -[w]- \xc2\xb2[w] \xe2\x85\xb7[w]"),
]

# arbitrary id lists decoded with HF (byte fallback runs, specials, ...)
DECODE_ONLY = {
    "llama2": [[1, 15043, 2], [29871, 13], [243, 162, 155, 131], [243, 162, 155], [228, 1, 228], [0, 0, 29892],
               [1, 1, 29871], [259, 1678, 259], [31849, 243, 29896]],
    "metaspace": None,  # filled in below from piece names
    # byte-level: partial UTF-8 sequences (from_utf8_lossy), specials, a token outside the byte map
    "pycoder": [[171], [171, 123], [129, 67, 129], [1, 2, 0], [171, 123, 1, 121], [223, 223, 1, 223]],
    "llama3ish": [[171, 123], [2000, 39, 2001], [2003, 2004, 2005], [158, 226, 2002, 103]],
}


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for b in struct.pack("<%di" % len(ids), *ids):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def llama2_as_pairs():
    """The shipped Llama-2 tokenizer.json has 3 merges that HF refuses ("   ",
    "     ", "▁  ": vocab pieces that contain a space). Rewrite them as pairs,
    split at the one space where both halves and their concatenation are in
    the vocab (the rule gq applies), so HF can load the very same tokenizer."""
    d = json.load(open(LLAMA2, encoding="utf-8"))
    v = d["model"]["vocab"]
    merges = []
    fixed = []
    for m in d["model"]["merges"]:
        if m.count(" ") == 1:
            merges.append(m.split(" "))
            continue
        c = [(m[:i], m[i + 1:]) for i, ch in enumerate(m)
             if ch == " " and m[:i] in v and m[i + 1:] in v and m[:i] + m[i + 1:] in v]
        assert len(c) == 1, (m, c)
        merges.append(list(c[0]))
        fixed.append((m, list(c[0])))
    d["model"]["merges"] = merges
    return Tokenizer.from_str(json.dumps(d, ensure_ascii=False)), fixed


def training_text():
    text = open(STDLIB, encoding="utf-8").read()
    # some non-ASCII so that merges of multi-byte characters exist
    extra = "Ελληνικά русский текст 你好世界 日本語のテキスト café naïve résumé “quotes” … €100\n"
    return [text[i:i + 4096] for i in range(0, len(text), 4096)] + [extra] * 50


def train_llama3ish():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=2000, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer)
    # Llama-3 keeps its special tokens after the model vocab
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
    tok.add_tokens([AddedToken("[R]", rstrip=True, normalized=False, special=False),
                    AddedToken("[w]", single_word=True, normalized=False, special=False)])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    return tok


def train_metaspace():
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre
    specials = ["<unk>", "<s>", "</s>"]
    byte_toks = ["<0x%02X>" % b for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=2000, show_progress=False, special_tokens=specials + byte_toks)
    base.train_from_iterator(training_text(), trainer)
    d = json.loads(base.to_str())
    # Llama-2 layout: <0xNN> in the model vocab only, unk/bos/eos added tokens
    d["added_tokens"] = [a for a in d["added_tokens"] if a["content"] in specials]
    d["model"].update(byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    d["post_processor"] = None  # BOS comes from tokenizer_config.json add_bos_token
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"},
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}]}
    return Tokenizer.from_str(json.dumps(d, ensure_ascii=False))


def save_tok(tok, name, config):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")


def hf_with_bos(tok, name, ids):
    # the metaspace tokenizer has no post-processor: BOS comes from
    # tokenizer_config.json (add_bos_token), as transformers adds it
    if name == "metaspace":
        return [tok.token_to_id("<s>")] + ids
    return None


def decode_skip(tok, ids):
    """decode(skip_special_tokens=True) as HF means it: the special added
    tokens left out. HF 0.23 fails to skip special tokens with
    normalized=true (their decoded text is the normalized content, "▁<s>",
    which is not in its special set), so the golden is HF's decode of the ids
    without them; where HF's own skip works the two agree (asserted)."""
    special = {i for i, a in tok.get_added_tokens_decoder().items() if a.special}
    ref = tok.decode([i for i in ids if i not in special], skip_special_tokens=False)
    if not any(a.special and a.normalized for a in tok.get_added_tokens_decoder().values()):
        assert ref == tok.decode(ids, skip_special_tokens=True), ids
    return ref


def golden(tok, name, decode_only=()):
    cases = []
    for cname, raw in TRICKY:
        text = raw.decode("utf-8", "replace")
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_sp = hf_with_bos(tok, name, ids) or tok.encode(text, add_special_tokens=True).ids
        dec = tok.decode(ids_sp, skip_special_tokens=False)
        dec_skip = decode_skip(tok, ids_sp)
        dec_plain = tok.decode(ids, skip_special_tokens=False)
        cases.append({
            "name": cname, "text_hex": raw.hex(), "ids": ids, "ids_special": ids_sp,
            "decode_special": dec.encode().hex(), "decode_special_skip": dec_skip.encode().hex(),
            "decode": dec_plain.encode().hex(), "lossless": dec_plain == text,
        })
    dec_cases = []
    for ids in decode_only:
        dec_cases.append({"ids": ids, "decode": tok.decode(ids, skip_special_tokens=False).encode().hex(),
                          "decode_skip": decode_skip(tok, ids).encode().hex()})
    with open(os.path.join(OUT, "golden-%s.json" % name), "w", encoding="utf-8") as f:
        json.dump({"tokenizer": name, "tokenizers_version": tokenizers.__version__, "cases": cases,
                   "decode_only": dec_cases}, f, indent=0)
        f.write("\n")
    return cases


BL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


def split(pattern, behavior, invert=False, kind="Regex"):
    return {"type": "Split", "pattern": {kind: pattern}, "behavior": behavior, "invert": invert}


def seq(*pre):
    return {"type": "Sequence", "pretokenizers": list(pre)}


# Pipeline variants: the base tokenizer.json with some top-level keys replaced.
# They exercise Split behaviours, invert, String patterns, ByteLevel's prefix
# space, a Regex Replace normalizer, Metaspace schemes and decoder steps.
VARIANTS = [
    ("split_removed", "llama3ish", {"pre_tokenizer": seq(split(r"\s+", "Removed"), BL)}),
    ("split_merged_prev", "llama3ish", {"pre_tokenizer": seq(split(r"\p{P}", "MergedWithPrevious"), BL)}),
    ("split_merged_next", "llama3ish", {"pre_tokenizer": seq(split(r"\s", "MergedWithNext"), BL)}),
    ("split_contiguous", "llama3ish", {"pre_tokenizer": seq(split(r"\d", "Contiguous"), BL)}),
    ("split_invert_removed", "llama3ish", {"pre_tokenizer": seq(split(r"\p{L}+", "Removed", invert=True), BL)}),
    ("split_string", "llama3ish", {"pre_tokenizer": seq(split(" ", "MergedWithPrevious", kind="String"), BL)}),
    ("bytelevel_prefix", "llama3ish", {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True,
                                                         "trim_offsets": True, "use_regex": True}}),
    ("bytelevel_noregex", "llama3ish", {"pre_tokenizer": BL}),
    ("replace_regex", "llama3ish", {"normalizer": {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "}}),
    ("metaspace_always", "metaspace", {
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False},
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {
            "type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}]}}),
    ("metaspace_never", "metaspace", {
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True},
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True}}),
    ("metaspace_legacy", "metaspace", {
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                           "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                                                         "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}}),
    # no byte fallback: unknown characters become <unk>, fused or not
    ("unk_fused", "metaspace", {"model.byte_fallback": False}),
    ("unk_unfused", "metaspace", {"model.byte_fallback": False, "model.fuse_unk": False}),
    ("sp_normalizer", "metaspace", {
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                           {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 2, "stop": 1}]}}),
]


def variants():
    out = []
    for vname, base, patch in VARIANTS:
        d = json.load(open(os.path.join(OUT, base, "tokenizer.json"), encoding="utf-8"))
        for k, v in patch.items():  # "a.b" sets a nested key
            if "." in k:
                d[k.split(".")[0]][k.split(".")[1]] = v
            else:
                d[k] = v
        tok = Tokenizer.from_str(json.dumps(d, ensure_ascii=False))
        cases = []
        for cname, raw in TRICKY:
            text = raw.decode("utf-8", "replace")
            ids = tok.encode(text, add_special_tokens=True).ids
            if base == "metaspace" and "post_processor" not in patch:
                ids = [tok.token_to_id("<s>")] + ids  # add_bos_token, see README
            cases.append({"name": cname, "ids": ids, "decode": tok.decode(ids, skip_special_tokens=False).encode().hex()})
        out.append({"name": vname, "base": base, "patch": patch, "cases": cases})
    with open(os.path.join(OUT, "golden-variants.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizers_version": tokenizers.__version__, "texts_hex": [r.hex() for _, r in TRICKY],
                   "variants": out}, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")


def write_ids_gz(path, ids):
    data = struct.pack("<%di" % len(ids), *ids)
    with open(path, "wb") as raw:
        # mtime=0 and no file name: byte-identical on every run
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(data)


def main():
    if not os.path.exists(STDLIB):
        sys.exit("run from the repository root")
    os.makedirs(OUT, exist_ok=True)
    stdlib = open(STDLIB, encoding="utf-8").read()

    py = Tokenizer.from_file(PYCODER)
    ll, fixed = llama2_as_pairs()
    l3 = train_llama3ish()
    save_tok(l3, "llama3ish", {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True,
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}<|eot_id|>{% endfor %}",
        "tokenizer_class": "PreTrainedTokenizerFast"})
    ms = train_metaspace()
    save_tok(ms, "metaspace", {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
        "add_eos_token": False, "tokenizer_class": "PreTrainedTokenizerFast"})
    # reload from the saved files: the goldens are of exactly what is shipped
    l3 = Tokenizer.from_file(os.path.join(OUT, "llama3ish", "tokenizer.json"))
    ms = Tokenizer.from_file(os.path.join(OUT, "metaspace", "tokenizer.json"))

    ms_decode = [[ms.token_to_id(p) for p in ps] for ps in (
        ["<0xE2>", "<0x82>", "<0xAC>"], ["<0xE2>", "<0x82>"], ["<0xE2>", "<0x82>", "▁a"], ["<s>", "▁def", "<0x41>"], ["▁def", "<s>", "▁x"],
        ["<unk>", "<unk>"], ["▁"], ["▁", "▁"])]
    assert all(i is not None for ids in ms_decode for i in ids), ms_decode
    golden(py, "pycoder", DECODE_ONLY["pycoder"])
    golden(ll, "llama2", DECODE_ONLY["llama2"])
    golden(l3, "llama3ish", DECODE_ONLY["llama3ish"])
    golden(ms, "metaspace", ms_decode)
    variants()

    ids = py.encode(stdlib, add_special_tokens=False).ids
    ids_bos = py.encode(stdlib, add_special_tokens=True).ids
    write_ids_gz(os.path.join(OUT, "pycoder-stdlib.ids.gz"), ids)
    write_ids_gz(os.path.join(OUT, "pycoder-stdlib-bos.ids.gz"), ids_bos)
    hashes = {}
    for name, tok in (("pycoder", py), ("llama2", ll), ("llama3ish", l3), ("metaspace", ms)):
        e = tok.encode(stdlib, add_special_tokens=False).ids
        hashes[name] = {"count": len(e), "fnv1a64": fnv1a64(e), "first": e[:16]}
    with open(os.path.join(OUT, "stdlib-hashes.json"), "w") as f:
        json.dump(hashes, f, indent=1)
        f.write("\n")
    print("tokenizers", tokenizers.__version__, "; llama2 merges rewritten as pairs:", fixed)
    print("pycoder stdlib ids:", len(ids))


if __name__ == "__main__":
    main()
