#!/usr/bin/env python3
"""Load test for `causal serve` over loopback (Python standard library only).

Starts `causal serve` (or uses --url/--pid of a running one), computes each job's single-request answer one at a
time, then runs CLIENTS concurrent streaming clients x REQUESTS requests each (chat and text completions, prompts
of mixed lengths, greedy and seeded sampling, max_tokens 16-48); some clients disconnect midway. Asserts:

  * no 5xx answers (and reports any 429);
  * every completed answer equals the single-request answer of its job (text, finish reason, token count);
  * /metrics agrees with what was sent: requests by endpoint and status, prompt tokens, generated tokens
    (exact for completed requests, bounded for disconnected ones), nothing left running or queued.

Reports aggregate tokens/s, p50/p99 time to first token, request latency, mean batch size, the server's peak
RSS (VmHWM from /proc/PID/status) and the prefix cache's hit rate. With --system-prompts K every chat request
starts with one of K shared system prompts (what the prefix cache is for). When the server under load keeps a
prefix cache (the default; --cache-memory 0 turns it off), the single-request answers come from a second server
started with --cache-memory 0 first (the load then starts on a cold cache), so the check is also "answers unchanged
with the cache on". With --llama-cpp-python PYTHON it then runs the same load (same jobs, clients,
disconnects) against llama-cpp-python's OpenAI server on the same GGUF file and reports the same client-side numbers.

  python3 Benchmarks/load-test.py --causal .build/release/causal
  python3 Benchmarks/load-test.py --causal .build/release/causal --system-prompts 4     # shared system prompts
  python3 Benchmarks/load-test.py --causal .build/release/causal --llama-cpp-python /tmp/venv-llama/bin/python
"""
import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

LONG_TEXT = (
    "The Industrial Revolution began in Britain in the late eighteenth century. Mechanised spinning and weaving, "
    "the steam engine, and new ways of making iron changed how goods were produced. Workers moved from farms to "
    "towns, and factories replaced workshops. Canals and later railways carried coal and cotton across the country. "
)

# (endpoint, prompt): chat prompts are user messages, completion prompts plain text. Short, medium and long.
PROMPTS = [
    ("chat", "What is the capital of France?"),
    ("chat", "Write a haiku about autumn leaves."),
    ("completion", "def fibonacci(n):"),
    ("chat", LONG_TEXT * 4 + "\nSummarise the text above in one sentence."),
    ("completion", "Once upon a time, in a small village by the sea,"),
    ("chat", "Give me three tips for learning to play the guitar, with a short reason for each."),
    ("completion", LONG_TEXT * 2 + "In summary,"),
    ("chat", "Translate 'good morning' into Spanish, French and German."),
]
MAX_TOKENS = [16, 24, 32, 48]
# Shared system prompts (--system-prompts K uses the first K): a product assistant's rules, as services send them.
SYSTEMS = [
    "You are the support assistant of Northwind Outdoor Gear. Be friendly and brief. Only answer questions about "
    "tents, sleeping bags, backpacks and stoves; for anything else, say politely that you can only help with our "
    "products. Never promise discounts. Prices are in euros and include VAT. Returns are free within 30 days.",
    "You are a careful writing assistant for a small newspaper. Use plain British English, short sentences and the "
    "active voice. Do not invent facts, names or quotes; if something is missing, say what you would need. Keep "
    "headlines under ten words and never use exclamation marks.",
    "You are a coding tutor for beginners learning Python. Explain one idea at a time, show a short example when it "
    "helps, and point out common mistakes. Do not write complete solutions to homework; give hints instead. Use "
    "Python 3 syntax and the standard library only.",
    "You are a travel planner for rail journeys in Europe. Suggest routes by train only, mention where a change of "
    "train is needed and roughly how long each leg takes, and remind travellers to check the operator's timetable "
    "before they book. Be concise and practical.",
]


