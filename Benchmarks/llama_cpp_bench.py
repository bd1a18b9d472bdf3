"""Times llama.cpp (through the llama-cpp-python package) the way `causal bench` times CausalLM:
pp = one forward of N random prompt tokens into an empty context; tg = N single-token steps from a one-token
context (feeding random tokens, as llama-bench does). Prints one JSON object per test on stdout."""
import argparse, json, random, statistics, sys, time

import llama_cpp

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("-p", default="64,512")
ap.add_argument("-n", type=int, default=128)
ap.add_argument("-t", type=int, default=2)
ap.add_argument("-r", type=int, default=3)
a = ap.parse_args()

pps = [int(x) for x in a.p.split(",") if x]
ctx = max(pps + [0]) + a.n + 8
llm = llama_cpp.Llama(model_path=a.model, n_threads=a.t, n_threads_batch=a.t, n_ctx=ctx, n_batch=max(pps + [a.n, 8]),
                      n_ubatch=max(pps + [a.n, 8]), logits_all=False, verbose=False)
vocab = llm.n_vocab()
rng = random.Random(1)

def row(test, samples):
    print(json.dumps({"engine": "llama.cpp", "llama_cpp_python": llama_cpp.__version__, "threads": a.t, "test": test,
                      "tokens_per_second": statistics.median(samples), "min": min(samples), "max": max(samples),
                      "samples": samples}), flush=True)

for p in pps:
    toks = [rng.randrange(vocab) for _ in range(p)]
    llm.reset(); llm.eval(toks[:8])  # warm-up
    s = []
    for _ in range(a.r):
        llm.reset()
        t0 = time.perf_counter(); llm.eval(toks); s.append(p / (time.perf_counter() - t0))
    row(f"pp{p}", s)
if a.n > 0:
    s = []
    for rep in range(a.r + 1):
        llm.reset(); llm.eval([rng.randrange(vocab)])
        t0 = time.perf_counter()
        for _ in range(a.n):
            llm.eval([rng.randrange(vocab)])
        if rep > 0: s.append(a.n / (time.perf_counter() - t0))
    row(f"tg{a.n}", s)
