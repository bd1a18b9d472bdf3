#!/usr/bin/env bash
# T5 training against Hugging Face transformers, end to end through `causal train` / `causal eval`:
#   for the tiny relu/tied T5 of Tests/Fixtures/tiny/t5 and for a random T5 v1.1-style model (gated-gelu, untied
#   lm_head, 3 decoder layers, inputs longer than the relative-position max distance) that transformers creates,
#   1. the loss and gradient norm of step 1 of `causal train --clip 0` (the base weights) equal transformers'
#      (T5ForConditionalGeneration(input_ids, attention_mask, labels) on the right-padded batch, then backward);
#   2. the checkpoint `causal train` writes after one AdamW step (lr 1e-3) loads with
#      T5ForConditionalGeneration.from_pretrained, and transformers' loss on it equals `causal eval --json`;
#   3. that loss equals transformers' loss after one torch.optim.AdamW step (lr 1e-3, no weight decay) in float64
#      (the fp32 step is printed beside it: on the tiny relu model it is itself 9e-4 from the float64 step).
# Each to 1e-4 relative. Run by TransformersCheckpointTests (`swift test`, and so .ci/run, which installs torch +
# transformers into .venv-train first); by hand it installs them there as Tests/run-transformers-checkpoint-test.sh does.
#   Tests/run-transformers-t5-checkpoint-test.sh [SCRATCH]   (SCRATCH: the swift build directory, default .build)
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCH=${1:-.build}
VENV=${CAUSAL_TORCH_VENV:-.venv-train}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
  if [ -n "${CAUSAL_NO_INSTALL:-}" ]; then echo "torch/transformers not importable by $VENV/bin/python" >&2; exit 77; fi
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch
  "$VENV/bin/pip" install -q transformers safetensors numpy
fi
# CAUSAL: a built binary to use as it is (the XCTest wrapper passes the one under test).
if [ -z "${CAUSAL:-}" ]; then
  swift build -c release --product causal --scratch-path "$SCRATCH" >/dev/null 2>&1
  CAUSAL="$SCRATCH/release/causal"
fi
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT

# The models and the pairs (token ids), and transformers' numbers for them.
"$VENV/bin/python" - "$WORK" "$PWD/Tests/Fixtures/tiny/t5" <<'PY'
import json, math, os, random, shutil, sys, torch
from transformers import T5Config, T5ForConditionalGeneration
work, fixture = sys.argv[1], sys.argv[2]
torch.manual_seed(7); random.seed(7)
os.makedirs(f"{work}/relu")
for f in ["config.json", "model.safetensors", "generation_config.json"]:
    shutil.copy(f"{fixture}/{f}", f"{work}/relu/{f}")
gated = T5ForConditionalGeneration(T5Config(vocab_size=300, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
    num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="gated-gelu",
    tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
gated.save_pretrained(f"{work}/gated", safe_serialization=True)
for name, V, lens in [("relu", 1000, [(7, 4), (3, 5), (12, 2)]), ("gated", 300, [(30, 9), (4, 3), (17, 12), (1, 1)])]:
    pairs = []
    for n, m in lens:
        inp = [random.randrange(2, V) for _ in range(n - 1)] + [1]
        lab = [random.randrange(2, V) for _ in range(m - 1)] + [1]
        if m > 3: lab[1] = -100
        pairs.append({"input_ids": inp, "labels": lab})
    with open(f"{work}/{name}.jsonl", "w") as f:
        for p in pairs: f.write(json.dumps(p) + "\n")
    L = max(len(p["input_ids"]) for p in pairs); M = max(len(p["labels"]) for p in pairs)
    ids = torch.tensor([p["input_ids"] + [0] * (L - len(p["input_ids"])) for p in pairs])
    am = torch.tensor([[1] * len(p["input_ids"]) + [0] * (L - len(p["input_ids"])) for p in pairs])
    lab = torch.tensor([p["labels"] + [-100] * (M - len(p["labels"])) for p in pairs])
    out = {}
    for dt, tag in [(torch.float32, "fp32"), (torch.float64, "fp64")]:   # fp64: the same model in exact-ish arithmetic
        model = T5ForConditionalGeneration.from_pretrained(f"{work}/{name}", dtype=dt)
        model.train()
        loss = model(input_ids=ids, attention_mask=am, labels=lab).loss
        loss.backward()
        gn = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in model.parameters() if p.grad is not None))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        opt.step()
        with torch.no_grad():
            after = float(model(input_ids=ids, attention_mask=am, labels=lab).loss)
        out[tag] = {"loss": float(loss), "grad_norm": gn, "loss_after_adamw_step": after}
    json.dump(out, open(f"{work}/{name}.hf.json", "w"))
