#!/usr/bin/env python3
"""Tokenizer fixtures for FamilyTokenizerTests: tokenizer-only GGUFs and reference ids.

    python make_fixtures.py OUT_DIR --model NAME=PATH.gguf,separator=TOKEN[,pre=RULE,fixture=BASE] ...
                            [--llama-tokenize BIN]
(README.md here has the exact command.)

For every model:
  * OUT_DIR/NAME.tokenizer.gguf: the model file's `tokenizer.ggml.*` metadata entries copied byte for byte into a
    GGUF v3 file with no tensors (the vocabulary without the weights);
  * the reference ids of every text in `texts()` from transformers (`AutoTokenizer.from_pretrained(dir,
    gguf_file=...)`, `encode(text)` with its default special tokens) and, when a `llama-tokenize` binary is given,
    from llama.cpp (`llama-tokenize -m GGUF -bf FILE --ids --no-escape --log-disable`, which adds BOS when the file
    says so and parses special-token text, as CausalLM's `encode` does; see `llama_cpp_reference`).
With `pre=RULE,fixture=BASE` no GGUF is written: the references run on a metadata-only copy of PATH whose
`tokenizer.ggml.pre` is RULE, and the test splits BASE's vocabulary by RULE.
OUT_DIR/cases.json holds, per model, `[{text, ids, hf_ids?, decoded}]`: `ids` is llama.cpp's answer (the ground
truth for GGUF files) or transformers' when llama.cpp was not run; `hf_ids` appears only where transformers
disagrees; `decoded` is transformers' `decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)` of
the asserted ids without the BOS the tokenizer added.
"""
import argparse
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile


# ---------------------------------------------------------------------------------------------------------------
# GGUF: copy the tokenizer entries

