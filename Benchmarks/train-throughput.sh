#!/usr/bin/env bash
# Fine-tuning throughput, causal against PyTorch, side by side (docs/benchmarks.md).
#
#   Benchmarks/train-throughput.sh [--examples 8] [--prompt 64] [--response 64] [--steps 4] [--rounds 2] [--threads 2]
#                                  [--model FILE.gguf] [--lora R [--alpha A] [--qlora]] [--lr LR]
#                                  [--omp-wait-policy passive|active|default] [--rt]
#
# One batch of SFT examples (already tokenized: the same token ids and the same loss masks for both engines; every
# example has --prompt unscored then --response scored tokens, so no padding is needed anywhere; ids drawn with a fixed
# seed from 100..49000, or from 100..150000 for a vocabulary above 150000 such as Qwen2.5's 151936) goes through
# full fine-tuning (default):
#   causal: `causal train --model M --data batch.jsonl --batch-tokens <all of it> --steps N`
#           (fp32 master weights; each step forward + backward + clip + AdamW), rate from its metrics.jsonl;
#   torch:  Benchmarks/train_torch.py on transformers' AutoModelForCausalLM in fp32, loaded from a checkpoint that
#           `causal train` wrote of the same model at lr 0 (so the same weights), same step.
# LoRA (--lora R): adapters of rank R (alpha --alpha, default R; no dropout) on all 7 linear layers of every block,
# the base frozen, AdamW on the adapters only (lr default 1e-4):
#   causal: `causal train --lora-rank R --lora-alpha A --base-weights f32 --lora-targets q,k,v,o,gate,up,down`
#           (the GGUF dequantized to an fp32 base); with --qlora also `--base-weights native` (the GGUF's own
#           quantized weights: QLoRA), reported next to it (causal only);
#   torch:  Benchmarks/train_torch_lora.py: transformers loads the same GGUF (gguf_file=..., dequantized to fp32),
#           peft 0.21.2 LoraConfig(r=R, lora_alpha=A, lora_dropout=0, all 7 target modules), same step.
# The engines alternate for --rounds rounds. Each run reports scored tokens/s averaged over its steps after the first;
# in LoRA mode the last lines give the mean over the rounds, the ratio causal / torch and each engine's peak RSS.
# torch runs with torch.set_num_threads(--threads) and OMP_NUM_THREADS=--threads; --omp-wait-policy sets its
# OMP_WAIT_POLICY (default passive: on a loaded machine torch's OpenMP threads otherwise spin at every barrier while
# the other thread waits for a core; measured 15x slower on small matmuls at load average 10; "default" leaves the
# variable unset). --rt runs every engine command under `chrt -f 10` (real-time priority: other work on a shared
# machine cannot take the benchmark's cores, and is starved while it runs).
# Needs .venv-train with torch + transformers (+ gguf + peft==0.21.2 for --lora), installed with pip by package name
# if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=8 PROMPT=64 RESPONSE=64 STEPS=4 ROUNDS=2 THREADS=2
MODEL="$HOME/.cache/causal/models/SmolLM2-135M-Instruct.Q4_1.gguf"
LORA="" ALPHA="" QLORA="" LR="" WAIT=passive RT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --examples) EXAMPLES=$2; shift 2 ;;
        --prompt) PROMPT=$2; shift 2 ;;
        --response) RESPONSE=$2; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --lora) LORA=$2; shift 2 ;;
        --alpha) ALPHA=$2; shift 2 ;;
        --qlora) QLORA=1; shift ;;
        --lr) LR=$2; shift 2 ;;
        --omp-wait-policy) WAIT=$2; shift 2 ;;
        --rt) RT=1; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "$LORA" ] && { [ -n "$ALPHA" ] || [ -n "$QLORA" ]; }; then echo "--alpha and --qlora need --lora R" >&2; exit 2; fi
case "$WAIT" in passive|active|default) ;; *) echo "--omp-wait-policy: passive, active or default" >&2; exit 2 ;; esac
[ -f "$MODEL" ] || { echo "no model file $MODEL (give --model FILE.gguf; 'causal pull' fetches the default)" >&2; exit 2; }
ALPHA=${ALPHA:-$LORA}
SCRATCH=${SCRATCH:-.build}
CAUSAL=${CAUSAL:-$SCRATCH/release/causal}
[ -x "$CAUSAL" ] || swift build -c release --scratch-path "$SCRATCH"
PY=.venv-train/bin/python
if [ -n "$LORA" ]; then
    LR=${LR:-1e-4}
    if ! "$PY" -c 'import torch, transformers, gguf, peft' 2>/dev/null; then
        [ -x "$PY" ] || python3 -m venv .venv-train
        .venv-train/bin/pip install --quiet torch transformers safetensors gguf peft==0.21.2
    fi
