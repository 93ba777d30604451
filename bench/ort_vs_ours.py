#!/usr/bin/env python3
"""Where a family loses to ONNX Runtime, block by block (issue #23).

`octconv init` + `octconv export` of a builtin at one α and batch; ORT (2 intra-op threads, all
graph optimisations, its own profiler) runs the exported graph `--runs` times (the first dropped,
each node's median kept), and `octconv bench SPEC --profile --layers 0 --json` times every layer of
ours. Both are summed per name prefix of `--depth` dot-separated components and listed by how much
longer ours takes. ORT keeps our layer names in its node names (`stage2.res1.branch0.relu1_nchwc`
is a convolution with its batch norm and ReLU fused, `….octconv0.hh` one path of an octave layer),
so at a block's depth (1–3) the prefixes match; deeper, ORT names a fused node after the last op it
absorbed (`relu1` for our `octconv1`). ORT's layout changes (`ReorderInput`/`ReorderOutput`) belong
to no layer and are summed on one line.

    python bench/ort_vs_ours.py 'resnext(depth = 50, groups = 32, width = 4)' --batch 8 --alpha 0.5

Needs `pip install onnxruntime numpy` and a release build (`cargo build --release`). The two
runtimes run one after the other, so a host that changes speed between them moves every line:
compare lines within one run, and rerun.
"""
import argparse
import collections
import json
import subprocess

from ort_profile import OCTCONV, node_medians, with_alpha


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="a builtin call, e.g. 'mobilenet_v2(width = 1.0)'")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--alpha", default="0")
    ap.add_argument("--depth", type=int, default=1, help="name components a line sums over")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7, help="our profiled passes")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    call = with_alpha(args.spec, args.alpha)

    def key(name):
        name = name.replace("_nchwc", "").removeprefix("fused ")
        if name.startswith(("ReorderInput", "ReorderOutput")):
            return "(ORT layout changes)"
        return ".".join(name.split(".")[: args.depth])

    medians, _ = node_medians(call, args.batch, args.threads, args.runs)
    theirs = collections.Counter()
    for name, us in medians.items():
        theirs[key(name)] += us / 1000
    ours = json.loads(subprocess.run(
        [OCTCONV, "bench", args.spec, "--batch", str(args.batch), "--samples", str(args.batch),
         "--repeats", str(args.repeats), "--alphas", str(args.alpha), "--profile", "--layers", "0",
         "--json"], check=True, capture_output=True, text=True).stdout)["rows"][0]
    mine = collections.Counter()
    for layer in ours["profile_layers"]:
        mine[key(layer["layer"])] += layer["ms"]
    print(f"{call}, batch {args.batch}, {args.threads} threads: ours {ours['median_s'] * 1e3:.1f} ms a pass "
          f"(layers {sum(mine.values()):.1f}), ORT nodes {sum(theirs.values()):.1f} ms")
    print(f"{'name prefix':56s} {'ours ms':>8s} {'ORT ms':>8s} {'ours − ORT':>10s}")
    for k in sorted(set(mine) | set(theirs), key=lambda k: theirs[k] - mine[k]):
        print(f"{k:56s} {mine[k]:8.2f} {theirs[k]:8.2f} {mine[k] - theirs[k]:+10.2f}")


if __name__ == "__main__":
    main()
