"""The embedding index on real folders: exact search against brute force, incremental updates,
atomic commits, near-duplicates, and every kind of damaged or hostile index file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import pairwise_distances

from tripletsk.errors import IndexFormatError, StaleIndexError, UnknownKeyError, UserError
from tripletsk.index import ann
from tripletsk.index.blocked import exact_neighbors, pairs_within
from tripletsk.index.embedding_index import EmbeddingIndex
from tripletsk.index.format import MANIFEST, _manifest_digest

needs_ann = pytest.mark.skipif(not ann.available(), reason="faiss-cpu is not installed")
METRIC = {"l2": "euclidean", "sqeuclidean": "sqeuclidean", "cosine": "cosine", "l1": "manhattan"}


def _vectors(n=600, dim=8, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, dim).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _keys(n, prefix="img"):
    return [f"c{i % 4}/{prefix}{i}.png" for i in range(n)]


@pytest.fixture
def small(tmp_path):
    x = _vectors()
    return EmbeddingIndex.create(tmp_path / "index", _keys(len(x)), x, approximate="no"), x


# ------------------------------------------------------------------------------ exact search


@pytest.mark.parametrize("distance", ["l2", "sqeuclidean", "cosine", "l1"])
@pytest.mark.parametrize("block_bytes", [4 * 7 * 1024, 64 << 20])  # many blocks, one block
def test_exact_neighbours_equal_brute_force(distance, block_bytes):
    x = _vectors(3000, 6) * np.random.RandomState(1).uniform(0.5, 2, (3000, 1)).astype(np.float32)
    x[100] = x[7]  # an exact duplicate: ties are broken by row number
    q = _vectors(7, 6, seed=2)

    def blocks(step, start=0):
        return ((s, x[s : s + step]) for s in range(start, len(x), step))

    rows, dists = exact_neighbors(q, blocks, 5, distance, score_bytes=block_bytes)
    full = pairwise_distances(q.astype(np.float64), x.astype(np.float64), metric=METRIC[distance])
    expected = np.argsort(full, axis=1, kind="stable")[:, :5]
    assert (rows == expected).all()
    np.testing.assert_allclose(dists, np.take_along_axis(full, expected, 1), atol=1e-7)


def test_search_excludes_the_query_row_and_clamps_k(small):
    index, _x = small
    found = index.search_keys(["c1/img1.png", "c2/img2.png"], k=3)
    assert "c1/img1.png" not in found.keys[0] and "c2/img2.png" not in found.keys[1]
    with pytest.warns(UserWarning, match="only 599 can be returned"):
        assert index.search_keys(["c1/img1.png"], k=1000).indices.shape == (1, 599)


def test_pairs_within_finds_every_close_pair():
    x = _vectors(500, 3)

    def blocks(step, start=0):
        return ((s, x[s : s + step]) for s in range(start, len(x), step))

    i, j, _d = pairs_within(blocks, 0.2, block_rows=64)
    full = pairwise_distances(x.astype(np.float64))
    ei, ej = np.nonzero(np.triu(full <= 0.2, 1))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == set(
        zip(ei.tolist(), ej.tolist(), strict=True)
    )
    with pytest.raises(ValueError, match="threshold is too large"):
        pairs_within(blocks, 2.5, max_pairs=100)


@pytest.mark.parametrize("pairs_per_chunk", [1, 7, None])
def test_close_pairs_are_measured_in_bounded_chunks(monkeypatch, pairs_per_chunk):
    """Wide rows that are all close: the exact distances of 130,816 candidate pairs are
    measured a chunk at a time (all at once, their float64 copies and temporaries took
    ~540 MiB; with 10,000 rows of 784 pixels that was 15 GB and the process was killed)."""
    import tracemalloc

    from tripletsk.index import blocked

    x = np.ones((512, 128), np.float32) + _vectors(512, 128) * 0.01
    if pairs_per_chunk:
        monkeypatch.setattr(blocked, "EXACT_BYTES", 16 * 128 * pairs_per_chunk)
        x = x[:40]

    def blocks(step, start=0):
        return ((s, x[s : s + step]) for s in range(start, len(x), step))

    tracemalloc.start()
    try:
        i, j, d = pairs_within(blocks, 1.0, block_rows=512)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    n = len(x)
    assert len(i) == n * (n - 1) // 2 and (j > i).all()
    full = pairwise_distances(x.astype(np.float64))
    np.testing.assert_allclose(d, full[i, j], atol=1e-9)
    if pairs_per_chunk is None:
        assert peak < 4 * blocked.EXACT_BYTES, f"peak {peak / 2**20:.0f} MiB"  # not ~540 MiB


# ----------------------------------------------------------------------- updates and commits


def test_add_keeps_stored_rows_and_remove_drops_them(small):
    index, x = small
    before = {name: os.stat(index.path + "/" + name).st_mtime_ns for name in os.listdir(index.path)}
    segment = next(n for n in before if n.endswith(".npy"))
    index = index.add(["new/a.png", "new/b.png"], _vectors(2, seed=5))
    assert len(index) == 602 and "new/a.png" in index
    assert os.stat(index.path + "/" + segment).st_mtime_ns == before[segment]  # not rewritten
    np.testing.assert_array_equal(index.embeddings(index.rows_of(["c0/img0.png"])), x[:1])
    index = index.remove(["c0/img0.png", "new/b.png"])
    assert len(index) == 600 and "c0/img0.png" not in index
    assert segment not in os.listdir(index.path)  # the old segment went after the commit
    again = EmbeddingIndex(index.path)
    assert again.keys == index.keys
    assert again.search(x[:1], k=1).keys[0, 0] != "c0/img0.png"


def test_add_refuses_keys_already_indexed_and_nan_rows(small):
    index, _ = small
    with pytest.raises(UserError, match="already in the index"):
        index.add(["c0/img0.png"], _vectors(1))
    bad = _vectors(1)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        index.add(["x/nan.png"], bad)
    assert len(EmbeddingIndex(index.path)) == 600


def test_existing_index_or_folder_is_not_replaced_without_asking(tmp_path, small):
    index, x = small
    with pytest.raises(UserError, match="already holds an index; pass --replace"):
        EmbeddingIndex.create(index.path, ["a/1.png"], x[:1])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an index and not empty"):
        EmbeddingIndex.create(tmp_path / "mine", ["a/1.png"], x[:1])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    replaced = EmbeddingIndex.create(index.path, ["a/1.png"], x[:1], replace=True)
    assert replaced.keys == ["a/1.png"]
    assert len([n for n in os.listdir(index.path) if n.endswith(".npy")]) == 1


_KILL_DURING_ADD = """
import os, sys, numpy as np
from tripletsk.index import format as indexfile
from tripletsk.index.embedding_index import EmbeddingIndex
real = indexfile.os.replace
def crash(src, dst):
    if dst.endswith("index.json"):
        os._exit(9)  # killed after writing the new segment, before the commit
    return real(src, dst)
