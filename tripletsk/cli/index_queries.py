"""The queries of the index commands (``search --index``, ``match``): a row of the index (a key,
or a file under the cached image folder) or an image embedded through the backbone and the
index's model, whose cache is checked fresh first."""

from __future__ import annotations

import os
import sys

import numpy as np

from tripletsk.errors import UnknownKeyError, UserError

__all__ = ["KIND_NAMES", "checked_store", "open_index", "query_embeddings"]

#: How messages name an index without a model, by its ``kind``.
KIND_NAMES = {"features": "features-only", "thumbnails": "thumbnail"}


def open_index(path: str):
    """The index at ``path`` (imported on first use: the command line starts fast)."""
    from tripletsk.index.embedding_index import EmbeddingIndex

    return EmbeddingIndex(path)


def _model_and_store(
    index, model_path=None, features=None, trust_pickle=False, need_store=True, store=None
):
    """The index's model (checked against it) and, if needed, its cache (checked fresh;
    ``store``: the cache, already opened and checked against the index)."""
    from tripletsk.index.build import check_index_current
    from tripletsk.modelfile import check_model_cache, load_model, open_model_cache

    path = model_path or index.model.get("path") or index.model.get("abspath")
    if not path or not os.path.exists(path):
        path = index.model.get("abspath") or path
    if not path:
        raise UserError(f"{index.path} records no model file; pass --model")
    fitted = load_model(path, trust_pickle=trust_pickle)
    check_index_current(index, encoder=fitted.model)
    if store is not None:
        check_model_cache(fitted, store)
        return fitted, store
    if need_store:
        cache = features or index.cache.get("path")
        if cache and not os.path.exists(cache):
            cache = index.cache.get("abspath") or cache
        store = open_model_cache(fitted, cache)
        check_index_current(index, store=store)
    return fitted, store


def _query_rows(index, queries: list[str]) -> tuple[list, list]:
    """For each query: its row in the index (a key, or a file under the image folder) or -1,
    and the files that need the backbone."""
    root = index.cache.get("image_root")
    rows, files = [], []
    for q in queries:
        row = index.row_of.get(q)
        if row is None and os.path.isfile(q) and root:
            for rel in (
                os.path.relpath(os.path.abspath(q), root),
                os.path.relpath(os.path.realpath(q), os.path.realpath(root)),
            ):
                row = index.row_of.get(rel.replace(os.sep, "/"))
                if row is not None:
                    break
        if row is None and not os.path.isfile(q):
            raise UnknownKeyError(
                f"{q!r} is neither a key of the index {index.path} nor an image file"
            )
        rows.append(-1 if row is None else row)
        if row is None:
            files.append(q)
    return rows, files


def query_embeddings(index, queries, args, *, need_model=False, store=None):
    """Embeddings of the queries: stored rows for indexed images, the backbone for the rest."""
    rows, files = _query_rows(index, queries)
    fitted = None
    if not index.has_model:
        kind = KIND_NAMES[index.kind]
        if getattr(args, "model", None):
            raise UserError(
                f"{index.path} is a {kind} index: its rows are {_ROWS[index.kind]}, not the "
                f"embeddings of {args.model}; drop --model, or use the model's own index"
            )
        if need_model:
            raise UserError(
                f"{index.path} is a {kind} index (no model, so no calibrated threshold): pass "
                "--threshold"
            )
        if files and store is None and index.features_only:
            raise UserError(
                f"{index.path}: its cache is not found; pass --features CACHE to embed images "
                "that are not in it"
            )
    elif files or need_model:
        fitted, store = _model_and_store(
            index,
            getattr(args, "model", None),
            getattr(args, "features", None),
            getattr(args, "trust_pickle", False),
            need_store=bool(files),
            store=store,
        )
    out = np.empty((len(queries), index.dim), dtype=np.float32)
    known = [i for i, r in enumerate(rows) if r >= 0]
    if known:
        out[known] = index.embeddings([rows[i] for i in known])
    if files and index.kind == "thumbnails":
        out[[i for i, r in enumerate(rows) if r < 0]] = _thumbnails(index).transform_files(files)
    elif files:
        from tripletsk.extraction import features_for_files

        names = ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
        print(
            f"{len(files)} image(s) not in the cache ({names}): loading the backbone to embed them",
            file=sys.stderr,
        )
        new = [i for i, r in enumerate(rows) if r < 0]
        out[new] = _embedding(index, fitted, store).transform(features_for_files(files, like=store))
    return out, np.array(rows, dtype=np.int64), fitted


_ROWS = {"features": "backbone features", "thumbnails": "image thumbnails"}


def _thumbnails(index):
    from tripletsk.index.thumbnails import ThumbnailEmbedding

    embedding = ThumbnailEmbedding(index.model.get("size") or 0)
    if embedding.n_components != index.dim:
        raise UserError(f"{index.path}: its thumbnail size does not match its {index.dim} columns")
    return embedding


def _embedding(index, fitted, store):
    """What turns backbone features into the index's rows: the model, or (features-only) the
    L2 normalisation, checked against the index's width."""
    if not index.features_only:
        return fitted.model
    from tripletsk.index.build import FeatureEmbedding

    if store.dim != index.dim:
        raise UserError(
            f"{index.path} holds {index.dim}-wide rows but the cache {store.path} has "
            f"{store.dim} features; the index is not of this cache"
        )
    return FeatureEmbedding(store.dim)


def checked_store(index, args):
    """The index's cache (``--features`` first), checked: a stale index is refused. None (with
    a note) when the cache is not found."""
    from tripletsk.index.build import check_index_current

    paths = [p for p in _cache_paths(index, args) if p and os.path.exists(p)]
    if paths:
        from tripletsk.cache.store import FeatureStore

        store = FeatureStore(paths[0])
        check_index_current(index, store=store)
        return store
    check_index_current(index)  # without its cache: still refused if made by older thumbnails
    if index.cache:
        print(
            f"{index.path}: its cache is not found; cannot check that the index is up to date",
            file=sys.stderr,
        )
    return None


def _cache_paths(index, args) -> list:
    return [getattr(args, "features", None), index.cache.get("path"), index.cache.get("abspath")]
