"""Compares lm-evaluation-harness's per-item log-likelihoods (its --log_samples file) with `causal score`.

Usage: compare.py SAMPLES.jsonl CAUSAL [--model PATH] [--tolerance 1e-5]
Every (context, continuation) request lm-eval sent through `causal serve` is scored again by the library directly
(`causal score`, no server); the sums of log-probabilities must agree within the tolerance and the is_greedy flags
must be equal. Prints the largest difference and lm-eval's accuracy.
"""
import argparse
import json
import subprocess
import sys
import tempfile


def pairs_of(sample):
    """The (context, continuation) pairs and (logprob, is_greedy) answers of one logged sample."""
    args = sample["arguments"]
    if isinstance(args, dict):  # newer lm-eval: {"gen_args_0": {"arg_0": ctx, "arg_1": cont}, ...}
        args = [[a["arg_0"], a["arg_1"]] for _, a in sorted(args.items(), key=lambda kv: int(kv[0].split("_")[-1]))]
    resps = []
    for r in sample["resps"]:
        while isinstance(r, list) and len(r) == 1 and isinstance(r[0], list):
            r = r[0]
        resps.append((float(r[0]), r[1] in (True, "True", "true")))
    assert len(args) == len(resps), sample
    return [(a[0], a[1]) for a in args], resps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("samples")
    ap.add_argument("causal")
    ap.add_argument("--model")
    ap.add_argument("--tolerance", type=float, default=1e-5)
    ap.add_argument("--expect-items", type=int, default=30)
    a = ap.parse_args()

    samples = [json.loads(line) for line in open(a.samples) if line.strip()]
    pairs, served = [], []
    correct = 0
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        p, r = pairs_of(s)
        pairs += p
        served += r
        correct += s.get("acc", 0)
    print(f"lm-eval logged {len(samples)} items, {len(pairs)} (context, continuation) requests, acc {correct / max(len(samples), 1):.3f}")
    ok = len(samples) == a.expect_items

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for ctx, cont in pairs:
            f.write(json.dumps({"context": ctx, "continuation": cont}) + "\n")
        path = f.name
    cmd = [a.causal, "score", "--input", path] + (["--model", a.model] if a.model else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    direct = [json.loads(line) for line in out.splitlines() if line.strip()]
    if len(direct) != len(pairs):
        print(f"FAIL causal score gave {len(direct)} lines for {len(pairs)} pairs", file=sys.stderr)
        sys.exit(1)

    worst, worst_i, greedy_diff = 0.0, -1, 0
    for i, ((lp, greedy), d) in enumerate(zip(served, direct)):
        diff = abs(lp - d["logprob"])
        if diff > worst:
            worst, worst_i = diff, i
        if greedy != d["is_greedy"]:
            greedy_diff += 1
            print(f"is_greedy differs for {pairs[i]!r}: lm-eval {greedy}, causal score {d['is_greedy']}")
    print(f"max |lm-eval - causal score| = {worst:.3g}" + (f" (request {worst_i}: {pairs[worst_i]!r})" if worst_i >= 0 else ""))
    print(f"is_greedy equal for {len(pairs) - greedy_diff}/{len(pairs)}")
    ok = ok and worst <= a.tolerance and greedy_diff == 0
    print("lm-eval check " + ("passed" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
