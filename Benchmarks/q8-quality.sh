#!/usr/bin/env bash
# KL divergence, top-1 agreement and NLL of the int8-activation path, the fp16 key/value cache, both, and fast fp32,
# against --precision reference, teacher-forced over text files (Benchmarks/q8_quality.swift); docs/int8-activations.md has results.
#
#   Benchmarks/q8-quality.sh MODEL.gguf MAXTOKENS FILE...
#
# Needs a release build (swift build -c release --product causal): the tool is linked against its objects of
# CausalLM, CausalKernels and CCausalKernels, into ${CAUSAL_BENCH_DIR:-~/.cache/causal-bench}/q8_quality.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${CAUSAL_BENCH_DIR:-$HOME/.cache/causal-bench}
R=.build/release
mkdir -p "$OUT"
objs=()
for f in $(find Sources/CausalLM -name '*.swift'); do objs+=("$R/CausalLM.build/$(basename "$f").o"); done
for f in $(find Sources/CausalKernels -name '*.swift'); do objs+=("$R/CausalKernels.build/$(basename "$f").o"); done
for f in Sources/CCausalKernels/*.c; do objs+=("$R/CCausalKernels.build/$(basename "$f").o"); done
swiftc -O Benchmarks/q8_quality.swift -o "$OUT/q8_quality.tmp" -I "$R/Modules" \
    -Xcc -fmodule-map-file="$R/CCausalKernels.build/module.modulemap" -Xcc -I -Xcc Sources/CCausalKernels/include "${objs[@]}"
mv "$OUT/q8_quality.tmp" "$OUT/q8_quality"
exec "$OUT/q8_quality" "$@"
