"""One-off check of SentencePieceJSONTokenizer on the real Gemma 3 vocabulary (not committed: 33 MB).

    python3 Tests/Fixtures/gen/make_gemma_tokenizer_json.py ~/.cache/causal/models/gemma-3-270m.gguf OUT
    CAUSAL_GEMMA_TOKENIZER_JSON=OUT swift test -c release --filter SentencePieceJSONTests/testGemma3TokenizerJSONEqualsTokenizers

transformers loads the GGUF (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`) and `save_pretrained`s its fast
tokenizer into OUT (tokenizer.json + tokenizer_config.json); then the `tokenizers` library (`Tokenizer.from_file`,
the backend transformers runs) encodes every text of Tests/Fixtures/tokenizers/cases.json (the gemma3 corpus, 395
texts) with add_special_tokens=True and decodes the ids with and without skip_special_tokens: OUT/reference.json.
"""
import json
import os
import sys

from tokenizers import Tokenizer
from transformers import AutoTokenizer

gguf, out = os.path.expanduser(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)
tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
tok.save_pretrained(out)
fast = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "..", "tokenizers", "cases.json"), encoding="utf-8") as fh:
    texts = [c["text"] for c in json.load(fh)["models"]["gemma3"]["cases"]]
ref = []
for t in texts:
    ids = fast.encode(t).ids
    assert ids == tok.encode(t), t  # transformers' own encode agrees with its backend
    ref.append({"text": t, "ids": ids, "decoded": fast.decode(ids, skip_special_tokens=False),
                "decoded_skip": fast.decode(ids, skip_special_tokens=True)})
with open(os.path.join(out, "reference.json"), "w", encoding="utf-8") as fh:
    json.dump(ref, fh, ensure_ascii=False)
print(len(ref), "texts;", sum(any(238 <= i < 494 for i in r["ids"]) for r in ref), "with byte pieces")