def make_jobs(system_prompts=0):
    jobs = []
    for i, (endpoint, prompt) in enumerate(PROMPTS):
        for k in range(2):
            seeded = (i + k) % 3 == 2
            jobs.append({
                "endpoint": endpoint, "prompt": prompt, "max_tokens": MAX_TOKENS[(i + 3 * k) % len(MAX_TOKENS)],
                "temperature": 0.8 if seeded else 0.0, "seed": 1000 + 10 * i + k if seeded else None,
                "system": SYSTEMS[(i + k) % system_prompts] if system_prompts and endpoint == "chat" else None,
            })
    return jobs


def payload(job, model, stream):
    p = {"model": model, "max_tokens": job["max_tokens"], "temperature": job["temperature"]}
    if job["seed"] is not None:
        p["seed"] = job["seed"]
    if job["endpoint"] == "chat":
        p["messages"] = [{"role": "user", "content": job["prompt"]}]
        if job.get("system"):
            p["messages"].insert(0, {"role": "system", "content": job["system"]})
    else:
        p["prompt"] = job["prompt"]
    if stream:
        p["stream"] = True
        p["stream_options"] = {"include_usage": True}
    return p


def path_of(job):
    return "/v1/chat/completions" if job["endpoint"] == "chat" else "/v1/completions"


# ---- minimal HTTP/1.1 over asyncio streams ----

async def read_head(reader):
    line = await reader.readline()
    if not line:
        raise ConnectionError("connection closed before the status line")
    status = int(line.split()[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_body(reader, headers):
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        n = int(headers["content-length"])
        if n:
            yield await reader.readexactly(n)
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


async def http(host, port, method, path, body=None):
    reader, writer = await asyncio.open_connection(host, port)
    data = json.dumps(body).encode() if body is not None else b""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    await writer.drain()
    status, headers = await read_head(reader)
    out = b""
    async for part in read_body(reader, headers):
        out += part
    writer.close()
    return status, headers, out


async def stream(host, port, job, model, disconnect_after=None):
    """One streaming request; returns what the client saw."""
    res = {"job": job, "status": None, "text": "", "finish": None, "usage": None, "ttft": None, "latency": None,
           "disconnected": False, "deltas": 0, "error": None}
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        data = json.dumps(payload(job, model, True)).encode()
        writer.write(f"POST {path_of(job)} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()
        status, headers = await read_head(reader)
        res["status"] = status
        if status != 200:
            body = b""
            async for part in read_body(reader, headers):
                body += part
            res["error"] = body.decode(errors="replace")
            return res
        buf = b""
        async for part in read_body(reader, headers):
            buf += part.replace(b"\r\n", b"\n")
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                lines = [l[6:] for l in event.split(b"\n") if l.startswith(b"data: ")]
                if not lines:
                    continue
                d = b"\n".join(lines)
                if d == b"[DONE]":
                    # The answer is complete (some servers keep the connection a while longer).
                    res["done"] = True
                    return res
                obj = json.loads(d)
                if obj.get("error"):
                    res["error"] = obj["error"]
                if obj.get("usage"):
                    res["usage"] = obj["usage"]
                for c in obj.get("choices", []):
                    piece = (c.get("delta") or {}).get("content") if job["endpoint"] == "chat" else c.get("text")
                    if piece:
                        if res["ttft"] is None:
                            res["ttft"] = time.perf_counter() - t0
                        res["text"] += piece
                        res["deltas"] += 1
                    if c.get("finish_reason"):
                        res["finish"] = c["finish_reason"]
                if disconnect_after is not None and res["deltas"] >= disconnect_after:
                    res["disconnected"] = True
                    return res
        return res
    finally:
        res["latency"] = time.perf_counter() - t0
        writer.close()


# ---- metrics ----

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


async def scrape(host, port):
    status, _, body = await http(host, port, "GET", "/metrics")
    assert status == 200, f"/metrics answered {status}"
    return parse_metrics(body.decode())


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))]


