"""FeatureStore and the cache-writing machinery, on real HDF5 files (no TensorFlow needed)."""

from __future__ import annotations

import copy
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading

import h5py
import numpy as np
import pytest

from tests.helpers import CACHE_KEYS, RESNET_PROVENANCE, random_cache
from tripletsk.cache.format import FINGERPRINT_DTYPE, FORMAT_NAME, FORMAT_VERSION, check_provenance
from tripletsk.cache.journal import PartsJournal
from tripletsk.cache.lock import CacheLock
from tripletsk.cache.mapped import MappedFeatures
from tripletsk.cache.reads import read_feature_rows
from tripletsk.cache.store import FeatureStore
from tripletsk.cache.writer import write_cache
from tripletsk.errors import (
    CacheFormatError,
    CacheLockedError,
    CacheMismatchError,
    CacheNotFoundError,
    UnknownKeyError,
    UserError,
)

KEYS, PROV = CACHE_KEYS, RESNET_PROVENANCE


@pytest.fixture
def cache(tmp_path):
    path = tmp_path / "features.h5"
    feats = random_cache(path, KEYS, failed=[("bad.jpg", "not an image")])
    return path, feats


def test_open_len_keys_contains_dim(cache):
    path, _ = cache
    store = FeatureStore(path)
    assert len(store) == 5
    assert store.keys == KEYS
    assert "b/z é.png" in store and "a/x.jpg" in store
    assert "x.jpg" not in store and 3 not in store
    assert store.dim == 8
    assert store.path == os.fspath(path)
    assert store.failed == [("bad.jpg", "not an image")]
    assert list(store) == KEYS


def test_lookup_order_and_duplicates(cache):
    path, feats = cache
    store = FeatureStore(path)
    got = store.lookup(["c/w.PNG", "a/x.jpg", "c/w.PNG", "b/x.jpg"])
    assert got.dtype == np.float32 and got.shape == (4, 8)
    np.testing.assert_array_equal(got, feats[[4, 0, 4, 2]])
    np.testing.assert_array_equal(store.lookup("a/y.jpg"), feats[[1]])
    np.testing.assert_array_equal(store.lookup(np.array(["b/z é.png"])), feats[[3]])
    assert store.lookup([]).shape == (0, 8)
    np.testing.assert_array_equal(store.indices(["b/x.jpg", "a/x.jpg"]), [2, 0])
    assert store.indices(["a/x.jpg"]).dtype == np.int64


def test_unknown_keys_message(cache):
    path, _ = cache
    store = FeatureStore(path)
    with pytest.raises(UnknownKeyError, match=r"2 unknown image key") as exc:
        store.lookup(["a/x.jpg", "a/xx.jpg", "nope/q.png"])
    msg = str(exc.value)
    assert "'a/xx.jpg'" in msg and "did you mean 'a/x.jpg'" in msg
    assert "nope/q.png" in msg
    assert isinstance(exc.value, KeyError) and isinstance(exc.value, ValueError)
    assert isinstance(exc.value, UserError)
    with pytest.raises(UnknownKeyError, match=r"bad.jpg.*could not be read as images"):
        store.indices(["bad.jpg"])
    # a key given without its folder is matched by file name
    with pytest.raises(UnknownKeyError, match=r"did you mean 'c/w.PNG'"):
        store.lookup(["w.PNG"])


def test_many_unknown_keys_listed_briefly(cache):
    store = FeatureStore(cache[0])
    with pytest.raises(UnknownKeyError, match=r"12 unknown .* and 7 more"):
        store.lookup([f"q{i}.jpg" for i in range(12)])


def test_iter_chunks_and_info(cache):
    path, feats = cache
    store = FeatureStore(path)
    chunks = list(store.iter_chunks(chunk_size=2))
    assert [len(k) for k, _ in chunks] == [2, 2, 1]
    assert [k for keys, _ in chunks for k in keys] == KEYS
    np.testing.assert_array_equal(np.concatenate([f for _, f in chunks]), feats)
    np.testing.assert_array_equal(store.to_array(), feats)
    info = store.info()
    assert info["n_images"] == 5 and info["n_failed"] == 1 and info["dim"] == 8
    assert info["dtype"] == "float32" and info["path"] == os.fspath(path)
    assert info["provenance"]["weights"] == "none:seed=0"
    assert store.provenance["image_size"] == 32
    with pytest.raises(ValueError, match="chunk_size"):
        next(store.iter_chunks(0))


def test_missing_cache_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"extract-features IMAGES_DIR.*features=") as e:
        FeatureStore(tmp_path / "nope.h5")
    assert isinstance(e.value, CacheNotFoundError) and isinstance(e.value, UserError)


