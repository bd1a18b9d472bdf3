#!/usr/bin/env bash
# The attention experiments of docs/experiments.md, reproducibly:
#
#   Benchmarks/experiments/run.sh EXPERIMENT ARMS SEEDS
#
#   EXPERIMENT  rev: (a) reverse a verse's words, decoder-only LLaMA from scratch, loss on the response only
#               mlm: (b) masked-LM on the verses, BERT from scratch
#   ARMS        comma-separated --attention values: rev: causal,prefix (mixed also runs); mlm: bidirectional,mixed
#   SEEDS       a count N (seeds 0..N-1) or a range A-B; the seed sets the initial weights and the data order, the
#               same for every arm, so arm runs of one seed differ only in the mask
#
# Environment: CAUSAL (the binary; default: causal on PATH, else .build/release/causal), THREADS (default 1),
# WORK (runs and data; default /tmp/causal-experiments), PYTHON (one that imports `tokenizers`; default: .venv-train,
# else a venv made in $WORK/venv), RESULTS (default Benchmarks/experiments/results), RUN_PREFIX (a command put
# before each training run, e.g. "chrt -f 5" on a shared machine; default none).
#
# The corpus is the King James Version of Debian's bible-kjv-text (read with bible-kjv's `bible`); the script installs
# both with apt-get when `bible` is missing. Each run's eval curve goes to $RESULTS/EXPERIMENT/ARM-sSEED.csv and a line
# to $RESULTS/EXPERIMENT/runs.csv (wall time, load average); checkpoints stay in $WORK and are deleted after each run.
# A run whose CSV exists is skipped (delete it to rerun). At the end summarize.py writes the tables and the SVG.
set -euo pipefail

usage() { echo "usage: $0 rev|mlm ARMS SEEDS   (e.g. $0 rev causal,prefix 8)" >&2; exit 2; }
[ $# -eq 3 ] || usage
EXP=$1; ARMS=$2; SEEDS=$3
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
THREADS=${THREADS:-1}
WORK=${WORK:-/tmp/causal-experiments}
RESULTS=${RESULTS:-$HERE/results}

if [[ $SEEDS =~ ^([0-9]+)-([0-9]+)$ ]]; then SEED_LIST=$(seq "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}")
elif [[ $SEEDS =~ ^[0-9]+$ ]] && [ "$SEEDS" -ge 1 ]; then SEED_LIST=$(seq 0 $((SEEDS - 1)))
else echo "$0: SEEDS must be a count (8) or a range (0-7), found '$SEEDS'" >&2; exit 2; fi

case $EXP in
rev)
  VALID="causal prefix mixed"
  # 400 steps of 2048 tokens (about 150 pairs, about 950 scored tokens), evaluated every 25 steps.
  TRAIN_ARGS=(--init random --model DATA/rev/tokenizer --config DATA/rev/model.json
              --data DATA/rev/train.jsonl --eval-data DATA/rev/eval.jsonl --eval-every 25
              --steps 400 --warmup 40 --batch-tokens 2048 --lr 2e-3)
  THRESHOLD=1.0 ;;   # summary: the first evaluated step below it (4.9 at step 25)
mlm)
  VALID="bidirectional mixed"
  # 200 steps of 4096 tokens (about 112 verses, about 576 masked tokens), evaluated every 25 steps.
  TRAIN_ARGS=(--objective mlm --init random --model DATA/mlm/tokenizer --config DATA/mlm/model.json
              --data DATA/mlm/train.jsonl --eval-data DATA/mlm/eval.jsonl --eval-every 25
              --steps 200 --warmup 20 --batch-tokens 4096 --lr 1e-3 --mask-rate 0.15)
  THRESHOLD=5.65 ;;  # the eval set's unigram cross-entropy is 5.78
*) usage ;;
esac
IFS=, read -r -a ARM_LIST <<< "$ARMS"
for a in "${ARM_LIST[@]}"; do
  [[ " $VALID " == *" $a "* ]] || { echo "$0: arm '$a' is not one of: $VALID" >&2; exit 2; }
done

if [ -z "${CAUSAL:-}" ]; then
  if command -v causal > /dev/null; then CAUSAL=$(command -v causal); else CAUSAL=$ROOT/.build/release/causal; fi