indexfile.os.replace = crash
EmbeddingIndex(sys.argv[1]).add(["new/a.png"], np.ones((1, 8), np.float32))
"""


def test_a_writer_killed_before_its_commit_leaves_the_old_index(small, tmp_path):
    index, x = small
    manifest = (tmp_path / "index" / MANIFEST).read_bytes()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", _KILL_DURING_ADD, index.path], env=env)
    assert done.returncode == 9
    assert (tmp_path / "index" / MANIFEST).read_bytes() == manifest
    again = EmbeddingIndex(index.path)
    assert len(again) == 600 and "new/a.png" not in again
    again.add(["new/b.png"], x[:1])  # the next writer cleans up what the dead one left
    names = os.listdir(index.path)
    assert len([n for n in names if n.endswith(".npy")]) == 2
    assert not [n for n in names if n.startswith(".index.json.tmp")]


# --------------------------------------------------------------------------- near-duplicates


def test_duplicates_are_connected_groups(tmp_path):
    x = _vectors(200, 8)
    x[50] = x[3]
    x[120] = x[3] + 0.001  # chain: 3 ~ 50 ~ 120
    x[7] = x[9] + 0.002
    index = EmbeddingIndex.create(tmp_path / "i", _keys(200), x)
    groups = index.duplicates(0.01)
    assert groups == [["c3/img3.png", "c2/img50.png", "c0/img120.png"], ["c3/img7.png",
                      "c1/img9.png"]]  # fmt: skip
    assert index.duplicates(0.0) == [["c3/img3.png", "c2/img50.png"]]


# ------------------------------------------------------------------------------- approximate


@needs_ann
def test_approximate_search_reports_recall_and_follows_updates(tmp_path):
    x = _vectors(2000, 8)
    index = EmbeddingIndex.create(tmp_path / "i", _keys(2000), x, approximate="yes")
    assert index.approximate["recall_at_10"] > 0.9
    assert index.approximate["recall_queries"] == 1000
    assert index.method() == "approximate"
    near = x[5] + 0.001
    index = index.add(["z/new.png"], near[None])
    assert index.search(near[None], k=1).keys[0, 0] == "z/new.png"
    index = index.remove(["z/new.png"])
    assert index.search(near[None], k=1).keys[0, 0] == "c1/img5.png"
    exact = index.search(x[:50], k=5, method="exact")
    approx = index.search(x[:50], k=5)
    assert (exact.keys == approx.keys).mean() > 0.9
    same = exact.keys == approx.keys  # the library's distances, in the index's distance
    np.testing.assert_allclose(approx.distances[same], exact.distances[same], atol=1e-5)


def _rewrite_structure(path, **arrays):
    """Replace the arrays of an index's structure file, its digest made to match (hostile)."""
    from tripletsk.cache.checksums import file_digest

    name = os.path.join(path, EmbeddingIndex(path).approximate["file"])
    with np.load(name) as z:
        stored = dict(z)
    with open(name, "wb") as fh:
        np.savez(fh, **{**stored, **arrays})
    _edit_manifest(path, lambda m: m["ann"].update(digest=file_digest(name)))


