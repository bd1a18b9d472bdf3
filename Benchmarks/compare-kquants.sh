#!/usr/bin/env bash
# Side by side on several GGUF files, in one run, alternating engines: `causal bench` against native llama.cpp
# (`llama-bench`, `llama-batched-bench -fa on`), the memory read bandwidth and decode floor (`causal bench
# --memory`), and causal's peak RSS and load-to-first-token time. Prints one markdown table, with the CPU model and
# L3 size at the top. A benchmark, not a test: CI does not run it.
#
#   Benchmarks/compare-kquants.sh [--model PATH]... [-t 2] [-p 512] [-n 128] [-r 3] [--rounds 2]
#                                 [--batch 1,16] [--batch-prompt 128] [--batch-repeats 1] [--no-batch]
#                                 [--no-requant] [--no-rss] [--no-pp-tg] [--rt] [--int8] [--jsonl FILE]
#
# Models: the default model (SmolLM2-135M-Instruct Q4_1), the same model re-quantized by llama-quantize
# (--allow-requantize) to Q4_K_M and Q6_K (written under ${CAUSAL_BENCH_DIR:-~/.cache/causal-bench}/models, not in
# the repository; --no-requant skips them), then every --model. A model that `causal` refuses is reported as
# "does not load" (with its error) and measured on llama.cpp alone. Per round and model: `causal bench -p P -n N`
# then `llama-bench -p P -n N` (the order flips every round), then the batched pair: `causal bench --batch B -p ""
# --batch-prompt BP -n N` and `llama-batched-bench -fa on -npp BP -ntg N -npl B`. Cells are medians over all
# repeats of all rounds. The floor is (weight bytes read per decoded token) / (read bandwidth on -t threads), both
# from `causal bench --memory` in the same run; RSS from `/usr/bin/time -v`. Every raw result is also written as
# JSON lines (--jsonl, default: a file under the bench directory, named on stderr). --rt runs every engine command
# under `chrt -f 10` (real-time priority), which keeps other work on a shared machine from taking the benchmark's
# cores: llama.cpp's spinning worker threads slow down several-fold when a core is taken from them, causal's less.
# --no-pp-tg leaves out the pp/tg pair (batched decode, floor and RSS only). --int8 also runs `causal bench
# --activations int8` (the opt-in int8-activation path) in every pair (three engines, order rotating each round) and
# prints a second row per model with those numbers against the same llama.cpp runs.
#
# llama.cpp is built by Benchmarks/build-llama-cpp.sh on first use. NO_BUILD=1 reuses the built `causal` binary;
# CAUSAL_BIN=PATH runs that binary instead of .build/release/causal (say, a build in another --scratch-path).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${CAUSAL_BENCH_DIR:-$HOME/.cache/causal-bench}
T=2; P=512; N=128; R=3; ROUNDS=2; BATCH=1,16; BPROMPT=128; BREPEATS=1; REQUANT=1; RSS=1; RT=""; PPTG=1; INT8=""; JSONL=""; MODELS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODELS+=("$2"); shift 2;;
        -t) T=$2; shift 2;; -p) P=$2; shift 2;; -n) N=$2; shift 2;; -r) R=$2; shift 2;;
        --rounds) ROUNDS=$2; shift 2;; --batch) BATCH=$2; shift 2;; --batch-prompt) BPROMPT=$2; shift 2;;
        --batch-repeats) BREPEATS=$2; shift 2;; --no-batch) BATCH=""; shift;;
        --no-requant) REQUANT=""; shift;; --no-rss) RSS=""; shift;; --rt) RT=1; shift;; --int8) INT8=1; shift;; --no-pp-tg) PPTG=""; shift;; --jsonl) JSONL=$2; shift 2;;
        -h|--help) sed -n '2,27p' "$0"; exit 0;;
        *) echo "unknown argument: $1" >&2; exit 2;;
    esac
