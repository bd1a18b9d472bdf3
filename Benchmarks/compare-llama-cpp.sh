#!/usr/bin/env bash
# Side by side, in one run: native llama.cpp (`llama-bench`) and `causal bench` on the same GGUF, same thread
# count, alternating rounds. A benchmark, not a test: CI does not run it.
#
#   Benchmarks/compare-llama-cpp.sh [-p 64,512] [-n 128] [-t 2] [-r 3] [--rounds 2] [--model PATH]
#                                   [--python PYTHON] [--rt]
#
# llama-bench comes from Benchmarks/build-llama-cpp.sh (built outside the repository on first use; several minutes
# on 2 cores). --python PYTHON measures llama.cpp through an existing llama-cpp-python installation instead
# (Benchmarks/llama_cpp_bench.py, one Python call per token), the way the first comparisons were made; its per-token
# overhead makes llama.cpp look slower than its native tool. --rt runs both engines under `chrt -f 10`: on a shared
# machine llama.cpp's spinning threads slow down several-fold when other work takes a core (causal's far less), which
# makes unprioritized ratios meaningless. NO_BUILD=1 reuses the built `causal` binary.
# Several models, batched decode, the DRAM floor, memory and load time: Benchmarks/compare-kquants.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
P=64,512; N=128; T=2; R=3; ROUNDS=2; MODEL=""; PYTHON=""; PRE=()
while [ $# -gt 0 ]; do
    case "$1" in
        -p) P=$2; shift 2;; -n) N=$2; shift 2;; -t) T=$2; shift 2;; -r) R=$2; shift 2;;
        --rounds) ROUNDS=$2; shift 2;; --model) MODEL=$2; shift 2;; --python) PYTHON=$2; shift 2;; --rt) PRE=(chrt -f 10); shift;;
        *) echo "unknown argument: $1" >&2; exit 2;;
    esac
done
if [ -n "$PYTHON" ]; then
    "$PYTHON" -c "import llama_cpp" || { echo "$PYTHON cannot import llama_cpp" >&2; exit 1; }
else
    BIN=$(Benchmarks/build-llama-cpp.sh)
fi
[ -n "${NO_BUILD:-}" ] || swift build -c release --product causal >&2
CAUSAL=.build/release/causal
[ -n "$MODEL" ] || MODEL=$($CAUSAL info | sed -n 's/^file: //p')
echo "model: $MODEL" >&2
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round: causal" >&2
    "${PRE[@]}" $CAUSAL bench --model "$MODEL" -p "$P" -n "$N" -t "$T" -r "$R" --json | sed 's/^{/{"engine": "causal", /' >>"$OUT"
    echo "round $round: llama.cpp" >&2
    if [ -n "$PYTHON" ]; then
        "${PRE[@]}" "$PYTHON" Benchmarks/llama_cpp_bench.py --model "$MODEL" -p "$P" -n "$N" -t "$T" -r "$R" >>"$OUT"
    else
        # llama-bench: one JSON object per test; its samples_ts are the repeats' tokens/s.
        "${PRE[@]}" "$BIN/llama-bench" -m "$MODEL" -p "$P" -n "$N" -t "$T" -r "$R" -o jsonl | python3 -c '
import json, sys
for line in sys.stdin:
    if not line.strip().startswith("{"): continue
    r = json.loads(line)
    test = "pp%d" % r["n_prompt"] if r["n_gen"] == 0 else "tg%d" % r["n_gen"]
    print(json.dumps({"engine": "llama.cpp", "test": test, "samples": r["samples_ts"]}))' >>"$OUT"
    fi
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
