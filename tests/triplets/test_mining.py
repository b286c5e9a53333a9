"""Choosing training triplets: from labels, P x K batches, hard examples, the epoch plan."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import pairwise_distances

from tripletsk import TripletEncoder
from tripletsk.training.rows import FeatureRows
from tripletsk.triplets import mining
from tripletsk.triplets.mining import (
    hard_examples,
    hard_label_triplets,
    hardest_known,
    pk_batches,
    sample_label_triplets,
)

SMALL = dict(hidden_units=16, n_components=4, max_epochs=3, batch_size=32, random_state=0)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.RandomState(0)
    centres = rng.normal(0, 1.0, size=(4, 12))
    y = np.repeat(np.arange(4), 15)
    X = (centres[y] + rng.normal(size=(60, 12))).astype(np.float32)
    return X, y


def test_importing_mining_does_not_import_tensorflow():
    code = (
        "import sys, tripletsk.triplets.mining, tripletsk.triplets.files\n"
        "import tripletsk.training.sources\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(root), "PATH": ""},
    )  # fmt: skip
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("n_triplets", [None, 1, 50])
def test_sample_label_triplets_are_valid(n_triplets):
    y = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    t = sample_label_triplets(y, n_triplets, random_state=0)
    assert t.shape == (n_triplets or 7, 3)
    assert np.all(t[:, 0] != t[:, 1])
    assert np.all(y[t[:, 0]] == y[t[:, 1]])
    assert np.all(y[t[:, 0]] != y[t[:, 2]])


@pytest.mark.parametrize(
    ("y", "match"), [([0, 0, 0], "at least 2 classes"), ([0, 1, 2], "at least 2 samples")]
)
def test_sample_label_triplets_errors(y, match):
    with pytest.raises(ValueError, match=match):
        sample_label_triplets(y)


def test_pk_batches_visit_each_sample_once():
    y = np.repeat(np.arange(5), 4)
    batches = list(pk_batches(y, p=2, k=2, random_state=0))
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(y)))


def test_hardest_known_uses_only_stated_positives_and_negatives():
    emb = np.array([[0.0], [1.0], [3.0], [2.5], [0.5], [9.0]])
    T = np.array([[0, 1, 3], [0, 2, 5], [4, 1, 5]])
    mined = hardest_known(T, emb, "l2")
    # anchor 0: positives {1, 2} -> farthest 2; negatives {3, 5} -> nearest 3
    # anchor 4: its only positive 1 and negative 5
    np.testing.assert_array_equal(mined, [[0, 2, 3], [4, 1, 5]])


@pytest.mark.parametrize("as_rows", [False, True])
def test_hard_examples_in_chunks_match_brute_force(as_rows):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(70, 5)).astype(np.float32)
    y = rng.randint(0, 4, size=70)
    y[69] = 9  # a class of one: no positive
    features = FeatureRows.from_array(X) if as_rows else X
    hard_pos, hard_neg = hard_examples(features, y, k=2, chunk_size=8)
    dist = pairwise_distances(X)
    for i in range(70):
        same = (y == y[i]) & (np.arange(70) != i)
        expect_pos = np.argsort(-np.where(same, dist[i], -np.inf), kind="stable")[: same.sum()]
        expect_neg = np.argsort(np.where(y != y[i], dist[i], np.inf), kind="stable")[:2]
        np.testing.assert_array_equal(hard_pos[i][hard_pos[i] >= 0], expect_pos[:2])
        np.testing.assert_array_equal(hard_neg[i], expect_neg)
    assert (hard_pos[69] == -1).all()


def test_hybrid_refreshes_hard_examples_with_the_head(blobs, monkeypatch):
    calls = []
    original = mining.hard_examples

    def spy(features, labels, per_anchor):
        calls.append(features.shape[1])
        return original(features, labels, per_anchor)

    monkeypatch.setattr(mining, "hard_examples", spy)
    X, y = blobs
    params = {**SMALL, "mining": "hybrid", "max_epochs": 6, "refresh_every": 2}
    enc = TripletEncoder(**params).fit(X, y)
    # Once on the 12 frozen features, then on the 4-d embeddings at epochs 2 and 4.
    assert calls == [12, 4, 4] and enc.n_iter_ == 6


@pytest.mark.parametrize("n_candidates", [1, 3])
def test_hard_label_triplets_draw_among_the_hardest(n_candidates):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 3))
    y = np.repeat(np.arange(4), 10)
    t = hard_label_triplets(X, y, 100, n_candidates, random_state=0)
    hard_pos, hard_neg = hard_examples(X, y, n_candidates)
    assert all(p in hard_pos[a] for a, p in t[:, :2].tolist())
    assert all(n in hard_neg[a] for a, n in t[:, [0, 2]].tolist())
    again = hard_label_triplets(X, y, 100, n_candidates, random_state=0)
    np.testing.assert_array_equal(t, again)


def _plan(mining_name, X, y=None, T=None, **kwargs):
    items = FeatureRows.from_array(X)
    n = len(T) if y is None else len(y)
    return mining.epoch_batches(
        items, T, y, np.arange(n), mining_name, np.random.RandomState(0),
        **{"batch_size": 8, "window_rows": 10**6, **kwargs},
    )  # fmt: skip


def test_epoch_of_given_triplets_visits_each_once(blobs):
    X, y = blobs
    T = sample_label_triplets(y, 30, random_state=0)
    batches = list(_plan("given", X, T=T)(0, None))
    assert [len(b) for b in batches] == [8, 8, 8, 6]
    assert sorted(map(tuple, np.concatenate(batches).tolist())) == sorted(map(tuple, T.tolist()))


def test_epoch_of_hard_mining_adds_the_hardest_known(blobs):
    from tripletsk.training.head import init_head_weights

    X, y = blobs
    T = sample_label_triplets(y, 30, random_state=0)
    weights = init_head_weights(X.shape[1], (8,), 3, np.random.RandomState(0))
    epoch = np.concatenate(list(_plan("hard", X, T=T)(0, weights)))
    assert len(epoch) == len(T) + len(np.unique(T[:, 0]))


@pytest.mark.parametrize("name", ["batch_hard", "hybrid"])
def test_epoch_of_pk_batches_covers_the_samples(blobs, name):
    X, y = blobs
    batches = list(_plan(name, X, y=y, samples_per_class=4)(0, None))
    assert set(np.concatenate(batches).tolist()) == set(range(len(y)))
    if name == "batch_hard":
        assert sum(len(b) for b in batches) == len(y)  # each sample once
    else:  # hybrid adds offline hard examples beyond the P x K deal
        assert sum(len(b) for b in batches) > len(y)


def _batch_sizes(samples_per_class, batch_size=256, n_classes=10):
    from tripletsk.training.rows import FeatureRows
    from tripletsk.triplets.mining import epoch_batches

    labels = np.repeat(np.arange(n_classes), 375)
    plan = epoch_batches(
        FeatureRows.from_array(np.zeros((len(labels), 2), np.float32)),
        None,
        labels,
        np.arange(len(labels)),
        "batch_hard",
        np.random.RandomState(0),
        batch_size=batch_size,
        window_rows=10**6,
        samples_per_class=samples_per_class,
    )
    return [len(batch) for batch in plan(0, None)]


def test_auto_batches_hold_batch_size_samples_with_few_classes():
    # With K = 4, 10 classes filled batches of 40 samples where 256 were asked for.
    sizes = _batch_sizes("auto")
    assert np.median(sizes) == 250  # 10 classes x 25
    assert max(sizes) <= 256


def test_a_samples_per_class_that_cannot_fill_the_batch_warns():
    with pytest.warns(UserWarning, match=r"asks for 64 classes per batch, but there are 10"):
        sizes = _batch_sizes(4)
    assert max(sizes) == 40
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _batch_sizes(4, n_classes=100)  # enough classes: no warning
