"""An embedding index of a feature cache: built, kept up to date, checked.

The rows of an index are the embeddings of a fitted model (:func:`build_index_from_model`),
the cached backbone features themselves, L2-normalised (:func:`build_index_from_features`,
``tripletsk index --features-only``: no model, no fitted parameter), or the thumbnails of the
cached images (:func:`build_index_from_thumbnails`, ``tripletsk index --thumbnails``: for
near-duplicates, which neither a model trained on classes nor the backbone features separate
from distinct images). The manifest's ``model`` record says which (``kind``: ``"model"``,
``"features"`` or ``"thumbnails"``), so the one is never taken for the other. It also
records the model (a digest of what makes its embeddings: the standardisation, the head's
weights and the distance, so a threshold written into the model file later does not make the
index stale) and the cache (its provenance and the digests of its keys and fingerprints).
Building again embeds only what the index lacks: new images of the cache and images whose
content changed; rows of images gone from the cache are dropped. :func:`check_index_current`
refuses an index whose model or cache has changed, with the command that brings it up to date.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from tripletsk.errors import StaleIndexError, UserError

__all__ = [
    "FEATURES_DIGEST",
    "BuildReport",
    "FeatureEmbedding",
    "build_index_from_features",
    "build_index_from_model",
    "build_index_from_thumbnails",
    "check_index_current",
    "model_digest",
]

_CHUNK = 8192
#: The ``model`` digest of a features-only index (never a model's: those are 32 hex digits).
FEATURES_DIGEST = "features:l2-normalised"


class FeatureEmbedding:
    """The rows of a features-only index: each backbone feature row divided by its L2 norm.

    It has no fitted parameter, so an index of it never goes stale through a model and new
    rows (or a query image) are embedded the same way whatever the cache holds. Distances are
    Euclidean between unit vectors (0 to 2; ``2 - 2 cos``).

    Parameters
    ----------
    n_features : int
        The cache's feature width.

    Examples
    --------
    >>> FeatureEmbedding(2).transform(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """

    distance = "l2"

    def __init__(self, n_features: int):
        self.n_components = int(n_features)

    def transform(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        return X / np.where(norms > 0, norms, 1.0)  # an all-zero row stays zero


def model_digest(encoder) -> str:
    """BLAKE2b of what makes ``encoder``'s embeddings: standardisation, weights, distance.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> enc = SimpleNamespace(distance="l2", feature_mean_=np.zeros(2), feature_scale_=np.ones(2),
    ...                       weights_=[(np.eye(2), np.zeros(2))])
    >>> len(model_digest(enc))
    32
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"distance": getattr(encoder, "distance", "l2")}).encode())
    arrays = [encoder.feature_mean_, encoder.feature_scale_]
    arrays += [a for layer in encoder.weights_ for a in layer]
    for a in arrays:
        a = np.ascontiguousarray(a, dtype="<f4")
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_digests(store) -> dict:
    """Digests of a cache's keys and fingerprints (its stored ``index_checksums`` when it has
    them, else computed)."""
    from tripletsk.cache.format import INDEX_CHECKSUMS, index_checksums

    stored = store.attrs.get(INDEX_CHECKSUMS)
    sums = json.loads(stored) if stored else index_checksums(store.keys, store.fingerprints, [])
    return {"keys_digest": sums["keys"], "fingerprints_digest": sums["fingerprints"]}


def _cache_record(store) -> dict:
    return {
        "path": store.path,
        "abspath": os.path.abspath(store.path),
        "provenance": store.provenance,
        "image_root": store.attrs.get("image_root"),
        "n_images": len(store),
        **cache_digests(store),
    }


