#!/usr/bin/env python3
"""Writes tests/fixtures/torchvision/outputs.json: the logits torchvision's resnet50,
resnext50_32x4d, mobilenet_v2 and densenet121 give on one input when every tensor of their state
dicts is filled from a formula, so that `tests/import_numerics.rs` can rebuild the same weights in
Rust from the committed key lists (tests/fixtures/torchvision/<model>.txt), import them with
`octconv import --map torchvision`, run them and compare, with no torchvision in CI.

The formula (version 1; tests/import_numerics.rs implements the same one):

  h  = FNV-1a 64-bit hash of the tensor's name (UTF-8 bytes; offset basis 0xcbf29ce484222325,
       prime 0x100000001b3, wrapping 64-bit arithmetic)
  element i (row-major, from 0):
       k = (h + i * 2654435761) mod 2^32        (u64 wrapping arithmetic gives the same k)
       u = k / 2^32 - 0.5                       (f64, exact; u in [-0.5, 0.5))
  value, computed in f64 and then rounded to f32:
       `*.weight` of rank >= 2 (conv, linear)   u * s,  s = 2 * sqrt(3 / fan_in),
                                                fan_in = product of the dims after the first
                                                (uniform with variance 1 / fan_in)
       `*.weight` of rank 1 (batch norm)        1 + 0.2 * u
       `*.bias` (batch norm, linear)            0.1 * u
       `*.running_mean`                         0.1 * u
       `*.running_var`                          1 + 0.5 * (u + 0.5)
       `*.num_batches_tracked`                  left as torch has it (0, int64)
  input: one image [1, 3, 224, 224], the name `input`, value u * 2.

Each model is put in eval mode and run in float32 on the CPU. The JSON holds, per model, the
1000 logits as the shortest decimal strings that round-trip their f32 values, and under `probes`
a few formula values (the hash and the bits of the first f32 values of some tensors) for the Rust
test to check that both implementations give bit-identical weights.

The script also checks that each state dict has exactly the names and shapes of the committed key
list, since the Rust side builds its tensors from that list.

Usage: python bench/make_import_outputs.py [--out tests/fixtures/torchvision/outputs.json]
Needs: pip install torch torchvision numpy (no weights are downloaded: weights=None).
"""
import argparse
import json
import math
import os

import numpy as np
import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "torchvision")
FORMULA_VERSION = 1
MODELS = ["resnet50", "resnext50_32x4d", "mobilenet_v2", "densenet121"]
STEP = 2654435761
MASK64 = (1 << 64) - 1


def fnv1a64(name):
    """FNV-1a, 64 bits, of the name's UTF-8 bytes."""
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def uniform(name, n):
    """u for elements 0..n of the tensor `name`, as f64."""
    i = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        k = (np.uint64(fnv1a64(name)) + i * np.uint64(STEP)) & np.uint64(0xFFFFFFFF)
    return k.astype(np.float64) / 2.0**32 - 0.5


def formula(name, shape):
    """The f32 values of the tensor `name` of `shape` (see the module docstring)."""
    n = math.prod(shape)
    u = uniform(name, n)
    if name.endswith(".weight") and len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        v = u * (2.0 * math.sqrt(3.0 / fan_in))
    elif name.endswith(".weight") and len(shape) == 1:
        v = 1.0 + 0.2 * u
    elif name.endswith(".bias") or name.endswith(".running_mean"):
        v = 0.1 * u
    elif name.endswith(".running_var"):
        v = 1.0 + 0.5 * (u + 0.5)
    else:
        raise ValueError(f"no formula for `{name}` {list(shape)}")
    return v.astype(np.float32).reshape(shape)


def formula_input():
    return (uniform("input", 3 * 224 * 224) * 2.0).astype(np.float32).reshape(1, 3, 224, 224)


def fixture_keys(name):
    """(name, shape) of the committed key list, in order."""
    out = []
    with open(os.path.join(FIXTURES, f"{name}.txt")) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, dims = line.split(" ")
            out.append((key, () if dims == "-" else tuple(int(d) for d in dims.split(","))))
    return out


def f32_str(x):
    """The shortest decimal that round-trips the f32 `x`."""
    assert math.isfinite(x)
    return np.format_float_positional(np.float32(x), unique=True, trim="-") \
        if 1e-4 <= abs(x) < 1e7 or x == 0 else \
        np.format_float_scientific(np.float32(x), unique=True, trim="-")


def bits(x):
    return "0x%08x" % int(np.float32(x).view(np.uint32))


def run_model(name):
    model = getattr(torchvision.models, name)(weights=None)
    state = model.state_dict()
    listed = fixture_keys(name)
    got = [(k, tuple(t.shape)) for k, t in state.items()]
    if got != listed:
        raise SystemExit(f"{name}: the state dict differs from tests/fixtures/torchvision/{name}.txt;"
                         " rerun bench/torchvision_keys.py")
    filled = {}
    for key, t in state.items():
        if key.endswith("num_batches_tracked"):
            filled[key] = t
        else:
            filled[key] = torch.from_numpy(formula(key, tuple(t.shape)))
    model.load_state_dict(filled)
    model.eval()
    with torch.no_grad():
        y = model(torch.from_numpy(formula_input()))
    assert y.dtype == torch.float32 and tuple(y.shape) == (1, 1000)
    return [float(v) for v in y[0].tolist()]


def probes():
    """Formula values the Rust test checks bit for bit."""
    out = []
    for key, shape in [("conv1.weight", (64, 3, 7, 7)), ("bn1.weight", (64,)),
                       ("bn1.bias", (64,)), ("bn1.running_mean", (64,)),
                       ("bn1.running_var", (64,)), ("fc.weight", (1000, 2048)),
                       ("features.denseblock4.denselayer16.conv2.weight", (32, 128, 3, 3))]:
        v = formula(key, shape).reshape(-1)
        idx = [0, 1, 2, 12345 % v.size, v.size - 1]
        out.append({"name": key, "shape": list(shape), "hash": "0x%016x" % fnv1a64(key),
                    "index": idx, "bits": [bits(v[i]) for i in idx]})
    x = formula_input().reshape(-1)
    idx = [0, 1, 2, 150527]
    out.append({"name": "input", "shape": [1, 3, 224, 224], "hash": "0x%016x" % fnv1a64("input"),
                "index": idx, "bits": [bits(x[i]) for i in idx]})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(FIXTURES, "outputs.json"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Hand-written JSON: one model's logits per line, as short f32 strings.
    lines = ["{",
             f'  "formula_version": {FORMULA_VERSION},',
             f'  "torch": {json.dumps(torch.__version__)},',
             f'  "torchvision": {json.dumps(torchvision.__version__)},',
             f'  "input": [1, 3, 224, 224],',
             '  "probes": [',
             ",\n".join("    " + json.dumps(p) for p in probes()),
             "  ],",
             '  "logits": {']
    rows = []
    for name in MODELS:
        y = run_model(name)
        top = max(range(len(y)), key=lambda i: y[i])
        print(f"{name}: max |logit| {max(abs(v) for v in y):.4g}, argmax {top}", flush=True)
        rows.append(f'    {json.dumps(name)}: [' + ", ".join(f32_str(v) for v in y) + "]")
    lines += [",\n".join(rows), "  }", "}"]
    text = "\n".join(lines) + "\n"
    data = json.loads(text)
    for name in MODELS:  # the strings round-trip the f32 logits
        assert len(data["logits"][name]) == 1000
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
