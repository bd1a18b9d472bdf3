"""Reference outputs of Hugging Face transformers for the Qwen2, Qwen3, Llama 3 and Gemma 3 families (issue 13).

    python Tests/Fixtures/gen/make_family_fixtures.py tiny OUT_DIR
        Tiny random models, one directory each: OUT_DIR/{qwen2,qwen3,llama3,gemma3}/ with config.json,
        generation_config.json, model.safetensors (save_pretrained, fp32), refs.json and three .npy logit files.
    python Tests/Fixtures/gen/make_family_fixtures.py real NAME GGUF_PATH OUT_DIR
        A real GGUF loaded by transformers (dequantized to fp32): OUT_DIR/greedy.json and OUT_DIR/chat_template.json.
        NAME picks the prompts: a name starting with "qwen" renders the prompts as chat, anything else as raw text.

Needs torch, transformers, gguf, numpy, safetensors (CPU only; nothing is downloaded). See Tests/Fixtures/README.md.
"""
import json, math, os, sys, types
from importlib.metadata import version

import numpy as np
import torch
import transformers
from transformers import (AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig,
                          LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

torch.set_num_threads(2)

V = 1000
BOS, EOS, PAD = 0, 1, 2
SHORT_ROWS = [[5, 17, 99, 3, 42, 7, 250], [11, 12, 13], [600, 1, 999, 45, 45]]


def long_row():
    """40 ids in 3..999 from a fixed generator (the same on every run)."""
    g = torch.Generator().manual_seed(40)
    return torch.randint(3, V, (40,), generator=g).tolist()


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__, "gguf": version("gguf"),
            "numpy": np.__version__, "safetensors": version("safetensors")}


# ---------------------------------------------------------------------------------------------------------------
# Tiny models

def tiny_configs():
    common = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, rms_norm_eps=1e-6, initializer_range=0.2, bos_token_id=BOS, eos_token_id=EOS,
                  pad_token_id=PAD, attention_dropout=0.0)
    return {
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(**common, num_hidden_layers=2, max_position_embeddings=128,
                                                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                                tie_word_embeddings=False, use_sliding_window=False), 11),
        "qwen3": (Qwen3ForCausalLM, Qwen3Config(**common, num_hidden_layers=2, max_position_embeddings=128,
                                                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                                                tie_word_embeddings=False, attention_bias=False,
                                                use_sliding_window=False), 12),
        # original_max_position_embeddings 64: the wavelengths of head_dim 16 at theta 5e5 are 6.3, 32.4, 167, ...
        # so with low/high-frequency wavelengths 64/16 the first pair is kept, the second is interpolated (the
        # smooth branch) and the other six are divided by 8: every branch of the llama3 rule is used.
        "llama3": (LlamaForCausalLM, LlamaConfig(**common, num_hidden_layers=2, max_position_embeddings=256,
                                                 rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                                  "factor": 8.0, "low_freq_factor": 1.0,
                                                                  "high_freq_factor": 4.0,
                                                                  "original_max_position_embeddings": 64},
                                                 tie_word_embeddings=False, attention_bias=False, mlp_bias=False), 13),
        # query_pre_attn_scalar = head_dim (as in Gemma 3 270m/1B/4B/12B): GGUF has no key for it (llama.cpp
        # derives the scale from the head size), so a GGUF of these weights can still describe the model exactly.
        # Layer types from sliding_window_pattern 6 (llama.cpp's fixed Gemma 3 pattern): 5 sliding + 1 global.
        # intermediate_size 96 (not 128) keeps the six-layer directory under 2 MB.
        "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig(**{**common, "intermediate_size": 96}, num_hidden_layers=6,
                                                       max_position_embeddings=256,
                                                       hidden_activation="gelu_pytorch_tanh",
                                                       query_pre_attn_scalar=16, sliding_window=4,
                                                       sliding_window_pattern=6,
                                                       rope_parameters={
                                                           "full_attention": {"rope_type": "default",
                                                                              "rope_theta": 1000000.0},
                                                           "sliding_attention": {"rope_type": "default",
                                                                                 "rope_theta": 10000.0}},
                                                       final_logit_softcapping=None, attn_logit_softcapping=None,
                                                       tie_word_embeddings=True), 14),
    }


