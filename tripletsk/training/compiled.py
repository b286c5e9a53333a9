"""Compiled heads kept between fits (private: used by the training loop).

Tracing the compiled training loops (:mod:`tripletsk.training.steps`) costs about a second of
CPU per fit, more than all the training of a small fit: a grid search over small data spent
most of its time tracing. A fit therefore takes its head model, optimizer and compiled loops
from a pool kept per graph (the layer sizes, dropout rates, precision, distance, loss, whether
there is a margin (if not, the soft margin's scale) and whether there is a weight decay: what
the traced graph holds as constants), resets them to its own initial weights, dropout seeds,
margin, optimizer state, learning rate and weight decay (variables of the graph, so that a
grid search over them traces once), and gives them back when it ends. A fit that starts
while another holds the same graph builds its own: nothing is shared between running fits.
What a fit computes does not depend on whether its head came from the pool
(``tests/training/test_compiled.py`` checks bit for bit).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tripletsk._tensorflow import import_tensorflow
from tripletsk.training.config import TrainingConfig
from tripletsk.training.head import (
    HeadWeights,
    build_keras_head,
    reset_dropout_seeds,
    set_head_weights,
)
from tripletsk.training.optimizer import FusedAdam
from tripletsk.training.steps import make_steps

tf = import_tensorflow()

PRECISIONS = {"float32": None, "bfloat16": "mixed_bfloat16"}

# Idle heads kept: one per graph, for the most recently used graphs. A 2048 -> 2048 -> 64 head
# with its Adam moments holds about 50 MB.
MAX_IDLE_GRAPHS = 4

_idle: OrderedDict[tuple, CompiledHead] = OrderedDict()
_lock = threading.Lock()


@dataclass
class CompiledHead:
    """A Keras head, its optimizer, and the compiled loops that train them."""

    model: object
    optimizer: FusedAdam
    margin: object  # a float32 variable, or None for the soft margin
    triplet_loop: object
    batch_loop: object


def graph_key(initial_weights: HeadWeights, config: TrainingConfig) -> tuple:
    """What the compiled loops of a fit bake in: fits with equal keys can share them."""
    shapes = tuple(kernel.shape for kernel, _ in initial_weights)
    return (shapes, config.dropout, config.input_dropout, config.precision, config.distance,
            config.margin is None, config.loss_scale, config.strategy.loss,
            config.weight_decay > 0)  # fmt: skip


@contextmanager
def compiled_head(
    initial_weights: HeadWeights, config: TrainingConfig, seed: int
) -> Iterator[CompiledHead]:
    """A compiled head for one fit, set to ``initial_weights``, the dropout seeds of ``seed``,
    fresh optimizer state and ``config.learning_rate``; returned to the pool afterwards."""
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}; got {config.precision!r}.")
    key = graph_key(initial_weights, config)
    with _lock:
        head = _idle.pop(key, None)
    if head is None:
        head = _build(initial_weights, config, seed)
    else:
        set_head_weights(head.model, initial_weights)
        reset_dropout_seeds(head.model, seed)
        head.optimizer.reset(config.learning_rate, config.weight_decay)
        if head.margin is not None:
            head.margin.assign(config.margin)
    yield head
    # Not returned after an exception: a fit interrupted mid-window leaves it half-updated.
    with _lock:
        _idle[key] = head
        _idle.move_to_end(key)
        while len(_idle) > MAX_IDLE_GRAPHS:
            _idle.popitem(last=False)


def _build(initial_weights: HeadWeights, config: TrainingConfig, seed: int) -> CompiledHead:
    model = build_keras_head(
        initial_weights,
        dropout=config.dropout,
        seed=seed,
        dtype=PRECISIONS[config.precision],
        input_dropout=config.input_dropout,
    )
    optimizer = FusedAdam(
        model.trainable_variables, config.learning_rate, weight_decay=config.weight_decay
    )
    margin = None
    if config.margin is not None:
        margin = tf.Variable(config.margin, trainable=False, dtype=tf.float32)
    loops = make_steps(
        model, optimizer, config.distance, margin, config.strategy.loss, config.loss_scale
    )
    return CompiledHead(model, optimizer, margin, *loops)
