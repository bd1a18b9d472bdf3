"""Makes the Unigram (SentencePiece, T5-style) tokenizer fixtures in Tests/Fixtures/t5-unigram.

Run from the repository root with a Python that has `sentencepiece`, `tokenizers`, `transformers` and `protobuf`:
    python Tests/Fixtures/gen/make_t5_unigram.py Tests/Fixtures/t5-unigram
No hub is needed: the SentencePiece models are trained here on generated text (seeded, deterministic), converted to
tokenizer.json with transformers' own T5/SentencePiece converter, and the expected ids and decoded text come from the
`tokenizers` library.
"""
import json
import os
import random
import sys
import tempfile
from types import SimpleNamespace

import sentencepiece as spm
import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, Regex
from transformers.convert_slow_tokenizer import SpmConverter, T5Converter

OUT = sys.argv[1]


def corpus(path):
    rng = random.Random(1)
    common = ("the of and to in is was for on that with as by at from his her it an are were this be which or had "
              "not but first one their they new after who has also been two time its all other year more world "
              "would what about into when there some can only people over city most many years state school such "
              "where these between under during before work well hello model language translate summarize english "
              "german french question answer small large number water house light music river quick brown fox jumps "
              "lazy dog write read speak little great good long right left high old young place part around").split()
    syl = ["ka", "to", "ri", "me", "lo", "sa", "ne", "pu", "di", "an", "er", "in", "on", "th", "st", "qu", "ch", "sh"]
    words = ["".join(rng.choice(syl) for _ in range(rng.randint(1, 4))) for _ in range(2000)]
    extra = ["café", "naïve", "Zürich", "façade", "résumé", "Ångström", "日本語", "中文", "東京", "12345", "2026",
             "3.14", "T5", "The", "Hello", "World", "translate English to German:", "summarize:", ",", ".", "!", "?"]

    def word():
        r = rng.random()
        if r < 0.6:
            w = common[min(int(rng.paretovariate(1.0)) - 1, len(common) - 1) if rng.random() < 0.5 else rng.randrange(len(common))]
            return w.capitalize() if rng.random() < 0.1 else w
        return rng.choice(words) if r < 0.9 else rng.choice(extra)

    lines = [" ".join(word() for _ in range(rng.randint(3, 15))) for _ in range(20000)]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def train(corpus_path, prefix, **kw):
    spm.SentencePieceTrainer.train(input=corpus_path, model_prefix=prefix, model_type="unigram",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=0.9995,
                                   minloglevel=2, hard_vocab_limit=False, num_threads=1, **kw)
    return prefix + ".model"


tmp = tempfile.mkdtemp()
text_path = os.path.join(tmp, "corpus.txt")
corpus(text_path)

# 1. T5: SentencePiece vocabulary 900 + 100 <extra_id_N>, nmt_nfkc (the Precompiled charsmap), as transformers'
#    T5Converter writes it today (Precompiled + Strip + Replace, Metaspace "always", TemplateProcessing $A </s>).
t5_model = train(text_path, os.path.join(tmp, "t5"), vocab_size=900, normalization_rule_name="nmt_nfkc")
orig = SimpleNamespace(vocab_file=t5_model, _extra_ids=100, add_prefix_space=True, legacy=True,
                       convert_tokens_to_ids=lambda t: {"</s>": 1}[t], all_special_tokens=["</s>", "<unk>", "<pad>"])
t5 = T5Converter(orig).converted()
t5.add_special_tokens([AddedToken(f"<extra_id_{i}>", normalized=False, special=True) for i in range(100)])

# 2. The same vocabulary in the older layout of the hub's t5-small tokenizer.json: Precompiled alone, then
#    WhitespaceSplit + Metaspace(add_prefix_space) pre-tokenizers and the legacy Metaspace decoder.
legacy = Tokenizer.from_str(t5.to_str())
legacy_json = json.loads(legacy.to_str())
legacy_json["normalizer"] = json.loads(t5.to_str())["normalizer"]["normalizers"][0]
legacy_json["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
    {"type": "WhitespaceSplit"}, {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}]}
legacy_json["decoder"] = {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}
legacy = Tokenizer.from_str(json.dumps(legacy_json))

# 3. A byte-fallback Unigram (identity normalization, so no charsmap), Metaspace prepend_scheme "first" without
#    splitting, a non-special added token matched in normalized text, and Llama's decoder chain.
bf_model = train(text_path, os.path.join(tmp, "bf"), vocab_size=600, normalization_rule_name="identity",
                 byte_fallback=True)
orig_bf = SimpleNamespace(vocab_file=bf_model, add_prefix_space=True, legacy=False,
                          all_special_tokens=["</s>", "<unk>", "<pad>"])
conv = SpmConverter(orig_bf)
conv.handle_byte_fallback = True
bf = conv.converted()
bf.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
bf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                decoders.Strip(content=" ", left=1, right=0)])
bf.add_tokens([AddedToken("hello world", normalized=True, special=False)])
bf.add_special_tokens([AddedToken("<sep>", normalized=False, special=True)])

CASES = [
    "", " ", "   ", "Hello world", "Hello  world", "   leading spaces", "trailing spaces   ", "a   b    c",
    "hello world. The T5 model!", "café naïve Zürich façade résumé", "cafe\u0301 decomposed", "Ångström",
    "日本語 中文 東京", "東京タワー", "emoji 😀 and 👨\u200d👩\u200d👧 family", "12345 3.14 2026 007",
    "ﬁ ligature ① ＡＢＣ ｶﾀｶﾅ", "tab\tand\nnewline\r\nend", "unknown ☃ ♞ ✓ chars", "☃☃☃",
    "<extra_id_0> hello <extra_id_1>", "</s> in text", "hello</s>", "Hello<pad>world<unk>", "ThE qUiCk BrOwN",
    "a\u00a0b\u2003c", "zero\u200bwidth", "x" * 40, "hello world hello world", "say hello world<sep>now",
    "  <extra_id_5>  spaced  ", "Ünïcödé ÀÉÎÕÜ ß ẞ", "naïve café ", "\u3000full width space",
    "quotes “like” ‘this’ — and … ellipsis", "Привет мир", "مرحبا", "한국어",
]


def cases(tok):
    out = []
    for text in CASES:
        enc = tok.encode(text)
        plain = tok.encode(text, add_special_tokens=False)
        out.append({
            "text": text,
            "ids": enc.ids,
            "tokens": enc.tokens,
            "ids_no_special": plain.ids,
            "decoded": tok.decode(enc.ids, skip_special_tokens=True),
            "decoded_with_special": tok.decode(enc.ids, skip_special_tokens=False),
        })
    return out


def write(name, obj):
    path = os.path.join(OUT, name)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, indent=1))
    os.replace(path + ".tmp", path)


write("tokenizer.json", t5.to_str(pretty=False))
write("tokenizer-legacy.json", json.dumps(legacy_json, ensure_ascii=False))
write("tokenizer-bytefallback.json", bf.to_str(pretty=False))
write("cases.json", {
    "tokenizers_version": tokenizers.__version__,
    "tokenizer.json": cases(t5),
    "tokenizer-legacy.json": cases(legacy),
    "tokenizer-bytefallback.json": cases(bf),
})
