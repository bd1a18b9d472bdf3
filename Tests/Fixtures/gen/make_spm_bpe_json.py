"""SentencePiece-style BPE tokenizer.json fixtures (byte_fallback, "▁" for spaces) and their reference encodings,
for SentencePieceJSONTests.

    python3 Tests/Fixtures/gen/make_spm_bpe_json.py Tests/Fixtures/tokenizers

1. Trains one small BPE vocabulary with the `tokenizers` library (BpeTrainer, Metaspace pre-tokenizer) on the
   repository's own docs (README.md, docs/*.md; fixed order), then lays it out as Hugging Face ships SentencePiece
   BPE models: <unk> <s> </s> first, the 256 byte pieces <0x00> ... <0xFF> next (byte fallback), then the trained
   pieces; `byte_fallback: true`, `fuse_unk: true`, <unk> as unk_token; merges as trained.
2. Writes that vocabulary under three pipelines (the three ways such files come):
     spm-gemma.tokenizer.json    normalizer Replace(" ", "▁"), pre_tokenizer Split(" ", MergedWithPrevious),
                                 decoder Replace + ByteFallback + Fuse; BOS <s> by TemplateProcessing; plus Gemma-
                                 like added tokens: special chat markers and non-special "\n\n" / "<br>" / "  "
                                 (what transformers writes for Gemma 3, see README)
     spm-llama2.tokenizer.json   normalizer Prepend("▁") + Replace(" ", "▁"), no pre_tokenizer, decoder Replace +
                                 ByteFallback + Fuse + Strip(" ", 1, 0) (Llama 2 / Mistral as converted with legacy)
     spm-metaspace.tokenizer.json  pre_tokenizer Metaspace(prepend_scheme "first", split false), Metaspace decoder
                                 (transformers' newer conversions)
   and, for the Metaspace variant, a split=true, prepend_scheme "always" copy (spm-metaspace-split).
3. Encodes every text of cases.json (same directory) with each file through `tokenizers.Tokenizer.from_file`
   (add_special_tokens=True) and decodes the ids back with and without skip_special_tokens: spm_cases.json.
"""
import glob
import json
import os
import sys

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

out = sys.argv[1]
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
files = [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))
lines = []
for f in files:
    with open(f, encoding="utf-8") as fh:
        lines += [l.rstrip("\n") for l in fh if l.strip()]
# A little non-Latin text, so that some of it is in the vocabulary (the rest falls back to bytes).
lines += ["日本語のテキストです。東京は日本の首都です。", "Ça va très bien, merci. Déjà vu. Über straße.",
          "Привет, как дела? Всё хорошо.", "naïve café résumé"] * 20

tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
trainer = trainers.BpeTrainer(vocab_size=1400, min_frequency=2, special_tokens=[], show_progress=False,
                              limit_alphabet=300)
tok.train_from_iterator(lines, trainer=trainer)
trained = json.loads(tok.to_str())["model"]
pieces = sorted(trained["vocab"].items(), key=lambda kv: kv[1])
vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
for b in range(256):
    vocab["<0x%02X>" % b] = len(vocab)
for p, _ in pieces:
    if p not in vocab:
        vocab[p] = len(vocab)
merges = trained["merges"]


def added(i, content, special):
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def base(extra_added=()):
    a = [added(0, "<unk>", True), added(1, "<s>", True), added(2, "</s>", True)]
    n = len(vocab)
    for k, (content, special) in enumerate(extra_added):
        a.append(added(n + k, content, special))
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": a,
            "post_processor": {"type": "TemplateProcessing",
                               "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                          {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}},
                                        {"SpecialToken": {"id": "<s>", "type_id": 1}},
                                        {"Sequence": {"id": "B", "type_id": 1}}],
                               "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}}


def model(extra=()):
    v = dict(vocab)
    for content, _ in extra:
        v[content] = len(v)
    return {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
            "vocab": v, "merges": merges}


REPLACE_DEC = [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
               {"type": "Fuse"}]
GEMMA_ADDED = [("<start_of_turn>", True), ("<end_of_turn>", True), ("\n\n", False), ("<br>", False), ("  ", False)]

variants = {}
g = base(GEMMA_ADDED)
g["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
g["pre_tokenizer"] = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False}
g["decoder"] = {"type": "Sequence", "decoders": REPLACE_DEC}
g["model"] = model(GEMMA_ADDED)
variants["spm-gemma"] = g

l2 = base()
l2["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                        {"type": "Replace", "pattern": {"String": " "},
                                                         "content": "▁"}]}
l2["pre_tokenizer"] = None
l2["decoder"] = {"type": "Sequence", "decoders": REPLACE_DEC + [{"type": "Strip", "content": " ", "start": 1,
                                                                 "stop": 0}]}
l2["model"] = model()
variants["spm-llama2"] = l2

ms = base()
ms["normalizer"] = None
ms["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
ms["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
ms["model"] = model()
variants["spm-metaspace"] = ms

mss = json.loads(json.dumps(ms))
mss["pre_tokenizer"]["prepend_scheme"] = "always"
mss["pre_tokenizer"]["split"] = True
mss["decoder"]["prepend_scheme"] = "always"
mss["decoder"]["split"] = True
variants["spm-metaspace-split"] = mss

with open(os.path.join(out, "cases.json"), encoding="utf-8") as fh:
    texts = [c["text"] for c in next(iter(json.load(fh)["models"].values()))["cases"]]
texts += ["<start_of_turn>user\nHi<end_of_turn>\n", "a<br>b\n\nc  d", "<s>x</s> <unk>", " leading", "trailing ",
          "  two leading", "x\n\n\n\ny", "<s> <s>", "</s>", "▁", "▁▁x ▁", "<0x41>"]

result = {"tokenizers": tokenizers.__version__, "training_files": [os.path.relpath(f, root) for f in files],
          "models": {}}
for name, spec in variants.items():
    path = os.path.join(out, name + ".tokenizer.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(spec, fh, ensure_ascii=False, separators=(",", ":"))
    t = Tokenizer.from_file(path)
    cases = []
    for text in texts:
        ids = t.encode(text).ids
        cases.append({"text": text, "ids": ids, "decoded": t.decode(ids, skip_special_tokens=False),
                      "decoded_skip": t.decode(ids, skip_special_tokens=True)})
    result["models"][name] = {"file": name + ".tokenizer.json", "cases": cases}
    fallback = sum(any(3 <= i < 259 for i in c["ids"]) for c in cases)
    print(name, len(spec["model"]["vocab"]), "pieces,", len(merges), "merges,", len(cases), "texts,",
          fallback, "with byte fallback, size", os.path.getsize(path))

with open(os.path.join(out, "spm_cases.json"), "w", encoding="utf-8") as fh:
    json.dump(result, fh, ensure_ascii=False, indent=0)
    fh.write("\n")
