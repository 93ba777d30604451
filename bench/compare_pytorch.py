#!/usr/bin/env python3
"""Side-by-side CPU timing of octconv and PyTorch on the same cores (optional; `cargo test` never needs it).

Two comparisons, each at α ∈ {0, .25, .5, .75}, forward and forward + backward:
  layer   one OctConv layer (batch 32, c_in = c_out = 160, 32×32, 3×3, stride 1), high/low pair in and out;
          ours: `target/release/examples/layer_bench`, PyTorch: the paper's four-path OctConv below.
  wrn     WRN-16-4 (`wrn(n = 2, k = 4, alpha = α)`, batch 32): ours: `octconv bench --json`,
          PyTorch: the same architecture written out below (conv3x3 stem, 3 stages of 2 pre-activation
          blocks, merge-then-pool head), images/s for inference and for a training step (SGD).
  wrn28   WRN-28-10 (`wrn(n = 4, k = 10, alpha = α)`, batch 128), inference only: the seed's CPU table.
  memory  peak heap memory of one WRN-16-4 training step (batch 32): ours: `octconv bench --train`'s
          peak (heap growth of the step plus kernel scratch); PyTorch: the heap growth's high-water
          mark during one step (after two untimed ones), counted by bench/heap_shim.c (LD_PRELOAD,
          built here with `cc`): live heap bytes, as our counting allocator counts them. PyTorch's
          step includes opt.step() (its momentum buffers exist from the untimed steps); ours
          measures up to the gradients, since our SGD update is in place; our scratch part is the
          largest kernel task's working memory times the threads, not a measured figure.
Runs alternate (ours, PyTorch, ours, PyTorch, …) so that both see the same machine state; every
figure is the median over rounds of each side's median. Prints a Markdown table and our/PyTorch ratios.

Usage: bench/compare_pytorch.sh [--rounds 3] [--threads 2] [--only layer|wrn|wrn28|memory]
(`wrn28` is not in the default set: one round takes minutes; ask for it with --only wrn28.)
Needs: pip install torch numpy (CPU is enough).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from machine import cpu_model

ALPHAS = [0.0, 0.25, 0.5, 0.75]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER_BIN = os.path.join(ROOT, "target/release/examples/layer_bench")
OCTCONV_BIN = os.path.join(ROOT, "target/release/octconv")


def split(c, alpha):
    """octconv's channel split: low = int(α·c), high = c − low."""
    low = int(alpha * c)
    return c - low, low


