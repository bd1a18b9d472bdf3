#!/usr/bin/env bash
# Decode (n = 1) matrix-vector speed per weight type on the tensors of GGUF files, against the read-bandwidth
# floor measured in the same run (Benchmarks/kquant_kernels.c). A benchmark, not a test: CI does not run it.
#
#   Benchmarks/kquant-kernels.sh [-t THREADS] [-r REPEATS] [--isa 0|1|2] [--hot] FILE.gguf...
#
# Builds the harness with the library's C kernels (clang -O2, as SwiftPM's release build compiles them) into
# ${CAUSAL_BENCH_DIR:-~/.cache/causal-bench}/kquant_kernels, then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${CAUSAL_BENCH_DIR:-$HOME/.cache/causal-bench}
mkdir -p "$OUT"
K=Sources/CCausalKernels
${CC:-clang} -O2 -fno-omit-frame-pointer -I "$K/include" -o "$OUT/kquant_kernels.tmp" Benchmarks/kquant_kernels.c \
    "$K/matmul.c" "$K/scratch.c" "$K/threadpool.c" "$K/membw.c" -lm -lpthread
mv "$OUT/kquant_kernels.tmp" "$OUT/kquant_kernels"
exec "$OUT/kquant_kernels" "$@"
