"""Float64 references for SmolLM2-135M-Instruct: logits, loss and LoRA gradients computed entirely in float64.

    HF_HUB_OFFLINE=1 python Tests/Fixtures/gen/make_float64_refs.py SMOLLM2_GGUF OUT_DIR

SMOLLM2_GGUF: SmolLM2-135M-Instruct.Q4_1.gguf (the default model, as the tests fetch it into ~/.cache/causal/models/);
OUT_DIR: Tests/Fixtures/float64 (writes OUT_DIR/smollm2/). Versions: Tests/Fixtures/gen/requirements.txt. CPU.

Why not transformers' own model in .double(): three of its steps stay in float32 whatever the model's dtype, so it
is not a float64 oracle. (1) The loss: transformers' ForCausalLMLoss casts the logits to float32 (`logits.float()`)
before the cross entropy, and PyTorch's float32 log_softmax over SmolLM2's 49,152-token vocabulary overestimates
log-probabilities by 9.1e-6 on average (2.4e-7 .. 1.55e-5 on the 26 scored rows of this batch): with transformers +
peft in .double(), the loss of the LoRA batch below is 1.7644375563 that way and 1.7644465665 with the cross entropy
of the same logits in float64 (5.1e-6 relative), and the gradients of the LoRA factors move by 1.1e-5 .. 1.0e-4
relative. (This script: 1.7644467167.) (2) LlamaRMSNorm computes in float32. (3) The
rotary embedding computes its angles, cos and sin in float32. This script therefore runs its own float64 forward of
the LLaMA block (the same block as transformers' modeling_llama.py: pre-norm RMSNorm, grouped-query attention with
rotate-half RoPE, SwiGLU MLP, tied head), with autograd for the gradients. Its base-model logits differ from
transformers' .double() model by 4.9e-7 relative (the float32 steps above), printed as a check.

Weights: transformers' GGUF loader dequantizes the Q4_1 file to float32 (gguf-py: d * q + m per block; q/k rows in
Hugging Face's order); they are cast to float64 exactly. The LoRA adapter is Tests/Fixtures/lora/smollm2/adapter_init
(r 8, alpha 16, layers 0, 14, 29, the 7 targets: y = x·Wᵀ + 2 · (x·Aᵀ)·Bᵀ, as PEFT applies it).

Batch: the 3 SFT examples of Tests/Fixtures/lora/smollm2/refs.json ("batch": token ids and labels, -100 on the
prompt), each sequence on its own (no padding); position t predicts labels[t + 1]; the loss is the mean over the 26
scored tokens.

Writes OUT_DIR/smollm2/:
  refs.json          for each sequence and every position of the base model (no adapter): the float64 log-sum-exp
                     of the logits row and the top 20 (id, logit) pairs; the base loss; the LoRA loss and its
                     per-sequence sums; per-tensor L2 norms of the LoRA gradients; the transformers .double() check
  grads.safetensors  d loss / d every lora_A / lora_B at adapter_init (float64 rounded to F32), under the tensor
                     names of adapter_model.safetensors
"""
import json, os, sys
import numpy as np
import torch
import transformers, safetensors
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

gguf_path, out = sys.argv[1], sys.argv[2]
here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.dirname(here)
torch.set_num_threads(2)
torch.set_default_dtype(torch.float64)

ref = json.load(open(f"{fixtures}/lora/smollm2/refs.json"))
tokens, labels = ref["batch"]["tokens"], ref["batch"]["labels"]
hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path),
                                          dtype=torch.float32).eval()
cfg = hf.config
W = {k: v.detach().to(torch.float64) for k, v in hf.state_dict().items()}
L, H, Hkv, C = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
D = C // H
theta = float(cfg.rope_parameters["rope_theta"])
eps = float(cfg.rms_norm_eps)   # the GGUF's float32 value of 1e-5, as the engine reads it
assert cfg.tie_word_embeddings
assert "lm_head.weight" not in W or torch.equal(W["lm_head.weight"], W["model.embed_tokens.weight"])

adapter = {k: v.to(torch.float64).requires_grad_(True)
           for k, v in load_file(f"{fixtures}/lora/smollm2/adapter_init/adapter_model.safetensors").items()}
scale = ref["lora"]["lora_alpha"] / ref["lora"]["r"]


