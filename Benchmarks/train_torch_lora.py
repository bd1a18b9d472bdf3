#!/usr/bin/env python3
"""The PyTorch + peft side of `Benchmarks/train-throughput.sh --lora R`: LoRA fine-tuning steps on CPU.

Loads the base model with transformers straight from a GGUF file (gguf_file=...: transformers dequantizes every
tensor to fp32, the same fp32 base that `causal train --base-weights f32` trains over), wraps it with peft
(LoraConfig(r=R, lora_alpha=--alpha (default R), lora_dropout=0, target_modules q,k,v,o,gate,up,down _proj), so only
the adapters are trainable), reads the same JSONL of already-tokenized examples that `causal train` reads
({"input_ids": [...], "labels": [...]}, -100 = not scored) and runs --steps optimizer steps, each over all the examples
as one batch (they have equal lengths, so no padding): forward, loss (transformers' mean over the scored tokens),
backward, gradient clipping to norm 1, AdamW step on the adapters (lr --lr, cosine to zero over --steps), zero_grad,
as `causal train --lora-rank R` does. Prints one JSON line per step and a summary line:
  {"engine": "torch+peft", "step": N, "loss": ..., "seconds": ..., "scored_tokens": ..., "scored_tokens_per_second": ...}
  {"engine": "torch+peft", "summary": true, "scored_tokens_per_second": <mean over steps after the first>, ...}
"""
import argparse
import json
import os
import resource
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="the base model, a GGUF file (dequantized to fp32 by transformers)")
    ap.add_argument("--data", required=True, help="JSONL of {input_ids, labels}")
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--alpha", type=float, default=None, help="lora_alpha (default: the rank)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    a = ap.parse_args()

    import torch
    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    rows = [json.loads(l) for l in open(a.data, encoding="utf-8") if l.strip()]
    lengths = {len(r["input_ids"]) for r in rows}
    if len(lengths) != 1:
        raise SystemExit(f"{a.data}: the examples must have one length (found {sorted(lengths)}), so that no padding is needed")
    ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    labels = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
    mask = torch.ones_like(ids)
    scored = int((labels[:, 1:] != -100).sum())

    path = os.path.abspath(a.gguf)
    base = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                dtype=torch.float32)
    cfg = LoraConfig(r=a.rank, lora_alpha=a.alpha if a.alpha is not None else a.rank, lora_dropout=0.0,
                     target_modules=TARGETS, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=a.lr, weight_decay=0.0)
    # causal train's schedule: (no) warmup, then cosine to zero over the run.
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=a.steps)
    rates = []
    for step in range(1, a.steps + 1):
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        rate = scored / dt
        if step > 1:
            rates.append(rate)
        print(json.dumps({"engine": "torch+peft", "step": step, "loss": out.loss.item(), "seconds": dt,
                          "scored_tokens": scored, "tokens": int(ids.numel()), "scored_tokens_per_second": rate}), flush=True)
    mean = sum(rates) / len(rates) if rates else float("nan")
    print(json.dumps({"engine": "torch+peft", "summary": True, "steps_timed": len(rates), "scored_tokens_per_second": mean,
                      "trainable_parameters": n_trainable, "torch": torch.__version__,
                      "transformers": transformers.__version__, "peft": peft.__version__,
                      "threads": torch.get_num_threads(),
                      # Linux reports ru_maxrss in KiB: the peak over loading (dequantization) and training.
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


if __name__ == "__main__":
    main()
