#!/usr/bin/env python3
"""Where ONNX Runtime spends its time on our exported graph, node by node (issue #23).

`octconv init` + `octconv export` of a builtin at one α and batch, then ORT (2 intra-op threads, all
graph optimisations, ORT's own profiler) runs it `--runs` times; the first run is dropped and each
node's median is reported, summed per operator type and as the slowest nodes. ORT names a fused node
after the last op it absorbed (`…relu0_nchwc` is a convolution with its batch norm and ReLU in the
NCHWc layout), so a node maps to our layer of the same prefix; compare with `octconv bench SPEC
--batch B --alphas A --profile`.

    python bench/ort_profile.py 'resnext(depth = 50, groups = 32, width = 4)' --batch 8 --alpha 0.75

Needs `pip install onnxruntime numpy` and a release build (`cargo build --release`).
"""
import argparse
import collections
import json
import os
import subprocess
import tempfile

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OCTCONV = os.path.join(ROOT, "target/release/octconv")


def with_alpha(spec, alpha):
    """`f(a = 1)` → `f(a = 1, alpha = A)`; `f()` → `f(alpha = A)`."""
    head, _, args = spec.rstrip().rstrip(")").partition("(")
    args = args.strip()
    return f"{head}({args + ', ' if args else ''}alpha = {alpha})"


def node_medians(call, batch, threads, runs):
    """`octconv init` + `octconv export` of `call` at `batch`, then ORT (`threads` intra-op threads,
    all graph optimisations, its profiler) runs it `runs` times: each node's median time in µs
    (the first run dropped: it includes ORT's one-time work, allocations and weight packing), and
    each node's operator type."""
    with tempfile.TemporaryDirectory(prefix="octconv-ort-profile-") as d:
        w, onnx = os.path.join(d, "w.safetensors"), os.path.join(d, "m.onnx")
        run = lambda *a: subprocess.run([OCTCONV, *a], check=True, capture_output=True)
        run("init", call, "--seed", "1", "--out", w, "--force")
        run("export", call, "--weights", w, "-o", onnx, "--batch", str(batch), "--force")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(d, "prof")
        sess = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = np.random.default_rng(1).random(inp.shape, dtype=np.float32)
        for _ in range(runs):
            sess.run(None, {inp.name: x})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    times, op_of = collections.defaultdict(list), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            times[name].append(e["dur"])
            op_of[name] = e["args"]["op_name"]
    return {n: float(np.median(v[1:] or v)) for n, v in times.items()}, op_of


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="a builtin call, e.g. 'mobilenet_v2(width = 1.0)'")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--alpha", default="0")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=15, help="slowest nodes to list")
    args = ap.parse_args()
    call = with_alpha(args.spec, args.alpha)
    med, op_of = node_medians(call, args.batch, args.threads, args.runs)
    by_op = collections.Counter()
    for n, t in med.items():
        by_op[op_of[n]] += t
    total = sum(by_op.values())
    print(f"ORT {ort.__version__}, {call}, batch {args.batch}, {args.threads} threads: "
          f"median node time per run {total / 1000:.1f} ms")
    for op, t in by_op.most_common():
        print(f"  {op:24s} {t / 1000:8.2f} ms  {100 * t / total:5.1f} %")
    print("slowest nodes:")
    for n, t in sorted(med.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {n:64s} {op_of[n]:18s} {t / 1000:7.2f} ms")


if __name__ == "__main__":
    main()
