#!/usr/bin/env python3
"""Writes the state-dict keys and shapes of torchvision's ImageNet models to
tests/fixtures/torchvision/<model>.txt, the fixtures `tests/import.rs` checks `octconv import
--map torchvision`'s name rules against (no Python needed there).

Each line is `<key> <d0>,<d1>,…` (`-` for a 0-d tensor); `#` lines are comments. The models are
built with `weights=None` (nothing is downloaded): only names and shapes matter.

With --octconv-pytorch DIR (a checkout of github.com/d-li14/octconv.pytorch) it also writes
tests/fixtures/octconv_pytorch/oct_resnet50.txt, for `--map octconv-pytorch`.

Usage: python bench/torchvision_keys.py [--out tests/fixtures/torchvision] [--octconv-pytorch DIR]
Needs: pip install torch torchvision.
"""
import argparse
import os
import sys

import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["resnet50", "resnext50_32x4d", "mobilenet_v2", "densenet121"]


def write_keys(name, out_dir, model=None, origin=None):
    """Writes one model's keys and shapes; returns the number of keys and the file."""
    if model is None:
        model = getattr(torchvision.models, name)(weights=None)
        origin = f"torchvision {torchvision.__version__} models.{name}(weights=None)"
    state = model.state_dict()
    path = os.path.join(out_dir, f"{name}.txt")
    with open(path, "w") as f:
        f.write(f"# {origin}.state_dict()\n")
        for key, t in state.items():
            shape = ",".join(str(d) for d in t.shape) or "-"
            f.write(f"{key} {shape}\n")
    return len(state), path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "tests/fixtures/torchvision"))
    p.add_argument("--octconv-pytorch", default=None, metavar="DIR")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    for name in MODELS:
        n, path = write_keys(name, args.out)
        print(f"{n} keys -> {os.path.relpath(path, ROOT)}")
    if args.octconv_pytorch:
        sys.path.insert(0, args.octconv_pytorch)
        from oct_resnet import oct_resnet50  # noqa: E402  (github.com/d-li14/octconv.pytorch)
        out = os.path.join(ROOT, "tests/fixtures/octconv_pytorch")
        os.makedirs(out, exist_ok=True)
        origin = "github.com/d-li14/octconv.pytorch oct_resnet50()"
        n, path = write_keys("oct_resnet50", out, oct_resnet50(), origin)
        print(f"{n} keys -> {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
