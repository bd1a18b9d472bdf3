#!/usr/bin/env bash
# Side by side, in one run: llama.cpp (through the llama-cpp-python package) and `causal bench` on the same GGUF,
# same thread count, alternating rounds. A benchmark, not a test: CI does not run it.
#
#   Benchmarks/compare-llama-cpp.sh [-p 64,512] [-n 128] [-t 2] [-r 3] [--rounds 2] [--model PATH]
#
# llama-cpp-python is installed with pip into a virtual environment of its own (.venv-llama-cpp, ignored by git)
# the first time; pip builds it for this machine, which takes several minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
P=64,512; N=128; T=2; R=3; ROUNDS=2; MODEL=""
while [ $# -gt 0 ]; do
    case "$1" in
        -p) P=$2; shift 2;; -n) N=$2; shift 2;; -t) T=$2; shift 2;; -r) R=$2; shift 2;;
        --rounds) ROUNDS=$2; shift 2;; --model) MODEL=$2; shift 2;;
        *) echo "unknown argument: $1" >&2; exit 2;;
    esac
done
VENV=.venv-llama-cpp
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "Installing llama-cpp-python into $VENV (pip builds it; several minutes)..." >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet llama-cpp-python
fi
[ -n "${NO_BUILD:-}" ] || swift build -c release --product causal >&2
CAUSAL=.build/release/causal
[ -n "$MODEL" ] || MODEL=$($CAUSAL info | sed -n 's/^file: //p')
echo "model: $MODEL" >&2
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
OUT=$(mktemp)
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round: causal" >&2
    $CAUSAL bench --model "$MODEL" -p "$P" -n "$N" -t "$T" -r "$R" --json | sed 's/^{/{"engine": "causal", /' >>"$OUT"
    echo "round $round: llama.cpp" >&2
    "$VENV/bin/python" Benchmarks/llama_cpp_bench.py --model "$MODEL" -p "$P" -n "$N" -t "$T" -r "$R" >>"$OUT"
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
tests = []
for r in rows:
    if r["test"] not in tests: tests.append(r["test"])
print("| test | causal t/s (median of all repeats) | llama.cpp t/s | ratio |")
print("|---|---|---|---|")
for t in tests:
    c = [s for r in rows if r["test"] == t and r["engine"] == "causal" for s in r["samples"]]
    l = [s for r in rows if r["test"] == t and r["engine"] == "llama.cpp" for s in r["samples"]]
    if c and l:
        mc, ml = statistics.median(c), statistics.median(l)
        print(f"| {t} | {mc:.1f} | {ml:.1f} | {mc / ml:.2f}x |")
PY
rm -f "$OUT"
