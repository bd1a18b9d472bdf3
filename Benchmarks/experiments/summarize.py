#!/usr/bin/env python3
"""Tables and the SVG of one attention experiment (docs/experiments.md) from run.sh's per-run eval CSVs.

    summarize.py --experiment rev|mlm --results DIR --arms A,B[,C]

Reads DIR/ARM-sSEED.csv (step,eval_loss,...) for every seed that every arm has, and writes DIR/summary.md (per-seed
final eval losses, each arm's mean with a 95% t-interval over seeds, the paired per-seed differences against the first
arm with their t-interval, the same for log loss, and the eval loss at chosen steps) and DIR/curves.svg (each arm's
mean curve with its 95% t-band, thin per-seed lines; log-scale loss when it spans more than a factor of 3). Python standard library only; files are
written to temporary names and renamed.
"""
import argparse
import csv
import glob
import math
import os
import re

# Student t, two-sided 95% (0.975 quantile), by degrees of freedom 1..30.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def t975(df):
    return T975[df - 1] if df <= 30 else 1.96


def mean_ci(xs):
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, float("nan"), float("nan"), float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = t975(n - 1) * sd / math.sqrt(n)
    return m, sd, m - h, m + h


def sign_test(diffs):
    """Two-sided exact sign test p-value (zeros dropped)."""
    pos = sum(1 for d in diffs if d > 0)
    neg = sum(1 for d in diffs if d < 0)
    n = pos + neg
    if n == 0:
        return 1.0
    k = min(pos, neg)
    p = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * p)


def read_run(path):
    with open(path) as f:
        return [(int(r["step"]), float(r["eval_loss"])) for r in csv.DictReader(f)]


