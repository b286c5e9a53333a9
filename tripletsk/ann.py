"""Approximate nearest-neighbour search for an embedding index, with usearch (HNSW graphs).

Optional: ``pip install "tripletsk[ann]"``. Both usearch and faiss-cpu were measured
(``benchmarks/index_scale.py --stages compare``, ``benchmarks/README.md``): faiss-cpu's HNSW
searched 2.7x more queries per CPU second at equal recall, but cannot remove a row; usearch's
graph adds and removes rows by id, so an index that grows or loses images is updated, not
rebuilt, and at 1M rows it met the target (recall@10 0.99, ~1,700 queries per CPU second).

The structure is one file, ``ann-<id>.usearch``, in the index folder; the manifest holds its
BLAKE2b digest (checked when it is loaded), its parameters, and its recall@10 against exact
search, measured on sampled rows when it is built (and again when the row count has changed
by more than a tenth).
"""

from __future__ import annotations

import os

import numpy as np

from tripletsk.checksums import file_digest
from tripletsk.errors import IndexFormatError, UserError

__all__ = ["available", "build", "load", "measure_recall", "missing_reason", "require", "update"]

LIBRARY = "usearch"
#: Graph degree and beam widths: recall@10 >= 0.95 on 1M x 64 clustered rows (measured).
PARAMS = {"kind": "HNSW", "connectivity": 16, "expansion_add": 64, "expansion_search": 64}
RECALL_QUERIES = 1000
#: Below this many rows exact search is fast enough (measured: ``benchmarks/index_scale.py``)
#: and ``approximate="auto"`` builds no approximate structure.
APPROXIMATE_FROM = 200_000
_METRIC = {"l2": "l2sq", "sqeuclidean": "l2sq", "cosine": "cos"}


def _module():
    try:
        from usearch.index import Index
    except ImportError:
        return None
    return Index


def available() -> bool:
    """Whether the approximate-search library is installed."""
    return _module() is not None


def missing_reason() -> str:
    return 'usearch is not installed (pip install "tripletsk[ann]")'


def require() -> None:
    if not available():
        raise UserError(f"approximate search needs usearch: {missing_reason()}")


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Structure:
    """A loaded usearch graph: ``search(queries, k) -> (ids, distances)`` (ids -1 if missing),
    distances in the index's distance (float32 precision)."""

    def __init__(self, graph, distance: str = "l2"):
        self.graph = graph
        self.distance = distance

    def search(self, queries: np.ndarray, k: int):
        found = self.graph.search(np.ascontiguousarray(queries, np.float32), k, threads=_threads())
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(queries), -1)
        dists = np.asarray(found.distances, dtype=np.float64).reshape(len(queries), -1)
        counts = np.asarray(getattr(found, "counts", [len(found.keys)])).reshape(-1)
        if keys.shape[1] < k:  # a single query's matches are not padded
            pad = k - keys.shape[1]
            keys = np.pad(keys, ((0, 0), (0, pad)), constant_values=-1)
            dists = np.pad(dists, ((0, 0), (0, pad)), constant_values=np.inf)
        missing = np.arange(keys.shape[1])[None, :] >= counts[:, None]
        if self.distance == "l2":  # the graph measures squared L2
            dists = np.sqrt(np.maximum(dists, 0.0))
        keys[missing] = -1
        dists[missing] = np.inf
        return keys, dists


def _new_graph(dim: int, distance: str):
    Index = _module()
    return Index(
        ndim=dim,
        metric=_METRIC[distance],
        dtype="f32",
        connectivity=PARAMS["connectivity"],
        expansion_add=PARAMS["expansion_add"],
        expansion_search=PARAMS["expansion_search"],
    )


def _save(folder: str, graph, entry: dict) -> dict:
    from tripletsk.indexfile import new_name

    name = f"{new_name('ann')}.{LIBRARY}"
    path = os.path.join(folder, name)
    graph.save(path)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    import usearch

    return {
        **entry,
        "library": LIBRARY,
        "version": usearch.__version__,
        "file": name,
        "digest": file_digest(path),
        "params": dict(PARAMS),
    }


