#!/usr/bin/env python3
"""The PyTorch side of Benchmarks/train-throughput.sh: fine-tuning steps of transformers' LlamaForCausalLM on CPU.

Loads a checkpoint directory written by `causal train` (model.safetensors + config.json, fp32), reads the same JSONL
of already-tokenized examples that `causal train` reads ({"input_ids": [...], "labels": [...]}, -100 = not scored),
and runs --steps optimizer steps, each over all the examples as one batch (they have equal lengths, so no padding):
forward, loss (transformers' mean over the scored tokens), backward, gradient clipping to norm 1, AdamW step
(lr --lr, cosine to zero over --steps), zero_grad, as `causal train` does, so the two print the same losses. Prints one JSON line per step and a summary line:
  {"engine": "torch", "step": N, "loss": ..., "seconds": ..., "scored_tokens": ..., "scored_tokens_per_second": ...}
  {"engine": "torch", "summary": true, "scored_tokens_per_second": <mean over steps after the first>, ...}
"""
import argparse
import json
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory (config.json + model.safetensors)")
    ap.add_argument("--data", required=True, help="JSONL of {input_ids, labels}")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-5)
    a = ap.parse_args()

    import torch
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

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    # causal train's schedule: (no) warmup, then cosine to zero over the run.
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=a.steps)
    rates = []
    for step in range(1, a.steps + 1):
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        rate = scored / dt
        if step > 1:
            rates.append(rate)
        print(json.dumps({"engine": "torch", "step": step, "loss": out.loss.item(), "seconds": dt,
                          "scored_tokens": scored, "tokens": int(ids.numel()), "scored_tokens_per_second": rate}), flush=True)
    mean = sum(rates) / len(rates) if rates else float("nan")
    print(json.dumps({"engine": "torch", "summary": True, "steps_timed": len(rates), "scored_tokens_per_second": mean,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