def rss(pid):
    vals = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM", "VmRSS")):
                    k, v = line.split(":")
                    vals[k] = int(v.split()[0]) // 1024
    except OSError:
        pass
    return vals


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def load_plan(args, jobs):
    """Which job each client sends, in order, and which requests leave midway (after 1-3 text deltas)."""
    plan = []
    for c in range(args.clients):
        plan.append([(c * args.requests + r) % len(jobs) for r in range(args.requests)])
    rng = random.Random(7)
    disconnect = {}
    for c in range(args.clients):
        for r in range(args.requests):
            if rng.random() < args.disconnect_rate:
                disconnect[(c, r)] = rng.randint(1, 3)  # leave after this many text deltas
    return plan, disconnect


async def load_phase(host, port, jobs, model, args):
    plan, disconnect = load_plan(args, jobs)

    async def client(c):
        out = []
        for r, j in enumerate(plan[c]):
            res = await stream(host, port, jobs[j], model, disconnect_after=disconnect.get((c, r)))
            res["ref"] = j
            out.append(res)
        return out

    t0 = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*(client(c) for c in range(args.clients))), timeout=args.timeout)
    wall = time.perf_counter() - t0
    return [r for rs in results for r in rs], wall


class PeakRSS:
    """Samples a process's RSS (and its children's) every 0.2 s; VmHWM where the kernel keeps it."""
    def __init__(self, pid):
        self.pid, self.peak, self.task = pid, 0, None

    async def _run(self):
        while True:
            self.peak = max(self.peak, rss(self.pid).get("VmRSS", 0))
            await asyncio.sleep(0.2)

    def start(self):
        self.task = asyncio.ensure_future(self._run())

    def stop(self):
        if self.task:
            self.task.cancel()
        return max(self.peak, rss(self.pid).get("VmHWM", 0))


