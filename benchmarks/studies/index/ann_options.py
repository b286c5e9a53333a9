"""Approximate-search options for an embedding index, measured on the same rows: build time,
recall@10 against exact search, queries/s, adding and removing 1,000 rows, memory.

Candidates: usearch HNSW at several graph degrees (``connectivity``) and build beam widths
(``expansion_add``); faiss-cpu IVF-Flat at several list counts, trained by k-means on a
sample. Each configuration runs in its own process (2 threads), which reports wall and CPU
seconds (user + system, all threads) of each step, its peak RSS (VmHWM) and the load average:
other jobs share this machine, so CPU seconds are the figure to compare, and wall time on two
idle cores is about half of them.

The rows are those of ``benchmarks/index_scale.py`` (its ``make`` stage: ``data.npy``,
``queries.npy``, ``new.npy``); the exact answers of the queries are computed once
(``truth.npy``, by :func:`tripletsk.index.blocked.exact_neighbors`) if absent. ``--hard`` makes
harder rows first (clusters that overlap: noise 1.5 instead of 0.6), so that recall is also
measured where neighbours are not one tight cluster.

    python benchmarks/index_scale.py --work /tmp/ann1m --stages make
    python benchmarks/studies/index/ann_options.py --work /tmp/ann1m
    python benchmarks/studies/index/ann_options.py --work /tmp/ann1m \\
        --configs ivf:4096 usearch:16:64
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

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(BENCHMARKS))
sys.path.insert(0, BENCHMARKS)  # benchmarks/_common.py

from _common import peak_rss  # noqa: E402

THREADS = 2
#: usearch:<connectivity>:<expansion_add>; ivf:<lists> (0: 4 * sqrt(rows), rounded)
CONFIGS = ("usearch:16:64", "usearch:16:32", "usearch:8:32", "usearch:8:16",
           "ivf:0", "ivf:1024", "ivf:2048", "ivf:4096")  # fmt: skip
EF = (16, 32, 64, 128)
NPROBE = (1, 2, 4, 8, 16, 32, 64)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def clock(f):
    t, c = time.perf_counter(), _cpu()
    out = f()
    return out, {"seconds": time.perf_counter() - t, "cpu_seconds": _cpu() - c,
                 "load": os.getloadavg()[0]}  # fmt: skip


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))


def _searches(search, q, truth, settings, set_param) -> dict:
    out = {}
    for s in settings:
        set_param(s)
        search(q[:100])  # warm
        found, t = clock(lambda: search(q))
        out[str(s)] = {
            "recall_at_10": recall(found, truth),
            "queries_per_second": len(q) / t["seconds"],
            "queries_per_cpu_second": len(q) / t["cpu_seconds"],
            "load": t["load"],
        }
    return out


def run_usearch(x, q, truth, new, connectivity: int, expansion: int) -> dict:
    from usearch.index import Index

    graph = Index(ndim=x.shape[1], metric="l2sq", dtype="f32", connectivity=connectivity,
                  expansion_add=expansion)  # fmt: skip
    _, build = clock(lambda: graph.add(np.arange(len(x)), x, threads=THREADS))

    def search(queries):
        return np.asarray(graph.search(queries, 10, threads=THREADS).keys)

    def set_ef(ef):
        graph.expansion_search = ef

    out = {"build": build, "structure_mib": graph.memory_usage / 2**20}
    out["search"] = _searches(search, q, truth, EF, set_ef)
    ids = np.arange(len(x), len(x) + len(new))
    _, out["add_1000"] = clock(lambda: graph.add(ids, new, threads=THREADS))
    _, out["remove_1000"] = clock(lambda: graph.remove(ids))
    return out


def run_ivf(x, q, truth, new, lists: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(THREADS)
    lists = lists or round(4 * np.sqrt(len(x)))
    dim = x.shape[1]
    sample = x[np.random.default_rng(1).choice(len(x), min(len(x), 32 * lists), replace=False)]
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists)
    ivf.cp.niter = 20
    _, train = clock(lambda: ivf.train(sample))
    _, add = clock(lambda: ivf.add_with_ids(x, np.arange(len(x), dtype=np.int64)))
    build = {k: train[k] + add[k] for k in ("seconds", "cpu_seconds")}

    def search(queries):
        return ivf.search(queries, 10)[1]

    def set_nprobe(n):
        ivf.nprobe = n

    out = {"lists": lists, "train_rows": len(sample), "train": train, "add": add,
           "build": {**build, "load": add["load"]},
           "structure_mib": (len(x) * (dim * 4 + 8) + lists * dim * 4) / 2**20}  # fmt: skip
    out["search"] = _searches(search, q, truth, NPROBE, set_nprobe)
    ids = np.arange(len(x), len(x) + len(new), dtype=np.int64)
    _, out["add_1000"] = clock(lambda: ivf.add_with_ids(new, ids))
    _, out["remove_1000"] = clock(lambda: ivf.remove_ids(ids))
    return out


def make_hard(work: str, rows: int, dim: int) -> None:
    rng = np.random.default_rng(2)
    n_clusters = max(1, rows // 100)
    centers = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    x = centers[rng.integers(0, n_clusters, rows)]
    x += 1.5 * rng.standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(rows, 2000, replace=False)]
    q = q + 0.05 * rng.standard_normal(q.shape, dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    new = x[rng.choice(rows, 1000, replace=False)] + 0.05 * rng.standard_normal(
        (1000, dim), dtype=np.float32
    )
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    os.makedirs(work, exist_ok=True)
    for name, a in (("data", x), ("queries", q), ("new", new)):
        np.save(os.path.join(work, f"{name}.npy"), a)


def truth_of(work: str) -> np.ndarray:
    path = os.path.join(work, "truth.npy")
    if os.path.exists(path):
        return np.load(path)
    from tripletsk.index.blocked import exact_neighbors

    x = np.load(os.path.join(work, "data.npy"), mmap_mode="r")
    q = np.load(os.path.join(work, "queries.npy"))
    found, _ = exact_neighbors(
        q, lambda s, a=0: ((i, np.asarray(x[i : i + s])) for i in range(a, len(x), s)), 10, "l2"
    )
    np.save(path, found)
    return found


def one(work: str, config: str) -> dict:
    x = np.load(os.path.join(work, "data.npy"))
    q = np.load(os.path.join(work, "queries.npy"))
    new = np.load(os.path.join(work, "new.npy"))
    truth = np.load(os.path.join(work, "truth.npy"))[: len(q)]
    kind, *params = config.split(":")
    if kind == "usearch":
        result = run_usearch(x, q, truth, new, int(params[0]), int(params[1]))
    else:
        result = run_ivf(x, q, truth, new, int(params[0]))
    return {"config": config, "rows": len(x), "peak_rss_mib": peak_rss() / 2**20, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="folder of data.npy, queries.npy, new.npy")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--hard", type=int, metavar="ROWS", help="first make ROWS harder rows")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.work, args.one)))
        return
    if args.hard:
        make_hard(args.work, args.hard, 64)
    truth_of(args.work)
    for config in args.configs:
        proc = subprocess.run([sys.executable, __file__, "--work", args.work, "--one", config],
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode:
            sys.exit(f"{config} failed:\n{proc.stderr}")
        line = proc.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        with open(os.path.join(args.work, "ann_options.jsonl"), "a") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
