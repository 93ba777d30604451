#!/usr/bin/env python3
"""Reference check of octconv against PyTorch (optional; `cargo test` does not need it).

For `split → octconv → merge` specs at α ∈ {.25, .5, .75} and strides 1 and 2, this script
  1. writes the spec, runs `octconv init` (seeded weights) and `octconv run` on a random input,
  2. loads the same weights into an independent PyTorch OctConv written after the paper's code
     (avg-pool 2×2 for H→L and for stride 2, nearest upsampling for L→H),
  3. prints the max abs difference of the outputs (must be ≤ 1e-4).

Usage: python3 bench/torch_reference.py [path/to/octconv binary]   (default target/release/octconv)
Needs: pip install torch safetensors numpy
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/octconv"


def octconv_torch(xh, xl, w, stride, k):
    """The paper's OctConv (Chen et al. 2019, official code's structure)."""
    pad = k // 2
    if stride == 2:
        xh = F.avg_pool2d(xh, 2) if xh is not None else None
    yh = yl = None
    if xh is not None:
        if "hh" in w:
            yh = F.conv2d(xh, w["hh"], padding=pad)
        if "hl" in w:
            yl = F.conv2d(F.avg_pool2d(xh, 2), w["hl"], padding=pad)
    if xl is not None:
        if "lh" in w:
            t = F.conv2d(xl, w["lh"], padding=pad)
            t = t if stride == 2 else F.interpolate(t, scale_factor=2, mode="nearest")
            yh = t if yh is None else yh + t
        if "ll" in w:
            x = F.avg_pool2d(xl, 2) if stride == 2 else xl
            t = F.conv2d(x, w["ll"], padding=pad)
            yl = t if yl is None else yl + t
    return yh, yl


def check(alpha, stride, c_in=32, c_out=48, hw=16, k=3, seed=5):
    spec = (
        f"model m() {{ input [{c_in}, {hw}, {hw}]; split(alpha = {alpha}); "
        f"octconv({c_out}, kernel = {k}, stride = {stride}) as conv; merge(); }}\n"
    )
    with tempfile.TemporaryDirectory() as d:
        p = lambda n: os.path.join(d, n)
        open(p("m.oct"), "w").write(spec)
        subprocess.run([BIN, "init", p("m.oct"), "--seed", str(seed), "--out", p("w.st")], check=True, capture_output=True)
        x = np.random.default_rng(seed).standard_normal((4, c_in, hw, hw)).astype(np.float32)
        save_file({"input": x}, p("x.st"))
        subprocess.run([BIN, "run", p("m.oct"), "--weights", p("w.st"), "--input", p("x.st"), "--output", p("y.st")],
                       check=True, capture_output=True)
        ours = load_file(p("y.st"))["output"]
        weights = {k.split(".")[1]: torch.from_numpy(v) for k, v in load_file(p("w.st")).items()}
    # split: the last int(alpha * C) channels, average-pooled, are the low branch.
    xt = torch.from_numpy(x)
    low = int(alpha * c_in)
    xh, xl = xt[:, : c_in - low], F.avg_pool2d(xt[:, c_in - low:], 2)
    yh, yl = octconv_torch(xh, xl, weights, stride, k)
    ref = torch.cat([yh, F.interpolate(yl, scale_factor=2, mode="nearest")], 1).numpy()
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max()), float(np.abs(ref).max())


def main():
    torch.set_num_threads(2)
    worst = 0.0
    print("| α | stride | max abs error | max abs output |")
    print("|---|---|---|---|")
    for alpha in (0.25, 0.5, 0.75):
        for stride in (1, 2):
            err, scale = check(alpha, stride)
            worst = max(worst, err)
            print(f"| {alpha} | {stride} | {err:.3e} | {scale:.3f} |")
    print(f"worst max abs error: {worst:.3e} (limit 1e-4)")
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