async def run_llama_cpp(args, jobs):
    """The same load against llama-cpp-python's OpenAI server (python -m llama_cpp.server) on the same GGUF file.
    Client-side numbers only: it has no /metrics. Generated tokens are its usage when it sends one, else its
    streamed deltas (it streams one token per chunk)."""
    host, port = "127.0.0.1", free_port()
    model_path = args.model or os.path.expanduser("~/.cache/causal/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(model_path):
        sys.exit(f"no GGUF file at {model_path}: pass --model")
    log = tempfile.NamedTemporaryFile(prefix="llama-cpp-load-", suffix=".log", delete=False)
    cmd = [args.llama_cpp_python, "-m", "llama_cpp.server", "--model", model_path, "--host", host, "--port", str(port),
           "--n_ctx", str(args.context), "--n_threads", str(os.cpu_count() or 1), "--model_alias", "model",
           # By default a new request interrupts the running one; let requests wait their turn instead.
           "--interrupt_requests", "False"]
    print("\nstarting:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                status, _, _ = await http(host, port, "GET", "/v1/models")
                if status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                sys.exit(f"llama_cpp.server exited early; log in {log.name}")
            await asyncio.sleep(0.2)
        # Warm up both endpoints (its first request is much slower than the next ones).
        await http(host, port, "POST", "/v1/completions", {"model": "model", "prompt": "Hi", "max_tokens": 4})
        await http(host, port, "POST", "/v1/chat/completions",
                   {"model": "model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        peak = PeakRSS(proc.pid)
        peak.start()
        results, wall = await load_phase(host, port, jobs, "model", args)
        mem = peak.stop()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    statuses = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    ok = [r for r in results if r["status"] == 200]
    completed = [r for r in ok if not r["disconnected"]]
    gen = sum((r["usage"] or {}).get("completion_tokens", r["deltas"]) if not r["disconnected"] else r["deltas"] for r in ok)
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    lat = [r["latency"] for r in completed]
    finishes = {}
    for r in completed:
        finishes[r["finish"]] = finishes.get(r["finish"], 0) + 1
    print(f"llama-cpp-python: requests {len(results)}, statuses {statuses}, completed {len(completed)} "
          f"(finish reasons {finishes}), disconnected midway {len(ok) - len(completed)}")
    print(f"llama-cpp-python: wall time {wall:.1f} s; generated tokens {gen} -> {gen / wall:.1f} tokens/s aggregate")
    print(f"llama-cpp-python: TTFT p50 {pct(ttft, 0.5) * 1000:.0f} ms, p99 {pct(ttft, 0.99) * 1000:.0f} ms; "
          f"request latency p50 {pct(lat, 0.5):.2f} s, p99 {pct(lat, 0.99):.2f} s; peak RSS {mem} MiB")
    os.unlink(log.name)
    return not any(s is None or s >= 500 for s in statuses)


async def start_server(args, host, cache_memory):
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="causal-load-", suffix=".log", delete=False)
    cmd = [args.causal, "serve", "--host", host, "--port", str(port), "--max-sequences", str(args.max_sequences),
           "--context", str(args.context)]
    if args.model:
        cmd += ["--model", args.model]
    if cache_memory is not None:
        cmd += ["--cache-memory", str(cache_memory)]
    print("starting:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            status, _, _ = await http(host, port, "GET", "/health")
            if status == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"causal serve exited early; log in {log.name}")
        await asyncio.sleep(0.2)
    return proc, port, log


async def reference_answers(host, port, model, jobs, check):
    """Single-request answers, one at a time (non-streaming)."""
    t = time.perf_counter()
    refs = []
    for job in jobs:
        status, _, body = await http(host, port, "POST", path_of(job), payload(job, model, False))
        check(status == 200, f"reference request answered {status}: {body[:200]!r}")
        d = json.loads(body)
        ch = d["choices"][0]
        refs.append({"text": ch["message"]["content"] if job["endpoint"] == "chat" else ch["text"],
                     "finish": ch["finish_reason"], "usage": d["usage"]})
    print(f"{len(jobs)} single-request answers in {time.perf_counter() - t:.1f} s", flush=True)
    return refs


async def run(args):
    host = "127.0.0.1"
    proc = None
    log = None
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)
            print("FAIL", what, flush=True)

    jobs = make_jobs(args.system_prompts)
    refs = None
    if args.url:
        m = re.match(r"http://(127\.0\.0\.1|localhost):(\d+)/?$", args.url)
        if not m:
            sys.exit("--url must be a loopback address like http://127.0.0.1:8080")
        port = int(m.group(2))
        pid = args.pid
    else:
        if args.cache_memory != 0:
            # The single-request answers come from a server without the prefix cache.
            ref_proc, ref_port, ref_log = await start_server(args, host, 0)
            try:
                status, _, body = await http(host, ref_port, "GET", "/v1/models")
                refs = await reference_answers(host, ref_port, json.loads(body)["data"][0]["id"], jobs, check)
            finally:
                ref_proc.send_signal(signal.SIGTERM)
                ref_proc.wait(timeout=60)
                os.unlink(ref_log.name)
        proc, port, log = await start_server(args, host, args.cache_memory)
        pid = proc.pid

    try:
        status, _, body = await http(host, port, "GET", "/v1/models")
        model = json.loads(body)["data"][0]["id"]
        # Single-request answers on this server unless they came from the server without the prefix cache (then the
        # load starts on a cold cache, and every completed answer is compared with the cache-off answer).
        reference_count = 0
        if refs is None:
            refs = await reference_answers(host, port, model, jobs, check)
            reference_count = len(jobs)

        # The server counts a request once its response has been written, which can come a moment after the client
        # has read it: wait until the last reference request is counted before taking the baseline.
        def answered(m):
            return sum(v for k, v in m.items() if k.startswith("causal_requests_total{") and 'status="200"' in k
                       and ("/v1/chat/completions" in k or "/v1/completions" in k))
        before = await scrape(host, port)
        for _ in range(50):
            if proc is None or answered(before) >= reference_count:
                break
            await asyncio.sleep(0.1)
            before = await scrape(host, port)
        if proc is None:  # a server of unknown history: let it settle
            await asyncio.sleep(0.5)
            before = await scrape(host, port)

        # The load: CLIENTS clients x REQUESTS requests, each client sequential.
        results, wall = await load_phase(host, port, jobs, model, args)

        # Let the server notice the disconnects and finish everything, then compare the metrics.
        for _ in range(300):
            after = await scrape(host, port)
            if after.get("causal_running_sequences", 0) == 0 and after.get("causal_queued_requests", 0) == 0:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        after = await scrape(host, port)
        mem = rss(pid) if pid else {}

        def delta(key):
            return after.get(key, 0) - before.get(key, 0)

        statuses = {}
        for r in results:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        check(not any(s is None or s >= 500 for s in statuses), f"5xx or no answer: {statuses}")
        ok = [r for r in results if r["status"] == 200]
        completed = [r for r in ok if not r["disconnected"]]
        cut = [r for r in ok if r["disconnected"]]
        mismatches = 0
        for r in completed:
            ref = refs[r["ref"]]
            same = (r["text"] == ref["text"] and r["finish"] == ref["finish"] and r["usage"] is not None
                    and r["usage"]["completion_tokens"] == ref["usage"]["completion_tokens"]
                    and r["usage"]["prompt_tokens"] == ref["usage"]["prompt_tokens"] and r.get("done") and not r["error"])
            if not same:
                mismatches += 1
                if mismatches <= 5:
                    print(f"  mismatch job {r['ref']}: got {r['text']!r} ({r['finish']}), alone {ref['text']!r} ({ref['finish']})")
        check(mismatches == 0, f"{mismatches} of {len(completed)} completed answers differ from their single-request answers")

        # Metrics consistency.
        for ep in ("/v1/chat/completions", "/v1/completions"):
            sent = sum(1 for r in ok if path_of(r["job"]) == ep)
            got = delta(f'causal_requests_total{{endpoint="{ep}",status="200"}}')
            check(got == sent, f"{ep}: metrics count {got} requests with 200, the clients got {sent}")
        for s in statuses:
            if s != 200:
                print(f"  note: {statuses[s]} answers with status {s}")
        prompt_sent = sum(refs[r["ref"]]["usage"]["prompt_tokens"] for r in ok)
        check(delta("causal_prompt_tokens_total") == prompt_sent,
              f"prompt tokens: metrics {delta('causal_prompt_tokens_total')}, sent {prompt_sent}")
        # Prompt tokens either ran (prefill) or came from the prefix cache.
        hit_tokens = delta("causal_prefix_cache_hit_tokens_total")
        check(delta("causal_scheduler_prompt_tokens_total") + hit_tokens == prompt_sent,
              f"prefill tokens: metrics {delta('causal_scheduler_prompt_tokens_total')} run + {hit_tokens} cached, sent {prompt_sent}")
        gen_done = sum(r["usage"]["completion_tokens"] for r in completed if r["usage"])
        gen_cut_max = sum(r["job"]["max_tokens"] for r in cut)
        gen = delta("causal_generation_tokens_total")
        sched_gen = delta("causal_scheduler_generated_tokens_total")
        check(gen_done + len(cut) <= gen <= gen_done + gen_cut_max,
              f"generated tokens: metrics {gen}, completed {gen_done} + disconnected between {len(cut)} and {gen_cut_max}")
        check(gen <= sched_gen <= gen_done + gen_cut_max,
              f"scheduler generated {sched_gen} tokens, responses report {gen}, at most {gen_done + gen_cut_max}")
        check(after.get("causal_running_sequences") == 0 and after.get("causal_queued_requests") == 0,
              "sequences left running or queued")
        cancelled = int(delta('causal_finish_reason_total{reason="cancelled"}'))
        check(cancelled <= len(cut), "more cancellations than disconnects")

        ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
        lat = [r["latency"] for r in completed]
        steps = delta("causal_scheduler_steps_total")
        seqs = delta("causal_step_batch_sequences_sum")
        toks = delta("causal_step_batch_tokens_sum")
        print()
        print(f"requests: {len(results)} ({args.clients} clients x {args.requests}), statuses {statuses}, "
              f"completed {len(completed)}, disconnected midway {len(cut)} "
              f"(server cancelled {cancelled} of them before they finished)")
        print(f"wall time: {wall:.1f} s")
        print(f"generated tokens: {int(sched_gen)} -> {sched_gen / wall:.1f} tokens/s aggregate; "
              f"prompt tokens: {int(prompt_sent)} -> {(prompt_sent + sched_gen) / wall:.1f} tokens/s prompt+generated")
        print(f"TTFT: p50 {pct(ttft, 0.5) * 1000:.0f} ms, p99 {pct(ttft, 0.99) * 1000:.0f} ms (queueing included); "
              f"request latency: p50 {pct(lat, 0.5):.2f} s, p99 {pct(lat, 0.99):.2f} s")
        if steps:
            print(f"steps: {int(steps)}, mean {seqs / steps:.1f} sequences and {toks / steps:.1f} tokens per step")
        hits, misses = delta("causal_prefix_cache_hits_total"), delta("causal_prefix_cache_misses_total")
        if hits + misses:
            print(f"prefix cache: {int(hits)} hits / {int(hits + misses)} lookups ({100 * hits / (hits + misses):.0f}%), "
                  f"{int(hit_tokens)} of {int(prompt_sent)} prompt tokens cached ({100 * hit_tokens / max(prompt_sent, 1):.0f}%), "
                  f"{int(delta('causal_prefix_cache_evictions_total'))} evictions, "
                  f"{after.get('causal_prefix_cache_bytes', 0) / 2**20:.1f} MiB held")
        if mem:
            print(f"server memory: peak RSS (VmHWM) {mem.get('VmHWM')} MiB, RSS now {mem.get('VmRSS')} MiB")
        print(f"answers equal to single-request answers: {len(completed) - mismatches}/{len(completed)}")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
                check(code == 0, f"server exited with status {code} on SIGTERM")
            except subprocess.TimeoutExpired:
                proc.kill()
                check(False, "server did not stop within 60 s of SIGTERM")
            if failures:
                print(f"server log: {log.name}")
            else:
                os.unlink(log.name)
    if args.llama_cpp_python:
        if not await run_llama_cpp(args, make_jobs(args.system_prompts)):
            failures.append("llama-cpp-python answered 5xx or not at all")
    if failures:
        print(f"\n{len(failures)} check(s) failed")
        return 1
    print("\nall checks passed")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--causal", default=".build/release/causal", help="the causal binary (default: .build/release/causal)")
    ap.add_argument("--model", help="GGUF model (default: the server's default model)")
    ap.add_argument("--url", help="use a running server on loopback instead of starting one, e.g. http://127.0.0.1:8080")
    ap.add_argument("--pid", type=int, help="with --url: the server's pid, to read its peak RSS")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=4, help="requests per client, one after the other")
    ap.add_argument("--disconnect-rate", type=float, default=0.1, help="fraction of requests whose client leaves midway")
    ap.add_argument("--max-sequences", type=int, default=16)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--cache-memory", type=int, help="the server's --cache-memory MiB (default: its default, 256; 0: off)")
    ap.add_argument("--system-prompts", type=int, default=0, help=f"chat requests start with one of this many shared "
                    f"system prompts (0-{len(SYSTEMS)})")
    ap.add_argument("--timeout", type=float, default=900, help="seconds for the whole load phase")
    ap.add_argument("--llama-cpp-python", metavar="PYTHON",
                    help="afterwards, the same load against llama-cpp-python's OpenAI server run by this Python "
                         "(with llama-cpp-python[server] installed) on the same GGUF file")
    args = ap.parse_args()
    if args.clients < 1 or args.clients > 256 or args.requests < 1 or args.requests > 16:
        sys.exit("keep the load bounded: 1-256 clients, 1-16 requests each")
    if not 0 <= args.system_prompts <= len(SYSTEMS):
        sys.exit(f"--system-prompts must be in 0...{len(SYSTEMS)}")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
