import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from tripletsk.evaluation.search import NeighborIndex, Neighbors, build_index, search
from tripletsk.training.shared import SharedFeatures


def _slow_neighbours(index_x, query, k, skip=None):
    d = np.linalg.norm(index_x - query, axis=1)
    order = [j for j in np.argsort(d, kind="stable") if j != skip]
    return order[:k], d


@pytest.mark.parametrize("k", [1, 3, 7])
def test_query_matches_brute_force(k):
    rng = np.random.RandomState(0)
    X, Q = rng.normal(size=(20, 4)), rng.normal(size=(5, 4))
    found = NeighborIndex(X).query(Q, k=k)
    assert found.indices.shape == found.distances.shape == (5, k)
    for q, row, dist in zip(Q, found.indices, found.distances, strict=True):
        expected, d = _slow_neighbours(X, q, k)
        assert row.tolist() == expected
        np.testing.assert_allclose(dist, d[expected])
    assert np.array_equal(found.keys, found.indices)  # no keys: keys are row numbers


def test_query_keys_and_to_list():
    index = NeighborIndex([[0.0], [1.0], [3.0]], keys=["a", "b", "c"])
    found = index.query([[2.9], [0.2]], k=2)
    assert isinstance(found, Neighbors) and len(found) == 2
    assert found.keys.tolist() == [["c", "b"], ["a", "b"]]
    listed = found.to_list()
    assert [key for key, _ in listed[1]] == ["a", "b"]
    assert listed[1][0][1] == pytest.approx(0.2)


def test_exclude_self_by_key_keeps_duplicates():
    # Rows 0 and 1 are identical: excluding row 0 must still find row 1 at distance 0.
    index = NeighborIndex([[0.0], [0.0], [1.0], [2.0]], keys=["a", "a2", "b", "c"])
    found = index.query([[0.0], [0.0], [2.0]], k=2, exclude_self_keys=["a", "a2", None])
    assert found.keys[0].tolist() == ["a2", "b"]
    assert found.keys[1].tolist() == ["a", "b"]
    assert found.keys[2].tolist() == ["c", "b"]  # None excludes nothing
    assert found.distances[0, 0] == 0.0


def test_exclude_unknown_key_excludes_nothing():
    index = NeighborIndex([[0.0], [1.0]], keys=["a", "b"])
    found = index.query([[0.0]], k=2, exclude_self_keys=["zzz"])
    assert found.keys.tolist() == [["a", "b"]]


@pytest.mark.parametrize(
    ("exclude", "k", "expected_k"), [(None, 9, 3), (["a"], 9, 2), (["a"], 2, 2)]
)
def test_k_larger_than_index_is_clamped_with_warning(exclude, k, expected_k):
    index = NeighborIndex([[0.0], [1.0], [2.0]], keys=["a", "b", "c"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = index.query([[0.0]], k=k, exclude_self_keys=exclude)
    assert found.indices.shape == (1, expected_k)
    assert bool(caught) == (k > expected_k)
    if caught:
        assert f"only {expected_k} can be returned" in str(caught[0].message)
    if exclude:
        assert "a" not in found.keys[0].tolist()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"query_embeddings": [[0.0, 1.0]]}, "Queries have 2 dimensions but the index has 1"),
        ({"query_embeddings": [[0.0]], "k": 0}, "k must be a positive int"),
        ({"query_embeddings": [[0.0]], "exclude_self_keys": ["a", "b"]}, "2 entries for 1"),
    ],
)
def test_query_errors(kwargs, match):
    index = NeighborIndex([[0.0], [1.0]], keys=["a", "b"])
    with pytest.raises(ValueError, match=match):
        index.query(**kwargs)


def test_query_only_self_in_index():
    with pytest.raises(ValueError, match="only the query itself"):
        NeighborIndex([[0.0]], keys=["a"]).query([[0.0]], exclude_self_keys=["a"])


@pytest.mark.parametrize(
    ("keys", "match"), [(["a", "a"], "must be unique"), (["a"], "Got 1 keys for 2")]
)
def test_index_key_errors(keys, match):
    with pytest.raises(ValueError, match=match):
        NeighborIndex([[0.0], [1.0]], keys=keys)


def test_bytes_keys_are_decoded():
    index = NeighborIndex([[0.0], [1.0]], keys=[b"a", "b\u00e9".encode()])
    assert index.keys.tolist() == ["a", "b\u00e9"]


def test_cosine_metric():
    index = NeighborIndex([[1.0, 0.0], [0.0, 5.0], [3.0, 0.1]], metric="cosine")
    assert index.query([[10.0, 0.0]], k=2).indices.tolist() == [[0, 2]]


# ---- search with an encoder -----------------------------------------------------------------


