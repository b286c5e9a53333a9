"""A FeatureStore reads one version of its cache, whatever other processes write meanwhile.

Writers replace a cache by an atomic rename. Here another process (a real one, started with
``sys.executable``) rewrites the cache the way an incremental extraction does (one image's row
dropped, its new row appended at the end, so every later row moves up by one) while a store in
this process holds it open; every key must then read its own row of the version the store
opened, or raise a clear error, never another image's row. The quick tests share one such
process, which rewrites on request (starting one per rewrite cost seconds of imports each).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tripletsk import TripletEncoder
from tripletsk.cache.format import FINGERPRINT_DTYPE, FORMAT_NAME, FORMAT_VERSION
from tripletsk.cache.store import FeatureStore
from tripletsk.cache.writer import write_cache
from tripletsk.errors import CacheChangedError

# The fits below train 2 epochs: not converging is expected.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
N_KEYS, DIM = 200, 512  # chunks of 32 rows (64 KiB): the cache spans 7 chunks
KEYS = [f"c{i % 4}/{i:03d}.png" for i in range(N_KEYS)]
CHANGED = KEYS[3]  # an early row: every row after it moves when it is dropped and appended

#: The rewrite of an incremental extraction: the changed image's row dropped, its new row
#: appended, every other row kept (so the rows after it shift up by one). Rewritten again, the
#: changed row goes back to row 3, so that every version moves the rows after it.
REWRITE = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from tripletsk.cache.store import FeatureStore
    from tripletsk.cache.writer import write_cache

    def rewrite(path, changed, times, pause):
        for t in range(times):
            time.sleep(pause)
            with FeatureStore(path) as old:
                keys = [k for k in old.keys if k != changed]
                # Appended at the end; if it is at the end already, put back at row 3 (so that
                # every rewrite moves the rows after row 3).
                at = 3 if old.keys[-1] == changed else len(keys)
                keys.insert(at, changed)
                rows = old.lookup(keys)
                rows[at] += 1000.0  # its new content
                fps = old.fingerprints[old.indices(keys)]
                attrs, failed, dim = old.attrs, old.failed, old.dim
            write_cache(path, keys=keys, fingerprints=fps, feature_blocks=[rows], dim=dim,
                        dtype="float32", failed=failed,
                        attrs={**attrs, "generation": os.urandom(8).hex()})

    # One job a line, "path<TAB>changed<TAB>times<TAB>pause", until stdin closes.
    for line in sys.stdin:
        path, changed, times, pause = line.rstrip("\\n").split("\\t")
        rewrite(path, changed, int(times), float(pause))
        print("rewritten", flush=True)
    """
)
REPO = Path(__file__).resolve().parents[2]


def _write(path, keys=KEYS, seed=0) -> np.ndarray:
    feats = np.random.default_rng(seed).normal(size=(len(keys), DIM)).astype(np.float32)
    fps = np.zeros(len(keys), FINGERPRINT_DTYPE)
    fps["size"] = np.arange(len(keys))
    attrs = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "backbone": "test",
             "weights": "none", "image_size": 8, "preprocessing": "none",
             "compute_dtype": "float32", "generation": "first"}  # fmt: skip
    write_cache(path, keys=keys, fingerprints=fps, dim=DIM, dtype="float32", failed=[],
                feature_blocks=[feats], attrs=attrs)  # fmt: skip
    return feats