def fmt(x):
    if x != x:
        return "n/a"
    a = abs(x)
    return f"{x:.4f}" if a >= 0.01 or a == 0 else f"{x:.2e}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--arms", required=True)
    ap.add_argument("--title", default=None)
    ap.add_argument("--threshold", type=float, default=None,
                    help="also report the first evaluated step at which each run's eval loss is below this")
    a = ap.parse_args()
    arms = a.arms.split(",")
    runs = {}
    for arm in arms:
        for p in glob.glob(os.path.join(a.results, f"{arm}-s*.csv")):
            m = re.search(r"-s(\d+)\.csv$", p)
            runs[(arm, int(m.group(1)))] = read_run(p)
    seeds = sorted(s for s in {s for _, s in runs} if all((arm, s) in runs for arm in arms))
    if not seeds:
        raise SystemExit(f"summarize.py: no seed has a CSV for every arm in {a.results}")
    steps = [s for s, _ in runs[(arms[0], seeds[0])]]
    for k, pts in runs.items():
        if k[1] in seeds and [s for s, _ in pts] != steps:
            raise SystemExit(f"summarize.py: {k[0]} seed {k[1]} was evaluated at other steps than {arms[0]} seed {seeds[0]}")
    final = {(arm, s): runs[(arm, s)][-1][1] for arm in arms for s in seeds}
    L = []
    L.append(f"# {a.experiment}: {len(seeds)} seeds ({', '.join(map(str, seeds))}), final step {steps[-1]}\n")
    L.append("Final eval loss per seed:\n")
    L.append("| seed | " + " | ".join(arms) + " | " + " | ".join(f"{b} − {arms[0]}" for b in arms[1:]) + " |")
    L.append("|---" * (1 + 2 * len(arms) - 1) + "|")
    for s in seeds:
        row = [fmt(final[(arm, s)]) for arm in arms] + [fmt(final[(b, s)] - final[(arms[0], s)]) for b in arms[1:]]
        L.append(f"| {s} | " + " | ".join(row) + " |")
    L.append("")
    L.append("Each arm over the seeds (95% t-interval of the mean, n − 1 degrees of freedom):\n")
    L.append("| arm | mean final eval loss | 95% interval | sd | median | min | max |")
    L.append("|---|---|---|---|---|---|---|")
    for arm in arms:
        xs = [final[(arm, s)] for s in seeds]
        m, sd, lo, hi = mean_ci(xs)
        med = sorted(xs)[len(xs) // 2] if len(xs) % 2 else sum(sorted(xs)[len(xs) // 2 - 1:len(xs) // 2 + 1]) / 2
        L.append(f"| {arm} | {fmt(m)} | [{fmt(lo)}, {fmt(hi)}] | {fmt(sd)} | {fmt(med)} | {fmt(min(xs))} | {fmt(max(xs))} |")
    L.append("")
    L.append(f"Paired by seed (the arms of a seed share the initial weights and the data order), against {arms[0]}:\n")
    L.append("| difference | mean | 95% interval | lower in | sign test p |")
    L.append("|---|---|---|---|---|")
    for b in arms[1:]:
        d = [final[(b, s)] - final[(arms[0], s)] for s in seeds]
        m, _, lo, hi = mean_ci(d)
        L.append(f"| {b} − {arms[0]} (loss) | {fmt(m)} | [{fmt(lo)}, {fmt(hi)}] | {b} in {sum(x < 0 for x in d)} of {len(d)} | {sign_test(d):.3g} |")
        dl = [math.log(final[(b, s)]) - math.log(final[(arms[0], s)]) for s in seeds]
        m, _, lo, hi = mean_ci(dl)
        L.append(f"| ln {b} − ln {arms[0]} (ratio of losses) | {m:.3f} (×{math.exp(m):.3g}) | [{lo:.3f}, {hi:.3f}] (×{math.exp(lo):.3g} to ×{math.exp(hi):.3g}) | | |")
    L.append("")
    if a.threshold is not None:
        def first(arm, sd):
            return next((s for s, l in runs[(arm, sd)] if l < a.threshold), None)
        L.append(f"First evaluated step with eval loss below {a.threshold:g} (— : never, within {steps[-1]} steps):\n")
        L.append("| arm | " + " | ".join(f"seed {sd}" for sd in seeds) + " | reached in | mean of those reached |")
        L.append("|---" * (3 + len(seeds)) + "|")
        for arm in arms:
            f = [first(arm, sd) for sd in seeds]
            got = [v for v in f if v is not None]
            L.append(f"| {arm} | " + " | ".join("—" if v is None else str(v) for v in f) +
                     f" | {len(got)} of {len(f)} | {sum(got) / len(got) if got else float('nan'):.0f} |")
        for b in arms[1:]:
            d = [first(b, sd) - first(arms[0], sd) for sd in seeds if first(b, sd) is not None and first(arms[0], sd) is not None]
            if len(d) >= 2:
                m, _, lo, hi = mean_ci(d)
                L.append(f"\nPaired, seeds where both reached it ({len(d)}): {b} − {arms[0]} = {m:+.1f} steps, 95% interval "
                         f"[{lo:+.1f}, {hi:+.1f}]; {b} earlier in {sum(x < 0 for x in d)}, later in {sum(x > 0 for x in d)} "
                         f"(sign test p {sign_test(d):.3g}).")
        L.append("")
    picks = [s for s in steps if s in {steps[len(steps) * k // 8 - 1] for k in range(1, 9)}]
    L.append("Mean eval loss over the seeds at some steps (95% t-interval):\n")
    L.append("| arm | " + " | ".join(str(s) for s in picks) + " |")
    L.append("|---" * (1 + len(picks)) + "|")
    for arm in arms:
        cells = []
        for s in picks:
            i = steps.index(s)
            m, _, lo, hi = mean_ci([runs[(arm, sd)][i][1] for sd in seeds])
            cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
        L.append(f"| {arm} | " + " | ".join(cells) + " |")
    L.append("")
    for b in arms[1:]:
        L.append(f"Paired difference {b} − {arms[0]} of the eval loss at every evaluated step (95% t-interval over seeds):\n")
        L.append(f"| step | mean | 95% interval | {b} lower in |")
        L.append("|---|---|---|---|")
        for i, s in enumerate(steps):
            d = [runs[(b, sd)][i][1] - runs[(arms[0], sd)][i][1] for sd in seeds]
            m, _, lo, hi = mean_ci(d)
            L.append(f"| {s} | {fmt(m)} | [{fmt(lo)}, {fmt(hi)}] | {sum(x < 0 for x in d)} of {len(d)} |")
        L.append("")
    tmp = os.path.join(a.results, "summary.md.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(L) + "\n")
    os.replace(tmp, os.path.join(a.results, "summary.md"))
    print("\n".join(L))
    svg(a, arms, seeds, steps, runs)


def svg(a, arms, seeds, steps, runs):
    W, H, left, right, top, bottom = 720, 420, 62, 170, 34, 45
    vals = [l for k, p in runs.items() if k[1] in seeds for _, l in p]
    lo_e = math.floor(math.log10(min(vals)))
    hi_e = math.ceil(math.log10(max(vals)))
    max_step = steps[-1]
    x = lambda s: left + (W - left - right) * s / max_step
    # Log scale when the losses span more than a factor of 3, else a linear axis in steps of 0.1.
    linear = max(vals) / min(vals) < 3
    if linear:
        y0, y1 = math.floor(min(vals) * 10) / 10, math.ceil(max(vals) * 10) / 10
        y = lambda l: top + (H - top - bottom) * (y1 - max(l, y0)) / (y1 - y0)
    else:
        y = lambda l: top + (H - top - bottom) * (hi_e - math.log10(max(l, 10 ** lo_e))) / (hi_e - lo_e)
    title = a.title or f"{a.experiment}: eval loss, mean of {len(seeds)} seeds with 95% t-band; thin lines: each seed"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="13">{title}</text>']
    ticks = [round(y0 + k / 10, 1) for k in range(int(round((y1 - y0) * 10)) + 1)] if linear else []
    for v in ticks:
        yy = y(v)
        out.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{W - right}" y2="{yy:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{v:g}</text>')
    for e in range(lo_e, hi_e + 1) if not linear else []:
        for m in (1, 2, 5):
            v = m * 10 ** e
            if v > 10 ** hi_e:
                continue
            yy = y(v)
            out.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{W - right}" y2="{yy:.1f}" stroke="{"#ccc" if m == 1 else "#eee"}"/>')
            out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{v:g}</text>')
    for i in range(5):
        s = round(max_step * i / 4)
        out.append(f'<text x="{x(s):.1f}" y="{H - bottom + 16}" text-anchor="middle">{s}</text>')
    out.append(f'<text x="{(left + W - right) / 2:.1f}" y="{H - 8}" text-anchor="middle">step</text>')
    out.append(f'<text x="14" y="{(top + H - bottom) / 2:.1f}" transform="rotate(-90 14 {(top + H - bottom) / 2:.1f})" '
               f'text-anchor="middle">eval loss{"" if linear else " (log scale)"}</text>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{H - bottom}" stroke="black"/>')
    out.append(f'<line x1="{left}" y1="{H - bottom}" x2="{W - right}" y2="{H - bottom}" stroke="black"/>')
    for ai, arm in enumerate(arms):
        c = COLORS[ai % len(COLORS)]
        stats = [mean_ci([runs[(arm, sd)][i][1] for sd in seeds]) for i in range(len(steps))]
        band = [(s, max(st[2], 10 ** lo_e), st[3]) for s, st in zip(steps, stats)]
        poly = " ".join(f"{x(s):.1f},{y(hi):.1f}" for s, _, hi in band) + " " + \
               " ".join(f"{x(s):.1f},{y(lo):.1f}" for s, lo, _ in reversed(band))
        out.append(f'<polygon points="{poly}" fill="{c}" fill-opacity="0.15" stroke="none"/>')
        for sd in seeds:
            pts = " ".join(f"{x(s):.1f},{y(l):.1f}" for s, l in runs[(arm, sd)])
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="0.7" stroke-opacity="0.6" points="{pts}">'
                       f'<title>{arm} seed {sd}: final eval loss {runs[(arm, sd)][-1][1]:.6f}</title></polyline>')
        pts = " ".join(f"{x(s):.1f},{y(st[0]):.1f}" for s, st in zip(steps, stats))
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2.5" points="{pts}"/>')
        for s, st in zip(steps, stats):
            out.append(f'<circle cx="{x(s):.1f}" cy="{y(st[0]):.1f}" r="2.2" fill="{c}"><title>{arm} step {s}: mean eval '
                       f'loss {st[0]:.6f}, 95% interval [{st[2]:.6f}, {st[3]:.6f}]</title></circle>')
        ly = top + 10 + 20 * ai
        out.append(f'<rect x="{W - right + 10}" y="{ly - 6}" width="25" height="12" fill="{c}" fill-opacity="0.15"/>')
        out.append(f'<line x1="{W - right + 10}" y1="{ly}" x2="{W - right + 35}" y2="{ly}" stroke="{c}" stroke-width="2.5"/>')
        out.append(f'<text x="{W - right + 40}" y="{ly + 4}">{arm} (n = {len(seeds)})</text>')
    out.append("</svg>")
    path = os.path.join(a.results, "curves.svg")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