fi
[ -x "$CAUSAL" ] || { echo "$0: no causal binary at $CAUSAL (build with swift build -c release, or set CAUSAL)" >&2; exit 1; }

# The corpus: Debian's bible-kjv-text, printed by bible-kjv's `bible`.
if ! command -v bible > /dev/null; then
  echo "installing the Debian packages bible-kjv and bible-kjv-text" >&2
  apt-get update -qq && apt-get install -y -qq bible-kjv > /dev/null
fi
mkdir -p "$WORK"
if [ -z "${PYTHON:-}" ]; then
  PYTHON=$ROOT/.venv-train/bin/python
  if ! "$PYTHON" -c 'import tokenizers' 2> /dev/null; then
    PYTHON=$WORK/venv/bin/python
    if ! "$PYTHON" -c 'import tokenizers' 2> /dev/null; then
      python3 -m venv "$WORK/venv" && "$WORK/venv/bin/pip" install -q tokenizers
    fi
  fi
fi
DATA=$WORK/data
if [ ! -f "$DATA/mlm/eval.jsonl" ]; then "$PYTHON" "$HERE/prepare.py" --out "$DATA"; fi
TRAIN_ARGS=("${TRAIN_ARGS[@]//DATA/$DATA}")

OUT=$RESULTS/$EXP
mkdir -p "$OUT" "$WORK/runs"
[ -f "$OUT/runs.csv" ] || echo "arm,seed,final_step,final_eval_loss,wall_s,load_start,load_end,threads,binary" > "$OUT/runs.csv"
BIN_ID=sha256:$(sha256sum "$CAUSAL" | cut -c1-12)
for seed in $SEED_LIST; do
  # Alternate the arms' order from seed to seed, so that load drifting over the session falls on both alike.
  order=("${ARM_LIST[@]}")
  if [ $((seed % 2)) -eq 1 ]; then order=(); for ((i=${#ARM_LIST[@]}-1; i>=0; i--)); do order+=("${ARM_LIST[$i]}"); done; fi
  for arm in "${order[@]}"; do
    csv=$OUT/$arm-s$seed.csv
    [ -f "$csv" ] && { echo "skip $EXP $arm seed $seed ($csv exists)"; continue; }
    run=$WORK/runs/$EXP-$arm-s$seed
    rm -rf "$run"
    load0=$(cut -d' ' -f1 /proc/loadavg); t0=$(date +%s.%N)
    echo "$(date -u +%H:%M:%S) $EXP $arm seed $seed"
    ${RUN_PREFIX:-} "$CAUSAL" train "${TRAIN_ARGS[@]}" --attention "$arm" --seed "$seed" --threads "$THREADS" --out "$run" > "$run.log" 2>&1 \
      || { echo "$0: the run failed; see $run.log" >&2; tail -5 "$run.log" >&2; exit 1; }
    t1=$(date +%s.%N); load1=$(cut -d' ' -f1 /proc/loadavg)
    "$PYTHON" - "$run/metrics.jsonl" "$csv" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ev = [(r["step"], r["eval_loss"], r["eval_scored_tokens"]) for r in rows if "eval_loss" in r]
tr = {r["step"]: r["loss"] for r in rows if "loss" in r}
tmp = sys.argv[2] + ".tmp"
with open(tmp, "w") as f:
    f.write("step,eval_loss,eval_scored_tokens,train_loss\n")
    for s, l, n in ev:
        f.write(f"{s},{l!r},{n},{tr.get(s, float('nan'))!r}\n")
os.replace(tmp, sys.argv[2])
PY
    final=$(tail -1 "$csv" | cut -d, -f1,2)
    wall=$(echo "$t1 - $t0" | bc)
    echo "$arm,$seed,$final,$wall,$load0,$load1,$THREADS,$BIN_ID" >> "$OUT/runs.csv"
    echo "  final eval loss ${final#*,} at step ${final%%,*}, ${wall%.*} s"
    rm -rf "$run"
  done
done
"$PYTHON" "$HERE/summarize.py" --experiment "$EXP" --results "$OUT" --arms "$ARMS" --threshold "$THRESHOLD"