def rms(x, w):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def linear(x, layer, module, name, lora):
    y = x @ W[f"model.layers.{layer}.{module}.{name}.weight"].T
    a = f"base_model.model.model.layers.{layer}.{module}.{name}.lora_A.weight"
    if lora and a in adapter:
        y = y + scale * ((x @ adapter[a].T) @ adapter[a.replace("lora_A", "lora_B")].T)
    return y


def rope(x, T):  # x (T, heads, D), rotate-half on Hugging Face's layout, angles in float64
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    c, s = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    a, b = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([a * c - b * s, b * c + a * s], -1)


def forward(ids, lora):
    T = len(ids)
    x = W["model.embed_tokens.weight"][ids]
    mask = torch.triu(torch.full((T, T), float("-inf")), 1)
    for l in range(L):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = rope(linear(h, l, "self_attn", "q_proj", lora).view(T, H, D), T)
        k = rope(linear(h, l, "self_attn", "k_proj", lora).view(T, Hkv, D), T).repeat_interleave(H // Hkv, 1)
        v = linear(h, l, "self_attn", "v_proj", lora).view(T, Hkv, D).repeat_interleave(H // Hkv, 1)
        scores = torch.einsum("thd,shd->hts", q, k) / D ** 0.5 + mask
        a = torch.einsum("hts,shd->thd", torch.softmax(scores, -1), v).reshape(T, H * D)
        x = x + linear(a, l, "self_attn", "o_proj", lora)
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g, u = linear(h, l, "mlp", "gate_proj", lora), linear(h, l, "mlp", "up_proj", lora)
        x = x + linear(torch.nn.functional.silu(g) * u, l, "mlp", "down_proj", lora)
    return rms(x, W["model.norm.weight"]) @ W["model.embed_tokens.weight"].T


def sequence_loss(logits, lab):
    lp = torch.log_softmax(logits, -1)
    rows = [t for t in range(len(lab) - 1) if lab[t + 1] != -100]
    return -sum(lp[t, lab[t + 1]] for t in rows), len(rows)


# Base model: log-sum-exp and top 20 per position, loss; transformers' .double() logits as a check.
base_rows, base_sum, scored = [], 0.0, 0
check = 0.0
hf64 = hf.double()
with torch.no_grad():
    for ids, lab in zip(tokens, labels):
        lg = forward(ids, lora=False)
        top = torch.topk(lg, 20, dim=-1)
        base_rows.append({"lse": torch.logsumexp(lg, -1).tolist(),
                          "top20": [[[int(i), float(v)] for i, v in zip(ti, tv)] for ti, tv in zip(top.indices, top.values)]})
        s, n = sequence_loss(lg, lab)
        base_sum += float(s); scored += n
        t64 = hf64(input_ids=torch.tensor([ids])).logits[0]
        check = max(check, float((t64 - lg).norm() / lg.norm()))
print(f"base loss {base_sum / scored:.10f}; transformers .double() logits vs this forward: {check:.2e} relative")

# LoRA: loss and gradients.
sums, n_all = [], 0
for ids, lab in zip(tokens, labels):
    s, n = sequence_loss(forward(ids, lora=True), lab)
    sums.append(s); n_all += n
loss = sum(sums) / n_all
loss.backward()
assert n_all == ref["scored_tokens"]
grads = {k: v.grad.detach() for k, v in adapter.items()}
print(f"LoRA loss {loss.item():.10f} over {n_all} tokens (transformers + peft fp32: {ref['loss']:.10f})")

os.makedirs(f"{out}/smollm2", exist_ok=True)
save_file({k: g.to(torch.float32).contiguous() for k, g in sorted(grads.items())}, f"{out}/smollm2/grads.safetensors")
os.chmod(f"{out}/smollm2/grads.safetensors", 0o644)
refs = {
    "model": "SmolLM2-135M-Instruct.Q4_1.gguf, dequantized to float32 by transformers' GGUF loader, cast to float64",
    "batch": "Tests/Fixtures/lora/smollm2/refs.json batch (3 sequences, each alone); adapter: lora/smollm2/adapter_init",
    "scored_tokens": n_all,
    "base": {"loss": base_sum / scored, "sequences": base_rows},
    "lora": {"loss": loss.item(), "sequence_sums": [s.item() for s in sums],
             "grad_norms": {k: float(g.norm()) for k, g in sorted(grads.items())}},
    "transformers_double_logits_rel_diff": check,
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                 "safetensors": safetensors.__version__, "numpy": np.__version__},
}
with open(f"{out}/smollm2/refs.json", "w") as f:
    json.dump(refs, f, indent=0)
