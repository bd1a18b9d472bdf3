"""LoRA reference fixtures from PyTorch + peft: initial adapter, gradients, 3 AdamW steps, logits with the adapter.

    HF_HUB_OFFLINE=1 python Tests/Fixtures/gen/make_lora_refs.py SMOLLM2_GGUF OUT_DIR

SMOLLM2_GGUF: SmolLM2-135M-Instruct.Q4_1.gguf (the default model, as the tests fetch it into ~/.cache/causal/models/);
OUT_DIR: Tests/Fixtures/lora to regenerate in place. Versions: Tests/Fixtures/gen/requirements.txt (peft 0.21.2 on
top of torch / transformers). CPU, fp32, seeded; nothing is downloaded.

Two cases, one directory each (OUT_DIR/qwen2, OUT_DIR/smollm2):
  qwen2    the tiny random Qwen2 of Tests/Fixtures/tiny/qwen2 (q/k/v biases, 2 layers, vocabulary 1000);
           LoRA r=4, alpha=8, every layer.
  smollm2  SmolLM2-135M-Instruct from the Q4_1 GGUF, dequantized to fp32 by transformers' GGUF loader (q/k rows in
           Hugging Face's order, which is the order PEFT files hold); LoRA r=8, alpha=16, layers_to_transform
           [0, 14, 29] (keeps the fixture small).
Both: dropout 0, bias "none", the 7 targets q_proj k_proj v_proj o_proj gate_proj up_proj down_proj.

The initial adapter is not PEFT's (which starts with B = 0, so A's gradient would be 0): every lora_A and lora_B
weight is drawn from one torch.Generator seeded with SEED, normal * 0.05, in the order of model.named_parameters().

Batch: 3 SFT examples (unpadded token lists; labels -100 on the prompt tokens). qwen2: the first 3 rows of
Tests/Fixtures/tiny/qwen2/refs.json with their first 2 tokens as prompt; smollm2: the 3 pairs of
Tests/Fixtures/smollm2/sft.json. transformers computes them as one right-padded batch (pad id 2, attention mask,
labels -100 on pads): loss = mean of the cross entropy over all scored tokens (transformers' default).

Each case directory gets:
  adapter_init/      save_pretrained of the initial adapter (adapter_config.json + adapter_model.safetensors)
  grads.safetensors  d loss / d every lora_A / lora_B at the initial adapter, F32, under the tensor names of
                     adapter_model.safetensors
  adapter_step3/     the adapter after 3 steps of torch.optim.AdamW(lr 1e-3, betas (0.9, 0.999), eps 1e-8,
                     weight_decay 0.01) over the adapter parameters only, each step on the same batch
                     (zero_grad, forward, backward, step)
  logits_step3.npy   (3, V) float32: last-position logits of 3 prompts, each run alone, adapter_step3 applied (eval)
  logits_base.npy    (3, V) float32: the same prompts through the base model alone (adapter disabled)
  refs.json          config, batch, loss, per-tensor gradient L2 norms, the loss of each step's forward, the loss
                     after step 3, per-tensor L2 norms of (step3 - init), prompts, versions
peft's save_pretrained also writes a model card (README.md); it is deleted (not part of the adapter format).
adapter_config.json's base_model_name_or_path is set to a path relative to the repository (qwen2) or the GGUF's
file name (smollm2) rather than this machine's path. peft writes target_modules from a Python set, so its order
depends on PYTHONHASHSEED; run with PYTHONHASHSEED=0 to rewrite the files byte for byte.
"""
import json, math, os, shutil, sys
import numpy as np
import torch
import transformers, peft, safetensors
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model

gguf_path, out = sys.argv[1], sys.argv[2]
here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.dirname(here)
torch.set_num_threads(2)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAD = 2
ADAMW = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
INIT_STD = 0.05


def peft_name(n):
    """named_parameters() name -> the tensor name in adapter_model.safetensors (adapter name 'default' dropped)."""
    return n.replace(".default.weight", ".weight")