def test_not_a_cache(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(CacheFormatError, match="not a tripletsk feature cache"):
        FeatureStore(p)
    q = tmp_path / "garbage.h5"
    q.write_bytes(b"this is not hdf5")
    with pytest.raises(CacheFormatError, match="not a readable"):
        FeatureStore(q)


def test_newer_format_refused(cache):
    path, _ = cache
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(CacheFormatError, match="upgrade tripletsk"):
        FeatureStore(path)


def test_pickle_and_deepcopy_by_path(cache):
    path, feats = cache
    store = FeatureStore(path)
    store.lookup(["a/x.jpg"])  # opens the features
    blob = pickle.dumps(store)
    assert len(blob) < 500  # the path, not the features
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.lookup(["b/x.jpg"]), feats[[2]])
    dc = copy.deepcopy(store)
    assert dc is not store and dc.path == store.path
    assert dc._feats is None and dc._hdr is None  # lazy: nothing read yet
    np.testing.assert_array_equal(dc.lookup(KEYS), feats)
    assert copy.copy(store).keys == KEYS


def test_sklearn_clone_keeps_store(cache):
    from sklearn.base import BaseEstimator, clone

    class Est(BaseEstimator):
        def __init__(self, features=None):
            self.features = features

    est = Est(features=FeatureStore(cache[0]))
    c = clone(est)
    assert isinstance(c.features, FeatureStore) and c.features.path == est.features.path
    assert c.features is not est.features


def test_context_manager_and_close(cache):
    path, feats = cache
    with FeatureStore(path) as store:
        np.testing.assert_array_equal(store.lookup(["a/y.jpg"]), feats[[1]])
    np.testing.assert_array_equal(store.lookup(["a/y.jpg"]), feats[[1]])  # reopens


def test_float16_storage_returns_float32(tmp_path):
    p = tmp_path / "f16.h5"
    feats = random_cache(p, KEYS, dtype="float16")
    store = FeatureStore(p)
    assert store.dtype == np.float16 and store.info()["dtype"] == "float16"
    got = store.lookup(KEYS[::-1])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, feats[::-1], rtol=1e-3, atol=1e-3)
    assert not np.array_equal(got, feats[::-1])


@pytest.mark.parametrize("in_memory", [False, True])
def test_chunked_dataset_fallback(tmp_path, in_memory):
    """A cache whose features are chunked (as another tool might write) reads through h5py."""
    p = tmp_path / "chunked.h5"
    keys = [f"k{i:03d}.jpg" for i in range(300)]
    feats = random_cache(p, keys)
    with h5py.File(p, "r+") as f:
        del f["features"]
        f.create_dataset("features", data=feats, chunks=(16, 8), maxshape=(None, 8))
    store = FeatureStore(p, in_memory=in_memory)
    with pytest.warns(UserWarning, match="no checksums"):
        assert not store.checksummed
    rng = np.random.default_rng(1)
    for n in (1, 5, 250, 1000):  # sparse and dense requests, with duplicates
        idx = rng.integers(0, 300, n)
        np.testing.assert_array_equal(store.lookup([keys[i] for i in idx]), feats[idx])
    np.testing.assert_array_equal(store.take([-1, 0]), feats[[-1, 0]])


def test_in_memory_and_memmap_agree(cache):
    path, _ = cache
    a, b = FeatureStore(path), FeatureStore(path, in_memory=True)
    np.testing.assert_array_equal(a.lookup(KEYS[::-1]), b.lookup(KEYS[::-1]))
    assert isinstance(a._features(), MappedFeatures)  # memory-mapped
    assert isinstance(b._features(), np.ndarray)


def test_empty_cache(tmp_path):
    p = tmp_path / "empty.h5"
    random_cache(p, [], failed=[("x.jpg", "empty file (0 bytes)")])
    store = FeatureStore(p)
    assert len(store) == 0 and store.keys == [] and store.dim == 8
    assert store.lookup([]).shape == (0, 8)
    assert list(store.iter_chunks()) == []
    with pytest.raises(UnknownKeyError, match="1 unknown"):
        store.lookup(["x.jpg"])


def test_store_survives_replacement_of_file(cache):
    """A reader keeps a consistent view when an extractor atomically replaces the cache."""
    path, _ = cache
    store = FeatureStore(path)
    before = store.lookup(KEYS)
    random_cache(path, KEYS[:2], seed=5)
    np.testing.assert_array_equal(store.lookup(KEYS), before)
    assert len(FeatureStore(path)) == 2


