"""Exact nearest neighbours and close pairs by blocked matrix products, in bounded memory.

The rows to search are read a block at a time (from disk: :class:`~tripletsk.index.segment.
SegmentReader`), so memory is one block of rows plus one ``queries x block`` matrix of scores,
whatever the number of rows. Scores come from one matrix product per block (``|x|^2 - 2 q.x``
ranks like the Euclidean distance; ``-q.x / |x|`` like the cosine distance); the rows that can
still enter a query's ``k`` best are then measured exactly in float64, so distances and ties
(by row number) do not depend on the block size. The L1 distance has no matrix-product form and
is computed directly (slower).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from sklearn.metrics import pairwise_distances

from tripletsk.distances import check_distance, paired_distance

__all__ = ["BlockReader", "exact_neighbors", "pairs_within", "rows_per_block"]

#: ``read_blocks(block_rows, start=0)`` yields ``(first_row, rows)`` in order from ``start``.
BlockReader = Callable[..., Iterator[tuple[int, np.ndarray]]]

#: Bytes of the ``queries x block`` score matrix; with the block itself, the working memory.
SCORE_BYTES = 64 << 20
#: Bytes of the float64 copies of candidate rows measured exactly at once (the candidates of a
#: block are measured in chunks of this size, whatever their number and width).
EXACT_BYTES = 32 << 20


def rows_per_block(n_queries: int, budget: int = SCORE_BYTES) -> int:
    """Rows per block so that a float32 ``n_queries x rows`` matrix fits ``budget`` bytes."""
    return int(max(1024, min(1 << 20, budget // (4 * max(1, n_queries)))))


def _scores(q: np.ndarray, x: np.ndarray, distance: str) -> np.ndarray:
    """Per-block ranking scores (smaller is nearer), float32 except for L1."""
    if distance == "l1":
        return pairwise_distances(q, x, metric="manhattan")
    dots = q @ x.T
    if distance == "cosine":
        norms = np.sqrt(np.maximum(np.einsum("ij,ij->i", x, x), 1e-24))
        return np.negative(dots, out=dots) / norms  # q is unit norm here
    dots *= -2.0
    dots += np.einsum("ij,ij->i", x, x)[None, :]
    return dots


def _score_bound(dist: np.ndarray, qn: np.ndarray, distance: str) -> np.ndarray:
    """The score a row must not exceed to be at distance ``<= dist`` (per query)."""
    if distance == "l2":
        return np.square(dist) - qn
    if distance == "sqeuclidean":
        return dist - qn
    if distance == "cosine":
        return dist - 1.0
    return dist


def _exact(q: np.ndarray, x: np.ndarray, qi: np.ndarray, xi: np.ndarray, distance: str):
    """Exact float64 distances of the pairs ``(q[qi], x[xi])``, a bounded chunk at a time."""
    out = np.empty(len(qi))
    step = max(1, EXACT_BYTES // (16 * max(1, q.shape[1])))
    for s in range(0, len(qi), step):
        a = q[qi[s : s + step]].astype(np.float64)
        b = x[xi[s : s + step]].astype(np.float64)
        out[s : s + step] = paired_distance(a, b, distance)
    return out


def _prepare(queries: np.ndarray, distance: str):
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if distance == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    qn = np.einsum("ij,ij->i", q.astype(np.float64), q.astype(np.float64))
    # float32 products err by ~1e-6 of |q||x|: candidates within this slack are measured exactly
    slack = 1e-4 * (1.0 + qn)
    return q, qn, slack


def exact_neighbors(
    queries: np.ndarray,
    read_blocks: BlockReader,
    k: int,
    distance: str = "l2",
    *,
    exclude: np.ndarray | None = None,
    score_bytes: int = SCORE_BYTES,
    query_batch: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of each query, exactly: ``(rows, distances)``, nearest first.

    Parameters
    ----------
    queries : ndarray of shape (n_queries, dim)
    read_blocks : callable
        ``read_blocks(block_rows)`` yields ``(first_row, rows)`` blocks covering every row.
    k : int
    distance : {"l2", "sqeuclidean", "cosine", "l1"}
    exclude : ndarray of shape (n_queries,), optional
        A row to leave out of each query's results, or -1.
    score_bytes : int
        Memory for one ``queries x block`` score matrix.
    query_batch : int
        Queries per pass over the rows.

    Returns
    -------
    rows : ndarray of shape (n_queries, k), int64 (-1 where fewer than k rows exist)
    distances : ndarray of shape (n_queries, k), float64 (inf where no row)

    Examples
    --------
    >>> x = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    >>> blocks = lambda n, start=0: iter([(0, x)])
    >>> rows, dist = exact_neighbors(np.array([[0.9, 0.0]]), blocks, k=2)
    >>> rows.tolist(), dist.round(3).tolist()
    ([[1, 0]], [[0.1, 0.9]])
    """
    check_distance(distance)
    queries = np.asarray(queries)
    n = len(queries)
    exclude = np.full(n, -1, np.int64) if exclude is None else np.asarray(exclude, np.int64)
    rows = np.full((n, k), -1, dtype=np.int64)
    dists = np.full((n, k), np.inf)
    for s in range(0, n, query_batch):
        sl = slice(s, min(n, s + query_batch))
        rows[sl], dists[sl] = _search_batch(
            queries[sl], read_blocks, k, distance, exclude[sl], score_bytes
        )
    return rows, dists


