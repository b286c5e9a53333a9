"""The dense head: its initial weights, its Keras model, and its NumPy forward pass.

The head maps a feature vector to an L2-normalised embedding::

    [Dense(h, relu, he_uniform) -> Dropout] * len(hidden_units) -> Dense(n_components) -> L2

Weights are plain NumPy, as a list of ``(kernel, bias)`` pairs, so that a fitted estimator
needs TensorFlow only to train: :func:`forward` runs inference in NumPy, and
:func:`build_keras_head` / :func:`get_head_weights` move weights into and out of Keras.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from tripletsk._tensorflow import import_keras

HeadWeights = list[tuple[np.ndarray, np.ndarray]]

# Embeddings shorter than this are left unscaled by the L2 normalisation (avoids 0 / 0).
_NORM_EPS = 1e-12


# hidden_units="auto": one layer of 1024 units, halved until the first layer holds at most
# 2**20 weights (512 for 2048-d CNN features), at least 128. On a Fashion-MNIST validation
# split (split 0, batches of 128) 1024 units beat 512 on 784 pixels (MAP@R 0.692 vs 0.680
# after 50 epochs) and 512 matched 1024 on 2048-d ResNet50 features (0.670 vs 0.666 after 60)
# at less cost per epoch (docs/findings/defaults_study.md, "A fit that stops by itself").
AUTO_UNITS, AUTO_FIRST_LAYER_WEIGHTS, AUTO_MIN_UNITS = 1024, 2**20, 128


def auto_hidden_units(n_features: int) -> int:
    """The width of ``hidden_units="auto"`` for ``n_features`` inputs.

    >>> auto_hidden_units(784), auto_hidden_units(2048), auto_hidden_units(64)
    (1024, 512, 1024)
    """
    units = AUTO_UNITS
    while units > AUTO_MIN_UNITS and units * n_features > AUTO_FIRST_LAYER_WEIGHTS:
        units //= 2
    return units


def normalize_hidden_units(hidden_units, n_features: int | None = None) -> tuple[int, ...]:
    """``512`` -> ``(512,)``; ``(256, 128)`` stays; ``()`` or ``None`` -> a linear head;
    ``"auto"`` -> ``(auto_hidden_units(n_features),)``."""
    if hidden_units is None:
        return ()
    if isinstance(hidden_units, str):
        if hidden_units != "auto" or n_features is None:
            raise ValueError(f"hidden_units={hidden_units!r} needs 'auto' and n_features.")
        return (auto_hidden_units(n_features),)
    if isinstance(hidden_units, int | np.integer):
        return (int(hidden_units),)
    return tuple(int(h) for h in hidden_units)


def init_head_weights(
    n_features: int, hidden_units: Sequence[int], n_components: int, rng: np.random.RandomState
) -> HeadWeights:
    """He-uniform kernels (Keras' ``he_uniform``: ``U(-sqrt(6/fan_in), +sqrt(6/fan_in))``) and
    zero biases, drawn from ``rng`` so that a seed fully determines the initial head."""
    sizes = [n_features, *hidden_units, n_components]
    weights = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        limit = np.sqrt(6.0 / fan_in)
        kernel = rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)
        weights.append((kernel, np.zeros(fan_out, dtype=np.float32)))
    return weights


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (rows of norm ~0 stay ~0 rather than becoming NaN)."""
    norms = np.sqrt(np.maximum(np.einsum("ij,ij->i", x, x), _NORM_EPS))
    return x / norms[:, None]


def forward(x: np.ndarray, weights: HeadWeights) -> np.ndarray:
    """Inference in NumPy: the head without dropout, ending in L2 normalisation."""
    out = np.asarray(x, dtype=np.float32)
    for i, (kernel, bias) in enumerate(weights):
        out = out @ kernel + bias
        if i < len(weights) - 1:
            np.maximum(out, 0.0, out=out)
    return l2_normalize(out)


def build_keras_head(
    weights: HeadWeights,
    dropout: float = 0.0,
    seed: int | None = None,
    dtype: str | None = None,
    input_dropout: float = 0.0,
):
    """A Keras model of the head, initialised with ``weights``.

    Dropout layers get seeds derived from ``seed``, so training is reproducible without touching
    Keras' global random state. ``dtype`` is the Keras dtype policy of the Dense and Dropout
    layers (e.g. ``"mixed_bfloat16"``: float32 weights, bfloat16 arithmetic); the global policy
    is never changed, and the final L2 normalisation always runs in float32.
    """
    keras = import_keras()

    n_features = weights[0][0].shape[0]
    inputs = keras.Input(shape=(n_features,), name="features")
    x = inputs
    if input_dropout > 0:  # drops input features (pixels): a cheap augmentation
        input_seed = _dropout_seed(seed, len(weights))
        x = keras.layers.Dropout(input_dropout, seed=input_seed, name="input_dropout", dtype=dtype)(
            x
        )
    for i, (kernel, _) in enumerate(weights):
        last = i == len(weights) - 1
        x = keras.layers.Dense(
            kernel.shape[1],
            activation=None if last else "relu",
            # A seeded initialiser: unseeded Keras ones draw from Python's global `random`.
            kernel_initializer=keras.initializers.HeUniform(seed=0 if seed is None else seed + i),
            name="embedding" if last else f"hidden_{i}",
            dtype=dtype,
        )(x)
        if not last and dropout > 0:
            layer_seed = _dropout_seed(seed, i)
            x = keras.layers.Dropout(dropout, seed=layer_seed, name=f"dropout_{i}", dtype=dtype)(x)
    outputs = keras.layers.UnitNormalization(axis=-1, name="l2_normalize", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="tripletsk_head")
    set_head_weights(model, weights)
    return model


def _dropout_seed(seed: int | None, position: int) -> int | None:
    """The seed of the Dropout layer after hidden layer ``position`` (of the input dropout:
    ``position`` = the number of Dense layers)."""
    return None if seed is None else seed + position


def reset_dropout_seeds(model, seed: int) -> None:
    """Put the Dropout layers of a head built by :func:`build_keras_head` back to the random
    state they would start from if built with ``seed``: the same masks, step after step."""
    keras = import_keras()

    n_dense = len(_dense_layers(model))
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            position = n_dense if layer.name == "input_dropout" else int(layer.name.split("_")[1])
            # Keras' SeedGenerator starts from the state [seed, 0].
            layer.seed_generator.state.assign([_dropout_seed(seed, position), 0])


def _dense_layers(model) -> list:
    keras = import_keras()

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]


def set_head_weights(model, weights: HeadWeights) -> None:
    """Copy NumPy ``(kernel, bias)`` pairs into the Dense layers of a head model."""
    layers = _dense_layers(model)
    if len(layers) != len(weights):
        raise ValueError(f"The model has {len(layers)} Dense layers; got {len(weights)} weights.")
    for layer, (kernel, bias) in zip(layers, weights, strict=True):
        layer.set_weights([kernel, bias])


def get_head_weights(model) -> HeadWeights:
    """The Dense layers' ``(kernel, bias)`` pairs of a head model, as float32 NumPy arrays."""
    return [
        tuple(np.asarray(w, dtype=np.float32) for w in layer.get_weights())
        for layer in _dense_layers(model)
    ]
