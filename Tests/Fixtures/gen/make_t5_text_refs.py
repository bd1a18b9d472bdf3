"""Makes refs.json for Tests/Fixtures/tiny/t5-text: Hugging Face's text-to-text greedy generation with the tiny random T5 of ../t5
and the T5-layout Unigram tokenizer of ../../t5-unigram (both have the vocabulary 0..<1000: pad/eos/unk = 0/1/2,
<extra_id_0..99> = 999..900). config.json, generation_config.json, model.safetensors and tokenizer.json here are
symbolic links to those files, so this directory is a complete T5 model directory that takes text.

Run from the repository root with a Python that has torch, transformers and tokenizers (no hub is needed):
    python Tests/Fixtures/gen/make_t5_text_refs.py Tests/Fixtures/tiny/t5-text
For each text: `ids` = tokenizer(text).input_ids (the text's pieces, then </s>), `greedy` = generate(max_new_tokens=16,
do_sample=False) without the decoder start id, and its decode with and without skip_special_tokens.
"""
import json
import os
import sys

import tokenizers
import torch
import transformers
from transformers import T5ForConditionalGeneration, T5TokenizerFast

OUT = sys.argv[1]
tok = T5TokenizerFast(tokenizer_file=os.path.join(OUT, "tokenizer.json"))
model = T5ForConditionalGeneration.from_pretrained(OUT).eval()

TEXTS = [
    "translate English to German: The house is small.",
    "Hello world",
    "café naïve 日本語",
    "summarize: the quick brown fox jumps over the lazy dog",
    "<extra_id_0> hello <extra_id_1>",
    "Zürich ☃ 12345",
]

cases = []
for text in TEXTS:
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)[0].tolist()
    assert out[0] == model.config.decoder_start_token_id
    greedy = out[1:]
    cases.append({
        "text": text,
        "ids": enc.input_ids[0].tolist(),
        "greedy": greedy,
        "decoded": tok.decode(greedy, skip_special_tokens=False),
        "decoded_skip_special": tok.decode(greedy, skip_special_tokens=True),
    })

path = os.path.join(OUT, "refs.json")
with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"transformers_version": transformers.__version__, "tokenizers_version": tokenizers.__version__,
               "torch_version": torch.__version__, "max_new_tokens": 16, "cases": cases}, f, ensure_ascii=False, indent=1)
os.replace(path + ".tmp", path)