done
[ -z "$RSS" ] || [ -x /usr/bin/time ] || { echo "compare-kquants.sh: /usr/bin/time is missing (Debian: apt-get install -y time), or pass --no-rss" >&2; exit 1; }
BIN=$(Benchmarks/build-llama-cpp.sh)
[ -n "${NO_BUILD:-}" ] || swift build -c release --product causal >&2
CAUSAL=${CAUSAL_BIN:-$PWD/.build/release/causal}
BASE=$($CAUSAL info | sed -n 's/^file: //p')
[ -f "$BASE" ] || { echo "compare-kquants.sh: cannot find the default model (causal info)" >&2; exit 1; }
ALL=("$BASE")
if [ -n "$REQUANT" ]; then
    mkdir -p "$ROOT/models"
    stem=$(basename "$BASE" .gguf); stem=${stem%.Q4_1}
    for q in Q4_K_M Q6_K; do
        dst="$ROOT/models/$stem.$q.gguf"
        if [ ! -f "$dst" ]; then
            echo "llama-quantize $BASE -> $dst ($q)" >&2
            "$BIN/llama-quantize" --allow-requantize "$BASE" "$dst.tmp" "$q" "$(nproc)" >"$dst.log" 2>&1 ||
                { echo "llama-quantize failed, see $dst.log" >&2; rm -f "$dst.tmp"; exit 1; }
            mv "$dst.tmp" "$dst"
        fi
        ALL+=("$dst")
    done
fi
ALL+=("${MODELS[@]}")
[ -n "$JSONL" ] || { mkdir -p "$ROOT/results"; JSONL="$ROOT/results/kquants-$(date +%Y%m%d-%H%M%S).jsonl"; }
echo "raw results: $JSONL" >&2
exec python3 - "$CAUSAL" "$BIN" "$T" "$P" "$N" "$R" "$ROUNDS" "$BATCH" "$BPROMPT" "$BREPEATS" "$RSS" "$RT" "$PPTG" "$JSONL" "$INT8" "${ALL[@]}" <<'PY'
import json, os, re, statistics, subprocess, sys, time

causal, bin_dir, T, P, N, R, ROUNDS, BATCH, BP, BR, RSS, RT, PPTG, JSONL, INT8 = sys.argv[1:16]
models = sys.argv[16:]
ENGINES = ["causal"] + (["causal+int8"] if INT8 else [])
def act(eng): return ["--activations", "int8" if eng == "causal+int8" else "fp32"]
PRE = ["chrt", "-f", "10"] if RT else []
T, N, R, ROUNDS, BP, BR = int(T), int(N), int(R), int(ROUNDS), int(BP), int(BR)
pps = [int(x) for x in P.split(",") if x]
batches = [int(x) for x in BATCH.split(",") if x]
out = open(JSONL, "a")

def log(msg): print(msg, file=sys.stderr, flush=True)

def record(path, engine, kind, **kw):
    row = {**kw, "model": os.path.basename(path), "engine": engine, "kind": kind}
    out.write(json.dumps(row) + "\n"); out.flush()
    return row

def run(cmd, timeout=3600):
    cmd = PRE + cmd
    log("  $ " + " ".join(cmd))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

def jsonl(text):
    return [json.loads(l) for l in text.splitlines() if l.strip().startswith("{")]

def first_error(p):
    lines = [l for l in (p.stderr + p.stdout).splitlines() if l.strip()]
    err = [l for l in lines if "error" in l.lower()]
    return (err or lines or ["exit status %d" % p.returncode])[0].strip()[:160]

def lscpu():
    info = {}
    try:
        for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            k, _, v = l.partition(":"); info[k.strip()] = v.strip()
    except OSError:
        pass
    return info

cpu = lscpu()
results = {}   # model -> dict of lists
def add(model, key, values):
    results.setdefault(model, {}).setdefault(key, []).extend(values)

def causal_loads(m):
    p = run([causal, "bench", "--model", m, "-p", "1", "-n", "0", "-r", "1", "-t", str(T), "--json"])
    return None if p.returncode == 0 else first_error(p)

