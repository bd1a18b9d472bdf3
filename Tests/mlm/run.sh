#!/usr/bin/env bash
# `causal train --objective mlm` checkpoints in Hugging Face transformers (BertForMaskedLM), end to end:
#  1. fine-tune the tiny random BertForMaskedLM of Tests/Fixtures/mlm/model for 3 steps on text (its WordPiece
#     tokenizer), evaluating the fixture's pre-masked batch; then `causal eval --logits` on the checkpoint;
#  2. train a new model from scratch (--init random --config) with --attention mixed --mixed-by layer, 2 steps;
#  3. Tests/mlm/compare.py: each checkpoint loads with BertForMaskedLM.from_pretrained (tokenizer files copied, the
#     tied decoder restored), its masked-token logits equal causal's within 1e-4 (max |difference| / max |logit|), its
#     loss equals `causal eval --json` and the run's final eval_loss within 1e-4 relative, and training moved the weights.
# Python: torch + transformers in $CAUSAL_TORCH_VENV (default .venv-train, as .ci/run prepares it). About a minute.
#   bash Tests/mlm/run.sh                      (builds causal into $SCRATCH, default .build)
#   CAUSAL=.build/release/causal bash Tests/mlm/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${CAUSAL_TORCH_VENV:-$PWD/.venv-train}
if ! "$VENV/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
  echo "FAIL: $VENV/bin/python cannot import torch, transformers and safetensors (.ci/run installs them)" >&2; exit 1
fi
PY="$VENV/bin/python"
if [ -z "${CAUSAL:-}" ]; then
  SCRATCH=${SCRATCH:-.build}
  swift build -c release --product causal --scratch-path "$SCRATCH" >&2
  CAUSAL="$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)/causal"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore
TMP=$(mktemp -d /tmp/causal-mlm.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
start=$(date +%s)
MODEL=Tests/Fixtures/mlm/model

cat > "$TMP/train.txt" <<'TXT'
the cat sat on the mat .
a big dog ran to the red house
the bird sang in the garden at night
old man walked on the long road
the river is cold and the sea is warm
a small fish swam under the ship
TXT
# The fixture's batch, already masked (input_ids + labels), as evaluation data.
"$PY" -c "import json, sys
for b in json.load(open(sys.argv[1]))['batch']: print(json.dumps({'input_ids': b['input_ids'], 'labels': b['labels']}))" \
  Tests/Fixtures/mlm/refs.json > "$TMP/eval.jsonl"

echo "== 1. fine-tuning the tiny BertForMaskedLM"
"$CAUSAL" train --objective mlm --model "$MODEL" --data "$TMP/train.txt" --eval-data "$TMP/eval.jsonl" \
  --steps 3 --lr 0.01 --batch-tokens 48 --seed 1 --threads 2 --out "$TMP/ft" >"$TMP/ft.log" 2>&1 || { cat "$TMP/ft.log" >&2; exit 1; }
"$CAUSAL" eval --model "$TMP/ft" --data "$TMP/eval.jsonl" --json --logits "$TMP/ft.logits.jsonl" --threads 2 > "$TMP/ft.eval.json"
"$PY" Tests/mlm/compare.py --run "$TMP/ft" --base "$MODEL" --eval "$TMP/eval.jsonl" --eval-json "$TMP/ft.eval.json" \
  --logits "$TMP/ft.logits.jsonl"

echo "== 2. from scratch, mixed attention by layer"
cat > "$TMP/arch.json" <<'JSON'
{"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
 "max_position_embeddings": 32, "hidden_act": "gelu", "initializer_range": 0.1}
JSON
"$CAUSAL" train --objective mlm --model "$MODEL" --init random --config "$TMP/arch.json" --data "$TMP/train.txt" \
  --eval-data "$TMP/eval.jsonl" --attention mixed --mixed-by layer --mask-rate 0.3 --steps 2 --lr 0.01 --seed 2 \
  --threads 2 --out "$TMP/scratch" >"$TMP/scratch.log" 2>&1 || { cat "$TMP/scratch.log" >&2; exit 1; }
grep -q '"attention" : "mixed-by-layer"\|"attention": "mixed-by-layer"' "$TMP/scratch/trainer_state.json" ||
  { echo "FAIL: trainer_state.json does not record the mixed-by-layer attention" >&2; exit 1; }
"$CAUSAL" eval --model "$TMP/scratch" --data "$TMP/eval.jsonl" --json --logits "$TMP/scratch.logits.jsonl" --threads 2 > "$TMP/scratch.eval.json"
"$PY" Tests/mlm/compare.py --run "$TMP/scratch" --eval "$TMP/eval.jsonl" --eval-json "$TMP/scratch.eval.json" \
  --logits "$TMP/scratch.logits.jsonl" --no-final-eval
echo "masked-LM checkpoints passed in $(( $(date +%s) - start )) s"
