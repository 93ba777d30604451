#!/usr/bin/env python3
"""Training steps of the ImageNet builtins against torchvision on the same cores (issue #24's target:
at α = 0 at most torchvision's time for the same network; α = .25 and .5 reported too).

A step is forward in train mode, cross-entropy, backward and an SGD update (momentum 0.9, weight decay
5e-4), batch 8, 224×224, 1000 classes. Ours: `octconv bench SPEC --train --batch 8 --samples 8 --json`
at every α in one call (its median step); torchvision: the same network built by torchvision, its
parameter count checked against ours at α = 0. Rounds alternate (ours, torchvision, ours, …); each
figure is the median over rounds of each side's median. `cargo test` never needs this script.

Usage: python bench/compare_torchvision_train.py [--rounds 2] [--repeats 2] [--threads 2]
       [--models resnext,mobilenet_v2,densenet] [--alphas 0,0.25,0.5]
Needs: pip install torch torchvision numpy; `cargo build --release` first.
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import torch
import torch.nn as nn
import torchvision

from machine import cpu_model, simd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OCTCONV_BIN = os.path.join(ROOT, "target/release/octconv")

MODELS = {
    "resnext": ("resnext(depth = 50, groups = 32, width = 4)", lambda: torchvision.models.resnext50_32x4d()),
    "mobilenet_v2": ("mobilenet_v2(width = 1.0)", lambda: torchvision.models.mobilenet_v2()),
    "densenet": ("densenet(depth = 121, growth = 32)", lambda: torchvision.models.densenet121()),
}


def ours(spec, alphas, repeats, threads):
    """Median step seconds per α and the parameter count per α."""
    cmd = [OCTCONV_BIN, "bench", spec, "--train", "--batch", "8", "--samples", "8",
           "--repeats", str(repeats), "--alphas", ",".join(str(a) for a in alphas),
           "--threads", str(threads), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = json.loads(out.stdout)["rows"]
    return {r["alpha"]: (r["median_s"], r["params"]) for r in rows}


def torch_step_times(model, repeats):
    """Median seconds of a training step (after one untimed step)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(8, 3, 224, 224)
    y = torch.randint(0, 1000, (8,))
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="resnext,mobilenet_v2,densenet")
    ap.add_argument("--alphas", default="0,0.25,0.5")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    alphas = [float(a) for a in args.alphas.split(",")]
    print(f"# octconv vs torchvision {torchvision.__version__} (PyTorch {torch.__version__}), training "
          f"step, batch 8, 224×224, {args.threads} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# machine: {cpu_model()}, {simd()}; medians over {args.rounds} alternating rounds of "
          f"{args.repeats} timed steps each")
    print()
    print("| model | torchvision params | ours params (α = 0) | torchvision s | " +
          " | ".join(f"ours s α = {a}" for a in alphas) + " | " +
          " | ".join(f"ours / torchvision α = {a}" for a in alphas) + " |")
    print("|---" * (4 + 2 * len(alphas)) + "|")
    for name in args.models.split(","):
        spec, build = MODELS[name]
        model = build()
        tv_params = sum(p.numel() for p in model.parameters())
        ours_t = {a: [] for a in alphas}
        ours_p = None
        tv_t = []
        for _ in range(args.rounds):
            res = ours(spec, alphas, args.repeats, args.threads)
            for a in alphas:
                ours_t[a].append(res[a][0])
            ours_p = res[alphas[0]][1]
            tv_t.append(torch_step_times(model, args.repeats))
        tv = statistics.median(tv_t)
        ours_med = {a: statistics.median(ours_t[a]) for a in alphas}
        print(f"| `{spec}` | {tv_params:,} | {ours_p:,} | {tv:.2f} | " +
              " | ".join(f"{ours_med[a]:.2f}" for a in alphas) + " | " +
              " | ".join(f"{ours_med[a] / tv:.2f}" for a in alphas) + " |", flush=True)


if __name__ == "__main__":
    main()