def _search_batch(queries, read_blocks, k, distance, exclude, score_bytes):
    q, qn, slack = _prepare(queries, distance)
    n = len(q)
    best_r = np.full((n, k), -1, dtype=np.int64)
    best_d = np.full((n, k), np.inf)
    step = rows_per_block(n, score_bytes if distance != "l1" else score_bytes // 2)
    for start, x in read_blocks(step):
        scores = _scores(q, x, distance)
        inside = (exclude >= start) & (exclude < start + len(x))
        scores[inside, exclude[inside] - start] = np.inf
        not_full = best_r[:, -1] < 0
        cq, cr = _candidates(scores, not_full, best_d, qn, slack, k, distance)
        if not len(cq):
            continue
        cd = _exact(q, x, cq, cr, distance)
        best_r, best_d = _merge(best_r, best_d, cq, cr + start, cd, k)
    return best_r, best_d


def _candidates(scores, not_full, best_d, qn, slack, k, distance):
    """(query, block row) pairs that may enter the queries' k best."""
    parts_q, parts_r = [], []
    if not_full.any():  # no k-th distance yet: every finite score of the block's k best
        sub = scores[not_full]
        kk = min(k, sub.shape[1])
        top = np.argpartition(sub, kk - 1, axis=1)[:, :kk] if kk < sub.shape[1] else None
        if top is None:
            top = np.broadcast_to(np.arange(sub.shape[1]), sub.shape)
        qi = np.repeat(np.flatnonzero(not_full), top.shape[1])
        ri = top.reshape(-1)
        finite = np.isfinite(scores[qi, ri])
        parts_q.append(qi[finite])
        parts_r.append(ri[finite])
    full = ~not_full
    if full.any():
        bound = _score_bound(best_d[:, -1], qn, distance) + slack
        bound[not_full] = -np.inf
        cq, cr = np.nonzero(scores <= bound[:, None].astype(scores.dtype))
        parts_q.append(cq)
        parts_r.append(cr)
    return np.concatenate(parts_q), np.concatenate(parts_r)


def _merge(best_r, best_d, cq, cr, cd, k):
    """Keep each query's k nearest of its current best and the candidates (ties: lower row)."""
    n = len(best_r)
    have = best_r >= 0
    qq = np.concatenate([np.nonzero(have)[0], cq])
    rr = np.concatenate([best_r[have], cr])
    dd = np.concatenate([best_d[have], cd])
    order = np.lexsort((rr, dd, qq))
    qq, rr, dd = qq[order], rr[order], dd[order]
    first = np.searchsorted(qq, np.arange(n))
    rank = np.arange(len(qq)) - first[qq]
    keep = rank < k
    out_r = np.full((n, k), -1, dtype=np.int64)
    out_d = np.full((n, k), np.inf)
    out_r[qq[keep], rank[keep]] = rr[keep]
    out_d[qq[keep], rank[keep]] = dd[keep]
    return out_r, out_d


def pairs_within(
    read_blocks: BlockReader,
    threshold: float,
    distance: str = "l2",
    *,
    block_rows: int = 2048,
    max_pairs: int = 10_000_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows ``i < j`` at distance ``<= threshold``: ``(i, j, distance)``.

    All pairs are compared, a block against each later block, both read through
    ``read_blocks(block_rows, start)``; memory is two blocks, their score matrix, the indices
    of the candidate pairs of one block pair, :data:`EXACT_BYTES` to measure them, and the
    pairs found (at most ``max_pairs``).

    Raises
    ------
    ValueError
        If more than ``max_pairs`` pairs are that close (the threshold is too large).

    Examples
    --------
    >>> x = np.array([[0.0], [0.05], [1.0], [1.02]], dtype=np.float32)
    >>> blocks = lambda n, start=0: ((s, x[s : s + n]) for s in range(start, len(x), n))
    >>> i, j, d = pairs_within(blocks, 0.1, block_rows=2)
    >>> i.tolist(), j.tolist()
    ([0, 2], [1, 3])
    """
    check_distance(distance)
    found_i, found_j, found_d, total = [], [], [], 0
    for start_a, a in read_blocks(block_rows):
        q, qn, slack = _prepare(a, distance)
        bound = (_score_bound(np.full(len(a), float(threshold)), qn, distance) + slack)[:, None]
        for start_b, b in read_blocks(block_rows, start_a):
            scores = _scores(q, b, distance)
            ci, cj = np.nonzero(scores <= bound.astype(scores.dtype))
            gi, gj = ci + start_a, cj + start_b
            later = gj > gi
            ci, cj, gi, gj = ci[later], cj[later], gi[later], gj[later]
            del scores
            step = max(1, EXACT_BYTES // (16 * max(1, a.shape[1])))
            for s in range(0, len(ci), step):
                cd = _exact(a, b, ci[s : s + step], cj[s : s + step], distance)
                close = cd <= threshold
                total += int(close.sum())
                if total > max_pairs:
                    raise ValueError(
                        f"more than {max_pairs:,} pairs are within distance {threshold}: the "
                        "threshold is too large for near-duplicates; lower it"
                    )
                found_i.append(gi[s : s + step][close])
                found_j.append(gj[s : s + step][close])
                found_d.append(cd[close])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return (
        np.concatenate(found_i).astype(np.int64),
        np.concatenate(found_j).astype(np.int64),
        np.concatenate(found_d),
    )
