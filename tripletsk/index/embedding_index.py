"""``EmbeddingIndex``: embeddings stored once on disk, searched exactly or approximately.

An index is a folder (:mod:`tripletsk.index.format`): segments of float32 embeddings with their
keys, committed by one manifest. Rows are added as a new segment and removed by rewriting the
segments that held them, so nothing already stored is embedded again. Search is exact by
default (:mod:`tripletsk.index.blocked`: blocked matrix products over rows read from disk, memory
bounded); an index of many rows also keeps an approximate structure (:mod:`tripletsk.index.ann`)
whose recall against exact search is measured when it is built and reported with every answer.
Building an index from a fitted model and its feature cache, and checking that it is still
up to date, is :mod:`tripletsk.index.build`.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from tripletsk.distances import check_distance
from tripletsk.errors import IndexFormatError, UnknownKeyError, UserError
from tripletsk.evaluation.search import Neighbors, clamped_k
from tripletsk.index import ann as _ann
from tripletsk.index.blocked import exact_neighbors, pairs_within
from tripletsk.index.format import read_manifest
from tripletsk.index.segment import SegmentReader

__all__ = ["EmbeddingIndex", "Matches"]

APPROXIMATE_FROM = _ann.APPROXIMATE_FROM


class Matches(tuple):
    """``(keys, distances)`` of :meth:`EmbeddingIndex.match`: ``keys[i]`` is ``None`` for no
    match."""

    __slots__ = ()

    def __new__(cls, keys, distances):
        return super().__new__(cls, (keys, distances))

    @property
    def keys(self) -> np.ndarray:
        return self[0]

    @property
    def distances(self) -> np.ndarray:
        return self[1]


class EmbeddingIndex:
    """A folder of stored embeddings with their keys, for search, duplicates and matching.

    Open an existing index with ``EmbeddingIndex(path)``; make one from embeddings with
    :meth:`create`, or from a fitted model and its feature cache with
    :func:`tripletsk.index.build.build_index_from_model` (which also updates it when the cache
    has grown: ``tripletsk index``).

    Parameters
    ----------
    path : str or path-like
        The index folder.

    Attributes
    ----------
    path : str
    distance : str
        The distance of search results (the model's).
    dim : int
    keys : list of str
        One per row, in row order.
    model, cache : dict
        What the index was built from (empty for :meth:`create`). ``model["kind"]`` is
        ``"model"`` (a fitted model's embeddings), ``"features"`` (the backbone features
        themselves, L2-normalised: ``tripletsk index --features-only``) or ``"thumbnails"``
        (the images' thumbnails: ``tripletsk index --thumbnails``).
    kind : str
        ``model["kind"]``.
    has_model : bool
        Whether the rows are a model's embeddings (``kind == "model"``).
    features_only : bool
        Whether the rows are backbone features, not a model's embeddings.
    approximate : dict or None
        The approximate structure: ``library``, ``params``, ``recall_at_10`` (measured against
        exact search on ``recall_queries`` rows) and ``n_rows`` when measured.

    Examples
    --------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "index")
    >>> vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    >>> index = EmbeddingIndex.create(path, ["a.jpg", "b.jpg", "c.jpg"], vectors)
    >>> index.search(np.array([[1.0, 0.1]]), k=2).keys.tolist()
    [['a.jpg', 'c.jpg']]
    >>> index = index.add(["d.jpg"], np.array([[0.0, -1.0]], dtype=np.float32))
    >>> len(index), index.search_keys(["d.jpg"], k=1).keys.tolist()
    (4, [['a.jpg']])
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._load()

    def _load(self) -> None:
        for attempt in range(2):  # a writer may delete old files between reads: read again
            manifest = read_manifest(self.path)
            try:
                segments = [
                    SegmentReader(self.path, s, manifest["dim"]) for s in manifest["segments"]
                ]
                break
            except IndexFormatError:
                if attempt or read_manifest(self.path)["digest"] == manifest["digest"]:
                    raise
        self._manifest = manifest
        self._segments = segments
        self.distance = manifest["distance"]
        self.dim = manifest["dim"]
        self.model = manifest["model"]
        self.kind = self.model.get("kind", "model")
        self.has_model = self.kind == "model"
        self.features_only = self.kind == "features"
        self.cache = manifest["cache"]
        self.approximate = manifest["ann"]
        self.keys = [k for s in segments for k in s.keys]
        self.ids = np.concatenate([s.ids for s in segments]) if segments else np.zeros(0, np.int64)
        self._starts = np.cumsum([0] + [s.rows for s in segments])
        self._row_of = None
        self._ann = None
        if len(self.ids) > 1 and not (np.diff(self.ids) > 0).all():
            raise IndexFormatError(f"{self.path}: row ids are not increasing; the index is damaged")
        if len(set(self.keys)) != len(self.keys):
            raise IndexFormatError(f"{self.path}: a key appears twice; the index is damaged")

    def __len__(self) -> int:
        return len(self.keys)

    def info(self) -> dict:
        """A summary: rows, what they are, what they were built from, how they are searched."""
        m, a = self._manifest, self.approximate
        model = {k: v for k, v in self.model.items() if k != "abspath"}
        cache = {k: self.cache.get(k) for k in ("path", "image_root", "n_images") if self.cache}
        return {
            "path": self.path,
            "n_rows": len(self),
            "dim": self.dim,
            "distance": self.distance,
            "rows": self.kind,
            "model": model,
            "cache": cache,
            "segments": len(m["segments"]),
            "search": "exact" if a is None else (
                f"exact or approximate ({a['library']} {a['params'].get('kind', '')}, "
                f"recall@10 {a['recall_at_10']:.3f} on {a['recall_queries']} sampled rows)"
            ),
            "format_version": m.get("format_version"),
            "created": m.get("created"),
            "updated": m.get("updated"),
        }  # fmt: skip

    def __contains__(self, key) -> bool:
        return key in self.row_of

    def __repr__(self) -> str:
        kind = f", approximate={self.approximate['library']}" if self.approximate else ""
        kind += "" if self.has_model else f", kind={self.kind!r}"
        return f"EmbeddingIndex({self.path!r}, rows={len(self)}, dim={self.dim}{kind})"

    @property
    def row_of(self) -> dict[str, int]:
        """Row number of each key."""
        if self._row_of is None:
            self._row_of = {k: i for i, k in enumerate(self.keys)}
        return self._row_of

    @property
    def hashes(self) -> np.ndarray:
        """Content hash (``S32``) of the image of each row, from the cache's fingerprints."""
        return (
            np.concatenate([s.hashes for s in self._segments])
            if self._segments
            else (np.zeros(0, "S32"))
        )

    # -- reading rows ------------------------------------------------------------------------
    def read_blocks(self, block_rows: int, start: int = 0):
        """Yield ``(first_row, embeddings)`` blocks of at most ``block_rows`` rows from ``start``,
        read from disk and verified (checksums, finite values)."""
        for seg, s0 in zip(self._segments, self._starts[:-1], strict=True):
            s0 = int(s0)
            for lo in range(max(0, start - s0), seg.rows, block_rows):
                yield s0 + lo, seg.read(lo, min(seg.rows, lo + block_rows))

    def rows_of(self, keys) -> np.ndarray:
        """Row numbers of ``keys`` (:class:`~tripletsk.errors.UnknownKeyError` for unknown ones)."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        unknown = [k for k in keys if k not in self.row_of]
        if unknown:
            raise UnknownKeyError(
                f"{self.path}: {len(unknown)} key(s) not in the index, first {unknown[:3]}"
            )
        return np.array([self.row_of[k] for k in keys], dtype=np.int64)

    def embeddings(self, rows) -> np.ndarray:
        """The stored embeddings of row numbers ``rows`` (float32, in the given order)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        seg_of = np.searchsorted(self._starts, rows, side="right") - 1
        for s in np.unique(seg_of):
            mine = seg_of == s
            out[mine] = self._segments[s].take(rows[mine] - self._starts[s])
        return out

    def all_embeddings(self) -> np.ndarray:
        """Every stored embedding, ``(len(self), dim)`` float32, in row order."""
        return np.concatenate(
            [b for _, b in self.read_blocks(1 << 16)] or [np.zeros((0, self.dim), np.float32)]
        )

    # -- search ------------------------------------------------------------------------------
    def method(self, method: str = "auto") -> str:
        """``"exact"`` or ``"approximate"``: what :meth:`search` with ``method`` will use."""
        if method not in ("auto", "exact", "approximate"):
            raise ValueError(f"method must be 'auto', 'exact' or 'approximate'; got {method!r}")
        if method == "exact":
            return "exact"
        usable = _ann.readable(self.approximate) and _ann.available()
        if method == "approximate" and not usable:
            raise UserError(
                f"{self.path} has no approximate structure"
                + ("" if self.approximate is None else f" usable here ({self._unusable()})")
                + "; build one with `tripletsk index --approximate yes`, or search exactly"
            )
        if self.approximate is not None and not usable:
            warnings.warn(
                f"{self.path} has an approximate structure but {self._unusable()}; "
                "searching exactly",
                UserWarning,
                stacklevel=3,
            )
        return "approximate" if usable else "exact"

    def _unusable(self) -> str:
        if not _ann.readable(self.approximate):
            return (
                f"it was made with {self.approximate.get('library')!r}, which this tripletsk "
                "does not read (rebuild it: `tripletsk index --approximate yes`)"
            )
        return _ann.missing_reason()

    def search(self, queries, k: int = 10, *, method: str = "auto", exclude_rows=None) -> Neighbors:
        """The ``k`` nearest stored rows of each query embedding, nearest first.

        Parameters
        ----------
        queries : array-like of shape (n_queries, dim)
            Query embeddings (e.g. ``model.transform(...)``).
        k : int, default=10
            Clamped, with a warning, to the rows the index can return.
        method : {"auto", "exact", "approximate"}, default="auto"
            ``"auto"`` uses the approximate structure when the index has one (see
            ``approximate["recall_at_10"]`` for its measured recall), else exact search.
        exclude_rows : array-like of shape (n_queries,), optional
            A row to leave out of each query's results (the query itself), or -1.

        Returns
        -------
        Neighbors
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}); got {queries.shape}")
        if not np.isfinite(queries).all():
            raise ValueError("query embeddings hold NaN or infinite values")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int; got {k!r}.")
        exclude = None if exclude_rows is None else np.asarray(exclude_rows, np.int64)
        available = len(self) - int(exclude is not None and (exclude >= 0).any())
        if available < 1:
            raise ValueError(f"{self.path} holds no row to return")
        k = clamped_k(k, available)
        if self.method(method) == "approximate":
            rows, dists = self._approximate(queries, k, exclude)
        else:
            rows, dists = exact_neighbors(
                queries, self.read_blocks, k, self.distance, exclude=exclude
            )
        keys = np.array(self.keys, dtype=object)[np.maximum(rows, 0)]
        keys[rows < 0] = None
        return Neighbors(rows, keys, dists)

    def search_keys(self, keys, k: int = 10, *, method: str = "auto") -> Neighbors:
        """Neighbours of stored rows given by key (each left out of its own results)."""
        rows = self.rows_of(keys)
        return self.search(self.embeddings(rows), k, method=method, exclude_rows=rows)

    def _approximate(self, queries, k, exclude):
        if self._ann is None:
            self._ann = _ann.load(
                self.path, self.approximate, self.ids, self.read_blocks, self.dim, self.distance
            )
        extra = 0 if exclude is None else 1
        ids, dists = self._ann.search(queries, k + extra)
        rows = np.searchsorted(self.ids, ids)
        rows = np.where((ids >= 0) & (rows < len(self.ids)), rows, -1)
        rows[(rows >= 0) & (self.ids[np.maximum(rows, 0)] != ids)] = -1  # not a stored id
        if exclude is not None:
            rows = np.where(rows == exclude[:, None], -1, rows)
        dists = np.where(rows < 0, np.inf, dists)
        # Nearest first (the library's float32 distances); rows it missed (-1) last; keep k.
        order = np.argsort(dists, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(rows, order, axis=1), np.take_along_axis(dists, order, axis=1)

    def _distances(self, queries, rows) -> np.ndarray:
        """Exact float64 distances of each query to its rows (inf where row is -1)."""
        from tripletsk.distances import paired_distance

        flat = rows.reshape(-1)
        vectors = self.embeddings(np.maximum(flat, 0)).astype(np.float64)
        q = np.repeat(queries.astype(np.float64), rows.shape[1], axis=0)
        d = paired_distance(q, vectors, self.distance)
        d[flat < 0] = np.inf
        return d.reshape(rows.shape)

    # -- duplicates and matching ---------------------------------------------------------------
    def duplicate_pairs(
        self,
        threshold: float,
        *,
        verify: float | None = None,
        verify_same_size: float | None = None,
    ):
        """Every pair of rows at distance ``<= threshold``, exact, all pairs compared in blocks
        read from disk.

        Parameters
        ----------
        threshold : float
            The largest distance of a pair in the index.
        verify : float, optional
            A thumbnail index only: keep a pair only if its images, compared at their common
            size (:func:`tripletsk.index.thumbnails.image_pair_distances`), are within
            ``verify``; ``2`` keeps every pair and measures it.
        verify_same_size : float, optional
            With ``verify``: the threshold instead for a pair of images of the same width and
            height, which were not resized relative to each other, so a copy among them is
            exact or re-encoded (:func:`tripletsk.index.thumbnails.compare_image_pairs`).
            At most ``verify``; by default ``verify``.

        Returns
        -------
        (rows_i, rows_j, distances)
            The pairs' rows and distances: the index's, or with ``verify`` the images'.

        Raises
        ------
        ValueError
            If a threshold is negative or not finite, ``verify_same_size`` is given without
            ``verify`` or exceeds it.
        UserError
            With ``verify``, if the index is not a thumbnail index or an image is missing or
            changed since it was cached.
        """
        threshold = _check_threshold(threshold)
        verify, verify_same_size = _check_verify(verify, verify_same_size)
        if verify is not None:
            from tripletsk.index.thumbnails import check_verifiable

            check_verifiable(self)
        i, j, d = pairs_within(self.read_blocks, threshold, self.distance)
        if verify is None:
            return i, j, d
        from tripletsk.index.thumbnails import compare_image_pairs

        d, same_size = compare_image_pairs(self, i, j)
        keep = d <= np.where(same_size, verify_same_size, verify)
        return i[keep], j[keep], d[keep]

    def duplicates(
        self,
        threshold: float,
        *,
        verify: float | None = None,
        verify_same_size: float | None = None,
    ) -> list[list[str]]:
        """Groups of near-duplicate keys: the connected groups of the pairs within
        ``threshold`` (two images are in one group if a chain of close pairs joins them), with
        ``verify`` (and ``verify_same_size``) only the pairs verified on the images
        (:meth:`duplicate_pairs`). Groups are sorted by their first key; each group's keys in
        row order."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        i, j, _ = self.duplicate_pairs(threshold, verify=verify, verify_same_size=verify_same_size)
        if not len(i):
            return []
        n = len(self)
        graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
        _, label = connected_components(graph, directed=False)
        involved = np.unique(np.concatenate([i, j]))
        groups: dict[int, list[int]] = {}
        for r in involved.tolist():
            groups.setdefault(int(label[r]), []).append(r)
        out = [[self.keys[r] for r in rows] for rows in groups.values()]
        return sorted(out, key=lambda g: g[0])

    def match(self, queries, threshold: float, *, method: str = "auto", exclude_rows=None):
        """The nearest stored key of each query if within ``threshold``, else ``None``.

        Returns
        -------
        Matches
            ``(keys, distances)``: object array of keys or ``None``, and the nearest distance.
        """
        threshold = _check_threshold(threshold)
        found = self.search(queries, 1, method=method, exclude_rows=exclude_rows)
        keys = found.keys[:, 0].copy()
        keys[found.distances[:, 0] > threshold] = None
        return Matches(keys, found.distances[:, 0])

    # -- writing -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        keys,
        embeddings,
        *,
        distance: str = "l2",
        hashes=None,
        model: dict | None = None,
        cache: dict | None = None,
        approximate: str = "auto",
        replace: bool = False,
    ) -> EmbeddingIndex:
        """Write a new index of ``embeddings`` (one row per key) at ``path``.

        ``approximate``: ``"auto"`` (an approximate structure from
        :data:`APPROXIMATE_FROM` rows when the library is installed), ``"yes"`` or ``"no"``.
        An existing index is replaced only with ``replace=True``, and only once the new one
        is complete.
        """
        from tripletsk.index.writer import create_index

        create_index(
            os.fspath(path), keys, embeddings, distance=check_distance(distance), hashes=hashes,
            model=model or {}, cache=cache or {}, approximate=approximate, replace=replace,
        )  # fmt: skip
        return cls(path)

    def add(self, keys, embeddings, hashes=None) -> EmbeddingIndex:
        """Add rows (new keys only) without touching stored ones; returns the index reloaded."""
        return self.update(add=(keys, embeddings, hashes))

    def remove(self, keys) -> EmbeddingIndex:
        """Drop the rows of ``keys``; returns the index reloaded."""
        return self.update(remove=keys)

    def update(self, *, add=None, remove=(), approximate: str | None = None) -> EmbeddingIndex:
        """Remove rows by key, then add ``(keys, embeddings, hashes)``, in one commit."""
        from tripletsk.index.writer import update_index

        update_index(self, add=add, remove=remove, approximate=approximate)
        self._load()
        return self


def _check_threshold(threshold, name: str = "threshold") -> float:
    t = float(threshold)
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"{name} must be a finite distance >= 0; got {threshold!r}")
    return t


def _check_verify(verify, same_size) -> tuple[float | None, float | None]:
    """``(verify, verify_same_size)`` checked, the latter ``verify`` when not given."""
    if verify is None:
        if same_size is not None:
            raise ValueError(
                "verify_same_size tightens verify for pairs of images of the same size and "
                f"needs it; got verify_same_size={same_size!r} without verify"
            )
        return None, None
    verify = _check_threshold(verify, "verify")
    if same_size is None:
        return verify, verify
    same_size = _check_threshold(same_size, "verify_same_size")
    if same_size > verify:
        # Same-size copies are exact or re-encoded, nearer than resized ones: a looser
        # threshold for them is a mistake, not a choice.
        raise ValueError(
            f"verify_same_size must be at most verify (same-size pairs are held to the tighter "
            f"threshold); got verify_same_size={same_size!r} > verify={verify!r}"
        )
    return verify, same_size