def _start_rewriter() -> subprocess.Popen:
    """Another process (``sys.executable``), which rewrites a cache for each job it is sent."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", REWRITE], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip


def _send(writer: subprocess.Popen, path, times: int = 1, pause: float = 0.0) -> None:
    """Ask ``writer`` to rewrite the cache ``times`` times (drop ``CHANGED``, append it),
    ``pause`` seconds apart."""
    writer.stdin.write(f"{os.fspath(path)}\t{CHANGED}\t{times}\t{pause}\n")
    writer.stdin.flush()


@pytest.fixture(scope="module")
def rewriter():
    """One rewriting process for the module's tests (each starting one cost seconds of
    imports); each test waits for its rewrite to be done."""
    writer = _start_rewriter()
    yield writer
    writer.stdin.close()
    assert writer.wait(timeout=60) == 0


@pytest.fixture
def rewrite(rewriter):
    """``rewrite(path)``: the other process rewrites the cache once, and is done."""

    def rewrite(path) -> None:
        _send(rewriter, path)
        assert rewriter.stdout.readline().strip() == "rewritten"

    return rewrite


@pytest.fixture
def cache(tmp_path):
    path = tmp_path / "features.h5"
    return path, _write(path)


@pytest.mark.parametrize(
    ("in_memory", "read_first"), [(False, False), (True, False), (False, True)]
)
def test_a_reader_keeps_the_version_it_opened_while_another_process_rewrites(
    cache, rewrite, in_memory, read_first
):
    path, feats = cache
    store = FeatureStore(path, in_memory=in_memory)
    if read_first:  # rows read before the rewrite (features mapped) and after
        np.testing.assert_array_equal(store.lookup(KEYS[:2]), feats[:2])
    rewrite(path)
    assert FeatureStore(path).keys[-1] == CHANGED  # the file did change: the row moved
    np.testing.assert_array_equal(store.lookup(KEYS), feats)  # every row: the old version's
    assert store.keys == KEYS
    np.testing.assert_array_equal(store.to_array(), feats)


def test_a_store_used_again_after_close_refuses_a_rewritten_cache(cache, rewrite):
    path, feats = cache
    with FeatureStore(path) as store:
        np.testing.assert_array_equal(store.lookup([KEYS[4]]), feats[[4]])
    rewrite(path)
    with pytest.raises(CacheChangedError, match=r"features\.h5 was rewritten .* FeatureStore"):
        store.lookup([KEYS[4]])
    with pytest.raises(CacheChangedError):  # refused every time, never a shifted row
        store.take([0])
    reopened = FeatureStore(path)  # a new store reads the new version
    np.testing.assert_array_equal(reopened.lookup([KEYS[4]]), feats[[4]])
    np.testing.assert_array_equal(reopened.lookup([CHANGED]), feats[[3]] + 1000.0)


def test_a_store_used_again_after_close_of_an_unchanged_cache_reads_on(cache):
    path, feats = cache
    with FeatureStore(path) as store:
        store.lookup([KEYS[0]])
    store.close()
    np.testing.assert_array_equal(store.lookup(KEYS), feats)


@pytest.mark.slow  # (20 rewrites by another process; the cases above are the quick ones)
def test_readers_never_see_another_image_s_row_during_rewrites(cache):
    """Readers open, look up every key and check each row while a process rewrites the cache
    again and again (each version holds the other images' rows at other row numbers)."""
    path, feats = cache
    expected = {k: feats[i] for i, k in enumerate(KEYS)}
    writer = _start_rewriter()  # a process of its own: it is killed at the end
    _send(writer, path, times=20, pause=0.05)
    writer.stdin.close()  # exits once the 20 rewrites are done
    opened = 0
    try:
        while writer.poll() is None or opened < 5:
            store = FeatureStore(path)
            rows = store.indices(store.keys)
            time.sleep(0.02)  # (as a predict over many triplets finds their rows first)
            rows = store.take(rows)
            for key, row in zip(store.keys, rows, strict=True):
                if key == CHANGED:  # its row after t rewrites: the original + 1000 t
                    times = (row - expected[key]) / 1000.0
                    np.testing.assert_allclose(times, np.round(times[0]), atol=1e-3)
                else:
                    np.testing.assert_array_equal(row, expected[key], err_msg=key)
            opened += 1
    finally:
        writer.kill()
        writer.wait()


def test_fit_and_predict_over_a_store_opened_before_a_rewrite(cache, rewrite):
    path, feats = cache
    rng = np.random.default_rng(0)
    others = [k for k in KEYS if k != CHANGED]
    triplets = np.array([rng.choice(others, 3, replace=False) for _ in range(300)])
    index = {k: i for i, k in enumerate(KEYS)}
    as_vectors = feats[np.vectorize(index.get)(triplets)]
    used = feats[np.unique(np.vectorize(index.get)(triplets))]

    # Two stores opened (keys read) before another process rewrites the cache: one to fit,
    # one to predict.
    store, other = FeatureStore(path), FeatureStore(path)
    rewrite(path)
    enc = TripletEncoder(features=store, hidden_units=(), n_components=4, max_epochs=2,
                         random_state=0).fit(triplets)  # fmt: skip
    np.testing.assert_allclose(enc.feature_mean_, used.mean(axis=0), rtol=1e-4, atol=1e-5)

    np.testing.assert_allclose(
        enc.set_params(features=other).decision_function(triplets),
        enc.decision_function(as_vectors),
        rtol=1e-5,
        atol=1e-6,
    )


def _open_deleted_files(path) -> list[str]:
    """This process's open files that were ``path`` before something was renamed over it."""
    folder = "/proc/self/fd"
    if not os.path.isdir(folder):
        pytest.skip("needs /proc/self/fd")
    links = []
    for fd in os.listdir(folder):
        try:
            links.append(os.readlink(os.path.join(folder, fd)))
        except OSError:
            continue
    return [link for link in links if link == f"{path} (deleted)"]


def test_an_estimator_s_store_of_an_old_version_is_released_once_unused(cache, rewrite):
    import gc

    from tripletsk.cache.opened import open_cache

    path, feats = cache
    old = open_cache(path)
    old.lookup(KEYS[:1])  # mapped
    rewrite(path)
    new = open_cache(path)
    assert new is not old and new.keys[-1] == CHANGED
    np.testing.assert_array_equal(old.lookup(KEYS), feats)  # whoever holds it reads on
    assert _open_deleted_files(os.fspath(path))  # the old version is open (and on disk)
    del old
    gc.collect()
    assert not _open_deleted_files(os.fspath(path))  # released: its space can be freed


def test_an_open_store_holds_one_file_descriptor(cache):
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    path, feats = cache

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_files()
    stores = [FeatureStore(path) for _ in range(20)]
    assert open_files() - before <= 20  # each holds its version from opening
    for store in stores:
        np.testing.assert_array_equal(store.lookup(KEYS[-1:]), feats[-1:])
    assert open_files() - before <= 20  # then through its memory map only
    for store in stores:
        store.close()
    del store
    assert open_files() - before <= 1