def measure_recall(structure, ids: np.ndarray, vectors: np.ndarray, distance: str,
                   n_queries: int = RECALL_QUERIES, seed: int = 0) -> float:  # fmt: skip
    """recall@10 of ``structure`` against exact search, with sampled rows as queries (each
    left out of its own results)."""
    from tripletsk.blocked import exact_neighbors

    n = len(vectors)
    k = min(10, n - 1)
    if k < 1:
        return 1.0
    rows = np.random.RandomState(seed).choice(n, min(n_queries, n), replace=False)
    queries = vectors[rows]

    def blocks(step, start=0):
        return ((s, vectors[s : s + step]) for s in range(start, n, step))

    exact, _ = exact_neighbors(queries, blocks, k, distance, exclude=rows)
    found, _ = structure.search(queries, k + 1)
    hits = 0
    for i, row in enumerate(rows):
        got = set(found[i][found[i] != ids[row]][:k].tolist())
        hits += len(got & set(ids[exact[i]].tolist()))
    return hits / (len(rows) * k)


def build(folder: str, ids: np.ndarray, vectors: np.ndarray, distance: str) -> dict:
    """Build the structure of ``vectors`` labelled ``ids``; return its manifest entry."""
    require()
    if distance not in _METRIC:
        raise UserError(f"approximate search supports {sorted(_METRIC)}, not {distance!r}")
    graph = _new_graph(vectors.shape[1], distance)
    graph.add(np.asarray(ids, np.int64), np.ascontiguousarray(vectors, np.float32),
              threads=_threads())  # fmt: skip
    recall = measure_recall(Structure(graph, distance), ids, vectors, distance)
    entry = {"recall_at_10": recall, "recall_queries": min(RECALL_QUERIES, len(ids)),
             "n_rows_measured": len(ids)}  # fmt: skip
    return _save(folder, graph, entry)


def load(folder: str, entry: dict, dim: int, distance: str) -> Structure:
    """The structure of an index (its file checked against the manifest's digest)."""
    require()
    path = os.path.join(folder, entry["file"])
    try:
        digest = file_digest(path)
    except FileNotFoundError:
        raise IndexFormatError(
            f"{path}: missing; rebuild the index with `tripletsk index --replace`"
        ) from None
    if digest != entry["digest"]:
        raise IndexFormatError(
            f"{path}: does not match its checksum (damaged); rebuild the index with "
            "`tripletsk index --replace`, or search with --method exact"
        )
    graph = _new_graph(dim, distance)
    try:
        graph.load(path)
    except Exception as exc:  # usearch raises RuntimeError and others for foreign files
        raise IndexFormatError(f"{path}: not a usearch index ({exc})") from None
    if graph.ndim != dim:
        raise IndexFormatError(f"{path}: {graph.ndim} dimensions, the index has {dim}")
    return Structure(graph, distance)


def update(folder: str, old: dict, manifest: dict, removed_ids, new_ids, new_vectors) -> dict:
    """The structure with ``removed_ids`` taken out and ``new_ids`` added (no rebuild)."""
    structure = load(folder, old, manifest["dim"], manifest["distance"])
    graph = structure.graph
    if len(removed_ids):
        graph.remove(np.asarray(removed_ids, np.int64))
    if new_ids is not None and len(new_ids):
        graph.add(np.asarray(new_ids, np.int64), np.ascontiguousarray(new_vectors, np.float32),
                  threads=_threads())  # fmt: skip
    entry = {k: old[k] for k in ("recall_at_10", "recall_queries", "n_rows_measured")}
    n = manifest["n_rows"]
    if abs(n - old["n_rows_measured"]) > 0.1 * old["n_rows_measured"]:
        from tripletsk.indexfile import SegmentReader

        readers = [SegmentReader(folder, e, manifest["dim"]) for e in manifest["segments"]]
        ids = np.concatenate([r.ids for r in readers])
        vectors = np.concatenate([r.read(0, r.rows) for r in readers])
        entry = {
            "recall_at_10": measure_recall(structure, ids, vectors, manifest["distance"]),
            "recall_queries": min(RECALL_QUERIES, n),
            "n_rows_measured": n,
        }
    return _save(folder, graph, entry)
