"""Thumbnails: how an image looks at 8 x 8 pixels, the rows of an index for near-duplicates.

A thumbnail is the image decoded as the extractor decodes it (EXIF orientation applied, any mode
converted to RGB), shrunk to ``size`` x ``size`` with Lanczos filtering (aspect ratio not kept),
its ``3 * size**2`` values centred on their mean and divided by their norm. Distances are
Euclidean between unit vectors (0 to 2). An exact copy is at 0; a resized, re-encoded, brighter
or more contrasted copy lands close to its original, where backbone features put resized
copies farther than many distinct images (docs/findings.md, near-duplicates). Size 8 and the
Lanczos filter were chosen on Fashion-MNIST training images (sizes 4 to 16, three filters).

The thumbnails of an index are read from the images of its feature cache (the folder the cache
records), each checked against the content hash the cache holds: an image that changed since
it was cached is refused, never indexed under the old image's key.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tripletsk.cache.format import decode_str
from tripletsk.errors import ImageDecodeError, UserError

__all__ = ["THUMBNAIL_SIZE", "ThumbnailEmbedding", "thumbnail", "thumbnail_digest"]

#: The default side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 8
_THREADS = min(8, os.cpu_count() or 1)  # Pillow and hashlib release the GIL while they work


def thumbnail_digest(size: int) -> str:
    """The ``model`` digest of a thumbnail index: what makes its rows.

    Examples
    --------
    >>> thumbnail_digest(8)
    'thumbnails:8px-lanczos-rgb-centred-l2'
    """
    return f"thumbnails:{int(size)}px-lanczos-rgb-centred-l2"


def thumbnail(data: bytes | str | os.PathLike, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """The thumbnail of one image (file bytes or a path): a unit vector of ``3 * size**2``.

    Raises
    ------
    ImageDecodeError
        With the reason, if ``data`` is not a readable image.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.linear_gradient("L").save(buf, format="PNG")
    >>> t = thumbnail(buf.getvalue())
    >>> t.shape, round(float(np.linalg.norm(t)), 4)
    ((192,), 1.0)
    """
    from tripletsk.extraction.decode import decode

    if not isinstance(data, bytes):
        data = os.fspath(data)
    pixels = decode(data, int(size), max_pixels=None, resample="lanczos")
    x = pixels.astype(np.float64).ravel()
    x -= x.mean()
    norm = np.linalg.norm(x)
    return (x / norm if norm > 0 else x).astype(np.float32)  # a flat image stays all zero


class ThumbnailEmbedding:
    """The rows of a thumbnail index: the :func:`thumbnail` of each cached image's file.

    Parameters
    ----------
    size : int
        The thumbnail's side in pixels.
    """

    distance = "l2"

    def __init__(self, size: int = THUMBNAIL_SIZE):
        self.size = int(size)
        self.n_components = 3 * self.size**2

    def transform_files(self, paths) -> np.ndarray:
        """Thumbnails of image files (query images); UserError naming an unreadable file."""
        return self._map(self._of_file, list(paths))

    def embed_rows(self, store, rows: np.ndarray, progress=None) -> np.ndarray:
        """Thumbnails of the cache rows ``rows``, read from the cache's image folder, each file
        checked against the content hash the cache recorded for it."""
        root = store.attrs.get("image_root")
        if not root:
            raise UserError(
                f"{store.path} records no image folder, and thumbnails are made from the images; "
                "extract the features again with `tripletsk extract-features IMAGES_DIR -o "
                f"{store.path}`"
            )
        keys, hashes = store.keys, store.fingerprints["blake2b"]
        jobs = [(store.path, root, keys[i], decode_str(hashes[i])) for i in rows.tolist()]
        return self._map(self._of_cached, jobs, progress)

    def _map(self, one, jobs: list, progress=None) -> np.ndarray:
        out = np.empty((len(jobs), self.n_components), dtype=np.float32)
        with ThreadPoolExecutor(_THREADS) as pool:
            for start in range(0, len(jobs), 1024):
                part = jobs[start : start + 1024]
                out[start : start + len(part)] = list(pool.map(one, part))
                if progress is not None:
                    progress(len(part))
        return out

    def _of_file(self, path) -> np.ndarray:
        try:
            return thumbnail(path, self.size)
        except ImageDecodeError as exc:
            raise UserError(f"{path}: {exc}") from None

    def _of_cached(self, job: tuple) -> np.ndarray:
        cache, root, key, expected = job
        path = _image_path(root, key, cache)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise UserError(
                f"{path}: the image of the cached key {key!r} cannot be read ({exc.strerror}); "
                f"update the cache with `tripletsk extract-features {root} -o {cache}`"
            ) from None
        if hashlib.blake2b(data, digest_size=16).hexdigest() != expected:
            raise UserError(
                f"{path} changed since it was cached in {cache}: its thumbnail would not be of "
                f"the cached image; update the cache with `tripletsk extract-features {root} -o "
                f"{cache}`, then build the index again"
            )
        try:
            return thumbnail(data, self.size)
        except ImageDecodeError as exc:
            raise UserError(f"{path}: {exc}") from None


def _image_path(root: str, key: str, cache: str) -> str:
    """The file of a cached key, refusing a key that points outside the image folder."""
    parts = key.replace("\\", "/").split("/")
    if os.path.isabs(key) or ".." in parts:
        raise UserError(f"{cache}: the key {key!r} points outside the image folder {root}")
    return os.path.join(root, *parts)
