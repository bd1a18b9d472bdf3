"""all-MiniLM-L6-v2 tokenizer cases from the `tokenizers` library (Tests/Fixtures/minilm/tokenizer_cases.json):
    python Tests/Fixtures/gen/make_minilm_tokenizer_cases.py MINILM_DIR/tokenizer.json Tests/Fixtures/minilm/tokenizer_cases.json
"""
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
tok.no_truncation(); tok.no_padding()
cases = [
    "Hello, world!",
    "  Leading and trailing spaces   ",
    "Tabs\tand\nnewlines\r\nhere",
    "Café déjà vu — naïve façade, Ångström, Øresund, straße",
    "ÉCOLE ÜBER İstanbul ΣΊΣΥΦΟΣ",
    "中文分词测试，你好世界！",
    "日本語のテキストとカタカナ",
    "한국어 텍스트",
    "Привет, мир! Ёлка",
    "مرحبا بالعالم",
    "emoji 😀 👍🏽 🥰 🫠 ❤️",
    "symbols $5.00 & 100% ^caret^ `tick` ~tilde~ | pipe \\ back {brace} <angle> @at #hash",
    "€100 £5 ¥300 © ® ™ ° ± × ÷ ¶ §",
    "quotes “double” ‘single’ «guillemets» „low“ — en–dash … ellipsis",
    "don't can't won't it's I'm we've they're",
    "https://example.com/path?query=1&x=2 user@example.org",
    "3.14159 1,000,000 2023-11-23 12:30:45",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 101,
    "b" * 100,
    "zero\u200bwidth\u200dsp\ufeffaces and soft\u00adhyphen",
    "control\x00chars\x07here\x1b[0m\ufffdreplacement",
    "nbsp\u00a0ideographic\u3000space\u2003em\u2028line\x0bvt\x0cff\x85nel",
    "combining e\u0301 a\u0308 n\u0303 vs precomposed é ä ñ",
    "[CLS] special [SEP] tokens [MASK] inside [mask] [UNK] [PAD]",
    "[MASK][MASK]word[SEP]",
    "fullwidth ＡＢＣ １２３ ！",
    "ﬁ ligature ﬀ and ℌ ℍ Ⅻ ½ ²",
    "private\ue000use \U0010fffd",
    "unassigned \u0378 \U000e0001 tag",
    "math 𝐀𝐁𝐂 𝔸 ∑∫∂√∞ ≠ ≤",
    "Ελληνικά κείμενα με τόνους",
    "עברית עם ניקוד שָׁלוֹם",
    "हिन्दी पाठ",
    "ภาษาไทย",
    "x" * 30 + "ing",
    "The quick brown fox jumps over the lazy dog.",
    "UPPER lower MiXeD CaSe",
    "ŉ ǰ ΐ ﬆ",
    "unaffable unbelievable reimplementation",
    "newer punct ⸾ ⹂ ⹏ and symbols 🪿 🫎",
    "",
    "   ",
    "!!!???...",
]
out = []
for t in cases:
    e = tok.encode(t)
    out.append({"text": t, "ids": e.ids, "tokens": e.tokens})
json.dump(out, open(sys.argv[2], "w"), ensure_ascii=True, indent=None)
for o in out: print(repr(o["text"])[:60], o["tokens"][:30])