def _model_record(fitted, digest: str) -> dict:
    path = fitted.path if os.path.exists(str(fitted.path)) else None
    return {
        "kind": "model",
        "path": path,
        "abspath": os.path.abspath(path) if path else None,
        "digest": digest,
        "n_components": int(getattr(fitted.model, "n_components", 0) or 0),
    }


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build_index_from_model` did: rows embedded, kept and dropped."""

    created: bool
    n_embedded: int
    n_kept: int
    n_dropped: int
    n_rows: int


def _features_record(store) -> dict:
    return {
        "kind": "features",
        "transform": "l2-normalised backbone features",
        "path": None,
        "abspath": None,
        "digest": FEATURES_DIGEST,
        "n_components": int(store.dim),
    }


def _thumbnails_record(size: int) -> dict:
    from tripletsk.index.thumbnails import thumbnail_digest

    return {
        "kind": "thumbnails",
        "transform": f"{size}x{size} RGB thumbnails (Lanczos), centred, L2-normalised",
        "size": int(size),
        "path": None,
        "abspath": None,
        "digest": thumbnail_digest(size),
        "n_components": 3 * int(size) ** 2,
    }


def _fitted_and_store(model, features, trust_pickle: bool):
    from tripletsk.modelfile import FittedModel, load_model, open_model_cache

    if isinstance(model, FittedModel):
        fitted = model
    elif isinstance(model, str | os.PathLike):
        fitted = load_model(model, trust_pickle=trust_pickle)
    else:
        fitted = FittedModel(model, "the model")
    return fitted, open_model_cache(fitted, features)


def _embed(model, store, rows: np.ndarray, progress=None) -> np.ndarray:
    """Embeddings of cache rows ``rows`` (sorted), a chunk of features at a time (or, for
    an embedding of the images themselves, its ``embed_rows``)."""
    if hasattr(model, "embed_rows"):
        return model.embed_rows(store, rows, progress)
    out = np.empty((len(rows), int(model.n_components)), dtype=np.float32)
    for s in range(0, len(rows), _CHUNK):
        part = rows[s : s + _CHUNK]
        features = store.take(part)
        if not np.isfinite(features).all():
            bad = part[~np.isfinite(features).all(axis=1)]
            keys = [store.keys[i] for i in bad[:3]]
            raise UserError(
                f"{store.path}: {len(bad)} cached feature row(s) hold NaN or infinite values "
                f"(keys {keys}); re-extract them with `tripletsk extract-features IMAGES_DIR -o "
                f"{store.path} --verify`"
            )
        out[s : s + len(part)] = model.transform(features)
        if progress is not None:
            progress(len(part))
    return out


def build_index_from_model(
    path: str | os.PathLike,
    model,
    features=None,
    *,
    replace: bool = False,
    approximate: str | None = None,
    trust_pickle: bool = False,
    progress=None,
):
    """Build the index of ``model``'s feature cache at ``path``, or bring it up to date.

    Parameters
    ----------
    path : path
        The index folder. An existing index of the same model is updated: only images new to
        the cache, or whose content changed, are embedded; rows of images no longer in the
        cache are dropped. An index of another model or another kind of cache is refused
        unless ``replace``.
    model : path, FittedModel or fitted TripletEncoder
    features : path or None
        The cache (default: the one the model was fitted on).
    approximate : {"auto", "yes", "no"} or None
        The approximate structure (see :meth:`EmbeddingIndex.create`); ``None`` keeps what
        an existing index has (``"auto"`` for a new one).
    progress : callable, optional
        Called with the number of rows embedded after each chunk.

    Returns
    -------
    (EmbeddingIndex, BuildReport)
    """
    fitted, store = _fitted_and_store(model, features, trust_pickle)
    digest = model_digest(fitted.model)
    meta = {"model": _model_record(fitted, digest), "cache": _cache_record(store)}
    return _build(path, fitted.model, store, meta, replace, approximate, progress)


