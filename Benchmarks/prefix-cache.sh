#!/usr/bin/env bash
# Chat replay with the prefix cache off and on (Benchmarks/prefix-cache.py): builds the release `causal` tool
# unless CAUSAL is given, then replays a 10-turn conversation through `causal serve` twice.
#   bash Benchmarks/prefix-cache.sh [--model PATH] [--turns 10] [--max-tokens 64]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CAUSAL:-}" ]; then
    swift build -c release --product causal >&2
    CAUSAL=.build/release/causal
fi
exec python3 Benchmarks/prefix-cache.py --causal "$CAUSAL" "$@"
