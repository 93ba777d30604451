#!/usr/bin/env python3
"""`octconv export` checked in ONNX Runtime, and ORT timed against `octconv bench` (optional; `cargo test`
never needs it: the CI parity check of the export runs in tract).

For each model and α ∈ {0, .25, .5, .75}:
  parity  `octconv init --seed 1` weights; one seeded input batch; `octconv run` against ORT on three
          exports of the same weights: plain (`Resize` upsampling), `--fold-bn`, and `--upsample expand`
          (reshape → Expand → reshape). Error: largest absolute difference / largest |octconv output|.
  timing  inference on a batch, alternating (ours, ORT plain, ORT folded, ORT expand, ours, …):
          ours is `octconv bench --json` (median of its repeats); ORT is the median of `repeats` session
          runs after one warm-up. Every figure is the median over rounds.

Usage: bench/onnxruntime_check.sh [--rounds 3] [--repeats 5] [--threads 2] [--batch N] [--models resnext,…]
       [--alphas 0,0.25,0.5,0.75] [--variants plain,folded,expand]
Needs: pip install onnxruntime numpy.
"""
import argparse
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from families import FAMILIES, MODELS
from machine import cpu_model, simd

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OCTCONV = os.path.join(ROOT, "target/release/octconv")


def octconv(*args):
    return subprocess.run([OCTCONV, *args], check=True, capture_output=True, text=True)


def write_safetensors(path, name, array):
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    header = json.dumps({name: {"dtype": "F32", "shape": list(array.shape), "data_offsets": [0, len(data)]}})
    header = header.encode() + b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data)


def read_safetensors(path, name):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + n])[name]
    start, end = meta["data_offsets"]
    return np.frombuffer(raw[8 + n + start : 8 + n + end], dtype="<f4").reshape(meta["shape"])


def session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ort_median(sess, x, repeats):
    sess.run(None, {"input": x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ours_median(call, alpha, batch, repeats, threads):
    out = octconv("bench", call, "--alphas", str(alpha), "--batch", str(batch), "--samples", str(batch),
                  "--repeats", str(repeats), "--json", "--threads", str(threads))
    return json.loads(out.stdout)["rows"][0]["median_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None, help="default: each model's own (MODELS)")
    ap.add_argument("--models", default=FAMILIES)
    ap.add_argument("--alphas", default="0,0.25,0.5,0.75")
    ap.add_argument("--variants", default="plain,folded,expand",
                    help="ORT exports to time: plain (Resize), folded (--fold-bn), expand")
    args = ap.parse_args()
    print(f"# octconv export vs ONNX Runtime {ort.__version__}, {args.threads} threads, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# machine: {cpu_model()} ({simd()}), {os.cpu_count()} logical CPUs, {platform.machine()}")
    print(f"# medians over {args.rounds} alternating rounds of {args.repeats} timed runs\n")
    tmp = tempfile.mkdtemp(prefix="octconv-ort-")
    for key in args.models.split(","):
        call, title, batch = MODELS[key]
        batch = args.batch or batch
        wanted = args.variants.split(",")
        print(f"## {title}: `{call}`, batch {batch}\n")
        print("| α | max rel err " + " | ".join(wanted) + " | ours ms | ORT ms " + " | ".join(wanted)
              + " | ours / ORT " + wanted[0] + " | ours / best ORT |")
        print("|---|" + "---|" * (2 * len(wanted) + 3))
        for alpha in [float(a) for a in args.alphas.split(",")]:
            spec = call[:-1] + f", alpha = {alpha})"
            w, xin, yout = (os.path.join(tmp, n) for n in ("w.safetensors", "x.safetensors", "y.safetensors"))
            octconv("init", spec, "--seed", "1", "--out", w, "--force")
            rng = np.random.default_rng(7)
            c, h, wd = json.loads(octconv("check", spec, "--json").stdout)["input"]
            x = rng.uniform(-1, 1, size=[batch, c, h, wd]).astype(np.float32)
            write_safetensors(xin, "input", x)
            octconv("run", spec, "--weights", w, "--input", xin, "--output", yout, "--force")
            want = read_safetensors(yout, "output")
            variants = {"plain": [], "folded": ["--fold-bn"], "expand": ["--upsample", "expand"]}
            variants = {k: variants[k] for k in wanted}
            sessions, errs, sizes = {}, {}, {}
            for name, extra in variants.items():
                path = os.path.join(tmp, f"{key}-{alpha}-{name}.onnx")
                octconv("export", spec, "--weights", w, "-o", path, "--batch", str(batch), "--force", *extra)
                sizes[name] = os.path.getsize(path) / 2**20
                sessions[name] = session(path, args.threads)
                got = sessions[name].run(None, {"input": x})[0]
                errs[name] = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
            times = {"ours": [], **{n: [] for n in variants}}
            for _ in range(args.rounds):
                times["ours"].append(ours_median(spec, alpha, batch, args.repeats, args.threads))
                for name in variants:
                    times[name].append(ort_median(sessions[name], x, args.repeats))
            med = {k: statistics.median(v) * 1000 for k, v in times.items()}
            best = min(med[n] for n in variants)
            print(f"| {alpha} | " + " | ".join(f"{errs[n]:.1e}" for n in variants) + f" | {med['ours']:.1f} | "
                  + " | ".join(f"{med[n]:.1f}" for n in variants)
                  + f" | {med['ours'] / med[wanted[0]]:.2f} | {med['ours'] / best:.2f} |", flush=True)
        print()


if __name__ == "__main__":
    sys.exit(main())