class FakeStore:
    """What search needs of a FeatureStore: keys and lookup."""

    def __init__(self, keys, vectors):
        self.keys = list(keys)
        self._rows = {key: row for row, key in enumerate(self.keys)}
        self._vectors = np.asarray(vectors, dtype=float)

    def lookup(self, keys):
        return self._vectors[[self._rows[k] for k in keys]]


class FakeEncoder:
    """A fitted-encoder stand-in: transform maps keys (or feature rows) to embeddings."""

    def __init__(self, store):
        self.features = store
        self.transform_sizes = []

    def transform(self, X):
        X = np.asarray(X)
        self.transform_sizes.append(len(X))
        vectors = self.features.lookup(X.tolist()) if X.dtype.kind in "OUS" else X
        return 2.0 * np.asarray(vectors, dtype=float)


@pytest.fixture
def encoder():
    keys = [f"img{i}.jpg" for i in range(10)]
    return FakeEncoder(FakeStore(keys, np.arange(10.0)[:, None] ** 1.5))


def test_search_key_queries_exclude_themselves(encoder):
    found = search(encoder, ["img3.jpg", "img0.jpg"], k=2)
    assert found.keys.tolist() == [["img2.jpg", "img4.jpg"], ["img1.jpg", "img2.jpg"]]
    assert found.distances[1, 0] == pytest.approx(2.0)  # embeddings are 2 * features


@pytest.mark.parametrize("query", ["img5.jpg", np.array(["img5.jpg"]), ("img5.jpg",)])
def test_search_accepts_key_forms(encoder, query):
    found = search(encoder, query, k=1)
    assert found.keys.tolist() == [["img4.jpg"]]


def test_search_feature_rows_and_precomputed(encoder):
    x = np.array([[5.0**1.5]])
    assert search(encoder, x, k=1).keys.tolist() == [["img5.jpg"]]  # transformed, not excluded
    assert search(encoder, 2 * x, k=1, precomputed=True).keys.tolist() == [["img5.jpg"]]


def test_search_embeds_index_in_chunks(encoder):
    search(encoder, "img1.jpg", k=1, chunk_size=4)
    assert encoder.transform_sizes == [4, 4, 2, 1]


def test_search_restricted_keys_and_reused_index(encoder):
    found = search(encoder, "img7.jpg", k=1, keys=["img0.jpg", "img9.jpg"])
    assert found.keys.tolist() == [["img9.jpg"]]
    index = build_index(encoder, ["img0.jpg", "img1.jpg", "img2.jpg"])
    encoder.transform_sizes.clear()
    with pytest.warns(UserWarning, match="only 2 can be returned"):
        found = search(encoder, "img1.jpg", k=5, index=index)
    assert found.keys.tolist() == [["img0.jpg", "img2.jpg"]]
    assert encoder.transform_sizes == [1]  # only the query was embedded


def test_search_needs_keys_somewhere(tmp_path):
    from tripletsk.errors import CacheNotFoundError

    class Bare:
        features = None

        def transform(self, X):
            return np.asarray(X, dtype=float)

    with pytest.raises(ValueError, match="Pass keys="):
        search(Bare(), [[0.0]], k=1)
    found = search(Bare(), [[0.0]], k=1, index=NeighborIndex([[1.0], [3.0]]))
    assert found.indices.tolist() == [[0]]
    Bare.features = str(tmp_path / "missing.h5")  # a cache path: its keys are the index
    with pytest.raises(CacheNotFoundError, match=r"missing\.h5"):
        search(Bare(), [[0.0]], k=1)


def test_search_uses_only_the_encoders_features_for_keys():
    class WithStoreAttribute:  # ``store_`` / ``features_`` are no attributes of any encoder
        features = None
        store_ = SharedFeatures(np.zeros((2, 1)), keys=["a.jpg", "b.jpg"])

        def transform(self, X):
            return np.asarray(X, dtype=float)

    with pytest.raises(ValueError, match="features= has no keys"):
        build_index(WithStoreAttribute())


def test_search_measures_with_the_encoders_distance():
    from tripletsk import TripletEncoder

    X = np.random.RandomState(0).normal(size=(12, 3)).astype(np.float32)
    keys = [f"{i}.jpg" for i in range(12)]
    encoder = TripletEncoder(
        features=SharedFeatures(X, keys=keys), distance="l1", hidden_units=4, max_epochs=1,
        random_state=0,
    )  # fmt: skip
    with pytest.warns(ConvergenceWarning):
        encoder.fit(np.array([[0, 1, 2], [3, 4, 5]]))
    index = build_index(encoder)
    assert index.metric == "manhattan" and index.keys.tolist() == keys
    assert build_index(encoder, metric="cosine").metric == "cosine"
