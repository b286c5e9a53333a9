"""Approximate nearest-neighbour search for an embedding index: an inverted file (faiss IVF).

Optional: ``pip install "tripletsk[ann]"``. The rows are split into ``lists`` cells by k-means
(trained on a sample of them); a query is compared exactly with the rows of the ``nprobe`` cells
nearest to it. ``nprobe`` is chosen when the structure is built: the smallest that reaches
:data:`TARGET_RECALL` recall@10 against exact search on sampled rows, a figure kept in the
manifest and reported with every answer. Measured against usearch's HNSW graph on the same rows
(``benchmarks/studies/index/ann_options.py``, ``benchmarks/README.md``): at equal recall,
k-means and the assignment of 1,000,000 rows cost a small part of what building the graph did.

What is stored is small and plain: ``ann-<id>.npz`` holds the k-means centroids and the cell of
each row id (NumPy arrays, read without pickle, checked against the manifest's BLAKE2b digest,
their shapes, the index's row ids and the cell count); the rows themselves are the index's own
segments, read and checksummed as for exact search. No file of a foreign format is parsed.
Adding rows assigns them to their nearest centroid; removing rows drops them; neither touches
the other rows, so an update costs what the changed rows cost. When the row count has changed
by more than a tenth since ``nprobe`` was chosen, it is chosen again; when the index has grown
to more than :data:`RETRAIN_GROWTH` times the rows the centroids were trained on, they are
trained again (cells would otherwise grow long).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from tripletsk.cache.checksums import file_digest
from tripletsk.errors import IndexFormatError, UserError

__all__ = [
    "APPROXIMATE_FROM",
    "LIBRARY",
    "Structure",
    "available",
    "build",
    "load",
    "missing_reason",
    "readable",
    "require",
    "update",
]

LIBRARY = "faiss"
KIND = "IVF-Flat"
#: recall@10 against exact search that ``nprobe`` is chosen to reach (on sampled rows).
TARGET_RECALL = 0.98
RECALL_QUERIES = 1000
#: k-means: iterations, and training rows per cell (a sample of at most this many per cell).
KMEANS_ITERATIONS = 20
TRAIN_PER_LIST = 32
#: Fewer rows per cell than this make k-means unreliable (faiss warns below 39).
MIN_PER_LIST = 39
RETRAIN_GROWTH = 4.0
#: Below this many rows exact search is fast enough (measured: ``benchmarks/index_scale.py``)
#: and ``approximate="auto"`` builds no approximate structure.
APPROXIMATE_FROM = 200_000
_DISTANCES = ("l2", "sqeuclidean", "cosine")
_BLOCK = 1 << 16


def _module():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def available() -> bool:
    """Whether the approximate-search library is installed."""
    return _module() is not None


def missing_reason() -> str:
    return 'faiss-cpu is not installed (pip install "tripletsk[ann]")'


def require() -> None:
    if not available():
        raise UserError(f"approximate search needs faiss-cpu: {missing_reason()}")


def readable(entry: dict | None) -> bool:
    """Whether this tripletsk reads the structure ``entry`` (an earlier one kept usearch graphs)."""
    params = (entry or {}).get("params") or {}
    return entry is not None and entry.get("library") == LIBRARY and params.get("kind") == KIND


def n_lists(n_rows: int) -> int:
    """Cells for ``n_rows`` rows: 4 sqrt(n) (faiss's rule of thumb), at least 39 rows each.

    Examples
    --------
    >>> n_lists(1_000_000), n_lists(200_000), n_lists(1_000)
    (4000, 1789, 25)
    """
    return int(max(1, min(round(4 * np.sqrt(n_rows)), n_rows // MIN_PER_LIST)))


def _prepared(x: np.ndarray, distance: str) -> np.ndarray:
    """Rows as the inverted file holds them: float32, unit norm for the cosine distance (whose
    order is then that of the Euclidean distance, ``|a - b|^2 = 2 cos_dist``)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if distance == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    return x


class Structure:
    """A loaded inverted file: ``search(queries, k) -> (ids, distances)``, ids -1 where fewer
    than ``k`` rows were found, distances in the index's distance (float32 precision)."""

    def __init__(self, centroids: np.ndarray, distance: str, nprobe: int):
        faiss = _module()
        dim = centroids.shape[1]
        self.quantizer = faiss.IndexFlatL2(dim)
        self.quantizer.add(np.ascontiguousarray(centroids, np.float32))
        self.ivf = faiss.IndexIVFFlat(self.quantizer, dim, len(centroids), faiss.METRIC_L2)
        self.ivf.is_trained = True
        self.distance = distance
        self.nprobe = int(nprobe)

    def add(self, ids: np.ndarray, vectors: np.ndarray, lists: np.ndarray) -> None:
        """Add rows already assigned to their cells (``lists``)."""
        from faiss.contrib.ivf_tools import add_preassigned

        x = _prepared(vectors, self.distance)
        add_preassigned(self.ivf, x, np.ascontiguousarray(lists, np.int64),
                        np.ascontiguousarray(ids, np.int64))  # fmt: skip

    def search(self, queries: np.ndarray, k: int):
        self.ivf.nprobe = self.nprobe
        d, ids = self.ivf.search(_prepared(queries, self.distance), k)
        ids = ids.astype(np.int64)
        d = d.astype(np.float64)
        if self.distance == "l2":
            d = np.sqrt(np.maximum(d, 0.0))
        elif self.distance == "cosine":
            d = d / 2.0
        d[ids < 0] = np.inf
        return ids, d


def _assign(centroids: np.ndarray, vectors: np.ndarray, distance: str) -> np.ndarray:
    """The nearest centroid of each row (int32)."""
    faiss = _module()
    quantizer = faiss.IndexFlatL2(centroids.shape[1])
    quantizer.add(np.ascontiguousarray(centroids, np.float32))
    out = np.empty(len(vectors), np.int32)
    for s in range(0, len(vectors), _BLOCK):
        _, nearest = quantizer.search(_prepared(vectors[s : s + _BLOCK], distance), 1)
        out[s : s + _BLOCK] = nearest[:, 0]
    return out


def _train(vectors: np.ndarray, distance: str, seed: int = 0) -> np.ndarray:
    faiss = _module()
    lists = n_lists(len(vectors))
    n_train = min(len(vectors), TRAIN_PER_LIST * lists)
    rows = np.sort(np.random.RandomState(seed).choice(len(vectors), n_train, replace=False))
    sample = _prepared(vectors[rows], distance)
    kmeans = faiss.Kmeans(sample.shape[1], lists, niter=KMEANS_ITERATIONS, seed=seed + 1,
                          max_points_per_centroid=TRAIN_PER_LIST,
                          min_points_per_centroid=TRAIN_PER_LIST, verbose=False)  # fmt: skip
    kmeans.train(sample)
    return np.ascontiguousarray(kmeans.centroids, np.float32)


def _choose_nprobe(structure: Structure, ids, vectors, distance: str, seed: int = 0):
    """The smallest ``nprobe`` (powers of two) with recall@10 >= TARGET_RECALL on sampled rows
    (each left out of its own results), and that recall."""
    from tripletsk.index.blocked import exact_neighbors

    n = len(vectors)
    k = min(10, n - 1)
    if k < 1:
        return 1, 1.0, 0
    rows = np.random.RandomState(seed).choice(n, min(RECALL_QUERIES, n), replace=False)
    queries = vectors[rows]

    def blocks(step, start=0):
        return ((s, vectors[s : s + step]) for s in range(start, n, step))

    exact, _ = exact_neighbors(queries, blocks, k, distance, exclude=rows)
    truth = ids[exact]
    lists = structure.ivf.nlist
    nprobe = 1
    while True:
        structure.nprobe = nprobe
        found, _ = structure.search(queries, k + 1)
        hits = sum(
            len(set(f[f != ids[r]][:k].tolist()) & set(t.tolist()))
            for f, r, t in zip(found, rows, truth, strict=True)
        )
        recall = hits / (len(rows) * k)
        if recall >= TARGET_RECALL or nprobe >= lists:
            return nprobe, recall, len(rows)
        nprobe = min(lists, 2 * nprobe)


def _save(folder: str, centroids, ids, lists, entry: dict) -> dict:
    import faiss

    from tripletsk.index.format import new_name, write_file

    name = f"{new_name('ann')}.npz"
    path = os.path.join(folder, name)
    write_file(path, lambda fh: np.savez(fh, centroids=np.asarray(centroids, "<f4"),
                                          ids=np.asarray(ids, "<i8"),
                                          lists=np.asarray(lists, "<i4")))  # fmt: skip
    return {**entry, "library": LIBRARY, "version": faiss.__version__, "file": name,
            "digest": file_digest(path)}  # fmt: skip


def _params(centroids, nprobe: int, n_train: int) -> dict:
    return {"kind": KIND, "lists": len(centroids), "nprobe": int(nprobe),
            "target_recall": TARGET_RECALL, "kmeans_iterations": KMEANS_ITERATIONS,
            "n_rows_trained": int(n_train)}  # fmt: skip


def build(folder: str, ids: np.ndarray, vectors: np.ndarray, distance: str) -> dict:
    """Train, fill and measure the structure of ``vectors`` labelled ``ids`` (increasing);
    return its manifest entry."""
    require()
    if distance not in _DISTANCES:
        raise UserError(f"approximate search supports {list(_DISTANCES)}, not {distance!r}")
    ids = np.asarray(ids, np.int64)
    centroids = _train(vectors, distance)
    lists = _assign(centroids, vectors, distance)
    structure = Structure(centroids, distance, 1)
    structure.add(ids, vectors, lists)
    nprobe, recall, n_queries = _choose_nprobe(structure, ids, vectors, distance)
    entry = {"params": _params(centroids, nprobe, len(ids)), "recall_at_10": recall,
             "recall_queries": n_queries, "n_rows_measured": len(ids)}  # fmt: skip
    return _save(folder, centroids, ids, lists, entry)


def _read_parts(folder: str, entry: dict, ids: np.ndarray, dim: int):
    """``(centroids, lists)`` of the structure file of ``entry``, checked: its digest, the
    sizes of its arrays before they are read, their shapes and values, and that it holds
    exactly the row ids ``ids``."""
    path = os.path.join(folder, entry["file"])
    rebuild = "rebuild it with `tripletsk index --approximate yes`, or search with --method exact"
    try:
        digest = file_digest(path)
    except FileNotFoundError:
        raise IndexFormatError(f"{path}: missing; {rebuild}") from None
    if digest != entry["digest"]:
        raise IndexFormatError(f"{path}: does not match its checksum (damaged); {rebuild}")
    params = entry.get("params") or {}
    n_cells = params.get("lists")
    if not isinstance(n_cells, int) or not 1 <= n_cells <= max(1, len(ids)):
        raise IndexFormatError(f"{path}: the manifest's cell count {n_cells!r} is invalid")
    expected = {"centroids.npy": n_cells * dim * 4, "ids.npy": len(ids) * 8,
                "lists.npy": len(ids) * 4}  # fmt: skip
    try:
        with zipfile.ZipFile(path) as zf:
            sizes = {i.filename: i.file_size for i in zf.infolist()}
        if set(sizes) != set(expected) or any(sizes[k] > v + 4096 for k, v in expected.items()):
            raise IndexFormatError(f"{path}: holds other arrays than its manifest describes")
        with np.load(path, allow_pickle=False) as z:
            centroids, stored_ids, lists = z["centroids"], z["ids"], z["lists"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise IndexFormatError(f"{path}: not readable ({str(exc)[:200]}); {rebuild}") from None
    if (
        centroids.shape != (n_cells, dim)
        or centroids.dtype != np.dtype("<f4")
        or not np.isfinite(centroids).all()
        or lists.shape != (len(ids),)
        or lists.dtype != np.dtype("<i4")
        or (len(lists) and (lists.min() < 0 or lists.max() >= n_cells))
        or not np.array_equal(stored_ids, ids)
    ):
        raise IndexFormatError(f"{path}: does not match the index's rows (damaged); {rebuild}")
    return centroids, lists


def load(folder: str, entry: dict, ids: np.ndarray, read_blocks, dim: int, distance: str):
    """The structure of an index: its file checked (:func:`_read_parts`), its cells filled with
    the index's rows, read by ``read_blocks`` (verified as for exact search)."""
    require()
    centroids, lists = _read_parts(folder, entry, ids, dim)
    structure = Structure(centroids, distance, entry["params"].get("nprobe", 1))
    for start, block in read_blocks(_BLOCK):
        end = start + len(block)
        structure.add(ids[start:end], block, lists[start:end])
    return structure


def update(folder: str, old: dict, old_ids: np.ndarray, manifest: dict, removed_ids, new_ids,
           new_vectors) -> dict:  # fmt: skip
    """The structure once ``removed_ids`` are dropped and ``new_ids`` added: the new rows are
    assigned to their nearest cells, no other row is touched. ``nprobe`` is chosen again when
    the row count has changed by more than a tenth since it was; the centroids are trained
    again when the rows have grown past :data:`RETRAIN_GROWTH` times those they were trained
    on."""
    from tripletsk.index.segment import SegmentReader

    require()
    dim, distance, n = manifest["dim"], manifest["distance"], manifest["n_rows"]

    def everything():
        readers = [SegmentReader(folder, e, dim) for e in manifest["segments"]]
        return (np.concatenate([r.ids for r in readers]),
                np.concatenate([r.read(0, r.rows) for r in readers]))  # fmt: skip

    params = old["params"]
    if not readable(old) or n > RETRAIN_GROWTH * params.get("n_rows_trained", n):
        return build(folder, *everything(), distance)
    centroids, lists = _read_parts(folder, old, old_ids, dim)
    keep = ~np.isin(old_ids, np.asarray(removed_ids, np.int64))
    ids, lists = old_ids[keep], lists[keep]
    if new_ids is not None and len(new_ids):
        ids = np.concatenate([ids, np.asarray(new_ids, np.int64)])
        lists = np.concatenate([lists, _assign(centroids, new_vectors, distance)])
    entry = {k: old[k] for k in ("recall_at_10", "recall_queries", "n_rows_measured")}
    entry["params"] = dict(params)
    if abs(n - old["n_rows_measured"]) > 0.1 * old["n_rows_measured"]:
        all_ids, vectors = everything()
        if not np.array_equal(all_ids, ids):  # not expected: rows keep their order
            return build(folder, all_ids, vectors, distance)
        structure = Structure(centroids, distance, 1)
        structure.add(all_ids, vectors, lists)
        nprobe, recall, n_queries = _choose_nprobe(structure, all_ids, vectors, distance)
        entry = {"params": {**params, "nprobe": nprobe}, "recall_at_10": recall,
                 "recall_queries": n_queries, "n_rows_measured": n}  # fmt: skip
    return _save(folder, centroids, ids, lists, entry)
