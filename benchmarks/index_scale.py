"""An embedding index of 1,000,000 x 64: build, exact and approximate search, adding rows.

Synthetic clustered embeddings (10,000 clusters of ~100 unit vectors, noise 0.6 per
coordinate before normalising; queries are indexed rows moved by noise 0.05 and
normalised again), so that speed and memory can be measured at scale without a 1M-image
cache. Each stage runs in its own process, whose wall time, CPU time (user + system, all
threads) and peak RSS (VmHWM) are reported: other jobs share this machine's 2 cores, so the
CPU seconds are the figure that does not depend on them; the load average is printed with
each run.

    python benchmarks/index_scale.py --work /tmp/index1m              # every stage, 1M rows

Stages: ``make`` (data), ``build`` (``EmbeddingIndex.create`` with the approximate structure:
writing, checksums, k-means and the inverted file, and ``nprobe`` chosen by recall against
exact search on 1,000 sampled rows), ``exact`` (1,000 queries, exact, and the exact answers of
all queries for the recall figure), ``approx`` (2,000 queries, batched), ``add`` (1,000 new
rows: a new segment and the structure updated, not rebuilt), ``remove`` (those 1,000 rows and
1,000 of the first segment dropped: that segment is rewritten, the structure updated). The
choice of library and parameters: ``benchmarks/studies/index/ann_options.py``.
``OMP_NUM_THREADS=1`` makes faiss search with one thread (on a shared machine two threads wait
for each other).
Results are appended as JSON lines to ``WORK/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from _common import peak_rss  # noqa: E402

STAGES = ("make", "build", "exact", "approx", "add", "remove")
N_EXACT, N_APPROX, N_ADD = 1000, 2000, 1000


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _threads() -> int:
    """The threads faiss searches with (``OMP_NUM_THREADS``; default: every core)."""
    import faiss

    return faiss.omp_get_max_threads()


def _load() -> float:
    return os.getloadavg()[0]


def make(work: str, rows: int, dim: int) -> dict:
    rng = np.random.default_rng(0)
    n_clusters = max(1, rows // 100)
    centers = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    x = centers[rng.integers(0, n_clusters, rows)]
    x += 0.6 * rng.standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(rows, N_APPROX, replace=False)]
    q = q + 0.05 * rng.standard_normal(q.shape, dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    new = x[rng.choice(rows, N_ADD, replace=False)] + 0.05 * rng.standard_normal(
        (N_ADD, dim), dtype=np.float32
    )
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    np.save(os.path.join(work, "data.npy"), x)
    np.save(os.path.join(work, "queries.npy"), q)
    np.save(os.path.join(work, "new.npy"), new)
    return {"rows": rows, "dim": dim}


def build(work: str, approximate: str = "yes") -> dict:
    from tripletsk.index.embedding_index import EmbeddingIndex

    x = np.load(os.path.join(work, "data.npy"))
    keys = [f"c{i // 1000}/{i}.jpg" for i in range(len(x))]
    t, c = time.perf_counter(), _cpu()
    index = EmbeddingIndex.create(
        os.path.join(work, "index"), keys, x, approximate=approximate, replace=True
    )
    graph = index.approximate or {}
    return {"seconds": time.perf_counter() - t, "cpu_seconds": _cpu() - c,
            "approximate": approximate, "recall_at_10_sampled": graph.get("recall_at_10"),
            "params": graph.get("params"), "peak_rss_mib": peak_rss() / 2**20}  # fmt: skip


def exact(work: str) -> dict:
    from tripletsk.index.embedding_index import EmbeddingIndex

    q = np.load(os.path.join(work, "queries.npy"))
    t, c = time.perf_counter(), _cpu()
    index = EmbeddingIndex(os.path.join(work, "index"))
    opened = time.perf_counter() - t
    t2, c2 = time.perf_counter(), _cpu()
    found = index.search(q[:N_EXACT], 10, method="exact")
    result = {"queries": N_EXACT, "open_seconds": opened,
              "search_seconds": time.perf_counter() - t2, "search_cpu_seconds": _cpu() - c2,
              "total_seconds": time.perf_counter() - t, "total_cpu_seconds": _cpu() - c,
              "peak_rss_mib": peak_rss() / 2**20}  # fmt: skip
    rest = index.search(q[N_EXACT:], 10, method="exact")
    # Keys, not row positions: positions shift once the remove stage has dropped rows.
    # (As fixed-width strings: an object array would need pickle to load.)
    keys = np.concatenate([found.keys, rest.keys]).astype(str)
    np.save(os.path.join(work, "truth_keys.npy"), keys)
    return result


def approx(work: str) -> dict:
    from tripletsk.index.embedding_index import EmbeddingIndex

    q = np.load(os.path.join(work, "queries.npy"))
    truth = np.load(os.path.join(work, "truth_keys.npy"))
    t = time.perf_counter()
    index = EmbeddingIndex(os.path.join(work, "index"))
    index.search(q[:10], 10)  # loads the graph (digest checked)
    loaded = time.perf_counter() - t
    rates, cpu_rates = [], []
    for _ in range(3):
        t, c = time.perf_counter(), _cpu()
        found = index.search(q, 10, method="approximate")
        rates.append(len(q) / (time.perf_counter() - t))
        cpu_rates.append(len(q) / (_cpu() - c))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.keys, truth, strict=True)])
    return {"queries": len(q), "rows": len(index), "threads": _threads(), "load_seconds": loaded,
            "queries_per_second": rates,
            "queries_per_cpu_second": cpu_rates, "recall_at_10": float(recall),
            "peak_rss_mib": peak_rss() / 2**20}  # fmt: skip


def add(work: str) -> dict:
    from tripletsk.index.embedding_index import EmbeddingIndex

    new = np.load(os.path.join(work, "new.npy"))
    path = os.path.join(work, "index")
    index = EmbeddingIndex(path)
    first = index._manifest["segments"][0]["name"] + ".npy"
    stamp = os.stat(os.path.join(path, first)).st_mtime_ns
    t, c = time.perf_counter(), _cpu()
    index = index.add([f"new/{i}.jpg" for i in range(len(new))], new)
    seconds, cpu = time.perf_counter() - t, _cpu() - c
    found = index.search(new[:100], 1)
    return {"rows_added": len(new), "seconds": seconds, "cpu_seconds": cpu,
            "first_segment_untouched": os.stat(os.path.join(path, first)).st_mtime_ns == stamp,
            "segments": len(index._manifest["segments"]),
            "new_rows_found_as_their_own_nearest": float(np.mean(
                [k == f"new/{i}.jpg" for i, k in enumerate(found.keys[:, 0])])),
            "peak_rss_mib": peak_rss() / 2**20}  # fmt: skip


def remove(work: str) -> dict:
    from tripletsk.index.embedding_index import EmbeddingIndex

    path = os.path.join(work, "index")
    index = EmbeddingIndex(path)
    # The 1,000 added rows and 1,000 of the first segment's (which is then rewritten).
    gone = [k for k in index.keys if k.startswith("new/")] + index.keys[:-1000:1000][:1000]
    t, c = time.perf_counter(), _cpu()
    index = index.remove(gone)
    seconds, cpu = time.perf_counter() - t, _cpu() - c
    return {"rows_removed": len(gone), "seconds": seconds, "cpu_seconds": cpu,
            "rows": len(index), "peak_rss_mib": peak_rss() / 2**20}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="folder for the data and the index")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--stages", nargs="+", default=list(STAGES))
    ap.add_argument(
        "--approximate",
        choices=("yes", "no"),
        default="yes",
        help="build the approximate structure (no: exact search only)",
    )
    ap.add_argument("--stage", help=argparse.SUPPRESS)  # one stage, in this process
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    if args.stage:
        fn = {"make": lambda w: make(w, args.rows, args.dim),
              "build": lambda w: build(w, args.approximate), "exact": exact,
              "approx": approx, "add": add, "remove": remove}[args.stage]  # fmt: skip
        before = _load()
        result = fn(args.work)
        print(json.dumps({"stage": args.stage, "load_before": before, "load_after": _load(),
                          **result}))  # fmt: skip
        return
    for stage in args.stages:
        argv = [sys.executable, __file__, "--work", args.work, "--rows", str(args.rows),
                "--dim", str(args.dim), "--approximate", args.approximate,
                "--stage", stage]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"stage {stage} failed:\n{proc.stderr}")
        line = proc.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        with open(os.path.join(args.work, "results.jsonl"), "a") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
