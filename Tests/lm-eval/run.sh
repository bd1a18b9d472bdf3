#!/usr/bin/env bash
# lm-evaluation-harness against `causal serve`: the 30-question multiple-choice task in this directory
# (causal_mc.yaml + causal_mc.jsonl) through the `local-completions` model at /v1/completions (echo + logprobs,
# batches of token-id prompts) with the server's own tokenizer endpoints (/tokenize, /detokenize, /tokenizer_info:
# lm-eval's remote tokenizer), then every per-item log-likelihood compared with `causal score` (the library, no
# server) within 1e-5.
#
# Installs lm-eval (pinned) with pip into .venv-lmeval (git-ignored), builds `causal` in release mode unless $CAUSAL
# points at a binary, starts the server on a free loopback port with an API key, and stops it with SIGTERM.
#
#   bash Tests/lm-eval/run.sh
#   CAUSAL=.build/release/causal bash Tests/lm-eval/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

VENV=.venv-lmeval
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/python" -c "import lm_eval, aiohttp, tenacity" 2>/dev/null ||
  timeout 600 "$VENV/bin/pip" install --quiet --disable-pip-version-check "lm-eval[api]==0.4.13"

if [ -z "${CAUSAL:-}" ]; then
  SCRATCH=${SCRATCH:-.build}
  swift build -c release --product causal --scratch-path "$SCRATCH" >&2
  CAUSAL="$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)/causal"
fi
CAUSAL=$(cd "$(dirname "$CAUSAL")" && pwd)/$(basename "$CAUSAL")

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY="lm-eval-key-$RANDOM"
LOG=$(mktemp /tmp/causal-serve-lmeval.XXXXXX.log)
OUT=$(mktemp -d /tmp/causal-lmeval.XXXXXX)
MODEL_ARGS=()
if [ -n "${CAUSAL_MODEL:-}" ]; then MODEL_ARGS=(--model "$CAUSAL_MODEL"); fi

"$CAUSAL" serve "${MODEL_ARGS[@]}" --host 127.0.0.1 --port "$PORT" --api-key "$KEY" --max-sequences 8 --context 2048 \
  --model-name causal-test >"$LOG" 2>&1 &
PID=$!
cleanup() { if kill -0 "$PID" 2>/dev/null; then kill -TERM "$PID" 2>/dev/null || true; fi; rm -rf "$OUT"; }
trap cleanup EXIT

for _ in $(seq 1 1500); do
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then break; fi
  if ! kill -0 "$PID" 2>/dev/null; then echo "causal serve exited early:" >&2; cat "$LOG" >&2; exit 1; fi
  sleep 0.2
done

status=0
start=$(date +%s)
(cd Tests/lm-eval && OPENAI_API_KEY="$KEY" HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 timeout 600 "$ROOT/$VENV/bin/lm-eval" run \
  --model local-completions \
  --model_args "model=causal-test,base_url=http://127.0.0.1:$PORT/v1/completions,tokenizer_backend=remote,tokenized_requests=True,num_concurrent=2,max_retries=1,timeout=300" \
  --tasks causal_mc --include_path . --batch_size 8 --output_path "$OUT" --log_samples) || status=$?
echo "lm_eval finished in $(( $(date +%s) - start )) s (status $status)"

if [ $status -eq 0 ]; then
  SAMPLES=$(find "$OUT" -name 'samples_causal_mc_*.jsonl' | head -1)
  if [ -z "$SAMPLES" ]; then echo "no samples file under $OUT" >&2; status=1; else
    "$VENV/bin/python" Tests/lm-eval/compare.py "$SAMPLES" "$CAUSAL" ${CAUSAL_MODEL:+--model "$CAUSAL_MODEL"} || status=$?
  fi
fi

kill -TERM "$PID"
if wait "$PID"; then echo "server stopped cleanly on SIGTERM"; else echo "server exited with status $? on SIGTERM" >&2; status=1; fi
echo "--- server log (last 10 lines) ---"
tail -n 10 "$LOG"
rm -f "$LOG"
exit $status