def _read_kv_spans(path):
    """[(key, raw bytes of the whole entry)] for every metadata entry of a GGUF file."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)  # the metadata is at the start; 64 MiB covers any vocabulary
    if data[:4] != b"GGUF":
        raise SystemExit(f"{path}: not a GGUF file")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    pos = 4 + 4 + 8 + 8
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip_value(p, t):
        if t == 8:
            (n,) = struct.unpack_from("<Q", data, p)
            return p + 8 + n
        if t == 9:
            et, n = struct.unpack_from("<IQ", data, p)
            p += 12
            if et in sizes:
                return p + sizes[et] * n
            for _ in range(n):
                p = skip_value(p, et)
            return p
        return p + sizes[t]

    spans = []
    for _ in range(n_kv):
        start = pos
        (klen,) = struct.unpack_from("<Q", data, pos)
        key = data[pos + 8 : pos + 8 + klen].decode()
        pos += 8 + klen
        (t,) = struct.unpack_from("<I", data, pos)
        pos = skip_value(pos + 4, t)
        spans.append((key, data[start:pos]))
    return spans


def _string_entry(key, value):
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", 8, len(v)) + v


def write_gguf(src, dst, keep=lambda k: k.startswith("tokenizer.ggml."), overrides=None):
    """Copies the metadata entries `keep` selects (with string `overrides`) into a GGUF v3 file without tensors."""
    overrides = overrides or {}
    entries = [(k, _string_entry(k, overrides[k]) if k in overrides else raw) for k, raw in _read_kv_spans(src) if keep(k)]
    tmp = dst + ".partial"
    with open(tmp, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries)))
        for _, raw in entries:
            f.write(raw)
    os.replace(tmp, dst)
    return [k for k, _ in entries]


# ---------------------------------------------------------------------------------------------------------------
# Texts

def texts():
    t = []
    # Empty-ish and single characters.
    t += ["", " ", "  ", "\n", "\t", "\r\n", "a", "A", ".", "\u200b", "\ufeff", "\u00a0", "\u3000", "\u2028",
          "\u0085", "\x01", "\x1f", "\x7f", "\u00ad", "\u2060"]
    # Whitespace runs: spaces, tabs, newlines, mixtures, leading and trailing.
    for n in (1, 2, 3, 4, 5, 7, 8, 12, 16, 31, 33):
        t.append("a" + " " * n + "b")
    for n in (1, 2, 3, 4, 8):
        t.append("x" + "\t" * n + "y")
        t.append("p" + "\n" * n + "q")
    t += ["  leading", "trailing  ", "   both   ", "\tindented\n\t\tmore", "line1\r\nline2\r\n", "a \n b",
          "a\n\n\nb", "a \t b", " \n \n ", "\n\n\n\n\n\n", "    ", "\t\t\t\t", "word\n", "\nword", " \tword",
          "x \u00a0 y", "one\u3000two", "end with space ", "a  \n\n  b", "mixed \t\n\r\x0b\x0c end",
          "        return x", "\t\tif (x) {\n\t\t\treturn;\n\t\t}", " " * 40 + "deep", "\n" * 40 + "deep"]
    # Numbers of many lengths and shapes.
    for n in range(1, 21):
        t.append("".join(str((7 * k + 3) % 10) for k in range(n)))
    t += ["3.14159", "-42", "+1 (555) 010-9999", "1,234,567.89", "1e-9", "0x1F", "10^6", "2024-12-31",
          "12:34:56", "v1.2.3", "ab12cd345ef6789", "year 1999 and 2000", " 123", "$100", "100%", "½ ⅓ ¼",
          "Ⅻ ½ ²", "x² + y³", "٠١٢٣٤٥٦٧٨٩", "０１２３４５", "१२३", "①②③", "007", "3,0", "1.", ".5"]
    # Contractions (case, and a non-ASCII letter after the apostrophe).
    t += ["I'm here", "don't", "you're", "we've", "they'll", "she'd", "it's", "I'M", "DON'T", "YOU'RE",
          "WE'VE", "THEY'LL", "SHE'D", "IT'S", "'s", "'S", "'ll", "o'clock", "rock 'n' roll", "'ſ long s",
          "l'été", "it’s curly"]
    # Code.
    t += [
        "def square(x):\n    return x * x\n",
        "for i in range(10):\n\tprint(i)",
        "import numpy as np\nnp.array([1, 2, 3])",
        "class Foo(Bar):\n    def __init__(self, *args, **kwargs):\n        super().__init__()",
        "func f(_ x: Int) -> Int { x &* 2 }",
        "let s = \"hello\\n\"; print(s)",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
        "const f = (a, b) => a ?? b;",
        "if (a != b && c >= d || !e) { x++; }",
        "SELECT * FROM users WHERE id = 1;",
        "<div class=\"x\"><b>bold</b> and <i>it</i></div>",
        "<table><tr><td>1</td></tr></table>",
        "{\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\"}}",
        "ls -la | grep foo > out.txt 2>&1",
        "x = [i**2 for i in range(100) if i % 3 == 0]",
        "    # comment with    spaces\n",
        "fn main() {\n    println!(\"Hello, world!\");\n}",
        "a_b_c __dunder__ camelCaseName snake_case_name",
        "#!/usr/bin/env python3",
        "\"\"\"docstring\"\"\"",
        "arr[i][j] += 1;",
        "@property\ndef x(self): ...",
        "$ echo $HOME && cd ~/src",
        "// TODO: fix\n/* block */",
        "<?xml version=\"1.0\"?>",
        "std::vector<int> v{1, 2, 3};",
        "let x = y ?? z; // nullish",
        "print(f\"{x!r:>10}\")",
        "---\ntitle: Doc\n---",
        "| a | b |\n|---|---|\n| 1 | 2 |",
    ]
    # URLs, e-mails, paths.
    t += ["https://example.com/path?query=1&x=y#frag", "http://localhost:8080/v1/chat/completions",
          "user.name+tag@example.co.uk", "C:\\Users\\name\\file.txt", "/usr/local/bin/python3",
          "ftp://ftp.example.org/pub/file.tar.gz", "www.example.com", "git@github.com:owner/repo.git",
          "https://例子.测试/路径", "file:///tmp/a%20b.txt"]
    # CJK.
    t += ["你好，世界！", "我爱北京天安门。", "今天天气很好，我们去公园吧。", "日本語のテキストです。",
          "カタカナとひらがな", "東京都渋谷区", "한국어 텍스트입니다.", "안녕하세요 세계", "中文English混合text",
          "漢字かな交じり文", "简体字和繁體字", "𠀀𠀁𪚥", "「引用」『二重』", "ｈｅｌｌｏ　ｗｏｒｌｄ", "ﾊﾝｶｸｶﾀｶﾅ"]
    # Emoji.
    t += ["😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "❤️", "1️⃣", "🏳️‍🌈", "I ❤️ NY", "emoji at end 🚀",
          "🙂 smile", "a😀b", "🤖🦾🧠", "👩🏻‍💻", "✅ done ❌ failed"]
    # Accents, Latin, Greek, Cyrillic.
    t += ["café", "cafe\u0301", "naïve résumé", "Ångström", "Ελληνικά γράμματα", "Привет, мир!", "Україна",
          "Tiếng Việt có dấu", "Straße", "Ærø ØÆÅ", "ﬁ ligature", "İstanbul ıi", "Ωmega µ", "ǅ Dž",
          "Þorn ð", "Œuvre", "Ça va?", "Zürich", "mañana", "Crème brûlée"]
    # Other scripts.
    t += ["مرحبا بالعالم", "العربية: ١٢٣", "שלום עולם", "नमस्ते दुनिया", "हिन्दी भाषा", "ภาษาไทย",
          "বাংলা", "தமிழ்", "ქართული", "Հայերեն", "አማርኛ", "ᚠᚢᚦ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ℌ𝔢𝔩𝔩𝔬", "ܐܪܡܝܐ"]
    # Combining marks.
    t += ["e\u0301\u0302\u0303", "Z̷̢a̸l̶g̵o̴", "a\u0308o\u0308u\u0308", "\u0301leading mark", "n\u0303",
          "ক্ষ", "क्‍ष", "e\u20dd", "\u200dzwj", "a\u034fb"]
    # Mixed scripts.
    t += ["Hello мир 世界 🌍", "abcабв", "GPT-4 и Claude", "x=αβγ; y=δ", "東京 Tokyo トウキョウ",
          "Price: €12.50 / ¥1500 / £9", "Temp: 23°C → 73°F", "a→b⇒c", "∑∫√∞≈≠≤≥", "©®™",
          "😀 日本 abc 123", "mixed123漢字abc", "العربية English", "עברית123", "Ωmega123"]
    # Punctuation and symbols.
    t += ["...", "!!!???", "—–-", "«quotes» „low“", "(((nested)))", "[{<>}]", "@#$%^&*", "~`|\\",
          "a,b;c:d", "end.", "Wait... what?!", "--flag=value", "->", "::", "!=="]
    # Private use, unassigned, noncharacters, supplementary.
    t += ["\ue000\uf8ff", "\U0010fffd", "\u0378\u0379", "\ufdd0", "\U0001f9ff", "𝟘𝟙𝟚"]
    # Special-token text (each family's, partial and adjacent).
    t += ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", "<|im_end|>",
          "<|im_start", "im_start|>", "<|im_start|><|im_start|>", "text<|endoftext|>more",
          "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n", "<end_of_turn>", "<start_of_turn",
          "<bos>hello", "<eos>", "<pad><unk>", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
          "<|eot_id|>", "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
          "<s>hi</s>", "</s>", "<b>bold</b><i>x</i>", "<unused0>", "[multimodal]", "<start_of_image>",
          "<|im_start|> spaced <|im_end|> ", "<|vision_start|><|image_pad|><|vision_end|>", "<think>\n\n</think>"]
    # Longer text.
    t += [
        "The quick brown fox jumps over the lazy dog. " * 3,
        "In 1492, Columbus sailed the ocean blue; in 1969, Apollo 11 landed on the Moon (July 20th).",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.",
        "Q: What is 12345 * 6789?\nA: 83810205.",
        "Tokenization isn't trivial:   whitespace,\ttabs,\nnewlines — and “quotes”.",
    ]
    # Seeded random mixtures.
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        ".,;:!?'\"()[]{}<>|/\\-_+=*&^%$#@~`",
        "éèêëàâäçñöüßøåÉÀÖÜœæ",
        "日本語中文字漢字のテキスト한국어텍스트",
        "😀👍🏽🚀🇫🇷🙂",
        "    \n\n\t\r",
        "0123456789",
        "مرحباनमस्तेПривет",
    ]
    rng = random.Random(20250613)
    for _ in range(80):
        n = rng.randint(1, 40)
        t.append("".join(rng.choice(rng.choice(pools)) for _ in range(n)))
    seen, out = set(), []
    for s in t:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


# ---------------------------------------------------------------------------------------------------------------
# References

def hf_reference(path, cases):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    out = []
    for s in cases:
        out.append(tok.encode(s))
    return tok, out


def _llama_tokenize(binary, path, text, d):
    f = os.path.join(d, "prompt.bin")
    with open(f, "wb") as h:
        h.write(text.encode("utf-8"))
    r = subprocess.run([binary, "-m", path, "-bf", f, "--ids", "--no-escape", "--log-disable"], capture_output=True)
    m = re.search(r"\[[0-9, ]*\]", r.stdout.decode(errors="replace"))
    if r.returncode != 0 or not m:
        raise SystemExit(f"llama-tokenize failed on {text[:80]!r}: {r.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(m.group(0))


def llama_cpp_reference(binary, path, cases, separator, bos):
    """llama.cpp's ids for every case. Loading a vocabulary takes about a second, so all texts go through one call,
    joined by a control token that none of them contains; special tokens cut the text into fragments that llama.cpp
    tokenizes independently, so the ids between two separators are the text's own (plus the BOS the file adds,
    which only the first gets). A sample of texts is tokenized alone as well, to check that this holds."""
    sep_text, sep_id = separator
    assert not any(sep_text in s for s in cases), sep_text
    with tempfile.TemporaryDirectory() as d:
        ids = _llama_tokenize(binary, path, sep_text.join(cases), d)
        if bos is not None and ids[:1] == [bos]:
            ids = ids[1:]
        chunks, cur = [], []
        for i in ids:
            if i == sep_id:
                chunks.append(cur)
                cur = []
            else:
                cur.append(i)
        chunks.append(cur)
        assert len(chunks) == len(cases), (len(chunks), len(cases))
        out = [([bos] if bos is not None else []) + c for c in chunks]
        rng = random.Random(7)
        for k in sorted(rng.sample(range(len(cases)), 25)) + [0, len(cases) - 1]:
            alone = _llama_tokenize(binary, path, cases[k], d)
            if alone != out[k]:
                raise SystemExit(f"{path}: case {k} {cases[k]!r} alone gives {alone}, joined {out[k]}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH.gguf")
    ap.add_argument("--llama-tokenize", help="path of llama.cpp's llama-tokenize")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cases = texts()
    import tokenizers
    import transformers

    result = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
              "llama_cpp": None, "texts": len(cases), "models": {}}
    if args.llama_tokenize:
        v = subprocess.run([args.llama_tokenize, "--version"], capture_output=True)
        result["llama_cpp"] = (v.stdout + v.stderr).decode(errors="replace").strip().splitlines()[0:1]
    work = tempfile.mkdtemp()
    for spec in args.model:
        # NAME=PATH,separator=TOKEN[,pre=RULE,fixture=BASE]: with pre, BASE's vocabulary split by another
        # pre-tokenizer rule (the references then run on a metadata-only copy of PATH with `tokenizer.ggml.pre`
        # replaced). TOKEN is a control token none of the texts contains (see llama_cpp_reference).
        name, rest = spec.split("=", 1)
        path, *opts = rest.split(",")
        opts = dict(o.split("=", 1) for o in opts)
        fixture = opts.get("fixture", name)
        if "pre" in opts:
            ref_path = os.path.join(work, f"{name}.gguf")
            keys = write_gguf(path, ref_path, keep=lambda k: True, overrides={"tokenizer.ggml.pre": opts["pre"]})
        else:
            ref_path = path
            keys = write_gguf(path, os.path.join(args.out, f"{name}.tokenizer.gguf"))
        tok, hf = hf_reference(ref_path, cases)
        lc = None
        if args.llama_tokenize:
            sep = opts["separator"]
            sep_id = tok.convert_tokens_to_ids(sep)
            adds = _llama_tokenize(args.llama_tokenize, ref_path, "", work)
            lc = llama_cpp_reference(args.llama_tokenize, ref_path, cases, (sep, sep_id), adds[0] if adds else None)
        bos = tok.bos_token_id
        adds_bos = bos is not None and tok.encode("x")[:1] == [bos] and tok.encode("x", add_special_tokens=False)[:1] != [bos]
        rows, disagreements = [], 0
        for i, s in enumerate(cases):
            ids = lc[i] if lc is not None else hf[i]
            row = {"text": s, "ids": ids}
            if lc is not None and hf[i] != lc[i]:
                row["hf_ids"] = hf[i]
                disagreements += 1
            body = ids[1:] if adds_bos and ids[:1] == [bos] else ids
            row["decoded"] = tok.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            rows.append(row)
        result["models"][name] = {"source": os.path.basename(path), "fixture": fixture, "pre": opts.get("pre"),
                                  "keys": keys if "pre" not in opts else None, "reference": "llama.cpp" if lc else "transformers",
                                  "hf_disagreements": disagreements, "cases": rows}
        print(f"{name}: {len(rows)} texts, transformers disagrees with llama.cpp on {disagreements}", file=sys.stderr)
    tmp = os.path.join(args.out, "cases.json.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=0)
    os.replace(tmp, os.path.join(args.out, "cases.json"))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