def build_index_from_features(
    path: str | os.PathLike,
    features,
    *,
    replace: bool = False,
    approximate: str | None = None,
    progress=None,
):
    """Build the features-only index of the cache ``features`` at ``path``, or bring it up to
    date: its rows are the backbone features themselves, L2-normalised
    (:class:`FeatureEmbedding`), with no model.

    Parameters are those of :func:`build_index_from_model`. An index of a model at ``path`` is
    refused unless ``replace``.

    Returns
    -------
    (EmbeddingIndex, BuildReport)
    """
    from tripletsk.cache.store import FeatureStore

    store = FeatureStore(features)
    meta = {"model": _features_record(store), "cache": _cache_record(store)}
    return _build(path, FeatureEmbedding(store.dim), store, meta, replace, approximate, progress)


def build_index_from_thumbnails(
    path: str | os.PathLike,
    features,
    *,
    size: int | None = None,
    replace: bool = False,
    approximate: str | None = None,
    progress=None,
):
    """Build the thumbnail index of the cache ``features`` at ``path``, or bring it up to date:
    its rows are the :func:`~tripletsk.index.thumbnails.thumbnail` of each cached image, read
    from the image folder the cache records (each file checked against the cache's content
    hash), for near-duplicates. No model, no backbone.

    Parameters are those of :func:`build_index_from_model`, and ``size``: the thumbnail's side
    in pixels (default 8; an existing index keeps its own).

    Returns
    -------
    (EmbeddingIndex, BuildReport)
    """
    from tripletsk.cache.store import FeatureStore
    from tripletsk.index.format import MANIFEST
    from tripletsk.index.thumbnails import THUMBNAIL_SIZE, ThumbnailEmbedding

    if size is None and not replace and os.path.exists(os.path.join(os.fspath(path), MANIFEST)):
        from tripletsk.index.embedding_index import EmbeddingIndex

        size = EmbeddingIndex(path).model.get("size")
    size = THUMBNAIL_SIZE if size is None else int(size)
    if not 1 <= size <= 64:
        raise UserError(f"the thumbnail size must be 1 to 64 pixels, not {size}")
    store = FeatureStore(features)
    meta = {"model": _thumbnails_record(size), "cache": _cache_record(store)}
    return _build(path, ThumbnailEmbedding(size), store, meta, replace, approximate, progress)


def _build(path, embedding, store, meta: dict, replace: bool, approximate, progress):
    from tripletsk.index.embedding_index import EmbeddingIndex
    from tripletsk.index.format import MANIFEST

    path = os.fspath(path)
    exists = os.path.exists(os.path.join(path, MANIFEST))
    if exists and not replace:
        index = EmbeddingIndex(path)
        _check_same_kind(index, meta["model"], store)
        return _update(index, embedding, store, meta, approximate, progress)
    rows = np.arange(len(store))
    embeddings = _embed(embedding, store, rows, progress)
    index = EmbeddingIndex.create(
        path,
        store.keys,
        embeddings,
        distance=getattr(embedding, "distance", "l2"),
        hashes=store.fingerprints["blake2b"],
        approximate=approximate or "auto",
        replace=replace,
        **meta,
    )
    return index, BuildReport(True, len(rows), 0, 0, len(index))


def _describe(record: dict) -> str:
    if record.get("kind") == "features":
        return "backbone features without a model (`tripletsk index --features-only`)"
    if record.get("kind") == "thumbnails":
        return f"{record.get('size')} px image thumbnails (`tripletsk index --thumbnails`)"
    return f"the embeddings of the model {record.get('path') or 'given'}"