class OctConv(nn.Module):
    """The paper's OctConv (official code's structure): H→L pools X_H 2×2, L→H upsamples ×2 (nearest)."""

    def __init__(self, c_in, c_out, alpha_in, alpha_out, k=3, stride=1):
        super().__init__()
        hi_in, lo_in = split(c_in, alpha_in)
        hi_out, lo_out = split(c_out, alpha_out)
        self.stride, self.pad = stride, k // 2
        mk = lambda i, o: nn.Conv2d(i, o, k, padding=k // 2, bias=False) if i and o else None
        self.hh, self.hl = mk(hi_in, hi_out), mk(hi_in, lo_out)
        self.lh, self.ll = mk(lo_in, hi_out), mk(lo_in, lo_out)

    def forward(self, xh, xl):
        if self.stride == 2:
            xh = F.avg_pool2d(xh, 2)
        yh = self.hh(xh) if self.hh is not None else None
        yl = self.hl(F.avg_pool2d(xh, 2)) if self.hl is not None else None
        if xl is not None:
            if self.lh is not None:
                t = self.lh(xl)
                t = t if self.stride == 2 else F.interpolate(t, scale_factor=2, mode="nearest")
                yh = t if yh is None else yh + t
            if self.ll is not None:
                t = self.ll(F.avg_pool2d(xl, 2) if self.stride == 2 else xl)
                yl = t if yl is None else yl + t
        return yh, yl


class OctBNReLU(nn.Module):
    def __init__(self, c, alpha, relu=True):
        super().__init__()
        hi, lo = split(c, alpha)
        self.bh = nn.BatchNorm2d(hi)
        self.bl = nn.BatchNorm2d(lo) if lo else None
        self.relu = relu

    def forward(self, xh, xl):
        f = F.relu if self.relu else (lambda t: t)
        return f(self.bh(xh)), (f(self.bl(xl)) if xl is not None else None)


class Block(nn.Module):
    """Pre-activation wide-ResNet block: BN-ReLU-conv3×3-BN-ReLU-conv3×3 + shortcut (1×1 when shapes change)."""

    def __init__(self, c_in, c_out, stride, alpha):
        super().__init__()
        self.bn1 = OctBNReLU(c_in, alpha)
        self.conv1 = OctConv(c_in, c_out, alpha, alpha, 3, stride)
        self.bn2 = OctBNReLU(c_out, alpha)
        self.conv2 = OctConv(c_out, c_out, alpha, alpha, 3, 1)
        self.proj = OctConv(c_in, c_out, alpha, alpha, 1, stride) if (c_in != c_out or stride != 1) else None

    def forward(self, xh, xl):
        oh, ol = self.bn1(xh, xl)
        sh, sl = (xh, xl) if self.proj is None else self.proj(xh, xl)
        h, l = self.conv2(*self.bn2(*self.conv1(oh, ol)))
        return h + sh, (l + sl if l is not None else None)


class OctWRN(nn.Module):
    """WRN-(6n+4)-k with OctConv as in specs/wrn.oct: OctConv stem (α_in = 0), merge-then-pool head."""

    def __init__(self, n=2, k=4, alpha=0.25, classes=10):
        super().__init__()
        self.alpha = alpha
        self.stem = OctConv(3, 16, 0.0, alpha)
        widths = [16, 16 * k, 32 * k, 64 * k]
        blocks = []
        for s in range(3):
            for i in range(n):
                blocks.append(Block(widths[s] if i == 0 else widths[s + 1], widths[s + 1], 2 if (s > 0 and i == 0) else 1, alpha))
        self.blocks = nn.ModuleList(blocks)
        self.bn = OctBNReLU(widths[3], alpha)
        self.fc = nn.Linear(widths[3], classes)

    def forward(self, x):
        xh, xl = self.stem(x, None)
        for b in self.blocks:
            xh, xl = b(xh, xl)
        xh, xl = self.bn(xh, xl)
        if xl is not None:
            xh = torch.cat([xh, F.interpolate(xl, scale_factor=2, mode="nearest")], 1)
        return self.fc(F.adaptive_avg_pool2d(xh, 1).flatten(1))


def params(alpha):
    return sum(p.numel() for p in OctWRN(2, 4, alpha).parameters())


def timed(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def torch_layer(alpha, train, repeats, batch=32, c=160, size=32):
    torch.manual_seed(0)
    layer = OctConv(c, c, alpha, alpha)
    hi, lo = split(c, alpha)
    xh = torch.randn(batch, hi, size, size, requires_grad=train)
    xl = torch.randn(batch, lo, size // 2, size // 2, requires_grad=train) if lo else None

    def step():
        if train:
            yh, yl = layer(xh, xl)
            loss = yh.sum() + (yl.sum() if yl is not None else 0)
            loss.backward()
        else:
            with torch.no_grad():
                layer(xh, xl)

    return timed(step, repeats)


def ours_layer(alpha, train, repeats, threads):
    cmd = [LAYER_BIN, "--alphas", str(alpha), "--repeats", str(repeats), "--json"] + (["--train"] if train else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "RAYON_NUM_THREADS": str(threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def torch_wrn(alpha, train, repeats, batch=32, n=2, k=4):
    torch.manual_seed(0)
    net = OctWRN(n, k, alpha)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if train:
        net.train()

        def step():
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    else:
        net.eval()

        def step():
            with torch.no_grad():
                net(x)

    return timed(step, repeats)


def ours_wrn(alpha, train, repeats, threads, batch=32, n=2, k=4):
    cmd = [OCTCONV_BIN, "bench", f"wrn(n = {n}, k = {k})", "--alphas", str(alpha), "--batch", str(batch),
           "--samples", str(batch), "--repeats", str(repeats), "--json", "--threads", str(threads)]
    if train:
        cmd.append("--train")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["rows"][0]["median_s"]


def torch_wrn_peak_child(alpha, threads, batch=32, n=2, k=4):
    """In a process started with the heap shim preloaded: prints the step's peak heap growth."""
    import ctypes
    torch.set_num_threads(threads)
    lib = ctypes.CDLL(None)
    lib.heap_shim_peak.restype = ctypes.c_long
    lib.heap_shim_current.restype = ctypes.c_long
    torch.manual_seed(0)
    net = OctWRN(n, k, alpha)
    net.train()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    step()
    step()
    base = lib.heap_shim_current()
    lib.heap_shim_reset_peak()
    step()
    print(lib.heap_shim_peak() - base)


def torch_wrn_peak(alpha, threads):
    shim = os.path.join(ROOT, "target", "heap_shim.so")
    src = os.path.join(ROOT, "bench", "heap_shim.c")
    if not os.path.exists(shim) or os.path.getmtime(shim) < os.path.getmtime(src):
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", shim, src], check=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--peak-child", str(alpha), "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "LD_PRELOAD": shim})
    return int(out.stdout.strip().splitlines()[-1])


def ours_wrn_peak(alpha, threads, batch=32, n=2, k=4):
    cmd = [OCTCONV_BIN, "bench", f"wrn(n = {n}, k = {k})", "--alphas", str(alpha), "--batch", str(batch),
           "--samples", str(batch), "--repeats", "1", "--json", "--threads", str(threads), "--train"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["rows"][0]["peak_bytes"]


def memory_table(threads):
    print("## Peak memory of one WRN-16-4 training step (wrn(n = 2, k = 4)), batch 32\n")
    print("| α | octconv MiB | PyTorch MiB | octconv / PyTorch |")
    print("|---|---|---|---|")
    for alpha in ALPHAS:
        o, t = ours_wrn_peak(alpha, threads), torch_wrn_peak(alpha, threads)
        print(f"| {alpha} | {o / 2**20:.1f} | {t / 2**20:.1f} | {o / t:.2f} |", flush=True)
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["layer", "wrn", "wrn28", "memory"])
    ap.add_argument("--peak-child", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak_child is not None:
        return torch_wrn_peak_child(args.peak_child, args.threads)
    torch.set_num_threads(args.threads)
    print(f"# octconv vs PyTorch {torch.__version__}, {args.threads} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, {cpu_model()}")
    print(f"# medians over {args.rounds} alternating rounds of {args.repeats} timed runs each\n")
    wrn28 = dict(batch=128, n=4, k=10)
    suites = [
        ("layer", "OctConv layer, batch 32, 160→160 ch, 32×32, 3×3", ours_layer, torch_layer, (False, True)),
        ("wrn", "WRN-16-4 (wrn(n = 2, k = 4)), batch 32", ours_wrn, torch_wrn, (False, True)),
        ("wrn28", "WRN-28-10 (wrn(n = 4, k = 10)), batch 128",
         lambda a, t, r, th: ours_wrn(a, t, r, th, **wrn28), lambda a, t, r: torch_wrn(a, t, r, **wrn28), (False,)),
    ]
    for name, title, ours, theirs, modes in suites:
        if (args.only or "") != name and not (args.only is None and name != "wrn28"):
            continue
        print(f"## {title}\n")
        print("| α | FLOPs theory | mode | octconv ms | PyTorch ms | octconv / PyTorch | octconv vs α=0 | PyTorch vs α=0 |")
        print("|---|---|---|---|---|---|---|---|")
        base = {}
        for train in modes:
            for alpha in ALPHAS:
                o, t = [], []
                for _ in range(args.rounds):
                    o.append(ours(alpha, train, args.repeats, args.threads))
                    t.append(theirs(alpha, train, args.repeats))
                om, tm = statistics.median(o), statistics.median(t)
                b = base.setdefault(train, (om, tm))
                theory = 1 - 0.75 * alpha * (2 - alpha)
                mode = "fwd+bwd" if train else "fwd"
                if name.startswith("wrn"):
                    mode = "train step" if train else "inference"
                print(f"| {alpha} | {theory:.0%} | {mode} | {om * 1e3:.1f} | {tm * 1e3:.1f} | {om / tm:.2f} | {om / b[0]:.0%} | {tm / b[1]:.0%} |", flush=True)
        print()
    if args.only in (None, "memory"):
        memory_table(args.threads)


if __name__ == "__main__":
    sys.exit(main())
