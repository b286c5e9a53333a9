"""Reads through FeatureStore, the path every fit, transform and search over a cache takes.

On one cache of 20,000 x 2048 float32 rows (166 MB, in the page cache) each round, in a fresh
process, times:

* ``open``: ``FeatureStore(path)`` (keys, fingerprints and attributes read, checked);
* ``first take``: the first ``take`` of 256 random rows (maps the features, verifies ~230
  chunks' checksums);
* ``warm take``: ``take`` of 256 random rows once their chunks are verified (median of 200);
* ``pass``: ``iter_chunks(4096)`` over every row, summing each block (after the first pass).

``--compare TREE`` runs the same rounds with the ``tripletsk`` of another source tree (e.g.
``git archive COMMIT | tar -x -C /tmp/old``), interleaved with this tree's, and prints each
figure's median ratio this / other: absolute times on a shared machine are noise.

Usage::

    python benchmarks/store_reads.py
    python benchmarks/store_reads.py --compare /tmp/old --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
ROWS, DIM = 20_000, 2048


def make_cache(path: str) -> None:
    from tripletsk.cache.format import FINGERPRINT_DTYPE, FORMAT_NAME, FORMAT_VERSION
    from tripletsk.cache.writer import write_cache

    rng = np.random.default_rng(0)
    keys = [f"class{i % 10}/img{i:06d}.jpg" for i in range(ROWS)]
    blocks = (rng.standard_normal((4096, DIM), dtype=np.float32) for _ in range(0, ROWS, 4096))
    blocks = (b[: ROWS - i * 4096] for i, b in enumerate(blocks))
    write_cache(path, keys=keys, fingerprints=np.zeros(ROWS, FINGERPRINT_DTYPE), failed=[],
                dim=DIM, dtype="float32", feature_blocks=blocks,
                attrs={"format": FORMAT_NAME, "format_version": FORMAT_VERSION})  # fmt: skip


def child(path: str) -> None:
    from tripletsk.cache.store import FeatureStore

    rng = np.random.default_rng(1)
    out = np.empty((256, DIM), np.float32)
    t = time.perf_counter()
    store = FeatureStore(path)
    opened = time.perf_counter() - t
    t = time.perf_counter()
    store.take(rng.integers(0, ROWS, 256), out=out)
    first = time.perf_counter() - t
    for block in store.iter_chunks(4096):  # verifies every chunk
        block[1].sum()
    warm = []
    for _ in range(200):
        idx = rng.integers(0, ROWS, 256)
        t = time.perf_counter()
        store.take(idx, out=out)
        warm.append(time.perf_counter() - t)
    t = time.perf_counter()
    for _, block in store.iter_chunks(4096):
        block.sum()
    full = time.perf_counter() - t
    print(json.dumps({"open": opened, "first take": first, "warm take": statistics.median(warm),
                      "pass": full}))  # fmt: skip


def run(tree: Path, path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    args = [sys.executable, __file__, "--child", path]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", type=Path, help="another source tree to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.path.insert(0, os.environ.get("PYTHONPATH", str(HERE)))
        child(args.child)
        return
    sys.path.insert(0, str(HERE))
    trees = {"this": HERE, **({"other": args.compare.resolve()} if args.compare else {})}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "features.h5")
        make_cache(path)
        results = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                results[name].append(run(tree, path))
    print(f"load average: {os.getloadavg()[0]:.1f} (1 min), {args.rounds} rounds")
    for figure in results["this"][0]:
        line = f"{figure:>10}: this {statistics.median(r[figure] for r in results['this']):.4f} s"
        if "other" in results:
            other = statistics.median(r[figure] for r in results["other"])
            pairs = zip(results["this"], results["other"], strict=True)
            ratios = [a[figure] / b[figure] for a, b in pairs]
            line += f", other {other:.4f} s, this / other {statistics.median(ratios):.2f}"
            line += f" (rounds {', '.join(f'{x:.2f}' for x in ratios)})"
        print(line)


if __name__ == "__main__":
    main()
