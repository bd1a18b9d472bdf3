#!/usr/bin/env python3
"""One SVG of the eval-loss curves of several `causal train` runs (log-scale loss by step).

  plot_eval.py --out plot.svg [--colors N] LABEL=RUN_DIR [LABEL=RUN_DIR ...]

Reads each RUN_DIR/metrics.jsonl ("eval_loss" lines). Every point carries its exact value in a <title>.
Python standard library only; written to a temporary name and renamed.
"""
import argparse
import json
import math
import os

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
DASHES = ["", "6 3", "2 2"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="eval loss")
    ap.add_argument("--colors", type=int, default=len(COLORS),
                    help="runs per colour cycle: run i gets colour i %% N and dash pattern i // N")
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    a = ap.parse_args()
    series = []
    for spec in a.runs:
        label, _, path = spec.partition("=")
        pts = []
        for line in open(os.path.join(path, "metrics.jsonl"), encoding="utf-8"):
            o = json.loads(line)
            if "eval_loss" in o:
                pts.append((o["step"], o["eval_loss"]))
        if not pts:
            raise SystemExit(f"{path}/metrics.jsonl: no eval_loss lines")
        series.append((label, pts))
    W, H, left, right, top, bottom = 640, 400, 60, 150, 30, 45
    max_step = max(s for _, p in series for s, _ in p)
    lo = math.floor(math.log10(min(l for _, p in series for _, l in p)))
    hi = math.ceil(math.log10(max(l for _, p in series for _, l in p)))
    x = lambda s: left + (W - left - right) * s / max_step
    y = lambda l: top + (H - top - bottom) * (hi - math.log10(l)) / (hi - lo)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">{a.title}</text>']
    for e in range(lo, hi + 1):
        yy = y(10 ** e)
        out.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{W - right}" y2="{yy:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{10 ** e:g}</text>')
    for i in range(5):
        s = round(max_step * i / 4)
        out.append(f'<text x="{x(s):.1f}" y="{H - bottom + 16}" text-anchor="middle">{s}</text>')
    out.append(f'<text x="{(left + W - right) / 2:.1f}" y="{H - 8}" text-anchor="middle">step</text>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{H - bottom}" stroke="black"/>')
    out.append(f'<line x1="{left}" y1="{H - bottom}" x2="{W - right}" y2="{H - bottom}" stroke="black"/>')
    for i, (label, pts) in enumerate(series):
        n = max(1, min(a.colors, len(COLORS)))
        c, d = COLORS[i % n], DASHES[(i // n) % len(DASHES)]
        dash = f' stroke-dasharray="{d}"' if d else ""
        poly = " ".join(f"{x(s):.1f},{y(l):.1f}" for s, l in pts)
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="{poly}"/>')
        for s, l in pts:
            out.append(f'<circle cx="{x(s):.1f}" cy="{y(l):.1f}" r="2.5" fill="{c}"><title>{label} step {s}: eval loss {l:.6f}</title></circle>')
        ly = top + 10 + 18 * i
        out.append(f'<line x1="{W - right + 10}" y1="{ly}" x2="{W - right + 35}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{W - right + 40}" y="{ly + 4}">{label}</text>')
    out.append("</svg>")
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