else
    LR=${LR:-1e-5}
    if ! "$PY" -c 'import torch, transformers' 2>/dev/null; then
        [ -x "$PY" ] || python3 -m venv .venv-train
        .venv-train/bin/pip install --quiet torch transformers safetensors
    fi
fi
PRE=()
[ -n "$RT" ] && PRE=(chrt -f 10)
TORCH_ENV=(env OMP_NUM_THREADS="$THREADS")
[ "$WAIT" != default ] && TORCH_ENV+=(OMP_WAIT_POLICY="$WAIT")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The vocabulary size (the length of the GGUF's tokenizer.ggml.tokens) sets the range of the drawn ids.
VOCAB=$("$PY" -c '
import sys
try:
    from gguf import GGUFReader
    print(len(GGUFReader(sys.argv[1]).fields["tokenizer.ggml.tokens"].data))
except Exception:
    print(49152)' "$MODEL")
HI=49000
[ "$VOCAB" -gt 150000 ] && HI=150000
# The batch: token ids drawn with a fixed seed from the ordinary (non-special) part of the vocabulary.
"$PY" -c '
import json, random, sys
path, n, p, r, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(1234)
with open(path, "w") as f:
    for _ in range(n):
        ids = [rng.randrange(100, hi) for _ in range(p + r)]
        f.write(json.dumps({"input_ids": ids, "labels": [-100] * p + ids[p:]}) + "\n")' \
    "$WORK/batch.jsonl" "$EXAMPLES" "$PROMPT" "$RESPONSE" "$HI"
TOKENS=$((EXAMPLES * (PROMPT + RESPONSE)))

# causal_rate DIR: the mean scored tok/s over the steps after the first, then the losses, from DIR/metrics.jsonl.
causal_rate() {
    "$PY" -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if "\"loss\"" in l]
r = [x["scored_tokens_per_second"] for x in rows[1:]]
print("%.1f" % (sum(r) / len(r)), " ".join("%.3f" % x["loss"] for x in rows))' "$1/metrics.jsonl"
}
# torch_rate: the same from the JSON lines of train_torch*.py on stdin.
torch_rate() {
    "$PY" -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
s = [x for x in rows if x.get("summary")][0]
print("%.1f" % s["scored_tokens_per_second"], " ".join("%.3f" % x["loss"] for x in rows if "loss" in x))'
}
# peak_rss FILE: the N of causal's "peak RSS N MiB" on its stderr.
peak_rss() { grep -o 'peak RSS [0-9]* MiB' "$1" | tail -1 | grep -o '[0-9][0-9]*' || echo "?"; }

echo "date: $(date '+%Y-%m-%d %H:%M')  load average: $(cut -d' ' -f1-3 /proc/loadavg)  threads: $THREADS  cpu: $(lscpu | sed -n 's/^Model name: *//p'), L3 $(lscpu | sed -n 's/^L3 cache: *//p')"
echo "model: $MODEL (vocabulary $VOCAB, ids drawn from 100..$HI)"
echo "batch: $EXAMPLES examples x ($PROMPT prompt + $RESPONSE response) tokens = $TOKENS tokens, $((EXAMPLES * RESPONSE)) scored; $STEPS steps per run, lr $LR"
echo "torch: OMP_WAIT_POLICY=$WAIT$([ -n "$RT" ] && echo '; every engine command under chrt -f 10' || true)"

if [ -z "$LORA" ]; then
    # The checkpoint torch starts from: one step at lr 0 (the first warmup step) writes the base weights in fp32.
    "$CAUSAL" train --model "$MODEL" --data "$WORK/batch.jsonl" --batch-tokens "$TOKENS" --steps 1 --warmup 1 \
        --threads "$THREADS" --out "$WORK/ckpt" 2>/dev/null
    for round in $(seq 1 "$ROUNDS"); do
        rm -rf "$WORK/run"
        "${PRE[@]}" "$CAUSAL" train --model "$MODEL" --data "$WORK/batch.jsonl" --batch-tokens "$TOKENS" --steps "$STEPS" \
            --lr "$LR" --threads "$THREADS" --out "$WORK/run" 2>/dev/null
        C=$(causal_rate "$WORK/run")
        T=$("${PRE[@]}" "${TORCH_ENV[@]}" "$PY" Benchmarks/train_torch.py --model "$WORK/ckpt" --data "$WORK/batch.jsonl" \
            --steps "$STEPS" --threads "$THREADS" --lr "$LR" 2>/dev/null | torch_rate)
        echo "round $round  load $(cut -d' ' -f1 /proc/loadavg)  causal: ${C%% *} scored tok/s (losses ${C#* })  torch: ${T%% *} scored tok/s (losses ${T#* })"
    done
    exit 0
fi

TARGETS=q,k,v,o,gate,up,down
echo "LoRA: rank $LORA, alpha $ALPHA, targets $TARGETS, dropout 0"
SUMS="$WORK/sums"
: > "$SUMS"
for round in $(seq 1 "$ROUNDS"); do
    rm -rf "$WORK/run" "$WORK/qrun"
    "${PRE[@]}" "$CAUSAL" train --model "$MODEL" --data "$WORK/batch.jsonl" --batch-tokens "$TOKENS" --steps "$STEPS" \
        --lr "$LR" --threads "$THREADS" --lora-rank "$LORA" --lora-alpha "$ALPHA" --lora-targets "$TARGETS" \
        --base-weights f32 --out "$WORK/run" 2>"$WORK/run.err" || { tail -5 "$WORK/run.err" >&2; exit 1; }
    C=$(causal_rate "$WORK/run"); CRSS=$(peak_rss "$WORK/run.err")
    LINE="round $round  load $(cut -d' ' -f1 /proc/loadavg)  causal LoRA f32: ${C%% *} scored tok/s (losses ${C#* }; peak RSS $CRSS MiB)"
    Q="nan -"; QRSS="-"
    if [ -n "$QLORA" ]; then
        "${PRE[@]}" "$CAUSAL" train --model "$MODEL" --data "$WORK/batch.jsonl" --batch-tokens "$TOKENS" --steps "$STEPS" \
            --lr "$LR" --threads "$THREADS" --lora-rank "$LORA" --lora-alpha "$ALPHA" --lora-targets "$TARGETS" \
            --base-weights native --out "$WORK/qrun" 2>"$WORK/qrun.err" || { tail -5 "$WORK/qrun.err" >&2; exit 1; }
        Q=$(causal_rate "$WORK/qrun"); QRSS=$(peak_rss "$WORK/qrun.err")
        LINE="$LINE  causal QLoRA native: ${Q%% *} scored tok/s (losses ${Q#* }; peak RSS $QRSS MiB)"
    fi
    "${PRE[@]}" "${TORCH_ENV[@]}" "$PY" Benchmarks/train_torch_lora.py --gguf "$MODEL" --data "$WORK/batch.jsonl" \
        --rank "$LORA" --alpha "$ALPHA" --steps "$STEPS" --threads "$THREADS" --lr "$LR" >"$WORK/torch.out" 2>"$WORK/torch.err" \
        || { tail -20 "$WORK/torch.err" >&2; exit 1; }
    T=$(torch_rate < "$WORK/torch.out")
    TRSS=$("$PY" -c 'import json, sys; print("%.0f" % [json.loads(l) for l in open(sys.argv[1]) if "summary" in l][0]["peak_rss_mib"])' "$WORK/torch.out")
    echo "$LINE  torch+peft: ${T%% *} scored tok/s (losses ${T#* }; peak RSS $TRSS MiB)  ratio $("$PY" -c "print('%.2fx' % (${C%% *} / ${T%% *}))")"
    echo "${C%% *} ${Q%% *} ${T%% *} $CRSS $QRSS $TRSS" >> "$SUMS"
done
"$PY" -c '
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
q = sys.argv[2] == "1"
mean = lambda i: sum(float(r[i]) for r in rows) / len(rows)
c, ql, t = mean(0), mean(1), mean(2)
line = "mean of %d rounds: causal LoRA f32 %.1f scored tok/s" % (len(rows), c)
if q:
    line += ", causal QLoRA native %.1f" % ql
line += ", torch+peft %.1f; causal LoRA f32 / torch+peft %.2fx" % (t, c / t)
if q:
    line += " (QLoRA / torch+peft %.2fx)" % (ql / t)
print(line)
r = rows[-1]
print("peak RSS (MiB): causal LoRA f32 %s%s, torch+peft %s" % (r[3], ", causal QLoRA native %s" % r[4] if q else "", r[5]))' \
    "$SUMS" "${QLORA:-0}"
