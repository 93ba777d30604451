#!/usr/bin/env python3
"""Numerical check of `octconv import`: torchvision models (and optionally octconv.pytorch's
`oct_resnet50`) with random weights, imported and run by octconv on the same input as PyTorch.

For each model: random weights (`weights=None`, `torch.manual_seed`), BN affine parameters and
running statistics randomised, eval mode; its state dict saved with `torch.save` (.pth); then
`octconv import SPEC --from model.pth -o weights.safetensors` and `octconv run SPEC --weights …
--input x.safetensors` (the tensor `input`, already normalised: `run` does not normalise) and the
logits compared: max |Δ| and max |Δ| / max |logit|, and whether each image's top class agrees.

By default our octave convolutions with stride 2 pool 2×2 and then convolve with stride 1 (the
OctConv paper's rule), also at α = 0, where torchvision convolves with stride 2; `octconv import`
refuses such a model, and the ResNet, ResNeXt and MobileNet v2 specs here are built with
`strided = true`, whose stride-2 layers convolve with stride 2 as torchvision's do (see
docs/import.md). The default run compares each as torchvision builds it.

Usage: python bench/check_import.py [--models resnet50,resnext50_32x4d,mobilenet_v2,densenet121]
       [--batch 2] [--threads 2] [--pool-rule] [--octconv-pytorch DIR]
  --pool-rule: also runs the same imported weights in the pooling-rule model (the spec without
  `strided = true`) against torchvision as built and against torchvision with each of its stride-2
  convolutions that maps onto one of our octave convolutions rewritten as AvgPool2d(2) → the same
  convolution at stride 1: the size of the difference the option removes, and (the second row) the
  import checked independently of the stride-2 geometry.
  --octconv-pytorch DIR: a checkout of github.com/d-li14/octconv.pytorch; adds oct_resnet50 (α = 0.5)
  imported with --map octconv-pytorch (its stride 2 pools as ours does by default: one comparison).
Needs: pip install torch torchvision safetensors; `cargo build --release` first.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OCTCONV_BIN = os.path.join(ROOT, "target/release/octconv")

# torchvision constructor → (our spec, names of stride-2 convolutions that are plain strided
# convolutions in ours whatever the option: the 7×7 stems are our `conv` layers).
MODELS = {
    "resnet50": ("resnet(depth = 50, alpha = 0, strided = true)", {"conv1"}),
    "resnext50_32x4d": (
        "resnext(depth = 50, groups = 32, width = 4, alpha = 0, strided = true)", {"conv1"}),
    "mobilenet_v2": ("mobilenet_v2(width = 1.0, alpha = 0, strided = true)", set()),
    "densenet121": ("densenet(depth = 121, growth = 32, alpha = 0)", {"features.conv0"}),
}

# The option that makes our stride-2 octave convolutions convolve with stride 2.
STRIDED = ", strided = true"


def randomise_bn(model, gen):
    """BN weight, bias and running statistics drawn at random (eval mode then uses them)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=gen) + 0.5
            m.bias.data = torch.randn(c, generator=gen) * 0.1
            m.running_mean = torch.randn(c, generator=gen) * 0.1
            m.running_var = torch.rand(c, generator=gen) + 0.5


def pool_strides(model, keep):
    """Rewrites each stride-2 Conv2d not named in `keep` as AvgPool2d(2) → the conv at stride 1."""
    targets = [(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and m.stride == (2, 2) and n not in keep]
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv.stride = (1, 1)
        setattr(parent, child, nn.Sequential(nn.AvgPool2d(2, 2), conv))
    return len(targets)


def octconv(*args):
    """Runs the CLI; exits with its output on failure."""
    r = subprocess.run([OCTCONV_BIN, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"octconv {' '.join(args)} failed:\n{r.stderr}")
    return r.stderr


def ours(spec, state, x, work, mapping, also=()):
    """Imports `state` (saved as .pth) onto `spec` and runs it on `x`; returns the logits, and those
    of each spec in `also` run on the same imported weights."""
    pth, weights = os.path.join(work, "model.pth"), os.path.join(work, "weights.safetensors")
    inp, out = os.path.join(work, "x.safetensors"), os.path.join(work, "y.safetensors")
    torch.save(state, pth)
    save_file({"input": x.contiguous()}, inp)
    octconv("import", spec, "--from", pth, "--map", mapping, "-o", weights, "--force")
    logits = []
    for s in (spec, *also):
        octconv("run", s, "--weights", weights, "--input", inp, "--output", out, "--force")
        logits.append(load_file(out)["output"])
    return logits


def compare(name, reference, y):
    """One table row: max |Δ|, relative to max |logit|, top-1 agreement."""
    diff = (reference - y).abs().max().item()
    scale = reference.abs().max().item()
    agree = (reference.argmax(1) == y.argmax(1)).sum().item()
    print(f"| {name} | {diff:.3g} | {diff / scale:.3g} | {scale:.3g} | {agree}/{len(y)} |", flush=True)


def check_torchvision(name, batch, work, pool_rule):
    spec, keep = MODELS[name]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = getattr(torchvision.models, name)(weights=None)
    randomise_bn(model, gen)
    model.eval()
    x = torch.randn(batch, 3, 224, 224, generator=gen)
    pooling = spec.replace(STRIDED, "")
    also = (pooling,) if pool_rule and pooling != spec else ()
    y, *y_pool = ours(spec, model.state_dict(), x, work, "torchvision", also)
    with torch.no_grad():
        compare(f"{name} → `{spec}`, torchvision as built", model(x), y)
        if y_pool:
            compare(f"{name}, same weights in `{pooling}` (pooling rule), torchvision as built",
                    model(x), y_pool[0])
            rewritten = pool_strides(model, keep)
            compare(f"{name}, `{pooling}` vs torchvision with its {rewritten} stride-2 convs as "
                    "pool → stride 1", model(x), y_pool[0])


def check_oct_resnet(repo, batch, work):
    sys.path.insert(0, repo)
    from oct_resnet import oct_resnet50  # noqa: E402  (github.com/d-li14/octconv.pytorch)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = oct_resnet50()
    randomise_bn(model, gen)
    model.eval()
    x = torch.randn(batch, 3, 224, 224, generator=gen)
    spec = "resnet(depth = 50, alpha = 0.5)"
    (y,) = ours(spec, model.state_dict(), x, work, "octconv-pytorch")
    with torch.no_grad():
        compare(f"octconv.pytorch oct_resnet50 → `{spec}`", model(x), y)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pool-rule", action="store_true",
                   help="also run the imported weights in the pooling-rule model (see above)")
    p.add_argument("--octconv-pytorch", default=None, metavar="DIR")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    print(f"# octconv import vs PyTorch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"batch {args.batch}, 224×224, random weights and BN statistics, eval mode\n")
    print("| model | max abs diff | / max abs logit | max abs logit | same top-1 |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for name in filter(None, args.models.split(",")):
            check_torchvision(name, args.batch, work, args.pool_rule)
        if args.octconv_pytorch:
            check_oct_resnet(args.octconv_pytorch, args.batch, work)


if __name__ == "__main__":
    main()
