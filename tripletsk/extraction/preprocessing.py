"""How pixels become what a network takes: Keras' ``preprocess_input`` modes.

:func:`preprocess_array` scales NumPy pixels without importing Keras (the same float32 values as
Keras' own); :func:`preprocess_pixels` calls the application's own ``preprocess_input`` (NumPy or
tensors); :func:`probe_mode` finds which mode an application's ``preprocess_input`` is.
"""

from __future__ import annotations

import numpy as np

from tripletsk._tensorflow import import_keras
from tripletsk.errors import UserError

__all__ = ["PREPROCESSING_MODES", "preprocess_array", "preprocess_pixels", "probe_mode"]

#: Keras' ``preprocess_input`` modes (``keras.applications.imagenet_utils``), and "none".
PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")


def probe_mode(module: str) -> str:
    """Which of Keras' modes the application's ``preprocess_input`` is (compared on pixels)."""
    keras = import_keras()
    from keras.applications import imagenet_utils

    x = np.random.default_rng(0).integers(0, 256, (2, 3, 3, 3)).astype(np.float32)
    got = np.asarray(getattr(keras.applications, module).preprocess_input(x.copy()))
    for mode in PREPROCESSING_MODES:
        want = x if mode == "none" else imagenet_utils.preprocess_input(x.copy(), mode=mode)
        if got.shape == x.shape and np.allclose(got, np.asarray(want), atol=1e-5):
            return mode
    raise UserError(
        f"keras.applications.{module}.preprocess_input is none of Keras' modes "
        f"({', '.join(PREPROCESSING_MODES)}); pass preprocessing explicitly"
    )


# Keras' preprocess_input constants (keras.applications.imagenet_utils), per mode.
_MODE_MEANS = {"caffe": (103.939, 116.779, 123.68), "torch": (0.485, 0.456, 0.406)}
_MODE_STDS = {"torch": (0.229, 0.224, 0.225)}


def preprocess_array(pixels: np.ndarray, mode: str) -> np.ndarray:
    """NumPy pixels (0-255, RGB, channels last) -> float32 scaled as Keras' ``mode`` does.

    The same arithmetic, in the same order, as ``imagenet_utils.preprocess_input`` on a NumPy
    array (so the same float32 values), without importing Keras: an int8 run, which needs no
    Keras model, then never loads TensorFlow. ``pixels`` is not modified.
    """
    if mode not in PREPROCESSING_MODES:
        raise ValueError(f"preprocessing mode must be one of {PREPROCESSING_MODES}, got {mode!r}")
    if mode == "caffe":  # RGB -> BGR in the same pass as the copy: the result is contiguous
        x = np.array(np.asarray(pixels)[..., ::-1], dtype=np.float32)
    else:
        x = np.array(pixels, dtype=np.float32)
    if mode == "none":
        return x
    if mode == "tf":
        x /= 127.5
        x -= 1.0
        return x
    if mode == "torch":
        x /= 255.0
    for channel, mean in enumerate(_MODE_MEANS[mode]):
        x[..., channel] -= mean
    for channel, std in enumerate(_MODE_STDS.get(mode, ())):
        x[..., channel] /= std
    return x


def preprocess_pixels(images, arch):
    """Pixels (uint8 or float, 0-255; NumPy or a tensor) -> what ``arch``'s network takes
    (``arch``: an :class:`~tripletsk.extraction.architecture.Architecture`)."""
    x = images
    if arch.module:
        keras = import_keras()
        return getattr(keras.applications, arch.module).preprocess_input(x)
    if arch.mode == "none":
        return x
    import_keras()
    from keras.applications import imagenet_utils

    return imagenet_utils.preprocess_input(x, mode=arch.mode)
