"""Semi-hard mining and the batch triplet error per training step: today's (b, k, b) block of
the positives against the former sort + binary search (issue 21, item 2).

Both compute the same thing (``tests/training/test_losses.py`` checks today's against slow
references): for each anchor-positive pair of a P x K batch, the nearest negative farther than the
positive (semi-hard), and how many negatives are at least as near (the wrongly ordered triplets).
The former code sorted each anchor's negative distances (``tf.argsort``) and located every distance
among them (``tf.searchsorted``); TensorFlow's CPU kernels for both are slow at these sizes.
Each variant runs 100 steps in one compiled loop (loss, gradient); best of 3 per variant,
variants interleaved::

    python benchmarks/mining_cost.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tensorflow as tf

from tripletsk.training.losses import (
    _label_masks,
    batch_triplet_error,
    pairwise_distance,
    semi_hard_triplet_loss,
    triplet_margin_loss,
)


def former_semi_hard_loss(embeddings, labels, distance="l2", margin=None):
    """The semi-hard loss as it was before issue 21 (argsort + searchsorted)."""
    dist = pairwise_distance(embeddings, distance)
    is_pos, is_neg = _label_masks(labels)
    big = tf.fill(tf.shape(dist), dist.dtype.max)
    order = tf.argsort(tf.where(is_neg, dist, big), axis=1, stable=True)
    neg_sorted = tf.gather(tf.where(is_neg, dist, big), order, batch_dims=1)
    n_neg = tf.reduce_sum(tf.cast(is_neg, tf.int32), axis=1, keepdims=True)
    first_farther = tf.searchsorted(neg_sorted, dist, side="right")
    farthest = tf.broadcast_to(tf.maximum(n_neg - 1, 0), tf.shape(first_farther))
    rank = tf.where(first_farther < n_neg, first_farther, farthest)
    negative = tf.gather(order, rank, batch_dims=1)
    weights = tf.cast(tf.logical_and(is_pos, n_neg > 0), dist.dtype)
    losses = triplet_margin_loss(dist, tf.gather(dist, negative, batch_dims=1), margin)
    return tf.math.divide_no_nan(tf.reduce_sum(losses * weights), tf.reduce_sum(weights))


def former_batch_error(embeddings, labels, distance="l2"):
    """The batch triplet error as first written for issue 21 (sort + searchsorted)."""
    dist = pairwise_distance(embeddings, distance)
    is_pos, is_neg = _label_masks(labels)
    big = tf.fill(tf.shape(dist), dist.dtype.max)
    neg_sorted = tf.sort(tf.where(is_neg, dist, big), axis=1)
    n_neg = tf.reduce_sum(tf.cast(is_neg, tf.int32), axis=1, keepdims=True)
    nearer = tf.minimum(tf.searchsorted(neg_sorted, dist, side="right"), n_neg)
    wrong = tf.reduce_sum(tf.cast(tf.where(is_pos, nearer, 0), tf.float32))
    total = tf.where(is_pos, tf.broadcast_to(n_neg, tf.shape(dist)), 0)
    return tf.math.divide_no_nan(wrong, tf.cast(tf.reduce_sum(total), tf.float32))


def steps(fn, embeddings, labels, gradient: bool):
    @tf.function
    def run(n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            with tf.GradientTape() as tape:
                value = fn(tf.math.l2_normalize(embeddings, 1), labels)
            if gradient:
                total += tf.reduce_sum(tape.gradient(value, embeddings))
            else:
                total += value
        return total

    return run


def main() -> None:
    rng = np.random.RandomState(0)
    print(f"load {os.getloadavg()}")
    print("| batch (P x K) | semi-hard loss + gradient, former / today ms | batch error, former / "
          "today ms |\n|---|---|---|")  # fmt: skip
    for k in (12, 25):
        b = 10 * k
        embeddings = tf.Variable(rng.normal(size=(b, 64)).astype(np.float32))
        labels = tf.constant(np.repeat(np.arange(10), k).astype(np.int32))

        def today(e, y):
            return semi_hard_triplet_loss(e, y, "l2", None)[0]

        variants = {
            "former semi-hard": steps(former_semi_hard_loss, embeddings, labels, True),
            "semi-hard": steps(today, embeddings, labels, True),
            "former error": steps(former_batch_error, embeddings, labels, False),
            "error": steps(batch_triplet_error, embeddings, labels, False),
        }
        for run in variants.values():
            run(tf.constant(2))  # trace
        best = dict.fromkeys(variants, np.inf)
        for _ in range(3):
            for name, run in variants.items():
                start = time.perf_counter()
                run(tf.constant(100)).numpy()
                best[name] = min(best[name], (time.perf_counter() - start) / 100 * 1000)
        print(f"| {b} (10 x {k}) | {best['former semi-hard']:.2f} / {best['semi-hard']:.2f} | "
              f"{best['former error']:.2f} / {best['error']:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
