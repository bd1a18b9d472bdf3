#!/usr/bin/env bash
# Checks that a checkpoint written by `causal train` loads in Hugging Face transformers and gives CausalLM's logits.
#
# Run by TransformersCheckpointTests (`swift test`) when .venv-train imports torch; .ci/run installs it there first.
# Run by hand, it installs torch + transformers (large) with pip into that virtual environment.
#   Tests/run-transformers-checkpoint-test.sh [SCRATCH]   (SCRATCH: the swift build directory, default .build)
# Steps: builds `causal` (release), trains 2 steps on 4 pairs into a temp dir, loads the dir with
# AutoModelForCausalLM.from_pretrained (fp32), and compares transformers' mean cross-entropy over the response
# tokens (computed from its logits, each pair alone) with `causal eval --json` on the same checkpoint: relative
# difference below 1e-4, same scored-token count. A wrong tensor name, Q/K row order or tied head shows up as a
# loss that is off by far more.
set -euo pipefail
cd "$(dirname "$0")/.."
SCRATCH=${1:-.build}
VENV=${CAUSAL_TORCH_VENV:-.venv-train}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
  if [ -n "${CAUSAL_NO_INSTALL:-}" ]; then echo "torch/transformers not importable by $VENV/bin/python" >&2; exit 77; fi
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch
  "$VENV/bin/pip" install -q transformers safetensors numpy gguf
fi
# CAUSAL: a built binary to use as it is (the XCTest wrapper passes the one under test).
if [ -z "${CAUSAL:-}" ]; then
  swift build -c release --product causal --scratch-path "$SCRATCH" >/dev/null 2>&1
  CAUSAL="$SCRATCH/release/causal"
fi
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/pairs.jsonl" <<'JSONL'
{"prompt": "What is the capital of France?", "response": "The capital of France is Paris."}
{"prompt": "Say hello in Spanish.", "response": "Hola!"}
{"prompt": "What colour is grass?", "response": "Grass is green."}
{"prompt": "How many legs does a spider have?", "response": "A spider has eight legs."}
JSONL
"$CAUSAL" train --data "$WORK/pairs.jsonl" --steps 2 --lr 1e-4 --threads 2 --out "$WORK/ckpt" 2>"$WORK/train.log" || { cat "$WORK/train.log"; exit 1; }
"$CAUSAL" eval --model "$WORK/ckpt" --data "$WORK/pairs.jsonl" --json --threads 2 > "$WORK/eval.json"
# The exact token ids and labels `causal` scores, so that transformers sees the same sequences.
"$VENV/bin/python" - "$WORK" <<'PY'
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
work = sys.argv[1]
ours = json.load(open(f"{work}/eval.json"))
model = AutoModelForCausalLM.from_pretrained(f"{work}/ckpt", dtype=torch.float32).eval()
cfg = json.load(open(f"{work}/ckpt/config.json"))
state = json.load(open(f"{work}/ckpt/trainer_state.json"))
base = state["base_model"]
import os
tok = AutoTokenizer.from_pretrained(os.path.dirname(base), gguf_file=os.path.basename(base))
tot, n = 0.0, 0
for line in open(f"{work}/pairs.jsonl"):
    ex = json.loads(line)
    p = tok.apply_chat_template([{"role": "user", "content": ex["prompt"]}], tokenize=True, add_generation_prompt=True)
    if isinstance(p, dict) or hasattr(p, "input_ids"): p = p["input_ids"]
    r = tok.encode(ex["response"] + "<|im_end|>", add_special_tokens=False)
    ids = torch.tensor([p + r]); lab = torch.tensor([[-100] * len(p) + r])
    with torch.no_grad(): lg = model(input_ids=ids).logits[0, :-1].double()
    ce = torch.nn.functional.cross_entropy(lg, lab[0, 1:], ignore_index=-100, reduction="sum")
    tot += float(ce); n += len(r)
hf = tot / n
rel = abs(hf - ours["loss"]) / hf
print(f"transformers loss {hf:.7f} over {n} scored tokens; causal eval {ours['loss']:.7f} over {ours['scored_tokens']}; rel {rel:.2e}")
assert n == ours["scored_tokens"], "scored token counts differ"
assert rel < 1e-4, "checkpoint logits differ"
print("OK: transformers loads the checkpoint and agrees")
PY
