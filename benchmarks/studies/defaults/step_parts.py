"""What each part of a labelled training step costs, by leaving parts out (issue 21, item 2).

One step as ``tripletsk.training.steps`` runs it for ``fit(X, y)``: gather a P x K batch
(Fashion's shape: 10 classes x 25) of 784 random features, the default head (input dropout
0.1, ``--hidden`` units, 64-d, L2 normalised), the semi-hard soft-margin loss, its gradient,
the fused Adam update, and the batch's triplet error. Each variant leaves one part out (or
swaps it); 20 steps run in one ``tf.function`` loop, as a fit's epoch does, and a variant's
time is the median of 5 interleaved rounds after a warm-up. Run::

    PYTHONPATH=. python benchmarks/studies/defaults/step_parts.py --hidden 1024 64
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tripletsk._tensorflow import import_tensorflow
from tripletsk.training import losses
from tripletsk.training.head import build_keras_head, init_head_weights
from tripletsk.training.optimizer import FusedAdam

tf = import_tensorflow()
N_FEATURES, N_CLASSES, PER_CLASS, STEPS = 784, 10, 25, 20


def error_shared_with_loss(emb, labels, distance, margin):
    """Semi-hard loss and the batch's triplet error from one set of positive pairs."""
    dist = losses.pairwise_distance(emb, distance)
    pairs, negative = losses._semi_hard(dist, *losses._label_masks(labels))
    d_an = tf.gather(dist, negative, batch_dims=1)
    valid = tf.cast(pairs.valid, dist.dtype)
    loss = losses._mean_or_zero(losses.triplet_margin_loss(pairs.d_ap, d_an, margin), valid)
    wrong = tf.cast(pairs.n_neg - pairs.n_farther(), tf.float32) * valid
    total = tf.cast(pairs.n_neg, tf.float32) * valid
    return loss, tf.math.divide_no_nan(tf.reduce_sum(wrong), tf.reduce_sum(total))


VARIANTS = {
    "full step": {},
    "no batch error": {"error": False},
    "batch error from the loss's pairs": {"loss": "shared", "error": False},
    "no input dropout": {"input_dropout": 0.0},
    "batch_hard instead of semi_hard": {"loss": "batch_hard"},
    "no triplet loss (a sum), no error": {"loss": None, "error": False},
    "forward and loss only (no backward)": {"backward": False, "error": False},
}


def make_run(features, labels, hidden: int, input_dropout=0.1, loss="semi_hard", error=True,
             backward=True):  # fmt: skip
    weights = init_head_weights(N_FEATURES, (hidden,), 64, np.random.RandomState(0))
    model = build_keras_head(weights, seed=0, input_dropout=input_dropout)
    optimizer = FusedAdam(model.trainable_variables, 1e-3)
    batch_loss = {"shared": error_shared_with_loss, None: None}.get(
        loss, losses.BATCH_LOSSES.get(loss)
    )

    def objective(emb, batch_labels):
        if batch_loss is None:
            return tf.reduce_sum(emb * emb[::-1])
        return batch_loss(emb, batch_labels, "l2", None)[0]

    def step(idx):
        x, batch_labels = tf.gather(features, idx), tf.gather(labels, idx)
        if not backward:
            return objective(model(x, training=True), batch_labels)
        with tf.GradientTape() as tape:
            emb = model(x, training=True)
            value = objective(emb, batch_labels)
        optimizer.apply_gradients(tape.gradient(value, model.trainable_variables))
        if error:
            value += losses.batch_triplet_error(emb, batch_labels, "l2")
        return value

    @tf.function
    def run(batches):
        total = tf.constant(0.0)
        for i in tf.range(tf.shape(batches)[0]):
            total += step(batches[i])
        return total

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[1024])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.RandomState(0)
    n = N_CLASSES * 500
    features = tf.constant(rng.randn(n, N_FEATURES).astype(np.float32))
    labels = tf.constant(np.repeat(np.arange(N_CLASSES), 500).astype(np.int32))
    batches = tf.constant(np.stack([
        np.concatenate([rng.choice(np.arange(c * 500, (c + 1) * 500), PER_CLASS, replace=False)
                        for c in range(N_CLASSES)])
        for _ in range(STEPS)
    ]).astype(np.int32))  # fmt: skip
    for hidden in args.hidden:
        runs = {name: make_run(features, labels, hidden, **v) for name, v in VARIANTS.items()}
        for run in runs.values():
            run(batches)  # trace and warm up
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                run(batches)
                times[name].append((time.perf_counter() - start) / STEPS * 1000)
        for name, ms in times.items():
            print(f"hidden {hidden:5d}  {name:38s} {np.median(ms):6.2f} ms a step")


if __name__ == "__main__":
    main()