def _flip_structure(path):
    name = os.path.join(path, EmbeddingIndex(path).approximate["file"])
    with open(name, "r+b") as fh:
        fh.seek(os.path.getsize(name) // 2)
        fh.write(b"\xff\x00\xff")


STRUCTURE_DAMAGE = {
    "flipped bytes": (_flip_structure, "does not match its checksum"),
    "missing": (lambda p: os.remove(os.path.join(p, EmbeddingIndex(p).approximate["file"])),
                "missing"),
    "an extra array": (lambda p: _rewrite_structure(p, extra=np.zeros(10)), "other arrays"),
    "huge array": (lambda p: _rewrite_structure(p, ids=np.arange(10**6)), "other arrays"),
    "ids of other rows": (lambda p: _rewrite_structure(p, ids=np.arange(1, 2001)),
                          "does not match the index's rows"),
    "cell out of range": (lambda p: _rewrite_structure(p, lists=np.full(2000, 10**6, "<i4")),
                          "does not match the index's rows"),
    "pickled array": (lambda p: _rewrite_structure(p, lists=np.array([None] * 2000)),
                      "not readable"),
}  # fmt: skip


@needs_ann
@pytest.mark.parametrize("case", sorted(STRUCTURE_DAMAGE))
def test_a_damaged_or_hostile_structure_is_one_clear_error(tmp_path, case):
    x = _vectors(2000, 8)
    index = EmbeddingIndex.create(tmp_path / "i", _keys(2000), x, approximate="yes")
    damage, message = STRUCTURE_DAMAGE[case]
    damage(index.path)
    opened = EmbeddingIndex(index.path)
    with pytest.raises(IndexFormatError, match=message):
        opened.search(x[:2], k=3)
    exact = opened.search(x[:2], k=3, method="exact")  # the rows themselves are whole
    assert exact.keys[:, 0].tolist() == ["c0/img0.png", "c1/img1.png"]


@needs_ann
def test_a_structure_of_an_earlier_library_is_searched_exactly_then_rebuilt(tmp_path):
    x = _vectors(2000, 8)
    index = EmbeddingIndex.create(tmp_path / "i", _keys(2000), x, approximate="no")
    old = {"library": "usearch", "file": "ann-0123456789abcdef.usearch", "digest": "0" * 32,
           "params": {"kind": "HNSW"}, "recall_at_10": 0.99}  # fmt: skip
    _edit_manifest(index.path, lambda m: m.update(ann=old))
    index = EmbeddingIndex(index.path)
    with pytest.warns(UserWarning, match="made with 'usearch', which this tripletsk does not read"):
        assert index.search(x[:1], k=1).keys[0, 0] == "c0/img0.png"
    with pytest.raises(UserError, match="no approximate structure usable here"):
        index.search(x[:1], k=1, method="approximate")
    index = index.add(["z/new.png"], x[:1] + 0.01)
    assert index.approximate["library"] == "faiss" and index.method() == "approximate"


def test_without_the_library_auto_is_exact_and_yes_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "_module", lambda: None)
    x = _vectors(50, 4)
    index = EmbeddingIndex.create(tmp_path / "i", _keys(50), x, approximate="auto")
    assert index.approximate is None and index.method() == "exact"
    with pytest.raises(UserError, match=r"pip install \"tripletsk\[ann\]\""):
        EmbeddingIndex.create(tmp_path / "j", _keys(50), x, approximate="yes")


