#!/usr/bin/env bash
# LoRA adapters between causal and the `peft` package, both directions, through the directories users exchange:
#  1. adapters written by peft (Tests/Fixtures/lora/{qwen2,smollm2}/adapter_step3, from make_lora_refs.py): causal
#     reads them (`causal score --adapter DIR`) and gives peft's log-probabilities;
#  2. adapters written by causal (`causal train --lora-rank ... --out RUN` writes the PEFT files into RUN) on the tiny random
#     Qwen2 (q/k/v biases, rotate-half RoPE) and on SmolLM2 (a LLaMA GGUF, whose q/k rows causal keeps permuted: the
#     writer must un-permute B): peft loads them onto the transformers model and gives causal's log-probabilities.
# Each comparison is Tests/peft/compare.py: tensor names and shapes exactly as peft creates them, then per prompt the
# log-probability of every prompt token and of 10 candidate next tokens, within 1e-4 relative, and a check that the
# adapter changes the values (so ignoring it would fail).
#
# Python: torch (CPU) + transformers + gguf in $CAUSAL_TORCH_VENV (as .ci/run prepares it; default .venv-train,
# made and filled here if missing), plus peft, pip-installed by package name. The SmolLM2 GGUF: $CAUSAL_MODEL or
# `causal pull smollm2-135m-instruct` (the tests' cache). About 2-3 minutes after the install.
#
#   bash Tests/peft/run.sh
#   CAUSAL=.build/release/causal bash Tests/peft/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

VENV=${CAUSAL_TORCH_VENV:-$ROOT/.venv-train}
if ! "$VENV/bin/python" -c "import torch, transformers, safetensors, numpy, gguf" 2>/dev/null; then
  # The same pins and CPU wheel choice as .ci/run.
  torch_spec="torch==2.15.0"; find_links=""
  for dir in ${PIP_FIND_LINKS:-} /opt/wheels; do
    whl=$(ls "$dir"/torch-*+cpu-*.whl 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$whl" ]; then torch_spec="torch==$(basename "$whl" | cut -d- -f2)"; find_links="--find-links=$dir"; break; fi
  done
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  timeout 900 "$VENV/bin/pip" install -q --disable-pip-version-check $find_links "$torch_spec" transformers==5.25.0 \
    safetensors==0.8.0 numpy==2.4.6 gguf==0.19.0
fi
"$VENV/bin/python" -c "import peft" 2>/dev/null ||
  timeout 600 "$VENV/bin/pip" install -q --disable-pip-version-check peft==0.21.2
PY="$VENV/bin/python"
"$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"

if [ -z "${CAUSAL:-}" ]; then
  SCRATCH=${SCRATCH:-.build}
  swift build -c release --product causal --scratch-path "$SCRATCH" >&2
  CAUSAL="$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)/causal"
fi
CAUSAL=$(cd "$(dirname "$CAUSAL")" && pwd)/$(basename "$CAUSAL")
SMOLLM2=${CAUSAL_MODEL:-$("$CAUSAL" pull smollm2-135m-instruct)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONWARNINGS=ignore

TMP=$(mktemp -d /tmp/causal-peft.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
start=$(date +%s)
compare() { "$PY" Tests/peft/compare.py --causal "$CAUSAL" "$@"; }

echo "== 1. adapters written by peft, read by causal"
compare --model Tests/Fixtures/tiny/qwen2 --adapter Tests/Fixtures/lora/qwen2/adapter_step3 \
  --prompts Tests/Fixtures/lora/qwen2/refs.json
compare --model "$SMOLLM2" --adapter Tests/Fixtures/lora/smollm2/adapter_step3 \
  --prompts Tests/Fixtures/lora/smollm2/refs.json

echo "== 2. adapters written by causal train, read by peft"
# The help is read whole before grep looks at it: with pipefail, `grep -q` closing the pipe at its first match would
# fail the pipeline whenever causal was still writing (SIGPIPE), at random.
train_help=$("$CAUSAL" train --help 2>&1 || true)
if ! grep -q -- "--lora-rank" <<<"$train_help"; then
  echo "FAIL: causal train has no --lora-rank: no adapter written by causal to check" >&2; exit 1
fi
# The fixtures' SFT batches as already-tokenized training lines.
for c in qwen2 smollm2; do
  "$PY" -c "import json, sys; b = json.load(open(sys.argv[1]))['batch']
print(''.join(json.dumps({'input_ids': t, 'labels': l}) + '\n' for t, l in zip(b['tokens'], b['labels'])), end='')" \
    "Tests/Fixtures/lora/$c/refs.json" > "$TMP/$c.jsonl"
done
# A high learning rate so that 3 steps move B well away from PEFT's B = 0 start.
"$CAUSAL" train --model Tests/Fixtures/tiny/qwen2 --data "$TMP/qwen2.jsonl" --out "$TMP/qwen2-run" \
  --lora-rank 4 --lora-alpha 8 --steps 3 --lr 0.05 --seed 1 >"$TMP/qwen2-train.log" 2>&1 ||
  { cat "$TMP/qwen2-train.log" >&2; exit 1; }
compare --model Tests/Fixtures/tiny/qwen2 --adapter "$TMP/qwen2-run" --prompts Tests/Fixtures/lora/qwen2/refs.json
"$CAUSAL" train --model "$SMOLLM2" --data "$TMP/smollm2.jsonl" --out "$TMP/smollm2-run" \
  --lora-rank 4 --lora-alpha 16 --lora-targets q,k,v,o,gate,up,down --steps 2 --lr 0.01 --seed 1 \
  >"$TMP/smollm2-train.log" 2>&1 || { cat "$TMP/smollm2-train.log" >&2; exit 1; }
compare --model "$SMOLLM2" --adapter "$TMP/smollm2-run" --prompts Tests/Fixtures/lora/smollm2/refs.json
echo "peft round trip passed in $(( $(date +%s) - start )) s"
