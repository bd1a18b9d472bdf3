"""A LoRA adapter directory loaded by peft onto the transformers model gives the same log-probabilities as causal.

    python Tests/peft/compare.py --causal BIN --model MODEL --adapter DIR --prompts FILE [--tol 1e-4]

MODEL: a Hugging Face model directory or a GGUF file (transformers dequantizes it to fp32; causal then runs with
--precision reference). DIR: a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors), written by
peft or by causal. FILE: JSON, a list of token-id lists or an object with "prompts" (Tests/Fixtures/lora/*/refs.json).

Checks, each failing the script:
1. The adapter file's tensor names and shapes are exactly those peft creates for its adapter_config.json on this
   model (nothing missing, nothing extra), and peft loads the directory.
2. For every prompt: the log-probability of each prompt token given the ones before (positions 1..n-1), and at the
   last position the log-probabilities of 10 candidate next tokens (peft's top 5 and 5 seeded random ids), from
   peft (eval mode, fp32 logits, log_softmax in float64) and from `causal score --adapter DIR` (token-id lines), agree
   within TOL relative: |causal - peft| <= TOL * max(|peft|, 1).
3. The adapter matters: the same values with the adapter disabled differ from peft's by more than 100 * TOL
   somewhere (a causal that ignored the adapter would fail 2).
"""
import argparse, copy, json, os, subprocess, sys, tempfile
import numpy as np
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as transformers_logging
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

ap = argparse.ArgumentParser()
ap.add_argument("--causal", required=True)
ap.add_argument("--model", required=True)
ap.add_argument("--adapter", required=True)
ap.add_argument("--prompts", required=True)
ap.add_argument("--tol", type=float, default=1e-4)
args = ap.parse_args()
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
transformers_logging.disable_progress_bar()
torch.manual_seed(0)

prompts = json.load(open(args.prompts))
if isinstance(prompts, dict):
    prompts = prompts["prompts"]
assert all(isinstance(p, list) and len(p) >= 2 for p in prompts), "prompts: lists of at least 2 token ids"


def load_base():
    if os.path.isdir(args.model):
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    d, f = os.path.dirname(os.path.abspath(args.model)), os.path.basename(args.model)
    return AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)


failures = []
name = f"{os.path.basename(os.path.normpath(args.model))} + {args.adapter}"

# 1. tensor names and shapes: what peft would create for this config on this model vs what the file holds.
config = PeftConfig.from_pretrained(args.adapter)
base_model = load_base()
expected = {k: tuple(v.shape) for k, v in
            get_peft_model_state_dict(get_peft_model(copy.deepcopy(base_model), config)).items()}
with safe_open(os.path.join(args.adapter, "adapter_model.safetensors"), "pt") as fh:
    found = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}
missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
shape_diff = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
if missing or extra or shape_diff:
    failures.append(f"tensors: missing {missing[:4]} ({len(missing)}), extra {extra[:4]} ({len(extra)}), "
                    f"shape differs {[(k, found[k], expected[k]) for k in shape_diff[:4]]}")
print(f"{name}: {len(found)} tensors {sorted(dtypes)}, r={config.r} alpha={config.lora_alpha} "
      f"targets={sorted(config.target_modules)} layers={config.layers_to_transform}")

model = PeftModel.from_pretrained(base_model, args.adapter).eval()
# PeftModel.from_pretrained only warns about keys it could not place; the values must have arrived too.
state = get_peft_model_state_dict(model)
with safe_open(os.path.join(args.adapter, "adapter_model.safetensors"), "pt") as fh:
    for k in fh.keys():
        if k in state and not torch.equal(state[k].float(), fh.get_tensor(k).float()):
            failures.append(f"peft did not load {k} as stored")


def logprobs(adapter_on):
    """Per prompt: (log p of tokens 1..n-1, candidate ids at the end, their log p)."""
    rows = []
    rng = np.random.default_rng(1234)
    with torch.no_grad():
        for p in prompts:
            if adapter_on:
                logits = model(torch.tensor([p])).logits[0].float()
            else:
                with model.disable_adapter():
                    logits = model(torch.tensor([p])).logits[0].float()
            lp = torch.log_softmax(logits.double(), dim=-1).numpy()
            V = lp.shape[-1]
            seq = np.array([lp[i - 1, p[i]] for i in range(1, len(p))])
            top = list(np.argsort(-lp[-1])[:5])
            rand = [int(x) for x in rng.choice(V, size=20, replace=False) if int(x) not in top][:5]
            cands = [int(x) for x in top] + rand
            rows.append((seq, cands, lp[-1, cands]))
    return rows


ref = logprobs(True)
base = logprobs(False)

with tempfile.TemporaryDirectory() as tmp:
    lines = []
    for p, (_, cands, _) in zip(prompts, ref):
        lines.append({"context_ids": p[:1], "continuation_ids": p[1:]})
        lines += [{"context_ids": p, "continuation_ids": [c]} for c in cands]
    path = os.path.join(tmp, "score.jsonl")
    with open(path, "w") as fh:
        fh.write("".join(json.dumps(l) + "\n" for l in lines))
    cmd = [args.causal, "score", "--model", args.model, "--adapter", args.adapter, "--input", path]
    if not os.path.isdir(args.model):
        cmd += ["--precision", "reference"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"FAIL {' '.join(cmd)} exited {res.returncode}:\n{res.stderr}", file=sys.stderr)
        sys.exit(1)
    out = [json.loads(l) for l in res.stdout.splitlines() if l.strip()]
    assert len(out) == len(lines), f"causal score wrote {len(out)} lines for {len(lines)}"

worst_rel, worst_abs, adapter_effect, k = 0.0, 0.0, 0.0, 0
for i, ((seq, cands, last), (bseq, _, blast)) in enumerate(zip(ref, base)):
    got_seq = np.array(out[k]["token_logprobs"]); k += 1
    got_last = np.array([out[k + j]["token_logprobs"][0] for j in range(len(cands))]); k += len(cands)
    want, got, off = np.concatenate([seq, last]), np.concatenate([got_seq, got_last]), np.concatenate([bseq, blast])
    if got.shape != want.shape:
        failures.append(f"prompt {i}: {got.shape[0]} values from causal, {want.shape[0]} from peft"); continue
    err = np.abs(got - want)
    rel = err / np.maximum(np.abs(want), 1.0)
    worst_rel, worst_abs = max(worst_rel, float(rel.max())), max(worst_abs, float(err.max()))
    adapter_effect = max(adapter_effect, float(np.abs(off - want).max()))
    if rel.max() > args.tol:
        j = int(rel.argmax())
        failures.append(f"prompt {i} value {j}: causal {got[j]:.7g} peft {want[j]:.7g} (rel {rel[j]:.2e} > {args.tol:g})")
print(f"{name}: {len(prompts)} prompts, {sum(len(s) + len(c) for s, c, _ in ref)} log-probabilities; "
      f"max |causal - peft| {worst_abs:.3e}, max rel {worst_rel:.3e} (tol {args.tol:g}); "
      f"adapter on vs off (peft) max |diff| {adapter_effect:.3f}")
if adapter_effect <= 100 * args.tol:
    failures.append(f"the adapter changes peft's values by only {adapter_effect:.2e}: this check could not tell it was applied")
if failures:
    print("FAIL\n  " + "\n  ".join(failures), file=sys.stderr)
    sys.exit(1)
print("OK")