def randomize(name, model, seed):
    """Init leaves biases at 0 and norm weights at 1 (Gemma: 0, applied as 1 + w); give them random values."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "norm" in pname:
                noise = 0.25 * torch.randn(p.shape, generator=g)
                p.copy_(noise if name == "gemma3" else 1.0 + noise)


def pad_left(rows):
    L = max(map(len, rows))
    ids = torch.tensor([[PAD] * (L - len(r)) + r for r in rows])
    am = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    return ids, am


def greedy(model, ids, am):
    out = model.generate(ids, attention_mask=am, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                         pad_token_id=PAD, output_logits=True, return_dict_in_generate=True)
    new = out.sequences[:, ids.shape[1]:]
    # smallest gap between the chosen logit and the runner-up (EOS is suppressed by min_new_tokens)
    margin = math.inf
    for step in out.logits:
        l = step.double().clone(); l[:, EOS] = -math.inf
        top = l.topk(2, dim=-1).values
        margin = min(margin, float((top[:, 0] - top[:, 1]).min()))
    return new.tolist(), margin


# float64 oracle: `model.double()` alone is not float64 in transformers (RMSNorm upcasts to float32 and casts
# back, RoPE cos/sin are computed in float32), so those two are replaced here by float64 versions of the same
# formulas; attention is `sdpa`, which stays in the input dtype.

def inv_freq64(rope, head_dim):
    base = float(rope["rope_theta"])
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if rope["rope_type"] == "default":
        return inv
    assert rope["rope_type"] == "llama3", rope
    factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old = float(rope["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(medium, smoothed, scaled)


def rms_forward64(gemma):
    def forward(self, x):
        eps = getattr(self, "variance_epsilon", None) or self.eps
        y = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + eps)
        return y * ((1.0 + self.weight.double()) if gemma else self.weight.double())
    return forward


def rope_forward64(self, x, position_ids, layer_type=None):
    inv = self._inv64[layer_type]
    freqs = position_ids[..., None].double() * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def float64_model(name, d, cfg):
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64, attn_implementation="sdpa").eval()
    rope_checks = {}
    for mod in m.modules():
        cls = type(mod).__name__
        if cls.endswith("RMSNorm"):
            mod.forward = types.MethodType(rms_forward64(name == "gemma3"), mod)
        elif cls.endswith("RotaryEmbedding"):
            params = cfg.rope_parameters
            per_type = {lt: params[lt] for lt in ("full_attention", "sliding_attention") if lt in params}
            mod._inv64 = {k: inv_freq64(v, cfg.head_dim) for k, v in per_type.items()} or \
                {None: inv_freq64(params, cfg.head_dim)}
            for k, inv in mod._inv64.items():
                theirs = getattr(mod, "inv_freq" if k is None else f"{k}_inv_freq").float()
                rope_checks[str(k)] = float(((inv.float() - theirs).abs() / theirs).max())
                assert torch.allclose(inv.float(), theirs, rtol=1e-6, atol=0), (k, inv, theirs)
                scaling = getattr(mod, "attention_scaling" if k is None else f"{k}_attention_scaling")
                assert scaling == 1.0, scaling
            mod.forward = types.MethodType(rope_forward64, mod)
    return m, rope_checks


def rel_diff(a, b):
    """max |a - b| and that divided by max |b| (the scale of the logits)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = float(np.abs(a - b).max())
    return {"max_abs": d, "max_abs_over_max_ref": d / float(np.abs(b).max())}


FEATURE_OFF = {  # the same weights with the family's distinguishing feature switched off, to show it matters
    "gemma3": ("sliding_window 4 -> 100000", {"sliding_window": 100000}),
    "llama3": ("rope_type llama3 -> default (theta 500000)",
               {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}),
}


