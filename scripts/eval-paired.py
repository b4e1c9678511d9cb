#!/usr/bin/env python3
"""Paired differences between methods of one `iscamd eval` run, per image.

    scripts/eval-paired.py OUT/per_image.csv --against scorecam [--resamples 10000] [--seed 0]

For every method against the one named by --against, over the images both have: the mean of
the per-image differences (method minus baseline) of Average Drop (points), Deletion AUC and
Insertion AUC, and — when the run scored ROAD — ROAD (LeRF − MoRF)/2, with a 95 % percentile bootstrap interval (images resampled with replacement),
and the relative difference of the means in percent (what `--baseline --tolerance` compares).
Prints a Markdown table.
"""
import argparse
import csv
import random
from collections import defaultdict

METRICS = [("drop_percent", "Avg Drop (points)"), ("deletion_auc", "Deletion AUC"), ("insertion_auc", "Insertion AUC"),
           ("road_combined", "ROAD (LeRF − MoRF)/2")]


def value(row, key):
    if key == "road_combined":
        if not row.get("road_lerf") or not row.get("road_morf"):
            return None
        return (float(row["road_lerf"]) - float(row["road_morf"])) / 2
    return float(row[key])


def bootstrap(diffs, resamples, rng):
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--against", required=True)
    ap.add_argument("--resamples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = defaultdict(dict)
    order = []
    with open(args.csv) as f:
        for r in csv.DictReader(f):
            rows[r["method"]][r["image"]] = r
            if r["method"] not in order:
                order.append(r["method"])
    if args.against not in rows:
        raise SystemExit(f"eval-paired: no method {args.against!r} in {args.csv} (methods: {', '.join(order)})")
    base = rows[args.against]
    rng = random.Random(args.seed)
    metrics = [(k, l) for k, l in METRICS if any(value(r, k) is not None for r in base.values())]
    head = " | ".join(f"{label} Δ [95 %] (Δ of means %)" for _, label in metrics)
    print(f"| method | images | passes | {head} |")
    print("| --- | --- | --- |" + " --- |" * len(metrics))
    for method in order:
        if method == args.against:
            continue
        images = sorted(set(rows[method]) & set(base))
        if not images:
            continue
        passes = sum(float(rows[method][i]["passes"]) for i in images) / len(images)
        cells = []
        for key, _ in metrics:
            pairs = [(value(rows[method][i], key), value(base[i], key)) for i in images]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if not pairs:
                cells.append("–")
                continue
            ours, theirs = [a for a, _ in pairs], [b for _, b in pairs]
            diffs = [a - b for a, b in zip(ours, theirs)]
            lo, hi = bootstrap(diffs, args.resamples, rng)
            mean = sum(diffs) / len(diffs)
            rel = 100 * (sum(ours) - sum(theirs)) / abs(sum(theirs))
            fmt = "{:+.2f}" if key == "drop_percent" else "{:+.4f}"
            cells.append(f"{fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}] ({rel:+.1f} %)")
        print(f"| {method} | {len(images)} | {passes:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