def lora_params(model):
    return [(n, p) for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def save_adapter(model, d, base_name):
    model.peft_config["default"].base_model_name_or_path = base_name
    model.save_pretrained(d, safe_serialization=True)
    readme = os.path.join(d, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def batch_tensors(tokens, labels):
    L = max(map(len, tokens))
    inp = torch.tensor([t + [PAD] * (L - len(t)) for t in tokens])
    am = torch.tensor([[1] * len(t) + [0] * (L - len(t)) for t in tokens])
    lab = torch.tensor([l + [-100] * (L - len(l)) for l in labels])
    return inp, am, lab


def last_logits(model, prompts):
    with torch.no_grad():
        return np.stack([model(torch.tensor([p])).logits[0, -1].float().numpy() for p in prompts]).astype(np.float32)


def run_case(name, base, lora, seed, tokens, labels, prompts, base_name, notes):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    base.eval()
    model = get_peft_model(base, lora)
    # Seeded non-zero initial adapter (A and B), so that every gradient is non-zero.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in lora_params(model):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * INIT_STD)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(n for n, _ in lora_params(model)), "only the LoRA factors may train"
    init = {peft_name(n): p.detach().clone() for n, p in lora_params(model)}
    save_adapter(model, os.path.join(d, "adapter_init"), base_name)

    inp, am, lab = batch_tensors(tokens, labels)
    params = [p for _, p in lora_params(model)]
    opt = torch.optim.AdamW(params, lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]), eps=ADAMW["eps"],
                            weight_decay=ADAMW["weight_decay"])
    model.train()
    step_losses, grad_norms, grads = [], {}, {}
    for step in range(3):
        opt.zero_grad()
        loss = model(input_ids=inp, attention_mask=am, labels=lab).loss
        loss.backward()
        step_losses.append(float(loss))
        if step == 0:
            for n, p in lora_params(model):
                grads[peft_name(n)] = p.grad.detach().clone().contiguous()
                grad_norms[peft_name(n)] = math.sqrt(float((p.grad.double() ** 2).sum()))
        opt.step()
    model.eval()
    with torch.no_grad():
        loss_after = float(model(input_ids=inp, attention_mask=am, labels=lab).loss)
    save_file(grads, os.path.join(d, "grads.safetensors"), metadata={"format": "pt"})
    save_adapter(model, os.path.join(d, "adapter_step3"), base_name)
    delta_norms = {peft_name(n): math.sqrt(float(((p.detach() - init[peft_name(n)]).double() ** 2).sum()))
                   for n, p in lora_params(model)}
    total = math.sqrt(sum(v * v for v in grad_norms.values()))

    # Logits: the adapter after step 3 (eval mode), and the base alone.
    np.save(os.path.join(d, "logits_step3.npy"), last_logits(model, prompts))
    with model.disable_adapter():
        np.save(os.path.join(d, "logits_base.npy"), last_logits(model, prompts))

    ref = {
        "case": name, "base": base_name, "seed": seed,
        "lora": {"r": lora.r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout,
                 "target_modules": TARGETS, "layers_to_transform": lora.layers_to_transform,
                 "scale": lora.lora_alpha / lora.r, "init": f"every lora_A/lora_B ~ normal * {INIT_STD}, "
                 f"torch.Generator seeded {seed}, in named_parameters() order (not PEFT's B = 0)"},
        "batch": {"tokens": tokens, "labels": labels, "pad_id": PAD,
                  "note": "transformers ran them as one right-padded batch (attention mask, labels -100 on pads); "
                          "loss = mean cross entropy over every scored token after the shift by one"},
        "scored_tokens": int(sum(sum(1 for x in l[1:] if x != -100) for l in labels)),
        "loss": step_losses[0],
        "grad_norms": grad_norms, "grad_norm_total": total,
        "adamw": ADAMW, "step_losses": step_losses, "loss_after_step3": loss_after,
        "step3_delta_norms": delta_norms,
        "prompts": prompts,
        "logits_files": {"logits_step3.npy": "float32 (3, V): last-position logits of each prompt run alone, "
                                             "adapter_step3 applied, eval mode",
                         "logits_base.npy": "float32 (3, V): the same through the base model (adapter disabled)"},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "safetensors": safetensors.__version__, "numpy": np.__version__},
        "notes": notes,
    }
    with open(os.path.join(d, "refs.json"), "w") as fh:
        json.dump(ref, fh, indent=1)
    print(f"{name}: loss {step_losses[0]:.9g} steps {step_losses} after {loss_after:.9g} grad norm {total:.9g} "
          f"tensors {len(grads)}")


# a. tiny Qwen2
tiny_dir = os.path.join(fixtures, "tiny", "qwen2")
rows = json.load(open(os.path.join(tiny_dir, "refs.json")))["rows"][:3]
base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
run_case("qwen2", base,
         LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"),
         seed=15, tokens=rows, labels=[[-100, -100] + r[2:] for r in rows],
         prompts=[[5, 17, 99, 3], [11, 12, 13, 14, 15, 16], [600, 1, 999, 45, 45, 7, 250, 42, 8]],
         base_name="Tests/Fixtures/tiny/qwen2",
         notes="batch = the first 3 rows of Tests/Fixtures/tiny/qwen2/refs.json, first 2 tokens of each the prompt")

# b. SmolLM2-135M-Instruct from the Q4_1 GGUF, dequantized to fp32
sft = json.load(open(os.path.join(fixtures, "smollm2", "sft.json")))
greedy = json.load(open(os.path.join(fixtures, "smollm2", "greedy.json")))
gd, gf = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
base = AutoModelForCausalLM.from_pretrained(gd, gguf_file=gf, dtype=torch.float32)
run_case("smollm2", base,
         LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM",
                    layers_to_transform=[0, 14, 29]),
         seed=16, tokens=sft["input_ids"], labels=sft["labels"],
         prompts=[r["prompt_ids"] for r in greedy[:3]],
         base_name="SmolLM2-135M-Instruct.Q4_1.gguf",
         notes="batch = the 3 pairs of Tests/Fixtures/smollm2/sft.json (input_ids/labels); prompts = prompt_ids of "
               "the first 3 entries of Tests/Fixtures/smollm2/greedy.json (chat template, generation prompt): "
               + "; ".join(r["prompt"] for r in greedy[:3]))
