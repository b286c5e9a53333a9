"""Distances and triplet losses against slow, obviously correct NumPy references."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tripletsk.evaluation.metrics import label_triplet_accuracy
from tripletsk.training.losses import (
    DISTANCES,
    TripletLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    batch_triplet_error,
    mined_triplets,
    paired_distance,
    pairwise_distance,
    semi_hard_triplet_loss,
    triplet_loss,
    triplet_margin_loss,
)


def ref_distance(a, b, distance):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if distance == "l1":
        return np.abs(a - b).sum()
    if distance == "l2":
        return np.sqrt(((a - b) ** 2).sum())
    if distance == "sqeuclidean":
        return ((a - b) ** 2).sum()
    return 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def ref_hinge(d_ap, d_an, margin):
    if margin is None:
        return np.log1p(np.exp(d_ap - d_an))
    return max(d_ap - d_an + margin, 0.0)


def ref_is_active(d_ap, d_an, margin):
    return d_ap - d_an + (0.0 if margin is None else margin) > 0


def ref_batch_all(emb, labels, distance, margin):
    n = len(labels)
    losses, active = [], []
    for a, p, q in itertools.product(range(n), repeat=3):
        if a != p and labels[a] == labels[p] and labels[a] != labels[q]:
            d_ap, d_an = (
                ref_distance(emb[a], emb[p], distance),
                ref_distance(emb[a], emb[q], distance),
            )
            losses.append(ref_hinge(d_ap, d_an, margin))
            active.append(ref_is_active(d_ap, d_an, margin))
    losses, active = np.array(losses), np.array(active)
    counted = losses if margin is None else losses[active]
    return (counted.mean() if counted.size else 0.0), active.mean()


def ref_batch_hard(emb, labels, distance, margin):
    losses, active = [], []
    for a in range(len(labels)):
        pos = [ref_distance(emb[a], emb[p], distance) for p in range(len(labels))
               if p != a and labels[p] == labels[a]]  # fmt: skip
        neg = [ref_distance(emb[a], emb[q], distance) for q in range(len(labels))
               if labels[q] != labels[a]]  # fmt: skip
        if pos and neg:
            losses.append(ref_hinge(max(pos), min(neg), margin))
            active.append(ref_is_active(max(pos), min(neg), margin))
    return np.mean(losses), np.mean(active)


def ref_semi_hard(emb, labels, distance, margin):
    losses, active = [], []
    n = len(labels)
    for a, p in itertools.product(range(n), repeat=2):
        if a == p or labels[a] != labels[p]:
            continue
        d_ap = ref_distance(emb[a], emb[p], distance)
        neg = [ref_distance(emb[a], emb[q], distance) for q in range(n) if labels[q] != labels[a]]
        farther = [d for d in neg if d > d_ap]
        d_an = min(farther) if farther else max(neg)
        losses.append(ref_hinge(d_ap, d_an, margin))
        active.append(ref_is_active(d_ap, d_an, margin))
    return np.mean(losses), np.mean(active)


def random_batch(seed, n=12, dim=5, n_classes=3):
    rng = np.random.RandomState(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), rng.randint(0, n_classes, n)


@pytest.mark.parametrize("distance", DISTANCES)
def test_paired_and_pairwise_distance_match_numpy(distance):
    x, _ = random_batch(0)
    pair = paired_distance(tf.constant(x[:6]), tf.constant(x[6:]), distance).numpy()
    expected = [ref_distance(a, b, distance) for a, b in zip(x[:6], x[6:], strict=True)]
    np.testing.assert_allclose(pair, expected, rtol=1e-4, atol=1e-5)
    full = pairwise_distance(tf.constant(x), distance).numpy()
    expected = [[ref_distance(a, b, distance) for b in x] for a in x]
    np.testing.assert_allclose(full, expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.diag(full) == 0)


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("margin", [0.2, 1.0, None])
def test_triplet_loss_matches_numpy(distance, margin):
    x, _ = random_batch(1, n=30)
    a, p, n = x[:10], x[10:20], x[20:]
    loss, active = triplet_loss(tf.constant(a), tf.constant(p), tf.constant(n), distance, margin)
    d = [
        (ref_distance(ai, pi, distance), ref_distance(ai, ni, distance))
        for ai, pi, ni in zip(a, p, n, strict=True)
    ]
    np.testing.assert_allclose(loss, np.mean([ref_hinge(*t, margin) for t in d]), rtol=1e-4)
    np.testing.assert_allclose(active, np.mean([ref_is_active(*t, margin) for t in d]))


@pytest.mark.parametrize(
    ("loss_fn", "reference"),
    [
        (batch_all_triplet_loss, ref_batch_all),
        (batch_hard_triplet_loss, ref_batch_hard),
        (semi_hard_triplet_loss, ref_semi_hard),
    ],
)
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("margin", [0.5, None])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_losses_match_reference(loss_fn, reference, distance, margin, seed):
    emb, labels = random_batch(seed)
    loss, active = loss_fn(tf.constant(emb), tf.constant(labels), distance, margin)
    expected_loss, expected_active = reference(emb, labels, distance, margin)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(active, expected_active, rtol=1e-5)


@pytest.mark.parametrize("loss_fn", [batch_all_triplet_loss, batch_hard_triplet_loss,
                                     semi_hard_triplet_loss])  # fmt: skip
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("case", ["identical", "single_class", "singletons"])
def test_batch_losses_finite_gradients_in_degenerate_batches(loss_fn, distance, case):
    emb, labels = random_batch(3, n=8)
    if case == "identical":
        emb = np.ones_like(emb)
    elif case == "single_class":
        labels = np.zeros_like(labels)
    else:  # every item its own class: no positive pair at all
        labels = np.arange(len(labels))
    emb = tf.Variable(emb)
    with tf.GradientTape() as tape:
        loss, active = loss_fn(emb, tf.constant(labels), distance, 0.2)
    grad = tape.gradient(loss, emb)
    assert np.isfinite(loss.numpy()) and np.isfinite(active.numpy())
    assert grad is None or np.all(np.isfinite(grad.numpy()))
    if case != "identical":
        assert loss.numpy() == 0.0  # no valid triplet: nothing to learn, and no NaN


@pytest.mark.parametrize("distance", DISTANCES)
def test_triplet_loss_gradient_finite_at_zero_distance(distance):
    x = tf.Variable(np.ones((4, 3), np.float32))
    with tf.GradientTape() as tape:
        loss, _ = triplet_loss(x, x, x, distance, margin=0.2)
    grad = tape.gradient(loss, x).numpy()
    assert np.isclose(loss.numpy(), 0.2)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("scale", [0.5, 4.0])
@pytest.mark.parametrize(
    ("loss_fn", "mining"),
    [(batch_all_triplet_loss, "batch_all"), (batch_hard_triplet_loss, "batch_hard"),
     (semi_hard_triplet_loss, "semi_hard")],
)  # fmt: skip
def test_a_scaled_soft_margin_averages_softplus_of_the_scaled_difference(loss_fn, mining, scale):
    # The scale changes the loss of each mined triplet, not which triplets are mined.
    emb, labels = random_batch(0)
    loss, active = loss_fn(tf.constant(emb), tf.constant(labels), "l2", None, scale)
    triplets, is_active = mined_triplets(emb, labels, mining, "l2", None)
    a, p, n = (emb[triplets[:, i]].astype(np.float64) for i in range(3))
    x = np.linalg.norm(a - p, axis=1) - np.linalg.norm(a - n, axis=1)
    np.testing.assert_allclose(loss, np.mean(np.log1p(np.exp(scale * x)) / scale), rtol=1e-4)
    np.testing.assert_allclose(active, is_active.mean(), rtol=1e-5)


def test_the_soft_margin_scale_is_ignored_with_a_margin_and_exact_at_one():
    d_ap, d_an = tf.constant([0.3, 1.2, 0.7]), tf.constant([0.5, 0.4, 0.7])
    hinge = triplet_margin_loss(d_ap, d_an, 0.2).numpy()
    assert np.array_equal(triplet_margin_loss(d_ap, d_an, 0.2, 4.0).numpy(), hinge)
    soft = tf.nn.softplus(d_ap - d_an).numpy()
    assert np.array_equal(triplet_margin_loss(d_ap, d_an, None, 1.0).numpy(), soft)
    sharp = triplet_margin_loss(d_ap, d_an, None, 8.0).numpy()
    hinge_at_zero = np.maximum(d_ap - d_an, 0.0)  # what the soft margin nears as s grows
    assert np.abs(sharp - hinge_at_zero).max() < 0.09 < np.abs(soft - hinge_at_zero).max()


def test_triplet_loss_class_round_trips_through_keras_serialization():
    import keras

    loss = TripletLoss(distance="cosine", margin=None, soft_margin_scale=4.0)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, TripletLoss)
    assert (restored.distance, restored.margin, restored.soft_margin_scale) == ("cosine", None, 4.0)
    y = np.random.RandomState(0).normal(size=(5, 3, 4)).astype(np.float32)
    expected = triplet_loss(*(tf.constant(y[:, i]) for i in range(3)), "cosine", None, 4.0)[0]
    np.testing.assert_allclose(restored(None, y), expected, rtol=1e-5)


def test_unknown_distance_is_rejected():
    with pytest.raises(ValueError, match="distance must be one of"):
        TripletLoss(distance="hamming")


def ref_mined(emb, labels, mining, distance, margin):
    """(a, p, n, active) of every triplet the strategy picks, by brute force."""
    n = len(labels)
    d = np.array([[ref_distance(a, b, distance) for b in emb] for a in emb])
    m = 0.0 if margin is None else margin
    picked = []
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "batch_all":
            picked += [(a, p, q) for p in pos for q in neg]
        elif mining == "batch_hard":
            picked.append((a, max(pos, key=lambda p: d[a, p]), min(neg, key=lambda q: d[a, q])))
        else:
            for p in pos:
                farther = [q for q in neg if d[a, q] > d[a, p]]
                q = (
                    min(farther, key=lambda q: d[a, q])
                    if farther
                    else max(neg, key=lambda q: d[a, q])
                )
                picked.append((a, p, q))
    return sorted((a, p, q, d[a, p] - d[a, q] + m > 0) for a, p, q in picked)


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("margin", [0.5, None])
@pytest.mark.parametrize("seed", [0, 1])
def test_mined_triplets_and_their_activity_match_reference(mining, distance, margin, seed):
    emb, labels = random_batch(seed)
    triplets, active = mined_triplets(emb, labels, mining, distance, margin)
    got = [(*map(int, t), bool(a)) for t, a in zip(triplets, active, strict=True)]
    assert got == ref_mined(emb, labels, mining, distance, margin)


@pytest.mark.parametrize("seed", range(3))
def test_batch_triplet_error_is_one_minus_the_exact_triplet_accuracy(seed):
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, 4, 24).astype(np.int32)
    emb = rng.normal(size=(24, 3)).astype(np.float32)
    emb[6] = emb[5]  # equal distances from every anchor: a tie is a wrong answer
    labels[6] = (labels[5] + 1) % 4
    error = float(batch_triplet_error(tf.constant(emb), tf.constant(labels)))
    assert error == pytest.approx(1.0 - label_triplet_accuracy(emb, labels), abs=1e-6)
    assert 0.0 < error < 1.0


def test_batch_triplet_error_without_a_valid_triplet_is_zero():
    emb = tf.constant(np.eye(3, dtype=np.float32))
    assert float(batch_triplet_error(emb, tf.constant([0, 1, 2]))) == 0.0