def test_write_cache_is_atomic_on_failure(cache):
    path, feats = cache
    before = path.read_bytes()

    def bad_blocks():
        yield feats[:2]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_cache(
            path,
            keys=KEYS,
            fingerprints=np.zeros(5, FINGERPRINT_DTYPE),
            feature_blocks=bad_blocks(),
            dim=8,
            dtype="float32",
            failed=[],
            attrs={"format": FORMAT_NAME},
        )
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["features.h5"]
    with pytest.raises(ValueError, match="3 feature rows written for 5 keys"):
        write_cache(
            path,
            keys=KEYS,
            fingerprints=np.zeros(5, FINGERPRINT_DTYPE),
            feature_blocks=iter([feats[:3]]),
            dim=8,
            dtype="float32",
            failed=[],
            attrs={"format": FORMAT_NAME},
        )
    assert path.read_bytes() == before


def test_read_feature_rows_selects_sorted_rows(tmp_path):
    p = tmp_path / "c.h5"
    keys = [f"{i}.jpg" for i in range(50)]
    feats = random_cache(p, keys)
    rows = np.array([0, 3, 4, 17, 18, 49])
    got = np.concatenate(list(read_feature_rows(os.fspath(p), rows, block=5)))
    np.testing.assert_array_equal(got, feats[rows])
    with pytest.raises(ValueError, match="strictly increasing"):
        list(read_feature_rows(os.fspath(p), np.array([3, 1])))


def test_check_provenance_names_the_difference():
    other = dict(PROV, image_size=64, weights="imagenet")
    with pytest.raises(CacheMismatchError, match=r"image_size: cache has 32, requested 64") as e:
        check_provenance(PROV, other, "c.h5")
    assert "weights: cache has" in str(e.value)
    check_provenance(PROV, dict(PROV, weights_source="elsewhere"), "c.h5")  # not identifying


def test_lock_is_exclusive_and_released(tmp_path):
    out = tmp_path / "f.h5"
    with CacheLock(out):
        with pytest.raises(CacheLockedError, match=r"another extraction is writing .*pid \d+"):
            CacheLock(out).acquire()
    with CacheLock(out):  # released on exit
        pass


def test_lock_released_when_holder_is_killed(tmp_path):
    out = tmp_path / "f.h5"
    code = textwrap.dedent(
        f"""
        import sys, time
        from tripletsk.cache.lock import CacheLock
        CacheLock({os.fspath(out)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"locked"
        errors = []

        def try_lock():
            try:
                CacheLock(out).acquire()
            except CacheLockedError as e:
                errors.append(e)

        th = threading.Thread(target=try_lock, daemon=True)
        th.start()
        th.join(60)
        assert not th.is_alive(), "a second locker waited instead of failing"
        assert len(errors) == 1 and "another extraction" in str(errors[0])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with CacheLock(out):
        pass


def test_parts_journal_roundtrip_and_settings_check(tmp_path):
    out = os.fspath(tmp_path / "f.h5")
    meta = {"provenance": PROV, "dim": 4}
    j = PartsJournal(out, meta)
    assert j.open() == []
    fps = np.zeros(2, FINGERPRINT_DTYPE)
    fps["blake2b"] = [b"a" * 32, b"b" * 32]
    j.write(["x.jpg", "y.jpg"], np.ones((2, 4)), fps, [("bad.jpg", "zero bytes", 0, 7)])
    j.write([], np.zeros((0, 4)), np.zeros(0, FINGERPRINT_DTYPE), [("q.gif", "truncated", 5, 9)])
    # a temporary file of a part being written when the process died is ignored and removed
    (tmp_path / "f.h5.parts" / "part-00000002.npz.tmp").write_bytes(b"half")
    j2 = PartsJournal(out, meta)
    parts = j2.open()
    assert [p.keys for p in parts] == [["x.jpg", "y.jpg"], []]
    assert parts[0].failed == [("bad.jpg", "zero bytes", 0, 7)]
    assert parts[0].fingerprints["blake2b"][1] == b"b" * 32
    assert not (tmp_path / "f.h5.parts" / "part-00000002.npz.tmp").exists()
    info = j2.write(["z.jpg"], np.full((1, 4), 2.0), np.zeros(1, FINGERPRINT_DTYPE), [])
    assert info.path.endswith("part-00000002.npz")
    with pytest.raises(CacheMismatchError, match="interrupted extraction with other settings"):
        PartsJournal(out, {"provenance": dict(PROV, image_size=64), "dim": 4}).open()
    j2.remove()
    assert not (tmp_path / "f.h5.parts").exists()


def test_unknown_key_hints_on_a_large_cache(tmp_path):
    p = tmp_path / "big.h5"
    keys = [f"dir{i % 50:02d}/img_{i:06d}.jpg" for i in range(25000)]
    random_cache(p, keys, dim=1, block=5000)
    store = FeatureStore(p)
    with pytest.raises(UnknownKeyError, match=r"did you mean 'dir07/img_000007.jpg'"):
        store.lookup(["dir07/img_000007.jpeg"])
