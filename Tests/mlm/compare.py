"""A `causal train --objective mlm` checkpoint in transformers: BertForMaskedLM.from_pretrained(RUN) gives causal's
masked-token logits (--logits, from `causal eval --logits`) within 1e-4 of the largest logit, and causal's loss
(--eval-json; the run's final eval_loss in metrics.jsonl unless --no-final-eval) within 1e-4 relative. With --base,
training must have moved the weights away from the base model's. Exits 1 on any failure."""
import argparse, json, math, os, sys
import torch
from transformers import BertForMaskedLM, PreTrainedTokenizerFast

ap = argparse.ArgumentParser()
ap.add_argument("--run", required=True)
ap.add_argument("--base")
ap.add_argument("--eval", required=True)
ap.add_argument("--eval-json", required=True)
ap.add_argument("--logits", required=True)
ap.add_argument("--no-final-eval", action="store_true")
a = ap.parse_args()
torch.set_num_threads(2)
ok = True

def check(what, cond, detail):
    global ok
    print(f"{'ok  ' if cond else 'FAIL'} {what}: {detail}")
    ok = ok and cond

model = BertForMaskedLM.from_pretrained(a.run, dtype=torch.float32).eval()
check("decoder tied to the word embeddings", model.cls.predictions.decoder.weight.data_ptr()
      == model.bert.embeddings.word_embeddings.weight.data_ptr(), "shared storage")
tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(a.run, "tokenizer.json"))
check("tokenizer.json copied and readable", len(tok.get_vocab()) == model.config.vocab_size, f"{len(tok.get_vocab())} tokens")

examples = [json.loads(l) for l in open(a.eval)]
ours = {}
for l in open(a.logits):
    r = json.loads(l)
    ours[(r["example"], r["position"])] = (r["label"], r["logits"])
worst, total, count = 0.0, 0.0, 0
with torch.no_grad():
    for i, ex in enumerate(examples):
        logits = model(input_ids=torch.tensor([ex["input_ids"]]), token_type_ids=torch.zeros(1, len(ex["input_ids"]), dtype=torch.long)).logits[0].double()
        for p, y in enumerate(ex["labels"]):
            if y == -100:
                continue
            total += float(torch.logsumexp(logits[p], 0) - logits[p, y]); count += 1
            if (i, p) not in ours:
                check("causal's logits", False, f"example {i} position {p} missing"); continue
            label, row = ours[(i, p)]
            ref = logits[p]
            d = float((torch.tensor(row, dtype=torch.float64) - ref).abs().max() / ref.abs().max())
            worst = max(worst, d)
            if label != y: check("labels", False, f"example {i} position {p}: {label} vs {y}")
check("masked-token logits", worst < 1e-4 and len(ours) == count, f"{count} positions, worst max |diff| / max |logit| {worst:.2e}")
loss = total / count
ev = json.load(open(a.eval_json))
rel = abs(ev["loss"] - loss) / loss
check("causal eval loss", rel < 1e-4 and ev["scored_tokens"] == count, f"causal {ev['loss']:.7f}, transformers {loss:.7f} ({rel:.2e})")
if not a.no_final_eval:
    final = [json.loads(l) for l in open(os.path.join(a.run, "metrics.jsonl")) if "eval_loss" in l][-1]
    rel = abs(final["eval_loss"] - loss) / loss
    check("the run's final eval_loss", rel < 1e-4, f"{final['eval_loss']:.7f} vs {loss:.7f} ({rel:.2e})")
if a.base:
    base = BertForMaskedLM.from_pretrained(a.base, dtype=torch.float32)
    moved = max(float((p - q).abs().max()) for p, q in zip(model.parameters(), base.parameters()))
    check("training moved the weights", moved > 1e-4, f"largest change {moved:.3e}")
sys.exit(0 if ok else 1)