def causal_bench(m, eng="causal"):
    p = run([causal, "bench", "--model", m, "-p", ",".join(map(str, pps)), "-n", str(N), "-t", str(T), "-r", str(R), "--json"] + act(eng))
    if p.returncode != 0: log(f"  {eng} bench failed: " + first_error(p)); return
    for r in jsonl(p.stdout):
        record(m, eng, "bench", **r); add(m, (eng, r["test"]), r["samples"])

def llama_bench(m):
    p = run([os.path.join(bin_dir, "llama-bench"), "-m", m, "-t", str(T), "-p", ",".join(map(str, pps)) or "0",
             "-n", str(N), "-r", str(R), "-o", "jsonl"])
    if p.returncode != 0: log("  llama-bench failed: " + first_error(p)); return
    for r in jsonl(p.stdout):
        test = "pp%d" % r["n_prompt"] if r["n_gen"] == 0 else "tg%d" % r["n_gen"]
        record(m, "llama.cpp", "bench", test=test, samples=r["samples_ts"]); add(m, ("llama.cpp", test), r["samples_ts"])

def causal_batched(m, eng="causal"):
    p = run([causal, "bench", "--model", m, "-p", "", "-n", str(N), "--batch", ",".join(map(str, batches)),
             "--batch-prompt", str(BP), "-t", str(T), "-r", str(BR), "--json"] + act(eng))
    if p.returncode != 0: log(f"  {eng} batched failed: " + first_error(p)); return
    for r in jsonl(p.stdout):
        record(m, eng, "batched", **r)
        if r["test"].endswith(" decode"): add(m, (eng, "x%d" % r["sequences"]), r["samples"])

def llama_batched(m):
    ctx = max(batches) * (BP + N) + 16
    for _ in range(BR):
        p = run([os.path.join(bin_dir, "llama-batched-bench"), "-m", m, "-fa", "on", "-npp", str(BP), "-ntg", str(N),
                 "-npl", ",".join(map(str, batches)), "-t", str(T), "-c", str(ctx), "--output-format", "jsonl"])
        if p.returncode != 0: log("  llama-batched-bench failed: " + first_error(p)); return
        for r in jsonl(p.stdout + "\n" + p.stderr):
            if "speed_tg" not in r: continue
            record(m, "llama.cpp", "batched", **r); add(m, ("llama.cpp", "x%d" % r["pl"]), [r["speed_tg"]])

def memory(m):
    p = run([causal, "bench", "--memory", "--model", m, "-t", str(T), "--json"])
    if p.returncode != 0: log("  causal bench --memory failed: " + first_error(p)); return
    for r in jsonl(p.stdout):
        record(m, "causal", "memory", **r)
        key = "2M" if r.get("huge_pages") else "4K"
        if r.get("test") == "decode floor": results.setdefault(m, {}).setdefault("floor", {})[key] = r
        elif r["threads"] == T: results.setdefault(m, {}).setdefault("bw", {})[key] = r["gb_per_second"]

def timed(cmd):
    t0 = time.perf_counter(); p = run(["/usr/bin/time", "-v"] + cmd); dt = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return p, dt, (int(m.group(1)) * 1024 if m else None)

def gguf_metadata(path):
    """The scalar metadata of a GGUF file (arrays skipped), read from its header."""
    import struct
    f = open(path, "rb")
    def rd(fmt): return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]
    def rstr(): return f.read(rd("Q")).decode("utf-8", "replace")
    sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    def value(t):
        if t in sizes: return rd(sizes[t])
        if t == 8: return rstr()
        if t == 9:
            et, n = rd("I"), rd("Q")
            for _ in range(n): value(et)
            return None
        raise ValueError(f"{path}: unknown GGUF value type {t}")
    if f.read(4) != b"GGUF": raise ValueError(f"{path}: not a GGUF file")
    rd("I"); rd("Q"); n = rd("Q")
    md = {}
    for _ in range(n):
        k = rstr(); md[k] = value(rd("I"))
    return md