@needs_ann
def test_a_structure_opened_without_the_library_is_searched_exactly_and_not_left_stale(
    tmp_path, monkeypatch
):
    x = _vectors(800, 8)
    path = EmbeddingIndex.create(tmp_path / "i", _keys(800), x, approximate="yes").path
    monkeypatch.setattr(ann, "_module", lambda: None)  # faiss-cpu absent from here on
    index = EmbeddingIndex(path)
    with pytest.warns(UserWarning, match=r"faiss-cpu is not installed .*; searching exactly"):
        assert index.search(x[3:4], k=1).keys[0, 0] == "c3/img3.png"
    with pytest.raises(UserError, match=r"pip install \"tripletsk\[ann\]\""):
        index.search(x[:1], k=1, method="approximate")
    with pytest.raises(UserError, match=r"must be updated, but faiss-cpu is not installed"):
        index.add(["z/new.png"], x[:1] + 0.01)
    assert len(EmbeddingIndex(path)) == 800  # the refused update changed nothing
    dropped = index.update(add=(["z/new.png"], x[:1] + 0.01, None), approximate="no")
    assert dropped.approximate is None and len(dropped) == 801


# ------------------------------------------------------------------------- damaged and hostile


def _edit_manifest(path, change, keep_digest=False):
    manifest_path = os.path.join(path, MANIFEST)
    with open(manifest_path) as fh:
        m = json.load(fh)
    change(m)
    if not keep_digest:
        m["digest"] = _manifest_digest(m)
    with open(manifest_path, "w") as fh:
        json.dump(m, fh)


def _segment(path, ext):
    return os.path.join(path, next(n for n in os.listdir(path) if n.endswith(ext)))


def _truncate(path):
    name = _segment(path, ".npy")
    with open(name, "r+b") as fh:
        fh.truncate(os.path.getsize(name) - 100)


def _flip_row_bytes(path):
    name = _segment(path, ".npy")
    with open(name, "r+b") as fh:
        fh.seek(os.path.getsize(name) - 1000)
        fh.write(b"\x01\x02\x03")


