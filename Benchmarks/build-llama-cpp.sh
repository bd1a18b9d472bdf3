#!/usr/bin/env bash
# Builds the native llama.cpp tools the benchmarks compare against (llama-bench, llama-batched-bench,
# llama-quantize, llama-tokenize) from the llama.cpp sources vendored inside the llama-cpp-python sdist, outside
# the repository, and prints the directory that holds them. A benchmark helper, not a test: CI does not run it.
#
#   Benchmarks/build-llama-cpp.sh [--version 0.3.36]
#
# Environment:
#   CAUSAL_BENCH_DIR  where to download, unpack and build (default: ~/.cache/causal-bench)
#   LLAMA_CPP_SDIST   an already downloaded llama-cpp-python sdist (.tar.gz) to use instead of pip
#   JOBS              parallel compile jobs (default: the number of cores)
#
# The sdist is fetched by package name with `pip download --no-binary :all: --no-deps`. The build is CPU only,
# Release, for this machine's instruction set (GGML_NATIVE), without network support, static. Once the four tools
# exist, later runs only print the directory. The first build takes several minutes on 2 cores.
set -euo pipefail
VERSION=0.3.36
while [ $# -gt 0 ]; do
    case "$1" in
        --version) VERSION=$2; shift 2;;
        -h|--help) sed -n '2,15p' "$0"; exit 0;;
        *) echo "unknown argument: $1" >&2; exit 2;;
    esac
done
ROOT=${CAUSAL_BENCH_DIR:-$HOME/.cache/causal-bench}
PREFIX=$ROOT/llama-cpp-python-$VERSION
BUILD=$PREFIX/build
BIN=$BUILD/bin
TOOLS=(llama-bench llama-batched-bench llama-quantize llama-tokenize)

built() { for t in "${TOOLS[@]}"; do [ -x "$BIN/$t" ] || return 1; done; }
if built; then echo "$BIN"; exit 0; fi

command -v cmake >/dev/null || { echo "build-llama-cpp.sh: cmake not found (Debian: apt-get install -y cmake)" >&2; exit 1; }
command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null ||
    { echo "build-llama-cpp.sh: no C++ compiler found" >&2; exit 1; }
mkdir -p "$ROOT"

# 1. The sdist.
SDIST=${LLAMA_CPP_SDIST:-}
find_sdist() { ls "$ROOT"/sdist/llama[_-]cpp[_-]python-"$VERSION".tar.gz 2>/dev/null | head -n 1; }
if [ -z "$SDIST" ]; then SDIST=$(find_sdist || true); fi
if [ -z "$SDIST" ]; then
    echo "Downloading the llama-cpp-python==$VERSION sdist with pip..." >&2
    python3 -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$ROOT/sdist" >&2
    SDIST=$(find_sdist)
    [ -n "$SDIST" ] || { echo "build-llama-cpp.sh: pip left no llama-cpp-python-$VERSION sdist in $ROOT/sdist" >&2; exit 1; }
fi
[ -f "$SDIST" ] || { echo "build-llama-cpp.sh: $SDIST: no such file" >&2; exit 1; }

# 2. Unpacked into a temporary directory, renamed into place when complete.
SRC=$PREFIX/src
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
    echo "Unpacking $SDIST into $SRC..." >&2
    rm -rf "$SRC.tmp" "$SRC"
    mkdir -p "$SRC.tmp"
    tar -xzf "$SDIST" -C "$SRC.tmp" --strip-components=1
    [ -f "$SRC.tmp/vendor/llama.cpp/CMakeLists.txt" ] ||
        { echo "build-llama-cpp.sh: $SDIST has no vendor/llama.cpp/CMakeLists.txt" >&2; rm -rf "$SRC.tmp"; exit 1; }
    mv "$SRC.tmp" "$SRC"
fi

# 3. Configure and build only the four tools.
echo "Building ${TOOLS[*]} in $BUILD (several minutes)..." >&2
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DGGML_CPU=ON -DBUILD_SHARED_LIBS=OFF -DGGML_BACKEND_DL=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >&2
cmake --build "$BUILD" --config Release -j "${JOBS:-$(nproc)}" --target "${TOOLS[@]}" >&2
built || { echo "build-llama-cpp.sh: the build finished but ${TOOLS[*]} are not all in $BIN" >&2; exit 1; }
echo "$BIN"
