#!/usr/bin/env python3
"""Summarises the head experiment (docs/reproduction/head-mix/run.sh) from the runs' metrics.jsonl.

Per network: final and best test accuracy (mean ± half the range over seeds), the largest drop in
training accuracy between consecutive epochs (the seed's symptom), training wall time per run.
Usage: docs/reproduction/head-mix/summarize.py [RUN_ROOT]  (default runs/head-mix); prints Markdown.
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "runs/head-mix"
nets = [
    ("mix", "`seed_wrn(n = 2, k = 2, alpha = 0.25, mix = true)`: the seed's mixing head"),
    ("branch", "`seed_wrn(n = 2, k = 2, alpha = 0.25, mix = false)`: per-branch pooling"),
    ("plain", "`seed_wrn(n = 2, k = 2, alpha = 0)`: the plain baseline"),
]


def runs(net):
    out = []
    for seed in (1, 2):
        path = os.path.join(root, f"{net}-seed{seed}", "metrics.jsonl")
        if os.path.exists(path):
            recs = [json.loads(l) for l in open(path) if l.strip()]
            out.append((seed, recs))
    return out


def pm(values):
    mean = sum(values) / len(values)
    half = (max(values) - min(values)) / 2
    return f"{100 * mean:.2f} ± {100 * half:.2f} %"


print("| network | seeds | epochs | final test acc | best test acc | largest train-acc drop between epochs | final train acc | minutes per run |")
print("|---|---|---|---|---|---|---|---|")
for net, title in nets:
    rs = runs(net)
    if not rs:
        continue
    finals = [r[-1]["test_acc"] for _, r in rs]
    bests = [max(x["test_acc"] for x in r) for _, r in rs]
    drops = []
    for _, r in rs:
        d = [r[i - 1]["train_acc"] - r[i]["train_acc"] for i in range(1, len(r))]
        drops.append(max(d + [0.0]))
    train_final = [r[-1]["train_acc"] for _, r in rs]
    minutes = [sum(x["seconds"] for x in r) / 60 for _, r in rs]
    epochs = "/".join(str(len(r)) for _, r in rs)
    print(f"| {title} | {', '.join(str(s) for s, _ in rs)} | {epochs} | {pm(finals)} | {pm(bests)} | "
          f"{', '.join(f'{100 * d:.2f} pt' for d in drops)} | {pm(train_final)} | "
          f"{', '.join(f'{m:.1f}' for m in minutes)} |")

print()
print("Per epoch, test accuracy (train accuracy):")
print()
header = None
for net, _ in nets:
    for seed, r in runs(net):
        if header is None:
            header = "| run | " + " | ".join(str(x["epoch"]) for x in r) + " |"
            print(header)
            print("|---|" + "---|" * len(r))
        cells = " | ".join(f"{100 * x['test_acc']:.1f} ({100 * x['train_acc']:.1f})" for x in r)
        print(f"| {net}, seed {seed} | {cells} |")
