"""The feature cache file: its layout, format constants, and reading its header.

File layout (format version 1, see ``docs/extraction.md``; checksums: ``docs/formats.md``)::

    features      (N, D) float32 or float16, chunked with Fletcher-32 checksums (caches written
                  before checksums: contiguous)
    keys          (N,)   UTF-8 strings, image path relative to the image root, '/' separators
    fingerprints  (N,)   compound: size, mtime_ns, blake2b (hex of a 16-byte digest), hashed_ns
    failed        (F, 2) UTF-8 strings: key, reason
    attributes    format, format_version, backbone, weights, image_size, preprocessing,
                  compute_dtype, backend, weights_source, dim, dtype, versions (JSON),
                  created, updated, image_root, generation, index_checksums (JSON: BLAKE2b of
                  keys, fingerprints and failed, checked on every open)

Writing a cache: :mod:`tripletsk.cache.writer`; reading its features:
:mod:`tripletsk.cache.store` (through :mod:`tripletsk.cache.mapped` or
:mod:`tripletsk.cache.reads`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tripletsk.errors import CacheFormatError, CacheMismatchError, CacheNotFoundError

__all__ = [
    "FINGERPRINT_DTYPE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PROVENANCE_KEYS",
    "CacheHeader",
    "check_provenance",
    "provenance_differences",
    "read_header",
]

FORMAT_NAME = "tripletsk-features"
FORMAT_VERSION = 1
#: Attributes that identify the model; two caches are compatible when these are equal. The
#: ``int8_*`` ones exist in int8 caches only (calibration sample, quantized model's digest).
PROVENANCE_KEYS = ("backbone", "layer", "weights", "image_size", "preprocessing",
                   "compute_dtype", "int8_calibration", "int8_model")  # fmt: skip
#: Recorded and read back, not compared: how to rebuild the backbone, and where files were.
_DESCRIPTIVE_KEYS = ("backend", "weights_source", "architecture", "backbone_source",
                     "backend_choice")  # fmt: skip
#: Per-row file fingerprint: size and mtime to notice a change cheaply, a content hash to be sure.
#: ``hashed_ns`` is when the hash was taken (to detect files modified within the mtime granularity).
FINGERPRINT_DTYPE = np.dtype(
    [("size", "<i8"), ("mtime_ns", "<i8"), ("blake2b", "S32"), ("hashed_ns", "<i8")]
)


def h5py_module():
    import h5py

    return h5py


def provenance_differences(found: dict, expected: dict) -> list[tuple[str, object, object]]:
    """``(key, found, expected)`` for each :data:`PROVENANCE_KEYS` entry that differs."""
    return [
        (k, found.get(k), expected.get(k))
        for k in PROVENANCE_KEYS
        if str(found.get(k)) != str(expected.get(k))  # (None and None are equal)
    ]


def check_provenance(found: dict, expected: dict, path: str | os.PathLike) -> None:
    """Raise :class:`CacheMismatchError` when ``found`` and ``expected`` describe other models."""
    diffs = [
        f"{k}: cache has {a!r}, requested {b!r}"
        for k, a, b in provenance_differences(found, expected)
    ]
    if diffs:
        raise CacheMismatchError(
            f"{path} was made with different settings ({'; '.join(diffs)}). Mixing features "
            "from two models is not allowed: rerun with the cache's settings, or write the new "
            "features to another cache file."
        )


@dataclass
class CacheHeader:
    """Everything in a cache except the features (small enough to hold in memory)."""

    path: str
    attrs: dict
    keys: list
    fingerprints: np.ndarray
    failed: list
    dim: int
    dtype: str
    provenance: dict = field(default_factory=dict)


def decode_str(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def cache_not_found(path: str) -> CacheNotFoundError:
    return CacheNotFoundError(
        f"feature cache not found: {path}; run `tripletsk extract-features IMAGES_DIR` "
        "first, or name another cache (`--features` on the command line, `features=` in Python)"
    )


def read_header(path: str | os.PathLike, file=None) -> CacheHeader:
    """Read a cache's attributes, keys, fingerprints and failures (not its features).

    ``file``: what to open instead of ``path`` (named ``path`` in messages), e.g. a file
    object of one version of the file held open (:mod:`tripletsk.cache.pinned`).
    """
    h5py = h5py_module()
    path = os.fspath(path)
    if file is None and not os.path.exists(path):
        raise cache_not_found(path)
    try:
        with h5py.File(path if file is None else file, "r") as f:
            header = _header_of(f, path)
    except (OSError, KeyError) as e:
        raise CacheFormatError(
            f"{path} is not a readable tripletsk feature cache ({e}); give the path of a cache "
            "made by extract-features, or write a new cache to another file"
        ) from e
    _check_index(path, header.attrs, header.keys, header.fingerprints, header.failed)
    return header


def _header_of(f, path: str) -> CacheHeader:
    attrs = read_part(path, "its attributes", lambda: _read_attrs(f))
    if attrs.get("format") != FORMAT_NAME:
        raise CacheFormatError(f"{path} is not a tripletsk feature cache")
    version = int(attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise CacheFormatError(
            f"{path} has cache format version {version}; this tripletsk reads up to "
            f"{FORMAT_VERSION}: upgrade tripletsk"
        )
    keys = read_part(path, "dataset 'keys'", lambda: [decode_str(k) for k in _all(f["keys"])])
    fps = read_part(
        path,
        "dataset 'fingerprints'",
        lambda: np.asarray(_all(f["fingerprints"]), FINGERPRINT_DTYPE),
    )
    failed = read_part(
        path,
        "failed",
        lambda: [(decode_str(k), decode_str(r)) for k, r in _all(f["failed"])],
    )
    feats = f["features"]
    dim, dtype = int(feats.shape[1]), str(feats.dtype)
    if feats.shape[0] != len(keys) or len(fps) != len(keys):
        raise CacheFormatError(
            f"{path} is inconsistent: {feats.shape[0]} feature rows, {len(keys)} keys, "
            f"{len(fps)} fingerprints"
        )
    prov = {k: attrs.get(k) for k in (*PROVENANCE_KEYS, *_DESCRIPTIVE_KEYS)}
    # absent for the default backbone, or when the runner was not chosen by backend="auto"
    optional = ("layer", "architecture", "backbone_source", "backend_choice")
    prov = {
        k: v
        for k, v in prov.items()
        if v is not None or not (k.startswith("int8_") or k in optional)
    }
    return CacheHeader(path, attrs, keys, fps, failed, dim, dtype, prov)


def _all(ds):
    return ds[()] if ds.shape[0] else []


def _read_attrs(f) -> dict:
    attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
    for k, v in attrs.items():  # h5py decodes invalid UTF-8 to lone surrogates
        if isinstance(v, str) and any("\udc80" <= c <= "\udcff" for c in v):
            raise UnicodeError(f"attribute {k!r} is not valid UTF-8")
    return attrs


def read_part(path: str, name: str, read, *args):
    """``read(*args)``, with damage to ``name`` (a part of the file) reported as corrupt."""
    try:
        return read(*args)
    except (KeyError, CacheFormatError):
        raise
    except (OSError, ValueError, TypeError) as e:  # (UnicodeError is a ValueError)
        if "'features'" in name:  # damaged rows can be re-extracted alone
            todo = f"Re-run `tripletsk extract-features IMAGES_DIR -o {path} --verify`."
        else:
            todo = (
                f"Re-extract it (`tripletsk extract-features IMAGES_DIR -o {path}`; delete the "
                "file first if that fails too)."
            )
        raise CacheFormatError(
            f"corrupt cache: {path}: {name} cannot be read ({e}). {todo}"
        ) from None


#: Attribute holding a checksum of each of the small datasets (keys, fingerprints, failed).
INDEX_CHECKSUMS = "index_checksums"


def index_checksums(keys: Sequence[str], fingerprints: np.ndarray, failed) -> dict:
    """blake2b digests of the keys, fingerprints and failures, as stored in a cache."""

    def digest(data: bytes) -> str:
        return hashlib.blake2b(data, digest_size=16).hexdigest()

    def text(strings) -> bytes:  # (keys are paths: they hold no NUL)
        return "\0".join(strings).encode("utf-8", "surrogatepass")

    fps = np.ascontiguousarray(fingerprints, dtype=FINGERPRINT_DTYPE)
    return {
        "keys": digest(text(keys)),
        "fingerprints": digest(fps.tobytes()),
        "failed": digest(text(f"{k}\0{r}" for k, r in failed)),
    }


def _check_index(path: str, attrs: dict, keys, fps, failed) -> None:
    """Compare the small datasets with their checksums (caches written before them have none)."""
    if INDEX_CHECKSUMS not in attrs:
        return
    stored = read_part(
        path, f"attribute {INDEX_CHECKSUMS!r}", lambda: json.loads(attrs[INDEX_CHECKSUMS])
    )
    found = index_checksums(keys, fps, failed)
    damaged = [name for name, value in found.items() if stored.get(name) != value]
    if damaged:
        raise CacheFormatError(
            f"corrupt cache: {path}: dataset {' and '.join(map(repr, damaged))} does not match "
            "its checksum "
            f"(the file was damaged). Re-extract it (`tripletsk extract-features IMAGES_DIR -o "
            f"{path}`; delete the file first if that fails)."
        )


def _attr_value(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v
