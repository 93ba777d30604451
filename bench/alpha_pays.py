#!/usr/bin/env python3
"""Does α pay? Inference time at α = .25, .5, .75 against α = 0, per family, next to the cost
model's MACs (issue #23's target: time(α) / time(0) at most the MAC ratio + 0.10).

One `octconv bench SPEC --alphas A --json` process per (family, α), the α values rotating within
each round so that a change in the host's load falls on all of them alike; each α's figure is the
lowest of its rounds' medians (this host's timings are bimodal under load: the slower mode is other
tenants' work, not ours). Prints a Markdown table with the machine's CPU.

Usage: bench/alpha_pays.py [--rounds 3] [--repeats 3] [--models resnext,…] [--octconv PATH]
(build first: cargo build --release --bin octconv)
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, simd  # noqa: E402
from families import FAMILIES, MODELS  # noqa: E402

ALPHAS = [0.0, 0.25, 0.5, 0.75]


def bench(octconv, spec, batch, alpha, repeats):
    """(median seconds per batch, MACs per sample by the cost model) of one `octconv bench`."""
    out = subprocess.run(
        [octconv, "bench", spec, "--batch", str(batch), "--samples", str(4 * batch),
         "--repeats", str(repeats), "--alphas", str(alpha), "--json"],
        check=True, capture_output=True, text=True).stdout
    row = json.loads(out)["rows"][0]
    return row["median_s"], row["macs"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default=FAMILIES)
    ap.add_argument("--octconv", default="target/release/octconv")
    a = ap.parse_args()
    print(f"# machine: {cpu_model()} ({simd()}); rounds {a.rounds}, repeats {a.repeats}\n")
    print("| family (batch) | ms at α = 0 / .25 / .5 / .75 | time vs α = 0 (MACs) at .25 / .5 / .75 | met |")
    print("|---|---|---|---|")
    for key in a.models.split(","):
        spec, title, batch = MODELS[key]
        best = {al: float("inf") for al in ALPHAS}
        macs = {}
        for r in range(a.rounds):
            order = ALPHAS[r % len(ALPHAS):] + ALPHAS[:r % len(ALPHAS)]
            for al in order:
                t, macs[al] = bench(a.octconv, spec, batch, al, a.repeats)
                best[al] = min(best[al], t)
        ratios = [best[al] / best[0.0] for al in ALPHAS[1:]]
        macs = [macs[al] / macs[0.0] for al in ALPHAS]
        met = sum(r <= m + 0.10 for r, m in zip(ratios, macs[1:]))
        ms = " / ".join(f"{best[al] * 1e3:.1f}" for al in ALPHAS)
        rel = " / ".join(f"{r * 100:.0f} % ({m * 100:.0f})" for r, m in zip(ratios, macs[1:]))
        print(f"| {title} ({batch}) | {ms} | {rel} | {met} of 3 |", flush=True)


if __name__ == "__main__":
    main()
