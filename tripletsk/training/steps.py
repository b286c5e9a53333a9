"""The compiled training steps of the head (private: used by the epoch runner).

One ``tf.function`` runs a whole window of equally shaped batches in a ``tf.while_loop``: a
step embeds each distinct item of its batch once (however many triplets it appears in),
computes the loss, and applies the optimizer.
"""

from __future__ import annotations

from tripletsk._tensorflow import import_tensorflow
from tripletsk.training.losses import (
    BATCH_LOSSES,
    batch_triplet_error,
    paired_distance,
    triplet_error,
    triplet_loss,
)

tf = import_tensorflow()


def make_steps(
    model, optimizer, distance: str, margin, online_loss: str | None, scale: float = 1.0
):
    """Compiled training loops: one for index triplets, one for labelled batches.

    ``margin`` is a float32 variable (read at each step, so that one graph serves fits with
    other margins) or None for the soft margin, whose ``scale`` the graph holds as a constant.

    Each takes a window's features (and labels), and a stack of equally sized batches of
    indices into them, shape (k, b, 3) or (k, b), and runs its k steps inside one graph (a
    ``tf.while_loop``), returning each step's loss and active fraction, and whether all
    weights are finite after them. One call per window instead of one per step removes the
    Python and dispatch overhead between steps, which dominates when features are narrow.
    ``online_loss`` names the loss of labelled batches (``BATCH_LOSSES``).
    """

    def triplet_step(features, labels, idx):
        unique, inverse = tf.unique(tf.reshape(idx, [-1]))
        with tf.GradientTape() as tape:
            emb = model(tf.gather(features, unique), training=True)
            emb = tf.cast(emb, tf.float32)
            emb = tf.reshape(tf.gather(emb, inverse), [-1, 3, tf.shape(emb)[-1]])
            loss, active = triplet_loss(emb[:, 0], emb[:, 1], emb[:, 2], distance, margin, scale)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(grads)
        error = triplet_error(
            paired_distance(emb[:, 0], emb[:, 1], distance),
            paired_distance(emb[:, 0], emb[:, 2], distance),
        )
        return loss, active, error

    batch_loss = BATCH_LOSSES.get(online_loss)  # None: training on triplets only

    def batch_step(features, labels, idx):
        with tf.GradientTape() as tape:
            emb = tf.cast(model(tf.gather(features, idx), training=True), tf.float32)
            batch_labels = tf.gather(labels, idx)
            loss, active = batch_loss(emb, batch_labels, distance, margin, scale)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(grads)
        return loss, active, batch_triplet_error(emb, batch_labels, distance)

    def looped(step, signature):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None], tf.float32),
                tf.TensorSpec([None], tf.int32),
                signature,
            ],
            reduce_retracing=True,
        )
        def run(features, labels, batches):
            n = tf.shape(batches)[0]
            losses = tf.TensorArray(tf.float32, size=n)
            actives = tf.TensorArray(tf.float32, size=n)
            errors = tf.TensorArray(tf.float32, size=n)
            for i in tf.range(n):
                loss, active, error = step(features, labels, batches[i])
                losses = losses.write(i, loss)
                actives = actives.write(i, active)
                errors = errors.write(i, error)
            # The loss alone can hide divergence: a NaN distance fails every comparison, so
            # the hinge of NaN embeddings reads as a finite margin. Check the weights too.
            finite = tf.reduce_all(
                [tf.reduce_all(tf.math.is_finite(v)) for v in model.trainable_variables]
            )
            return losses.stack(), actives.stack(), errors.stack(), finite

        return run

    return (
        looped(triplet_step, tf.TensorSpec([None, None, 3], tf.int32)),
        looped(batch_step, tf.TensorSpec([None, None], tf.int32)),
    )