def _check_same_kind(index, record: dict, store) -> None:
    from tripletsk.cache.format import provenance_differences

    if index.kind == "thumbnails" and index.model.get("size") == record.get("size"):
        from tripletsk.index.thumbnails import check_thumbnail_rows

        check_thumbnail_rows(index)  # the same size, made by an older decoding
    if index.model.get("digest") != record["digest"]:
        if not index.has_model or record.get("kind") != "model":
            held = _describe(index.model) if not index.has_model else "the embeddings of a model"
            what = f"{held}, not {_describe(record)}"
        else:
            what = f"the embeddings of another model than {record.get('path') or 'this one'}"
        raise StaleIndexError(
            f"{index.path} holds {what}; pass --replace (replace=True) to rebuild it, or write "
            "to another -o"
        )
    recorded = index.cache.get("provenance") or {}
    if index.kind == "thumbnails":
        return  # made from the images, whatever network made the cache's features
    if recorded and provenance_differences(recorded, store.provenance):
        raise StaleIndexError(
            f"{index.path} was built from a cache made with other settings than {store.path}; "
            "pass --replace to rebuild it from this cache"
        )


def _update(index, model, store, meta, approximate, progress):
    from tripletsk.index.embedding_index import EmbeddingIndex

    store_keys = store.keys
    store_hashes = store.fingerprints["blake2b"]
    store_row = {k: i for i, k in enumerate(store_keys)}
    old_hashes = index.hashes
    dropped = [
        k
        for k, h in zip(index.keys, old_hashes.tolist(), strict=True)
        if k not in store_row or store_hashes[store_row[k]] != h
    ]
    gone = set(dropped)
    new_rows = np.array(
        sorted(i for k, i in store_row.items() if k not in index.row_of or k in gone),
        dtype=np.int64,
    )
    embeddings = _embed(model, store, new_rows, progress)
    add = ([store_keys[i] for i in new_rows], embeddings, store_hashes[new_rows])
    changed = len(new_rows) or dropped or meta["cache"] != index.cache or approximate
    if changed:
        from tripletsk.index.writer import update_index

        update_index(index, add=add, remove=dropped, approximate=approximate, meta=meta)
        index = EmbeddingIndex(index.path)
    kept = len(index) - len(new_rows)
    return index, BuildReport(False, len(new_rows), kept, len(dropped), len(index))


def _rebuild_command(index) -> str:
    if not index.has_model:
        cache = index.cache.get("path") or "CACHE"
        option = "--thumbnails" if index.kind == "thumbnails" else "--features-only"
        return f"`tripletsk index {option} --features {cache} -o {index.path}`"
    model = index.model.get("path") or "MODEL"
    return f"`tripletsk index --model {model} -o {index.path}`"


def check_index_current(index, store=None, encoder=None) -> None:
    """Raise :class:`StaleIndexError` if ``index`` no longer matches ``store`` (its cache) or
    ``encoder`` (its model); the message gives the command that updates it.

    ``store`` None skips the cache check, ``encoder`` None the model check. A features-only or
    thumbnail index is refused with any ``encoder``: its rows are not a model's embeddings. A
    thumbnail index whose rows another version's decoding made (its ``model`` digest is not
    :func:`~tripletsk.index.thumbnails.thumbnail_digest`) is refused whatever is passed.
    """
    if encoder is not None and not index.has_model:
        raise StaleIndexError(
            f"{index.path} holds {_describe(index.model)}, not the embeddings of a model: use it "
            "without a model, or build the model's index with `tripletsk index --model MODEL "
            "-o OTHER_INDEX`"
        )
    if encoder is not None and index.model.get("digest") not in (None, model_digest(encoder)):
        raise StaleIndexError(
            f"{index.path} was built with another model (its weights differ): rebuild it with "
            f"`tripletsk index --model MODEL -o {index.path} --replace`"
        )
    if index.kind == "thumbnails":
        from tripletsk.index.thumbnails import check_thumbnail_rows

        check_thumbnail_rows(index)
    if store is None or not index.cache:
        return
    found = cache_digests(store)
    recorded = {k: index.cache.get(k) for k in found}
    if found != recorded:
        raise StaleIndexError(
            f"{index.path} is out of date: the cache {store.path} has changed since it was "
            f"built (images added, removed or re-extracted). Update it with "
            f"{_rebuild_command(index)} (only new images are embedded)"
        )
