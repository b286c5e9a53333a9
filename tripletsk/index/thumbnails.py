"""Thumbnails: how an image looks at 8 x 8 pixels, the rows of an index for near-duplicates.

A thumbnail is the image decoded as the extractor decodes it (EXIF orientation applied, any mode
converted to RGB) but for a JPEG's draft mode (:func:`jpeg_draft_size`: DCT-downscaled only to
well above the thumbnail, so a JPEG's thumbnail is its pixels', not its format's), shrunk to
``size`` x ``size`` with Lanczos filtering (aspect ratio not kept), its ``3 * size**2`` values
centred on their mean and divided by their norm. Distances are
Euclidean between unit vectors (0 to 2). An exact copy is at 0; a resized, re-encoded, brighter
or more contrasted copy lands close to its original, where backbone features put resized
copies farther than many distinct images (docs/findings.md, near-duplicates). Size 8 and the
Lanczos filter were chosen on Fashion-MNIST training images (sizes 4 to 16, three filters).

The thumbnails of an index are read from the images of its feature cache (the folder the cache
records), each checked against the content hash the cache holds: an image that changed since
it was cached is refused, never indexed under the old image's key.

An 8 px thumbnail cannot tell every resized copy from every similar distinct image, so the pairs
it finds can be verified on the images themselves (:func:`image_pair_distances`): both images
of a pair shrunk to the smaller one's size (at most :data:`VERIFY_MAX_SIZE` px), as a
thumbnail of that size, read through the same checks. Two images of the same size were not
resized relative to each other, so a copy among them is exact or re-encoded, far nearer its
original than a resized copy: :func:`compare_image_pairs` says which pairs they are, for a
tighter threshold.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from tripletsk.cache.format import decode_str
from tripletsk.errors import ImageDecodeError, StaleIndexError, UserError

__all__ = [
    "JPEG_DRAFT_FACTOR",
    "JPEG_DRAFT_MIN",
    "THUMBNAIL_SIZE",
    "VERIFY_MAX_SIZE",
    "PairComparison",
    "ThumbnailEmbedding",
    "check_verifiable",
    "compare_image_pairs",
    "image_pair_distances",
    "jpeg_draft_size",
    "thumbnail",
    "thumbnail_digest",
]

#: The default side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 8
#: The largest side, in pixels, at which :func:`image_pair_distances` compares two images.
VERIFY_MAX_SIZE = 64
#: A JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least
#: this many times the thumbnail's side (and at least :data:`JPEG_DRAFT_MIN` px), then shrunk
#: by Lanczos like any image: drafting down to the thumbnail's own size (as the backbones'
#: decoding does) put half the JPEG re-saves of 28 px images outside the index's threshold of
#: their PNG originals (docs/findings.md).
JPEG_DRAFT_FACTOR = 8
#: The smallest side, in pixels, a JPEG is drafted to for a thumbnail.
JPEG_DRAFT_MIN = 64
_THREADS = min(8, os.cpu_count() or 1)  # Pillow and hashlib release the GIL while they work


def jpeg_draft_size(size: int) -> int:
    """The side a JPEG keeps when decoded for a ``size`` px thumbnail (DCT scaling, at least).

    Examples
    --------
    >>> jpeg_draft_size(8), jpeg_draft_size(64)
    (64, 512)
    """
    return max(JPEG_DRAFT_FACTOR * int(size), JPEG_DRAFT_MIN)


def thumbnail_digest(size: int) -> str:
    """The ``model`` digest of a thumbnail index: what makes its rows.

    The suffix names the JPEG decoding (:data:`JPEG_DRAFT_FACTOR`, :data:`JPEG_DRAFT_MIN`):
    the rows of an index of an older decoding (``'thumbnails:8px-lanczos-rgb-centred-l2'``,
    drafted to the thumbnail's own size) are not comparable with today's, and such an index is
    refused as stale (:func:`~tripletsk.index.build.check_index_current`).

    Examples
    --------
    >>> thumbnail_digest(8)
    'thumbnails:8px-lanczos-rgb-centred-l2-jpeg-draft-8x-min64'
    """
    return (
        f"thumbnails:{int(size)}px-lanczos-rgb-centred-l2-jpeg-draft-{JPEG_DRAFT_FACTOR}x-"
        f"min{JPEG_DRAFT_MIN}"
    )


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
    size = int(size)
    pixels = decode(data, size, None, resample="lanczos", draft_size=jpeg_draft_size(size))
    return _unit(pixels)


def _unit(pixels: np.ndarray) -> np.ndarray:
    """Pixels as a thumbnail: centred on their mean, divided by their norm, float32."""
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
        return _thumbnail_of(path, path, self.size)

    def _of_cached(self, job: tuple) -> np.ndarray:
        cache, root, key, expected = job
        path, data = _read_cached(cache, root, key, expected)
        return _thumbnail_of(path, data, self.size)


def check_thumbnail_rows(index) -> None:
    """StaleIndexError if a thumbnail index's rows were made otherwise than
    :func:`~tripletsk.index.thumbnails.thumbnail` makes them now (an older version's
    decoding): new rows and query thumbnails would not be comparable with them."""
    size = index.model.get("size")
    current = thumbnail_digest(size) if isinstance(size, int) else None
    if index.model.get("digest") != current:
        cache = index.cache.get("path") or "CACHE"
        raise StaleIndexError(
            f"{index.path} holds thumbnails made by another version of tripletsk "
            f"({index.model.get('digest')!r}; this version makes {current!r}), which are not "
            f"comparable with this version's: rebuild it with `tripletsk index --thumbnails "
            f"--features {cache} -o {index.path} --replace`"
        )


def check_verifiable(index) -> str:
    """The image folder of a thumbnail index, whose pairs can be verified on the images.

    Parameters
    ----------
    index : EmbeddingIndex

    Returns
    -------
    str
        The folder the index's cache records its images in.

    Raises
    ------
    UserError
        If ``index`` is not a thumbnail index (its distances are not on the images' pixels), or
        records no image folder; :class:`~tripletsk.errors.StaleIndexError` if its rows were
        made by another version's decoding (its candidates are not this version's).
    """
    if index.kind != "thumbnails":
        raise UserError(
            f"{index.path} is not a thumbnail index (its rows are {index.kind!r}): only the pairs "
            "of a thumbnail index are verified on the images, on the same scale; build one with "
            "`tripletsk index --thumbnails --features CACHE -o INDEX`"
        )
    check_thumbnail_rows(index)
    root = index.cache.get("image_root")
    if not root:
        raise UserError(f"{index.path} records no image folder: its pairs cannot be verified")
    return root


class PairComparison(NamedTuple):
    """What :func:`compare_image_pairs` measured of each pair of images."""

    #: float64, each pair's distance at its common size.
    distances: np.ndarray
    #: bool, whether the pair's two images have the same width and height (EXIF orientation
    #: applied): neither was resized relative to the other.
    same_size: np.ndarray


def compare_image_pairs(
    index, rows_i: np.ndarray, rows_j: np.ndarray, *, max_size: int = VERIFY_MAX_SIZE
) -> PairComparison:
    """Distances of pairs of a thumbnail index's rows on the images, and which pairs are of
    images of the same size.

    :func:`image_pair_distances`, with ``same_size`` beside the distances: a pair of images
    of equal width and height (from the files' headers, EXIF orientation applied) was not
    resized relative to each other, so a copy among them can only be exact or re-encoded
    (e.g. a JPEG re-save), much nearer its original than a resized copy; such a pair can be
    held to a tighter threshold (:meth:`EmbeddingIndex.duplicate_pairs`, ``verify_same_size``).
    A same-size pair is compared at that size (at most ``max_size``), like any other pair.

    Parameters
    ----------
    index : EmbeddingIndex
        A thumbnail index (``tripletsk index --thumbnails``).
    rows_i, rows_j : array-like of int
        The pairs' row numbers.
    max_size : int, default=VERIFY_MAX_SIZE
        The largest side compared, for big photos.

    Returns
    -------
    PairComparison
        ``(distances, same_size)``: float64 and bool, one per pair.

    Raises
    ------
    UserError
        Naming the file, if an image is missing, changed since it was cached, or unreadable, or
        if ``index`` is not a thumbnail index.
    """
    root = check_verifiable(index)
    cache, keys, hashes = index.cache.get("path"), index.keys, index.hashes
    rows_i, rows_j = np.asarray(rows_i, np.int64), np.asarray(rows_j, np.int64)
    if int(max_size) < 1:
        raise ValueError(f"max_size must be at least 1 pixel; got {max_size!r}")
    if rows_i.shape != rows_j.shape or rows_i.ndim != 1:
        raise ValueError(f"rows_i and rows_j must be two 1-D arrays of one length; got "
                         f"{rows_i.shape} and {rows_j.shape}")  # fmt: skip

    def one(pair: tuple[int, int]) -> tuple[float, bool]:
        files = [_read_cached(cache, root, keys[r], decode_str(hashes[r])) for r in pair]
        sizes = [_oriented_size(path, data) for path, data in files]
        size = min(int(max_size), *(min(s) for s in sizes))
        a, b = (_thumbnail_of(path, data, size) for path, data in files)
        return float(np.linalg.norm(a.astype(np.float64) - b)), sizes[0] == sizes[1]

    with ThreadPoolExecutor(_THREADS) as pool:
        pairs = zip(rows_i.tolist(), rows_j.tolist(), strict=True)
        measured = list(pool.map(one, pairs))
    return PairComparison(
        np.array([d for d, _ in measured], dtype=np.float64).reshape(len(rows_i)),
        np.array([same for _, same in measured], dtype=bool).reshape(len(rows_i)),
    )


def image_pair_distances(
    index, rows_i: np.ndarray, rows_j: np.ndarray, *, max_size: int = VERIFY_MAX_SIZE
) -> np.ndarray:
    """Distances of pairs of a thumbnail index's rows, measured on the images at their common size.

    Each image is read from the folder the index's cache records and checked against the
    content hash its row was made from. Both images of a pair become thumbnails (Lanczos, RGB,
    centred, L2-normalised) of side ``s``: the smaller side of the smaller image, at most
    ``max_size``; so a 20 px copy of a 28 px image is compared with the original shrunk to 20
    px, and a 56 px copy shrunk to 28 px with the original as it is. Distances are Euclidean
    between unit vectors (0 to 2), like the index's, but at ``s`` px instead of 8: an 8 px
    thumbnail's near neighbours that differ in detail end up farther apart, and so do resized
    copies (an upscaled copy shrunk back is a blurred original: on Fashion-MNIST up to 0.28 at
    28 px, farther than similar distinct items, docs/findings.md); choose a threshold on
    copies of your own images. :func:`compare_image_pairs` also tells which pairs are of
    images of the same size.

    Parameters
    ----------
    index, rows_i, rows_j, max_size
        As for :func:`compare_image_pairs`.

    Returns
    -------
    numpy.ndarray
        float64, one distance per pair.

    Raises
    ------
    UserError
        As :func:`compare_image_pairs`: naming a missing, changed or unreadable image.
    """
    return compare_image_pairs(index, rows_i, rows_j, max_size=max_size).distances


def _read_cached(cache: str, root: str, key: str, expected: str) -> tuple[str, bytes]:
    """The path and bytes of a cached key's image, checked against its content hash."""
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
    return path, data


def _thumbnail_of(path, data: bytes | str | os.PathLike, size: int) -> np.ndarray:
    """:func:`thumbnail`, its ImageDecodeError a UserError naming ``path``."""
    try:
        return thumbnail(data, size)
    except ImageDecodeError as exc:
        raise UserError(f"{path}: {exc}") from None


def _oriented_size(path: str, data: bytes) -> tuple[int, int]:
    """An image's (width, height) from its header, EXIF orientation applied as decoding does
    (a broken EXIF block: as stored); UserError naming ``path``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            try:
                turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # a quarter turn
            except Exception:  # broken EXIF: the decoder uses the pixels as stored
                turned = False
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None
    return (height, width) if turned else (width, height)


def _image_path(root: str, key: str, cache: str) -> str:
    """The file of a cached key, refusing a key that points outside the image folder."""
    parts = key.replace("\\", "/").split("/")
    if os.path.isabs(key) or ".." in parts:
        raise UserError(f"{cache}: the key {key!r} points outside the image folder {root}")
    return os.path.join(root, *parts)
