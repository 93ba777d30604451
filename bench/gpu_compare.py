#!/usr/bin/env python3
"""octconv against PyTorch on the same GPU and the same network (optional; `cargo test` never needs it).

WRN-28-10 (`wrn(n = 4, k = 10, alpha = α)`, the seed's GPU table) at α ∈ {0, .25, .5, .75}, batch 128,
inference and training steps (forward in train mode, cross-entropy, backward, SGD with momentum and
weight decay). Ours: `octconv bench --device cuda --json`. PyTorch: the same architecture, written out
in compare_pytorch.py (OctWRN), timed with torch.cuda.synchronize() inside the timed region, as our
bench synchronises. PyTorch runs twice: in strict f32 (TF32 off, the precision candle computes in) and
with its defaults (cuDNN convolutions in TF32 on Hopper).

Rounds alternate (ours, PyTorch, ours, PyTorch, …) so both see the same GPU state; every figure is the
median over rounds of each side's median time per batch. Prints a Markdown table and writes the raw
figures as JSON.

Usage: python3 bench/gpu_compare.py --octconv ./octconv [--rounds 2] [--batch 128] [--json out.json]
       [--spec 'wrn(n = 4, k = 10)'] [--device cuda] (device cpu: a dry run of the script itself)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_pytorch import OctWRN  # noqa: E402  (the one PyTorch WRN of the bench scripts)

ALPHAS = [0.0, 0.25, 0.5, 0.75]
SEED_GPU = [1.00, 1.04, 0.80, 0.57]  # the seed's GPU table, relative time at α = 0 / .25 / .5 / .75


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_time(alpha, train, args, tf32):
    """Median seconds per batch of PyTorch's WRN at `alpha` (`samples` images per repeat)."""
    dev = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = OctWRN(args.n, args.k, alpha).to(dev)
    samples = args.train_samples if train else args.samples
    x = torch.rand(samples, 3, 32, 32, device=dev) * 2 - 1
    y = torch.randint(0, 10, (samples,), device=dev)
    batches = [(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, samples, args.batch)]
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    net.train(train)

    def one_pass():
        for xb, yb in batches:
            if train:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(xb), yb).backward()
                opt.step()
            else:
                with torch.no_grad():
                    net(xb)
        sync(dev)

    one_pass()  # warm-up (and cuDNN's algorithm search)
    times = []
    for _ in range(args.train_repeats if train else args.repeats):
        t = time.perf_counter()
        one_pass()
        times.append((time.perf_counter() - t) / len(batches))
    del net, opt, x, y, batches
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return statistics.median(times)


def ours_time(train, args):
    """Median seconds per batch of `octconv bench` at every α (one process, as users run it)."""
    samples = args.train_samples if train else args.samples
    repeats = args.train_repeats if train else args.repeats
    cmd = [args.octconv, "bench", args.spec, "--device", args.device, "--batch", str(args.batch),
           "--samples", str(samples), "--repeats", str(repeats), "--json",
           "--alphas", ",".join(str(a) for a in ALPHAS)]
    if train:
        cmd.append("--train")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = json.loads(out.stdout)["rows"]
    return {r["alpha"]: r["median_s"] for r in rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--octconv", default="target/release/octconv")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--spec", help="our spec (default: wrn(n = N, k = K))")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--samples", type=int, default=256, help="images per timed inference repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-samples", type=int, default=128, help="images per timed training repeat")
    ap.add_argument("--train-repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default="inference,train")
    ap.add_argument("--json", help="write the raw figures here")
    args = ap.parse_args()
    args.spec = args.spec or f"wrn(n = {args.n}, k = {args.k})"
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"# octconv vs PyTorch {torch.__version__} on {name}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# `{args.spec}` ≙ PyTorch OctWRN(n = {args.n}, k = {args.k}), batch {args.batch}; "
          f"medians over {args.rounds} alternating rounds\n", flush=True)
    raw = {"device": name, "torch": torch.__version__, "spec": args.spec, "batch": args.batch, "modes": {}}
    for mode in args.modes.split(","):
        train = mode == "train"
        ours, strict, tf32 = {a: [] for a in ALPHAS}, {a: [] for a in ALPHAS}, {a: [] for a in ALPHAS}
        for _ in range(args.rounds):
            for a, t in ours_time(train, args).items():
                ours[a].append(t)
            for a in ALPHAS:
                strict[a].append(torch_time(a, train, args, tf32=False))
                tf32[a].append(torch_time(a, train, args, tf32=True))
        med = lambda d: {a: statistics.median(v) for a, v in d.items()}
        o, s, t = med(ours), med(strict), med(tf32)
        raw["modes"][mode] = {"ours": ours, "torch_f32": strict, "torch_tf32": tf32}
        print(f"## {mode} (ms per batch of {args.batch})\n")
        print("| α | octconv | PyTorch f32 | PyTorch TF32 (default) | octconv / PyTorch f32 | octconv / PyTorch TF32 "
              "| octconv vs α=0 | PyTorch f32 vs α=0 | PyTorch TF32 vs α=0 | seed (GPU) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for a, seed in zip(ALPHAS, SEED_GPU):
            print(f"| {a} | {o[a] * 1e3:.1f} | {s[a] * 1e3:.1f} | {t[a] * 1e3:.1f} | {o[a] / s[a]:.2f} | {o[a] / t[a]:.2f} "
                  f"| {o[a] / o[0.0]:.0%} | {s[a] / s[0.0]:.0%} | {t[a] / t[0.0]:.0%} | {seed:.0%} |", flush=True)
        print()
        if args.json:  # after each mode, so a run stopped in the next one keeps this one
            with open(args.json, "w") as f:
                json.dump(raw, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
