"""Damage to a cache's keys, fingerprints, failures or attributes is named, file and dataset."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.helpers import CACHE_KEYS as KEYS
from tests.helpers import random_cache
from tripletsk.cache.format import FINGERPRINT_DTYPE, read_header
from tripletsk.cache.journal import PartsJournal, load_part_features
from tripletsk.cache.reads import read_feature_rows
from tripletsk.cache.store import FeatureStore
from tripletsk.errors import CacheFormatError


def patch_bytes(path, old: bytes, new: bytes) -> None:
    """Replace the one occurrence of ``old`` in the file with ``new`` (same length)."""
    raw = path.read_bytes()
    assert raw.count(old) == 1 and len(old) == len(new)
    path.write_bytes(raw.replace(old, new))


def contiguous_offset(path, name):
    with h5py.File(path, "r") as f:
        return f[name].id.get_offset()


@pytest.fixture
def cache(tmp_path):
    path = tmp_path / "features.h5"
    random_cache(path, KEYS, failed=[("bad.jpg", "not an image")])
    return path


def damage_fingerprints(path):
    raw = bytearray(path.read_bytes())
    offset = contiguous_offset(path, "fingerprints") + 20  # inside the first blake2b digest
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (damage_fingerprints, "dataset 'fingerprints' does not match its checksum"),
        (
            lambda p: patch_bytes(p, "z é".encode(), b"z \xff\xa9"),
            r"dataset 'keys' cannot be read \(",
        ),
        (lambda p: patch_bytes(p, b"a/y.jpg", b"a/q.jpg"), "dataset 'keys' does not match its"),
        (lambda p: patch_bytes(p, b"not an image", b"not an imagf"), "dataset 'failed' does not"),
        (
            lambda p: patch_bytes(p, b"resnet50", b"\xffesnet50"),
            "attribute 'backbone' is not valid",
        ),
    ],
    ids=["fingerprints", "keys-utf8", "keys-text", "failed", "attribute"],
)
def test_damaged_header_is_a_corrupt_cache(cache, damage, match):
    read_header(cache)  # intact
    damage(cache)
    with pytest.raises(
        CacheFormatError, match=rf"corrupt cache: {cache}: .*{match}.*extract-features"
    ):
        FeatureStore(cache)


def test_cache_without_index_checksums_is_not_checked(cache):
    """Caches written before the checksums still open (their header is read as is)."""
    with h5py.File(cache, "r+") as f:
        del f.attrs["index_checksums"]
    damage_fingerprints(cache)
    assert FeatureStore(cache).keys == KEYS


def test_corrupt_part_file_is_named(tmp_path):
    journal = PartsJournal(tmp_path / "f.h5", {"provenance": {}, "dim": 4})
    journal.open()
    info = journal.write(["x.jpg"], np.ones((1, 4)), np.zeros(1, FINGERPRINT_DTYPE), [])
    np.testing.assert_array_equal(load_part_features(info.path), np.ones((1, 4)))
    raw = bytearray(open(info.path, "rb").read())
    raw[raw.index(b"\x00\x00\x80\x3f")] ^= 0x01  # a byte of the float32 1.0 in "features"
    with open(info.path, "wb") as fh:
        fh.write(bytes(raw))
    with pytest.raises(CacheFormatError, match=rf"corrupt part file {info.path} .*CRC"):
        load_part_features(info.path)


def test_read_feature_rows_reports_a_damaged_chunk(tmp_path):
    path = tmp_path / "f.h5"
    keys = [f"k{i:04d}.jpg" for i in range(1000)]
    feats = random_cache(path, keys, dim=64, block=500)  # 256 rows per chunk
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info_by_coord((256, 0)).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 8] ^= 0x01
    path.write_bytes(bytes(raw))
    rows = np.array([3, 100])
    np.testing.assert_array_equal(np.concatenate(list(read_feature_rows(path, rows))), feats[rows])
    with pytest.raises(
        CacheFormatError, match=rf"corrupt cache: {path}: rows 3-300 of dataset .*--verify"
    ):
        list(read_feature_rows(path, np.array([3, 300])))