def save_npy(path, arr):
    tmp = path + ".tmp.npy"
    np.save(tmp, np.ascontiguousarray(arr))
    os.replace(tmp, path)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def make_tiny(out):
    rows = SHORT_ROWS + [long_row()]
    offsets = np.cumsum([0] + [len(r) for r in rows]).tolist()
    for name, (cls, cfg, seed) in tiny_configs().items():
        d = os.path.join(out, name)
        torch.manual_seed(seed)
        model = cls(cfg).eval()
        randomize(name, model, seed)
        model.save_pretrained(d, safe_serialization=True)
        model = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa").eval()  # what tests load
        with torch.no_grad():
            single = [model(torch.tensor([r])).logits[0].numpy() for r in rows]
            ids, am = pad_left(rows)
            pos = (am.cumsum(-1) - 1).clamp(min=0)
            padded = model(input_ids=ids, attention_mask=am, position_ids=pos).logits.numpy()
            padded_valid = [padded[b, ids.shape[1] - len(r):] for b, r in enumerate(rows)]
            g_single, m_single = zip(*[greedy(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))
                                       for r in rows])
            g_single = [g[0] for g in g_single]
            g_padded, m_padded = greedy(model, ids, am)
            m64, rope_checks = float64_model(name, d, model.config)
            f64 = [m64(torch.tensor([r])).logits[0].numpy() for r in rows]
            g64 = [greedy(m64, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))[0][0] for r in rows]
            effect = None
            if name in FEATURE_OFF:
                what, kw = FEATURE_OFF[name]
                off = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa", **kw).eval()
                effect = {"change": what, "rows": [rel_diff(off(torch.tensor([r])).logits[0].numpy(), s)
                                                   for r, s in zip(rows, single)]}
        single_cat, padded_cat, f64_cat = (np.concatenate(x) for x in (single, padded_valid, f64))
        assert single_cat.dtype == np.float32 and f64_cat.dtype == np.float64
        save_npy(f"{d}/logits_single.npy", single_cat)
        save_npy(f"{d}/logits_padded_batch.npy", padded_cat.astype(np.float32))
        save_npy(f"{d}/logits_float64.npy", f64_cat)
        cfg_json = json.load(open(f"{d}/config.json"))
        refs = {
            "model": name, "architecture": type(model).__name__, "seed": seed, "versions": versions(),
            "command": "python Tests/Fixtures/gen/make_family_fixtures.py tiny Tests/Fixtures/tiny",
            "config": cfg_json,
            "rows": rows, "pad_id": PAD,
            "row_offsets": offsets,
            "logits_files": {
                "logits_single.npy": "float32 [%d, %d]: each row run alone, every position; row i is rows "
                                     "row_offsets[i]..<row_offsets[i+1]" % (offsets[-1], V),
                "logits_padded_batch.npy": "float32 [%d, %d]: all rows in one left-padded batch (pad id %d, "
                                           "attention mask, position_ids = cumsum(mask)-1 clamped at 0), only "
                                           "the positions where the mask is 1, in the same layout" % (offsets[-1], V, PAD),
                "logits_float64.npy": "float64 [%d, %d]: logits_single of the same weights in float64 (model "
                                      "loaded as float64, RMSNorm and RoPE replaced by float64 versions, sdpa "
                                      "attention)" % (offsets[-1], V),
            },
            "greedy_note": "16 new tokens, do_sample=False, min_new_tokens=16 (EOS %d suppressed), pad id %d" % (EOS, PAD),
            "greedy_single": g_single,
            "greedy_padded_batch": g_padded,
            "greedy_float64_single": g64,
            "greedy_min_margin": {"single": min(m_single), "padded_batch": m_padded,
                                  "note": "smallest top-1 minus top-2 logit gap over all greedy steps"},
            "checks": {
                "fp32_vs_float64_max_abs_rel": rel_diff(single_cat, f64_cat),
                "padded_batch_vs_single_max_abs_rel": rel_diff(padded_cat, single_cat),
                "rope_inv_freq_float64_vs_fp32_max_rel": rope_checks,
                "logit_abs_max": float(np.abs(f64_cat).max()),
                "feature_off_vs_single": effect,
            },
        }
        assert g_single == g_padded, (name, g_single, g_padded)
        assert g64 == g_single, (name, g64, g_single)
        write_json(f"{d}/refs.json", refs)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(name, "dir bytes", size, "checks", refs["checks"], "margins", refs["greedy_min_margin"])


# ---------------------------------------------------------------------------------------------------------------
# Real GGUF files

QWEN_PROMPTS = [
    "Write a Python function that returns the square of a number.",
    "What is the capital of France?",
    "Explain in one sentence what a hash map is.",
    "Write a SQL query that counts the rows of the table users.",
    "把这句话翻译成英文：今天天气很好。",
]
RAW_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, there was a",
    "The three primary colors are",
    "Water boils at a temperature of",
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city name."},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]
CONVERSATIONS = [
    ("system_user", [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "Hello! Who are you?"}], None, True),
    ("user_only", [{"role": "user", "content": "Write hello world in C."}], None, True),
    ("multi_turn", [{"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": "What is 2+2?"},
                    {"role": "assistant", "content": "4."},
                    {"role": "user", "content": "And 3+3?"}], None, True),
    ("multi_turn_no_generation_prompt", [{"role": "user", "content": "Hi"},
                                         {"role": "assistant", "content": "Hello! How can I help?"}], None, False),
]
TOOL_CONVERSATIONS = [
    ("tools", [{"role": "system", "content": "You are a helpful assistant."},
               {"role": "user", "content": "What is the weather in Paris?"}], TOOLS, True),
    ("tools_no_system", [{"role": "user", "content": "Weather in Tokyo, in fahrenheit?"}], TOOLS, True),
    ("tool_call_and_response", [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "{\"temperature\": 21, \"unit\": \"celsius\"}"}], TOOLS, True),
]


