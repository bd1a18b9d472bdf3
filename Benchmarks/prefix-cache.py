#!/usr/bin/env python3
"""Chat replay: time to first token per turn with the prefix cache off and on (Python standard library only).

A 10-turn conversation where every turn resends the whole history (system prompt, earlier questions and the
answers the server gave) to `causal serve` over loopback, streamed, greedy. It runs once against a server started
with `--cache-memory 0` and once against one with `--cache-memory MIB` (default 256), one server at a time so they
do not share the cores, and prints per turn: prompt tokens, TTFT without and with the cache, their ratio, and the
prompt tokens the cache supplied (from /metrics). Checks: every answer is identical with and without the cache, and
the last turn's TTFT with the cache is at most 25% of the TTFT without it.

  python3 Benchmarks/prefix-cache.py --causal .build/release/causal [--model PATH] [--turns 10] [--max-tokens 64]
"""
import argparse
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

SYSTEM = ("You are a patient tutor who explains science to curious teenagers. Answer in plain words, give one "
          "concrete example when it helps, and keep every answer short: a few sentences at most.")
QUESTIONS = [
    "Why is the sky blue during the day but red at sunset?",
    "How do plants turn sunlight into food?",
    "What makes thunder after lightning?",
    "Why does ice float on water when most solids sink in their liquids?",
    "How does a fridge keep food cold if it is plugged into a hot wall socket?",
    "What is the difference between weather and climate?",
    "Why do we have seasons on Earth?",
    "How do vaccines teach the body to fight a disease?",
    "Why does a metal spoon feel colder than a wooden one in the same room?",
    "How can a huge steel ship float on the sea?",
    "What is an atom made of?",
    "Why do magnets stick to a fridge but not to a copper pot?",
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def metrics(port):
    status, body = get(port, "/metrics")
    assert status == 200, f"/metrics answered {status}"
    out = {}
    for line in body.decode().splitlines():
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$', line)
        if m and not line.startswith("#"):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def chat(port, model, messages, max_tokens):
    """One streamed greedy chat completion: (text, time to first content delta, usage)."""
    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        sys.exit(f"chat completion answered {r.status}: {r.read()[:300]!r}")
    text, ttft, usage = "", None, None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        obj = json.loads(data)
        if obj.get("usage"):
            usage = obj["usage"]
        for ch in obj.get("choices", []):
            piece = (ch.get("delta") or {}).get("content")
            if piece:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                text += piece
    c.close()
    return text, ttft, usage


def replay(args, cache_mib):
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="causal-prefix-", suffix=".log", delete=False)
    cmd = [args.causal, "serve", "--host", "127.0.0.1", "--port", str(port), "--max-sequences", "4",
           "--context", str(args.context), "--cache-memory", str(cache_mib)]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    print("starting:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                if get(port, "/health")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                sys.exit(f"causal serve exited early; log in {log.name}")
            time.sleep(0.2)
        model = json.loads(get(port, "/v1/models")[1])["data"][0]["id"]
        # Warm up on an unrelated prompt (first-touch page faults of the weights), outside the measured turns.
        chat(port, model, [{"role": "user", "content": "Hello!"}], 4)
        messages = [{"role": "system", "content": SYSTEM}]
        turns = []
        for q in QUESTIONS[:args.turns]:
            messages.append({"role": "user", "content": q})
            before = metrics(port)
            text, ttft, usage = chat(port, model, messages, args.max_tokens)
            after = metrics(port)
            hit = after.get("causal_prefix_cache_hit_tokens_total", 0) - before.get("causal_prefix_cache_hit_tokens_total", 0)
            turns.append({"text": text, "ttft": ttft, "prompt": usage["prompt_tokens"], "hit": int(hit)})
            print(f"  turn {len(turns)}: {usage['prompt_tokens']} prompt tokens, TTFT {ttft * 1000:.0f} ms, "
                  f"{int(hit)} from the cache", flush=True)
            messages.append({"role": "assistant", "content": text})
        return turns
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--causal", default=".build/release/causal")
    ap.add_argument("--model", help="GGUF model (default: the server's default model)")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--cache-memory", type=int, default=256, help="MiB for the run with the cache")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if not 1 <= args.turns <= len(QUESTIONS):
        sys.exit(f"--turns must be in 1...{len(QUESTIONS)}")
    off = replay(args, 0)
    on = replay(args, args.cache_memory)
    print()
    print("turn  prompt  TTFT off (ms)  TTFT on (ms)  on/off  cached tokens  same answer")
    same_all = True
    for i, (a, b) in enumerate(zip(off, on)):
        same = a["text"] == b["text"] and a["prompt"] == b["prompt"]
        same_all &= same
        print(f"{i + 1:4d}  {a['prompt']:6d}  {a['ttft'] * 1000:13.1f}  {b['ttft'] * 1000:12.1f}  "
              f"{b['ttft'] / a['ttft']:6.2f}  {b['hit']:13d}  {'yes' if same else 'NO'}")
    ratio = on[-1]["ttft"] / off[-1]["ttft"]
    ok = same_all and ratio <= 0.25
    print(f"\nanswers identical: {'yes' if same_all else 'NO'}; last turn TTFT with the cache: {ratio * 100:.1f}% of "
          f"without (acceptance: <= 25%)")
    print("all checks passed" if ok else "CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
