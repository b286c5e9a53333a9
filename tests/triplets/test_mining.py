"""Choosing training triplets: from labels, P x K batches, hard examples, the epoch plan."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import pairwise_distances

from tripletsk.training.rows import FeatureRows
from tripletsk.triplets.mining import (
    hard_examples,
    hard_label_triplets,
    hardest_known,
    pk_batches,
    sample_label_triplets,
)


def test_importing_mining_imports_neither_training_nor_tensorflow():
    """Mining is below training in the import layers (the epoch plan lives in training), and
    neither it nor the feature sources load TensorFlow."""
    code = (
        "import sys, tripletsk.triplets.mining, tripletsk.triplets.files\n"
        "print('tripletsk.training' in sys.modules)\n"
        "import tripletsk.training.sources\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(root), "PATH": ""},
    )  # fmt: skip
    assert out.stdout.split() == ["False", "[]"], out.stdout + out.stderr


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
