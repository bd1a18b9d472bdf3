#!/usr/bin/env bash
# Int8-activation products (ck_matmul_q8) against fp32-activation products (ck_matmul) per weight type on the
# tensors of GGUF files, alternating in one run, against the read-bandwidth floor measured in the same run
# (Benchmarks/q8_kernels.c). A benchmark, not a test: CI does not run it.
#
#   Benchmarks/q8-kernels.sh [-t THREADS] [-r REPEATS] [-n 1,2,4,16] [--isa 0|1|2] [--int8-only] FILE.gguf...
#
# --int8-only times the int8 path alone (no fp32 passes), which keeps large n (say -n 16,512) affordable.
#
# Builds the harness with the library's C kernels (clang -O2, as SwiftPM's release build compiles them) into
# ${CAUSAL_BENCH_DIR:-~/.cache/causal-bench}/q8_kernels, then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${CAUSAL_BENCH_DIR:-$HOME/.cache/causal-bench}
mkdir -p "$OUT"
K=Sources/CCausalKernels
${CC:-clang} -O2 -fno-omit-frame-pointer -I "$K/include" -o "$OUT/q8_kernels.tmp" Benchmarks/q8_kernels.c \
    "$K/matmul.c" "$K/matmul_q8.c" "$K/scratch.c" "$K/threadpool.c" "$K/membw.c" -lm -lpthread
mv "$OUT/q8_kernels.tmp" "$OUT/q8_kernels"
exec "$OUT/q8_kernels" "$@"