def kv_bytes_per_token(m):
    """fp32 keys + values of one token in every layer (sliding windows ignored: an upper bound)."""
    try:
        md = gguf_metadata(m); a = md["general.architecture"]
        layers, heads = md[f"{a}.block_count"], md[f"{a}.attention.head_count"]
        kv = md.get(f"{a}.attention.head_count_kv", heads)
        hd = md.get(f"{a}.attention.key_length") or md[f"{a}.embedding_length"] // heads
        hv = md.get(f"{a}.attention.value_length") or hd
        return layers * kv * (hd + hv) * 4
    except (OSError, KeyError, ValueError, TypeError, ZeroDivisionError) as e:
        log(f"  no KV cache size for {m}: {e}")
        return None

def memory_and_load(m):
    res = results.setdefault(m, {})
    # Load to first token, warm page cache: best of 3 (after one untimed run).
    run([causal, "generate", "--model", m, "--threads", str(T), "--max-tokens", "1", "--raw", "Hi"])
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        p = run([causal, "generate", "--model", m, "--threads", str(T), "--max-tokens", "1", "--raw", "Hi"])
        dt = time.perf_counter() - t0
        if p.returncode == 0: best = dt if best is None else min(best, dt)
    res["first_token_s"] = best
    p, dt, rss = timed([causal, "generate", "--model", m, "--threads", str(T), "--max-tokens", str(N), "--min-tokens", str(N),
                        "--raw", "Once upon a time", "--json"])
    if p.returncode == 0 and rss:
        prompt = json.loads(p.stdout.strip().splitlines()[-1]).get("prompt_tokens", 0)
        prompt = prompt if isinstance(prompt, int) else len(prompt)
        kv = kv_bytes_per_token(m)
        res["rss"] = rss
        if kv: res["rss_bound"] = os.path.getsize(m) + kv * (prompt + N) + (64 << 20)
        record(m, "causal", "rss", peak_rss=rss, wall_s=dt, prompt_tokens=prompt, kv_bytes_per_token=kv, bound=res.get("rss_bound"),
               first_token_s=best)
    p, dt, rss = timed([os.path.join(bin_dir, "llama-bench"), "-m", m, "-t", str(T), "-p", "0", "-n", str(N), "-r", "1"])
    if p.returncode == 0 and rss:
        res["llama_rss"] = rss
        record(m, "llama.cpp", "rss", peak_rss=rss, wall_s=dt, command="llama-bench -p 0 -n %d -r 1" % N)

def loadavg():
    try: return open("/proc/loadavg").read().split()[0]
    except OSError: return "?"

start = time.strftime("%Y-%m-%d %H:%M"); load0 = loadavg()
status = {}
for m in models:
    log(f"== {m}")
    status[m] = causal_loads(m)
    if status[m]: log("  causal does not load it: " + status[m])
    memory(m)
for rnd in range(ROUNDS):
    for m in models:
        log(f"== round {rnd + 1}: {os.path.basename(m)}")
        ok = status[m] is None
        def rotate(fs): k = rnd % len(fs); return fs[k:] + fs[:k]
        if PPTG:
            group = [lambda e=e: ok and causal_bench(m, e) for e in ENGINES] + [lambda: llama_bench(m)]
            for f in rotate(group): f()
        if batches:
            group = [lambda e=e: ok and causal_batched(m, e) for e in ENGINES] + [lambda: llama_batched(m)]
            for f in rotate(group): f()
if RSS:
    for m in models:
        if status[m] is None: memory_and_load(m)
        else:
            p, dt, rss = timed([os.path.join(bin_dir, "llama-bench"), "-m", m, "-t", str(T), "-p", "0", "-n", str(N), "-r", "1"])
            if p.returncode == 0 and rss: results.setdefault(m, {})["llama_rss"] = rss

def med(m, engine, test):
    v = results.get(m, {}).get((engine, test))
    return statistics.median(v) if v else None

def f1(x): return "" if x is None else f"{x:.1f}"
def ratio(a, b): return "" if a is None or b is None else f"{a / b:.2f}x"
def mib(b): return "" if b is None else f"{b / 1048576:.0f}"

commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"CPU: {cpu.get('Model name', '?')}, {os.cpu_count()} cores, L3 {cpu.get('L3 cache', '?')}, L2 {cpu.get('L2 cache', '?')}; "
      f"{T} threads; {start} to {time.strftime('%H:%M')}, load average {load0} -> {loadavg()}; causal at {commit}; "
      f"llama.cpp: {bin_dir}" + ("; every engine command under chrt -f 10" if RT else ""))
print()
tg = f"tg{N}"
cols = ["model (file MiB)"]
for pp in pps: cols += [f"pp{pp} causal", "llama.cpp", "ratio"]
cols += [f"{tg} causal", "llama.cpp", "ratio", "read GB/s (4K / 2M pages)", "weights MiB/token", "floor tok/s (4K / 2M)",
         "causal % floor (4K / 2M)", "llama.cpp % floor (4K / 2M)"]
for b in batches: cols += [f"x{b} decode causal", "llama.cpp -fa on", "ratio"]
if len(batches) > 1: cols += [f"causal x{max(batches)}/x{min(batches)}"]
cols += ["peak RSS causal (bound)", "llama-bench RSS", "load to 1st token"]
print("| " + " | ".join(cols) + " |")
print("|" + "---|" * len(cols))
for m, eng in [(m, e) for m in models for e in ENGINES]:
    res = results.get(m, {})
    name = f"{os.path.basename(m)} ({os.path.getsize(m) / 1048576:.0f})" + (" — causal --activations int8" if eng != "causal" else "")
    if status[m]: name += f" — causal: does not load ({status[m]})"
    row = [name]
    for pp in pps:
        c, l = med(m, eng, f"pp{pp}"), med(m, "llama.cpp", f"pp{pp}")
        row += [f1(c), f1(l), ratio(c, l)]
    c, l = med(m, eng, tg), med(m, "llama.cpp", tg)
    row += [f1(c), f1(l), ratio(c, l)]
    bw = res.get("bw", {}); fl = res.get("floor", {})
    row.append(" / ".join(f"{bw[k]:.1f}" for k in ("4K", "2M") if k in bw))
    row.append(mib(next(iter(fl.values()))["bytes_per_token"]) if fl else "")
    frs = [fl[k]["tokens_per_second"] for k in ("4K", "2M") if k in fl]
    row.append(" / ".join(f1(x) for x in frs))
    row.append("" if not c else " / ".join(f"{100 * c / x:.0f}%" for x in frs))
    row.append("" if not l else " / ".join(f"{100 * l / x:.0f}%" for x in frs))
    for b in batches:
        c, l = med(m, eng, f"x{b}"), med(m, "llama.cpp", f"x{b}")
        row += [f1(c), f1(l), ratio(c, l)]
    if len(batches) > 1: row.append(ratio(med(m, eng, f"x{max(batches)}"), med(m, eng, f"x{min(batches)}")))
    if eng != "causal": row += ["", "", ""]; print("| " + " | ".join(row) + " |"); continue
    rss = res.get("rss")
    row.append("" if rss is None else mib(rss) + (f" ({mib(res['rss_bound'])})" if res.get("rss_bound") else ""))
    row.append(mib(res.get("llama_rss")))
    row.append("" if res.get("first_token_s") is None else f"{1000 * res['first_token_s']:.0f} ms")
    print("| " + " | ".join(row) + " |")
print()
print(f"Cells: medians over {ROUNDS} rounds x {R} repeats (batched: {BR} per round), tok/s. Floor: weight bytes per token "
      f"(`causal bench --memory`: every tensor once, the token embedding one row unless it is the output head) / "
      f"{T}-thread read bandwidth of a 1 GiB buffer of 4 KiB pages (as a memory-mapped GGUF is read) and of 2 MiB pages, best of 5, measured per model in this run. Peak RSS: "
      f"`causal generate` of {N} tokens (bound: file + fp32 KV cache of its tokens + 64 MiB); llama-bench RSS: "
      f"`llama-bench -p 0 -n {N} -r 1`. Load to 1st token: `causal generate --max-tokens 1`, best of 3, warm.")
PY
