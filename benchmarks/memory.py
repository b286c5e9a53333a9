"""Peak memory of TripletEncoder.fit on cached features, as a multiple of the features' size.

Each size runs in a fresh process: it builds an (N, 2048) float32 feature array (8 KiB per
image), draws N triplets over it (every item used, so the whole array is looked up), warms
up TensorFlow on a tiny fit, then fits 1 epoch and reports

* RSS before the fit (Python, TensorFlow and the features), and the peak RSS during it;
* the fit's extra peak memory (peak - before) as a multiple of the features' size.

Up to 1 GiB of rows (128k images) a fit reads them once into one resident tensor (one copy,
for speed); beyond that it reads windows of 64 MiB per epoch (``training/windows.py``). The
sizes straddle that budget, and the cost per million images is the slope between the two
largest sizes.

Usage::

    python benchmarks/memory.py                # N = 50,000, 100,000, 200,000 and 300,000
    python benchmarks/memory.py --rows 200000 400000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import peak_rss  # benchmarks/ is on sys.path when a script runs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child(rows: int, features_kind: str) -> None:

    from tripletsk import TripletEncoder
    from tripletsk.training.shared import SharedFeatures

    rng = np.random.RandomState(0)
    block = rng.standard_normal((4096, 2048)).astype(np.float32)
    X = np.empty((rows, 2048), dtype=np.float32)
    for start in range(0, rows, len(block)):
        X[start : start + len(block)] = block[: min(len(block), rows - start)]
    X += rng.standard_normal((rows, 1)).astype(np.float32)  # rows differ
    T = rng.permutation(rows)[: rows - rows % 3].reshape(-1, 3)
    features = SharedFeatures(X) if features_kind == "shared" else X
    TripletEncoder(features=X[:300], max_epochs=1, random_state=0).fit(T[:50] % 300)
    before = peak_rss()
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    start = time.perf_counter()
    TripletEncoder(features=features, max_epochs=1, random_state=0).fit(T)
    wall = time.perf_counter() - start
    peak = peak_rss()
    print(json.dumps({"rows": rows, "features": X.nbytes, "current": current,
                      "peak_before": before, "peak": peak, "wall": wall}))  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 100_000, 200_000, 300_000])
    parser.add_argument("--features", choices=["array", "shared"], default="array")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.features)
        return
    gib = 2**30
    print(f"machine: {os.cpu_count()} CPUs, {os.sysconf('SC_PHYS_PAGES') * 4096 / gib:.0f} GiB")
    print(f"{'N':>8} {'features GiB':>12} {'RSS before GiB':>14} {'peak RSS GiB':>12} "
          f"{'fit extra GiB':>13} {'extra / features':>16} {'fit s':>6}")  # fmt: skip
    results = []
    for rows in args.rows:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(rows), "--features", args.features],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        extra = r["peak"] - r["current"]
        print(
            f"{rows:8d} {r['features'] / gib:12.2f} {r['current'] / gib:14.2f} "
            f"{r['peak'] / gib:12.2f} {extra / gib:13.2f} {extra / r['features']:16.2f} "
            f"{r['wall']:6.1f}"
        )
    if len(results) >= 2:
        a, b = results[-2], results[-1]
        slope = (b["peak"] - a["peak"]) / (b["rows"] - a["rows"])
        print(f"peak RSS per million cached images (slope, {a['rows']} to {b['rows']}): "
              f"{slope * 1e6 / gib:.1f} GiB "
              f"(features alone: {2048 * 4 * 1e6 / gib:.1f} GiB)")  # fmt: skip


if __name__ == "__main__":
    main()