def gguf_chat_template(path):
    import gguf
    r = gguf.GGUFReader(path)
    f = r.fields.get("tokenizer.chat_template")
    if f is None:
        return None
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def make_real(name, path, out):
    os.makedirs(out, exist_ok=True)
    d, fn = os.path.dirname(path), os.path.basename(path)
    notes = []
    tok = AutoTokenizer.from_pretrained(d, gguf_file=fn)
    template = gguf_chat_template(path)
    if tok.chat_template is None and template is not None:
        tok.chat_template = template
        notes.append("transformers' GGUF tokenizer did not load tokenizer.chat_template; it was read from the GGUF "
                     "with gguf-py and set on the tokenizer")
    elif tok.chat_template is not None and template is not None and tok.chat_template != template:
        notes.append("tokenizer.chat_template loaded by transformers differs from the GGUF's; the GGUF's is used")
        tok.chat_template = template
    chat = name.startswith("qwen")
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fn, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if isinstance(eos, int) else eos[0])
    cases = []
    with torch.no_grad():
        for p in (QWEN_PROMPTS if chat else RAW_PROMPTS):
            if chat:
                msgs = [{"role": "user", "content": p}]
                text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
                ids = list(ids[0]) if ids and isinstance(ids[0], list) else list(ids)
            else:
                msgs, text = None, p
                ids = tok(p)["input_ids"]
            x = torch.tensor([ids])
            last = model(x).logits[0, -1]
            top = last.topk(20)
            out_g = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False,
                                   pad_token_id=pad, output_logits=True, return_dict_in_generate=True)
            new = out_g.sequences[0, len(ids):].tolist()
            margins = []
            for step in out_g.logits:
                t2 = step[0].double().topk(2).values
                margins.append(float(t2[0] - t2[1]))
            cases.append({"prompt": p, "messages": msgs, "prompt_text": text, "prompt_ids": ids,
                          "new_ids": new, "new_text": tok.decode(new),
                          "new_text_skip_special": tok.decode(new, skip_special_tokens=True),
                          "first_step_top20": [[int(i), float(v)] for i, v in zip(top.indices, top.values)],
                          "step_margins": margins})
            print(name, repr(p), new, repr(tok.decode(new)), "min margin %.4g" % min(margins), flush=True)
    write_json(f"{out}/greedy.json", {
        "model": name, "gguf_file": fn, "gguf_sha256": sha256(path), "versions": versions(),
        "command": f"python Tests/Fixtures/gen/make_family_fixtures.py real {name} {fn} OUT_DIR",
        "loading": "AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32) (dequantized); "
                   "AutoTokenizer.from_pretrained(dir, gguf_file=...)",
        "prompt_mode": "chat template, one user message, add_generation_prompt=True" if chat
        else "raw text, tokenizer(text) (adds BOS as the tokenizer is configured)",
        "generation": "model.generate(max_new_tokens=16, do_sample=False), stops early at eos_token_id",
        "eos_token_id": eos, "notes": notes,
        "hf_config": json.loads(model.config.to_json_string()),
        "step_margins_note": "top-1 minus top-2 raw logit at each generated step",
        "cases": cases})
    renders = []
    convs = CONVERSATIONS + (TOOL_CONVERSATIONS if chat else [])
    if tok.chat_template is None:
        notes.append("the GGUF has no tokenizer.chat_template (and transformers provides none): nothing to render")
        convs = []
    for label, msgs, tools, agp in convs:
        try:
            text = tok.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=agp)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            renders.append({"name": label, "messages": msgs, "tools": tools, "add_generation_prompt": agp,
                            "text": text, "ids": ids})
        except Exception as e:  # a template may refuse a role (e.g. raise_exception); record it
            renders.append({"name": label, "messages": msgs, "tools": tools, "add_generation_prompt": agp,
                            "error": f"{type(e).__name__}: {e}"})
    write_json(f"{out}/chat_template.json", {
        "model": name, "gguf_file": fn, "versions": versions(), "chat_template": tok.chat_template, "notes": notes,
        "how": "tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=...); "
               "ids = tok(text, add_special_tokens=False).input_ids",
        "bos_token": tok.bos_token, "eos_token": tok.eos_token, "renders": renders})


def sha256(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 24), b""):
            h.update(b)
    return h.hexdigest()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "tiny":
        make_tiny(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "real":
        make_real(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
