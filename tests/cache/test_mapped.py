"""Checksummed features: damage on disk is found when its rows are read, naming file and keys."""

from __future__ import annotations

import shutil
import warnings

import h5py
import numpy as np
import pytest

from tests.helpers import random_cache
from tripletsk.cache.mapped import MappedFeatures
from tripletsk.cache.store import FeatureStore
from tripletsk.errors import CacheFormatError

N, DIM = 1000, 64  # 256 rows (64 KiB) per stored chunk: 4 chunks, the last one partial
KEYS = [f"class{i // 100}/img{i:04d}.jpg" for i in range(N)]


def chunk_info(path, row):
    with h5py.File(path, "r") as f:
        return f["features"].id.get_chunk_info_by_coord((row, 0))


def flip(path, offset, mask=0x10):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ mask]))


@pytest.fixture
def cache(tmp_path):
    path = tmp_path / "features.h5"
    return path, random_cache(path, KEYS, dim=DIM, block=300)


def test_written_chunked_with_checksums_and_read_through_the_map(cache):
    path, feats = cache
    with h5py.File(path, "r") as f:
        ds = f["features"]
        assert ds.fletcher32 and ds.chunks == (256, DIM) and ds.compression is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checksummed cache warns about nothing
        store = FeatureStore(path)
        assert store.checksummed and store.chunk_rows == 256 and store.info()["checksummed"]
        assert isinstance(store._features(), MappedFeatures)  # the fast path
        rng = np.random.default_rng(0)
        idx = rng.integers(-N, N, 300)
        np.testing.assert_array_equal(store.take(idx), feats[idx])
        out = np.empty((300, DIM), np.float32)
        assert store.take(idx, out=out) is out
        np.testing.assert_array_equal(out, feats[idx])
        np.testing.assert_array_equal(store.to_array(), feats)
        assert store.corrupt_rows().size == 0


@pytest.mark.parametrize("where", ["data", "checksum"])
@pytest.mark.parametrize("in_memory", [False, True])
def test_flipped_feature_bytes_are_detected(cache, where, in_memory):
    path, feats = cache
    info = chunk_info(path, 600)  # rows 512-767
    flip(path, info.byte_offset + (1000 if where == "data" else info.size - 2))
    with h5py.File(path, "r") as f, pytest.raises(OSError):
        f["features"][600]  # HDF5 agrees: the chunk is damaged
    store = FeatureStore(path, in_memory=in_memory)
    msg = rf"corrupt cache: {path}: the features of 256 row\(s\) \(rows 512-767; keys "
    msg += r"'class5/img0512.jpg', .*--verify"
    with pytest.raises(CacheFormatError, match=msg):
        store.lookup(["class0/img0003.jpg", "class7/img0700.jpg"])
    if not in_memory:  # rows of intact chunks are still served
        np.testing.assert_array_equal(store.take([3, 999, 300]), feats[[3, 999, 300]])
        with pytest.raises(CacheFormatError, match="rows 512-767"):
            store.take([700])  # and the damaged ones refused again
        with pytest.raises(CacheFormatError, match="rows 512-767"):
            list(store.iter_chunks(100))
    np.testing.assert_array_equal(store.corrupt_rows(), np.arange(512, 768))


def test_damage_is_found_in_a_chunk_verified_by_another_process(cache):
    """Verification is per process: a fresh store sees damage done after another read."""
    path, feats = cache
    store = FeatureStore(path)
    np.testing.assert_array_equal(store.take([10]), feats[[10]])
    flip(path, chunk_info(path, 10).byte_offset + 40)
    with pytest.raises(CacheFormatError, match="rows 0-255"):
        FeatureStore(path).take([10])


def test_damage_through_hdf5_when_the_layout_cannot_be_mapped(cache):
    """Compressed features (another tool's layout) are read by HDF5, which checks them."""
    path, feats = cache
    with h5py.File(path, "r+") as f:
        del f["features"]
        f.create_dataset(
            "features", data=feats, chunks=(100, DIM), compression="gzip", fletcher32=True
        )
    flip(path, chunk_info(path, 250).byte_offset + 20)
    store = FeatureStore(path)
    assert store.checksummed and not isinstance(store._features(), MappedFeatures)
    np.testing.assert_array_equal(store.take([5, 999]), feats[[5, 999]])
    with pytest.raises(CacheFormatError, match=r"corrupt cache: .*rows 250; keys 'class2/img0250"):
        store.take([250])
    np.testing.assert_array_equal(store.corrupt_rows(), np.arange(200, 300))


def test_cache_without_checksums_opens_with_one_warning(cache, tmp_path):
    """A cache written before checksums (contiguous features) still reads, and says so once."""
    path, feats = cache
    with h5py.File(path, "r+") as f:
        del f["features"]
        f.create_dataset("features", data=feats)  # contiguous, as tripletsk wrote them before
        del f.attrs["index_checksums"]
    old = tmp_path / "old.h5"
    shutil.copy(path, old)
    with pytest.warns(UserWarning, match=rf"{old} has no checksums.*extract-features .*--verify"):
        store = FeatureStore(old)
        np.testing.assert_array_equal(store.take([1, 998]), feats[[1, 998]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not again for the same file
        again = FeatureStore(old)
        np.testing.assert_array_equal(again.to_array(), feats)
        assert not again.checksummed and again.corrupt_rows().size == 0
        assert again.info()["checksummed"] is False
        assert again.chunk_rows is None
