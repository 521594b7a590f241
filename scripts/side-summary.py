#!/usr/bin/env python3
"""The table of BENCHMARKS.md from a scripts/bench-side.sh run: per configuration the
median (min-max) pages/s of faultline and of the C reference over the rounds, and the
median of the rounds' paired ratios. Usage: side-summary.py OUT_DIR"""

import glob
import json
import re
import statistics
import sys


def rate(x):
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def spread(values):
    return f"{rate(statistics.median(values))} ({rate(min(values))}-{rate(max(values))})"


def main(out):
    ours, theirs = {}, {}
    for path in glob.glob(f"{out}/faultline-*.json"):
        rnd = int(re.search(r"-(\d+)\.json$", path)[1])
        for r in json.load(open(path))["results"]:
            key = (r["mode"], r["vcpus"], r["backing"], r.get("prefetch", "off"))
            ours.setdefault(key, {})[rnd] = r["pages_per_sec"]
    line = re.compile(r"mode=(\w+) backing=(\w+) vcpus=(\d+) pages_per_sec=(\d+)")
    for path in glob.glob(f"{out}/c-*.txt"):
        rnd = int(re.search(r"-(\d+)\.txt$", path)[1])
        for text in open(path):
            m = line.search(text) if text.startswith("median:") else None
            if m:
                theirs.setdefault((m[1], int(m[3]), m[2]), {})[rnd] = float(m[4])
    order = ["prefill", "uffd", "exit"]
    print("| mode | vCPUs | backing | prefetch | faultline | C reference | faultline / C (paired, min-max) |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(ours, key=lambda k: (order.index(k[0]), k[2] != "shmem", k[1], k[3])):
        # The C reference has no prefetch: every strategy is paired with its runs.
        c_runs = theirs.get(key[:3], {})
        rounds = sorted(set(ours[key]) & set(c_runs))
        missing = sorted(set(ours[key]) ^ set(c_runs))
        if missing:
            print(f"{key}: no pair in rounds {missing} (a run failed)", file=sys.stderr)
        if not rounds:
            continue
        f = [ours[key][r] for r in rounds]
        c = [c_runs[r] for r in rounds]
        ratios = [a / b for a, b in zip(f, c)]
        print(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {spread(f)} | {spread(c)} | "
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: side-summary.py OUT_DIR")
    main(sys.argv[1])
