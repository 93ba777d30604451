#!/usr/bin/env python3
"""Sums an `ncu --csv --page raw --metrics gpu__time_duration.sum` log by kernel name (used by
scripts/gpu-check.sh's profile phase): where the GPU time of a run goes, largest first.

Usage: python3 bench/ncu_summary.py profile.csv [--top 15]
"""
import csv
import sys
from collections import defaultdict


def main():
    path = sys.argv[1]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 15
    lines = [l for l in open(path, errors="replace") if l.startswith('"')]
    rows = list(csv.reader(lines))
    header = next((r for r in rows if "Kernel Name" in r), None)
    if header is None:
        print(f"no ncu CSV rows in {path}")
        return 1
    name_i, time_i = header.index("Kernel Name"), header.index("gpu__time_duration.sum")
    unit = "ns"
    total, count = defaultdict(float), defaultdict(int)
    for r in rows:
        if r is header or len(r) <= time_i:
            continue
        v = r[time_i].replace(",", "")
        try:
            t = float(v)
        except ValueError:
            unit = v or unit  # the units row
            continue
        name = r[name_i].split("(")[0].split("<")[0]
        total[name] += t
        count[name] += 1
    scale = {"ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "nsecond": 1e-6}.get(unit, 1e-6)
    grand = sum(total.values())
    print(f"{sum(count.values())} kernel launches, {grand * scale:.1f} ms of GPU time in all\n")
    print("| kernel | launches | ms | share |")
    print("|---|---|---|---|")
    for name, t in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| `{name[:70]}` | {count[name]} | {t * scale:.2f} | {t / grand:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
