#!/usr/bin/env bash
# Runs Tests/openai_client_test.py (the official `openai` Python client) against `causal serve`.
#
# Installs `openai` with pip into .venv-openai (git-ignored), builds `causal` in release mode (unless $CAUSAL
# points at a binary), starts `causal serve` on 127.0.0.1 with a free port, an API key and the default embedding
# model (all-MiniLM-L6-v2, fetched into the cache if missing), runs the checks, then stops the server with SIGTERM
# and checks that it exits cleanly. Bounded in time: the server gets 300 s to start, the checks 300 s.
#
#   bash Tests/run-openai-client-test.sh                     # SCRATCH=.build by default (swift build --scratch-path)
#   CAUSAL=.build/release/causal bash Tests/run-openai-client-test.sh   # an already built binary (as .ci/run does)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-openai
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/python" -c "import openai" 2>/dev/null || timeout 300 "$VENV/bin/pip" install --quiet --disable-pip-version-check openai

if [ -z "${CAUSAL:-}" ]; then
  SCRATCH=${SCRATCH:-.build}
  swift build -c release --product causal --scratch-path "$SCRATCH" >&2
  CAUSAL="$(swift build -c release --scratch-path "$SCRATCH" --show-bin-path)/causal"
fi

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY="test-key-$RANDOM"
LOG=$(mktemp /tmp/causal-serve.XXXXXX.log)
MODEL_ARGS=()
if [ -n "${CAUSAL_MODEL:-}" ]; then MODEL_ARGS=(--model "$CAUSAL_MODEL"); fi

"$CAUSAL" serve "${MODEL_ARGS[@]}" --host 127.0.0.1 --port "$PORT" --api-key "$KEY" --max-sequences 4 --context 2048 \
  --embedding-model "${CAUSAL_EMBED_MODEL:-default}" >"$LOG" 2>&1 &
PID=$!
cleanup() { if kill -0 "$PID" 2>/dev/null; then kill -TERM "$PID" 2>/dev/null || true; fi; }
trap cleanup EXIT

for _ in $(seq 1 1500); do
  if python3 -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then break; fi
  if ! kill -0 "$PID" 2>/dev/null; then echo "causal serve exited early:" >&2; cat "$LOG" >&2; exit 1; fi
  sleep 0.2
done
if ! python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then
  echo "causal serve did not answer /health in time:" >&2; cat "$LOG" >&2; exit 1
fi

status=0
timeout 300 "$VENV/bin/python" Tests/openai_client_test.py --base-url "http://127.0.0.1:$PORT/v1" --api-key "$KEY" \
  --embedding-model "$(basename "${CAUSAL_EMBED_MODEL:-all-MiniLM-L6-v2}")" || status=$?

kill -TERM "$PID"
if wait "$PID"; then echo "server stopped cleanly on SIGTERM"; else echo "server exited with status $? on SIGTERM" >&2; status=1; fi
trap - EXIT
echo "--- server log (last 15 lines) ---"
tail -n 15 "$LOG"
rm -f "$LOG"
exit $status
