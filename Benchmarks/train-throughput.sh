#!/usr/bin/env bash
# Fine-tuning throughput, causal against PyTorch, side by side (docs/benchmarks.md).
#
#   Benchmarks/train-throughput.sh [--examples 8] [--prompt 64] [--response 64] [--steps 4] [--rounds 2] [--threads 2]
#
# One batch of SFT examples (already tokenized: the same token ids and the same loss masks for both engines; every
# example has --prompt unscored then --response scored tokens, so no padding is needed anywhere) goes through
#   causal: `causal train` (the default model) `--data batch.jsonl --batch-tokens <all of it> --steps N`
#           (fp32 master weights; each step forward + backward + clip + AdamW), rate from its metrics.jsonl;
#   torch:  Benchmarks/train_torch.py on transformers' LlamaForCausalLM in fp32, loaded from a checkpoint that
#           `causal train` wrote of the same model at lr 0 (so the same weights), same step.
# The two alternate for --rounds rounds. Each reports scored tokens/s averaged over the steps after the first.
# Needs .venv-train with torch + transformers (created with pip by package name if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=8 PROMPT=64 RESPONSE=64 STEPS=4 ROUNDS=2 THREADS=2
while [ $# -gt 0 ]; do
    case "$1" in
        --examples) EXAMPLES=$2; shift 2 ;;
        --prompt) PROMPT=$2; shift 2 ;;
        --response) RESPONSE=$2; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
SCRATCH=${SCRATCH:-.build}
CAUSAL=${CAUSAL:-$SCRATCH/release/causal}
[ -x "$CAUSAL" ] || swift build -c release --scratch-path "$SCRATCH"
PY=.venv-train/bin/python
if ! "$PY" -c 'import torch, transformers' 2>/dev/null; then
    python3 -m venv .venv-train
    .venv-train/bin/pip install --quiet torch transformers safetensors
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The batch: token ids drawn with a fixed seed from the ordinary (non-special) part of the vocabulary.
"$PY" - "$WORK/batch.jsonl" "$EXAMPLES" "$PROMPT" "$RESPONSE" <<'EOF'
import json, random, sys
path, n, p, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(1234)
with open(path, "w") as f:
    for _ in range(n):
        ids = [rng.randrange(100, 49000) for _ in range(p + r)]
        f.write(json.dumps({"input_ids": ids, "labels": [-100] * p + ids[p:]}) + "\n")
EOF
TOKENS=$((EXAMPLES * (PROMPT + RESPONSE)))
# The checkpoint torch starts from: one step at lr 0 (the first warmup step) writes the base weights in fp32.
"$CAUSAL" train --data "$WORK/batch.jsonl" --batch-tokens "$TOKENS" --steps 1 --warmup 1 \
    --threads "$THREADS" --out "$WORK/ckpt" 2>/dev/null

echo "date: $(date '+%Y-%m-%d %H:%M')  load average: $(cut -d' ' -f1-3 /proc/loadavg)  threads: $THREADS"
echo "batch: $EXAMPLES examples x ($PROMPT prompt + $RESPONSE response) tokens = $TOKENS tokens, $((EXAMPLES * RESPONSE)) scored; $STEPS steps per run"
for round in $(seq 1 "$ROUNDS"); do
    rm -rf "$WORK/run"
    "$CAUSAL" train --data "$WORK/batch.jsonl" --batch-tokens "$TOKENS" --steps "$STEPS" --lr 1e-5 \
        --threads "$THREADS" --out "$WORK/run" 2>/dev/null
    C=$("$PY" -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if "\"loss\"" in l]
r = [x["scored_tokens_per_second"] for x in rows[1:]]
print("%.1f" % (sum(r) / len(r)), " ".join("%.3f" % x["loss"] for x in rows))' "$WORK/run/metrics.jsonl")
    T=$(OMP_NUM_THREADS=$THREADS "$PY" Benchmarks/train_torch.py --model "$WORK/ckpt" --data "$WORK/batch.jsonl" \
        --steps "$STEPS" --threads "$THREADS" 2>/dev/null | "$PY" -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
s = [x for x in rows if x.get("summary")][0]
print("%.1f" % s["scored_tokens_per_second"], " ".join("%.3f" % x["loss"] for x in rows if "loss" in x))')
    echo "round $round  load $(cut -d' ' -f1 /proc/loadavg)  causal: ${C%% *} scored tok/s (losses ${C#* })  torch: ${T%% *} scored tok/s (losses ${T#* })"
done