PY

status=0
for name in relu gated; do
  "$CAUSAL" train --model "$WORK/$name" --data "$WORK/$name.jsonl" --steps 1 --lr 1e-3 --clip 0 --threads 2 --out "$WORK/$name-ckpt" 2>"$WORK/$name.log" || { cat "$WORK/$name.log"; exit 1; }
  "$CAUSAL" eval --model "$WORK/$name-ckpt" --data "$WORK/$name.jsonl" --json --threads 2 > "$WORK/$name.eval.json"
  "$VENV/bin/python" - "$WORK" "$name" <<'PY' || status=1
import json, sys, torch
from transformers import T5ForConditionalGeneration
work, name = sys.argv[1], sys.argv[2]
hf = json.load(open(f"{work}/{name}.hf.json"))
step = [json.loads(l) for l in open(f"{work}/{name}-ckpt/metrics.jsonl") if '"loss"' in l][0]
ours = json.load(open(f"{work}/{name}.eval.json"))
pairs = [json.loads(l) for l in open(f"{work}/{name}.jsonl")]
# The checkpoint in transformers: mean cross-entropy over every scored label, each pair alone.
model = T5ForConditionalGeneration.from_pretrained(f"{work}/{name}-ckpt", dtype=torch.float32).eval()
total, count = 0.0, 0
with torch.no_grad():
    for p in pairs:
        lab = torch.tensor([p["labels"]])
        logits = model(input_ids=torch.tensor([p["input_ids"]]), labels=lab).logits[0].double()
        for t, y in enumerate(p["labels"]):
            if y != -100:
                total += float(torch.logsumexp(logits[t], 0) - logits[t, y]); count += 1
loaded = total / count
rel = lambda a, b: abs(a - b) / abs(b)
f32, f64 = hf["fp32"], hf["fp64"]
# (what, causal, transformers fp32, transformers fp64): each must be within 1e-4 of fp32 transformers, except the
# loss after the AdamW step, which must be within 1e-4 of the float64 run: Adam's first step moves every weight by
# about lr * sign(gradient), so that loss depends on the sign of every small gradient, and on the tiny relu model
# (initializer_factor 8, logits up to +-250) transformers' own fp32 step lands 9e-4 from its float64 step (docs/training.md).
rows = [("step-1 loss (base weights)", step["loss"], f32["loss"], f64["loss"], "fp32"),
        ("step-1 gradient norm", step["grad_norm"], f32["grad_norm"], f64["grad_norm"], "fp32"),
        ("checkpoint loss: causal eval vs transformers from_pretrained", ours["loss"], loaded, None, "fp32"),
        ("loss after one AdamW step", ours["loss"], f32["loss_after_adamw_step"], f64["loss_after_adamw_step"], "fp64")]
ok = ours["scored_tokens"] == count
for what, a, b, c, against in rows:
    line = f"{name}: {what}: causal {a:.7f}, transformers fp32 {b:.7f} (relative {rel(a, b):.2e})"
    if c is not None: line += f", fp64 {c:.7f} (causal {rel(a, c):.2e}, transformers fp32 {rel(b, c):.2e})"
    print(line)
    ok = ok and rel(a, b if against == "fp32" else c) < 1e-4
print(f"{name}: scored labels causal {ours['scored_tokens']}, transformers {count}")
print(f"{name}: {'ok' if ok else 'FAILED'}")
sys.exit(0 if ok else 1)
PY
done
[ $status -eq 0 ] && echo "all checks passed"
exit $status