def _nan_row(path):
    """A row of NaN with its chunk checksum recomputed: damage no checksum catches."""
    from tripletsk.cache.checksums import file_digest
    from tripletsk.index.format import chunk_rows_for
    from tripletsk.index.segment import chunk_checksums

    name = _segment(path, ".npy")
    x = np.load(name)
    x[5] = np.nan
    np.save(name, x)
    rows = _segment(path, ".rows.npz")
    with np.load(rows) as z:
        arrays = dict(z)
    arrays["checksums"] = chunk_checksums(x, chunk_rows_for(x.shape[1]))
    np.savez(rows, **arrays)
    _edit_manifest(path, lambda m: m["segments"][0].update(rows_digest=file_digest(rows)))


HOSTILE = {
    "truncated embeddings": (_truncate, "truncated or damaged"),
    "flipped bytes": (_flip_row_bytes, "do not match their checksum"),
    "NaN row": (_nan_row, r"row 5 \(key 'c1/img5.png'\) holds NaN"),
    "edited manifest": (
        lambda p: _edit_manifest(p, lambda m: m.update(n_rows=7), keep_digest=True),
        "does not match its digest",
    ),
    "not JSON": (lambda p: open(os.path.join(p, MANIFEST), "w").write("{nope"), "not valid JSON"),
    "deep JSON": (
        lambda p: open(os.path.join(p, MANIFEST), "w").write("[" * 100000 + "]" * 100000),
        "not valid JSON",
    ),
    "NaN in JSON": (
        lambda p: open(os.path.join(p, MANIFEST), "w").write('{"dim": NaN}'),
        "not valid JSON",
    ),
    "path in a segment name": (
        lambda p: _edit_manifest(p, lambda m: m["segments"][0].update(name="../../etc/passwd")),
        "is not allowed",
    ),
    "other version": (
        lambda p: _edit_manifest(p, lambda m: m.update(format_version=99)),
        "index format version 99",
    ),
    "wrong types": (
        lambda p: _edit_manifest(p, lambda m: m.update(dim="64")),
        "'dim' is missing or of the wrong type",
    ),
    "missing keys file": (lambda p: os.remove(_segment(p, ".keys")), "missing; the index"),
    "edited keys": (
        lambda p: open(_segment(p, ".keys"), "a").write("extra\n"),
        "does not match its checksum",
    ),
    "huge manifest": (
        lambda p: open(os.path.join(p, MANIFEST), "w").write(" " * (17 << 20)),
        "more than any index manifest",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_damaged_or_hostile_index_is_one_clear_error(case, small):
    index, x = small
    damage, message = HOSTILE[case]
    damage(index.path)
    with pytest.raises(IndexFormatError, match=message):
        opened = EmbeddingIndex(index.path)
        opened.search(x[:2], k=3)
        opened.all_embeddings()


def test_not_an_index(tmp_path):
    with pytest.raises(IndexFormatError, match="does not exist"):
        EmbeddingIndex(tmp_path / "nothing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(IndexFormatError, match="not an embedding index"):
        EmbeddingIndex(tmp_path / "folder")


def test_unknown_keys_are_named(small):
    index, _ = small
    with pytest.raises(UnknownKeyError, match=r"c9/none\.png"):
        index.search_keys(["c9/none.png"])


# ----------------------------------------------------------- built from a model and its cache


def _cache(path, keys, features, content=None):
    """A real feature cache; ``content`` gives each image's content hash (default: its key)."""
    from tests.helpers import PLAIN_PROVENANCE
    from tripletsk.cache.format import FINGERPRINT_DTYPE, FORMAT_NAME, FORMAT_VERSION
    from tripletsk.cache.writer import write_cache

    fps = np.zeros(len(keys), dtype=FINGERPRINT_DTYPE)
    fps["blake2b"] = [(content or {}).get(k, k)[:32].encode() for k in keys]
    write_cache(path, keys=keys, fingerprints=fps, feature_blocks=[np.asarray(features, "f4")],
                dim=3, dtype="float32", failed=[],
                attrs={**PLAIN_PROVENANCE, "format": FORMAT_NAME,
                       "format_version": FORMAT_VERSION})  # fmt: skip
    return path


def _model_file(path, cache, scale=1.0):
    from tripletsk.cache.store import FeatureStore
    from tripletsk.estimator import TripletEncoder
    from tripletsk.modelfile import cache_record, save_model

    enc = TripletEncoder(hidden_units=(), n_components=2)
    kernel = np.array([[1, 0], [0, 1], [1, 1]], np.float32) * scale
    enc.weights_ = [(kernel, np.zeros(2, np.float32))]
    enc.feature_mean_, enc.feature_scale_ = np.zeros(3, np.float32), np.ones(3, np.float32)
    enc.n_features_in_, enc.n_iter_, enc.loss_curve_, enc.active_fraction_ = 3, 1, [1.0], [1.0]
    enc.validation_scores_ = enc.best_validation_score_ = None
    save_model(path, enc, cache_record(FeatureStore(cache)))
    return path


def test_index_of_a_cache_embeds_only_what_changed(tmp_path):
    from tripletsk.cache.store import FeatureStore
    from tripletsk.index.build import build_index_from_model, check_index_current

    rng = np.random.RandomState(0)
    keys = [f"c{i % 3}/{i}.png" for i in range(40)]
    features = rng.randn(40, 3)
    cache = _cache(tmp_path / "f.h5", keys, features)
    model = _model_file(tmp_path / "m.npz", cache)
    index, report = build_index_from_model(tmp_path / "idx", model)
    assert (report.created, report.n_embedded, len(index)) == (True, 40, 40)
    check_index_current(index, FeatureStore(cache))
    # One image gone, one new, one re-extracted with new content.
    keys2 = [*keys[1:], "c0/new.png"]
    features2 = np.concatenate([features[1:], rng.randn(1, 3)])
    features2[4] += 1.0  # keys[5] changed
    _cache(cache, keys2, features2, content={keys[5]: "changed"})
    with pytest.raises(StaleIndexError, match=f"out of date.*-o {tmp_path / 'idx'}"):
        check_index_current(EmbeddingIndex(tmp_path / "idx"), FeatureStore(cache))
    index, report = build_index_from_model(tmp_path / "idx", model)
    assert (report.n_embedded, report.n_kept, report.n_dropped) == (2, 38, 2)
    check_index_current(index, FeatureStore(cache))
    from tripletsk.modelfile import load_model

    enc = load_model(model).model
    expected = enc.transform(features2)
    np.testing.assert_allclose(index.embeddings(index.rows_of(keys2)), expected, atol=1e-6)


def test_an_index_refuses_another_model_and_nan_features(tmp_path):
    from tripletsk.index.build import build_index_from_model, check_index_current
    from tripletsk.modelfile import load_model

    keys = [f"c{i % 3}/{i}.png" for i in range(10)]
    features = np.random.RandomState(0).randn(10, 3)
    cache = _cache(tmp_path / "f.h5", keys, features)
    build_index_from_model(tmp_path / "idx", _model_file(tmp_path / "m.npz", cache))
    other = _model_file(tmp_path / "other.npz", cache, scale=2.0)
    manifest = (tmp_path / "idx" / MANIFEST).read_bytes()
    with pytest.raises(StaleIndexError, match=r"another model .* pass --replace"):
        build_index_from_model(tmp_path / "idx", other)
    with pytest.raises(StaleIndexError, match="built with another model"):
        check_index_current(EmbeddingIndex(tmp_path / "idx"), encoder=load_model(other).model)
    features[3, 1] = np.nan
    _cache(cache, [*keys, "c0/x.png"], np.concatenate([features, np.ones((1, 3))]),
           content={keys[3]: "re-extracted"})  # fmt: skip
    with pytest.raises(UserError, match=r"1 cached feature row\(s\) hold NaN .*c0/3.png"):
        build_index_from_model(tmp_path / "idx", tmp_path / "m.npz")
    assert (tmp_path / "idx" / MANIFEST).read_bytes() == manifest


def test_a_features_only_index_is_the_normalised_features_kept_up_to_date(tmp_path):
    from tripletsk.cache.store import FeatureStore
    from tripletsk.index.build import build_index_from_features, check_index_current
    from tripletsk.modelfile import load_model

    keys = [f"c{i % 3}/{i}.png" for i in range(12)]
    features = np.random.RandomState(0).rand(12, 3) + 0.1
    features[7] = 3 * features[2]  # the same direction: the same image, brighter
    cache = _cache(tmp_path / "f.h5", keys, features)
    index, report = build_index_from_features(tmp_path / "idx", cache)
    assert index.features_only and (report.created, report.n_embedded) == (True, 12)
    expected = features / np.linalg.norm(features, axis=1, keepdims=True)
    np.testing.assert_allclose(index.all_embeddings(), expected, rtol=1e-6)
    assert index.duplicates(1e-6) == [["c2/2.png", "c1/7.png"]]
    check_index_current(index, FeatureStore(cache))
    _cache(cache, [*keys, "c0/new.png"], np.concatenate([features, 2 * features[:1]]))
    index, report = build_index_from_features(tmp_path / "idx", cache)
    assert (report.n_embedded, report.n_kept, report.n_dropped) == (1, 12, 0)
    assert index.duplicates(1e-6) == [["c0/0.png", "c0/new.png"], ["c2/2.png", "c1/7.png"]]
    # Never taken for a model's embeddings, nor a model's index for features.
    model = load_model(_model_file(tmp_path / "m.npz", cache)).model
    with pytest.raises(StaleIndexError, match="holds backbone features without a model"):
        check_index_current(index, encoder=model)
    with pytest.raises(
        StaleIndexError,
        match=r"holds backbone features without a model .*, not the embeddings of the model",
    ):
        from tripletsk.index.build import build_index_from_model

        build_index_from_model(tmp_path / "idx", tmp_path / "m.npz")


def test_one_writer_at_a_time(small):
    from tripletsk.index.format import IndexLock

    index, x = small
    with IndexLock(index.path), pytest.raises(UserError, match="another process is writing"):
        index.add(["new/a.png"], x[:1])
    assert len(index.add(["new/a.png"], x[:1])) == 601  # released


def test_a_full_disk_during_an_update_loses_nothing(small, monkeypatch):
    import errno

    from tripletsk.index import segment

    index, x = small

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment.np, "savez", full)
    with pytest.raises(OSError, match="No space left"):
        index.add(["new/a.png"], x[:1])
    monkeypatch.undo()
    again = EmbeddingIndex(index.path)
    assert len(again) == 600 and "new/a.png" not in again
    np.testing.assert_array_equal(again.all_embeddings(), x)


def test_a_first_build_killed_before_its_commit_is_built_again(tmp_path):
    from tripletsk.index.segment import write_segment

    folder = tmp_path / "index"
    folder.mkdir()
    x = _vectors(10)
    write_segment(str(folder), _keys(10), x, np.arange(10), np.zeros(10, "S32"))  # no manifest
    index = EmbeddingIndex.create(folder, _keys(10), x)
    assert len(index) == 10
    assert len([n for n in os.listdir(folder) if n.endswith(".npy")]) == 1  # leftovers gone


@needs_ann
@pytest.mark.parametrize("distance", ["l2", "sqeuclidean", "cosine"])
def test_approximate_distances_are_the_index_distance(tmp_path, distance):
    x = _vectors(800, 8) * np.random.RandomState(3).uniform(0.5, 2, (800, 1)).astype(np.float32)
    index = EmbeddingIndex.create(tmp_path / "i", _keys(800), x, distance=distance,
                                  approximate="yes")  # fmt: skip
    exact = index.search(x[:40] + 0.01, k=3, method="exact")
    approx = index.search(x[:40] + 0.01, k=3, method="approximate")
    same = exact.keys == approx.keys
    assert same.mean() > 0.9
    np.testing.assert_allclose(approx.distances[same], exact.distances[same], rtol=1e-4,
                               atol=1e-5)  # fmt: skip
