"""Backbone images/s in float32 and bfloat16, TensorFlow and OpenVINO, and feature agreement.

The frozen ResNet50 of tripletsk (up to ``avg_pool``, 224 px, batch 32, random weights from a
seed as with ``weights="none"``: the cost does not depend on the values) is run by each
backend of :mod:`tripletsk.extraction.runners` on the same real images (crops and flips of
scikit-learn's two sample photos, after ResNet50's ``preprocess_input``):

* TensorFlow float32, compiled ``tf.function`` (the reference, as extraction runs today);
* TensorFlow with Keras' ``mixed_bfloat16`` policy on every layer;
* OpenVINO CPU, ``INFERENCE_PRECISION_HINT`` ``f32`` and ``bf16`` (skipped if OpenVINO is
  not installed: ``pip install "tripletsk[openvino]"``).

Rounds are interleaved (every backend once per round) and each backend's speed-up over
TensorFlow float32 is the median of its per-round ratios. Agreement is the cosine similarity
of each image's features to its TensorFlow float32 features (minimum and mean over images).

Usage::

    python benchmarks/extraction_bf16.py                  # 64 images, batch 32, 3 rounds
    python benchmarks/extraction_bf16.py --images 32 --rounds 2 --no-openvino
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import time_interleaved


def real_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n uint8 images (n, size, size, 3): random crops and flips of the two sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        ch = rng.integers(h // 3, h)
        cw = min(w, int(ch * rng.uniform(0.8, 1.25)))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = Image.fromarray(src[y : y + ch, x : x + cw]).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(img)
    return out


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def nearest_other(f: np.ndarray) -> np.ndarray:
    """Index of each row's nearest other row (Euclidean)."""
    sq = (f.astype(np.float64) ** 2).sum(1)
    dist = sq[:, None] - 2 * f.astype(np.float64) @ f.T.astype(np.float64) + sq[None, :]
    np.fill_diagonal(dist, np.inf)
    return dist.argmin(1)


def matmul_ratio(n: int = 2048, reps: int = 5, rounds: int = 3) -> float:
    """TensorFlow bf16 / f32 GFLOP/s of an n^3 matmul: the hardware's ceiling for bf16 gains.

    Each precision's best time over interleaved rounds, so a busy moment does not decide it.
    """
    import tensorflow as tf

    funcs = {}
    for dtype in (tf.float32, tf.bfloat16):
        a = tf.cast(tf.random.stateless_normal([n, n], seed=[1, 2]), dtype)
        f = tf.function(lambda a: tf.reduce_sum(tf.cast(tf.matmul(a, a), tf.float32)))
        f(a).numpy()
        funcs[dtype.name] = (f, a)
    best = {name: float("inf") for name in funcs}
    for _ in range(rounds):
        for name, (f, a) in funcs.items():
            start = time.perf_counter()
            for _ in range(reps):
                f(a).numpy()
            best[name] = min(best[name], (time.perf_counter() - start) / reps)
    return best["float32"] / best["bfloat16"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-openvino", action="store_true")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf
    from keras.applications.resnet50 import preprocess_input

    from tripletsk.extraction import build_backbone
    from tripletsk.extraction.runners import (
        cpu_supports_bfloat16,
        make_openvino_runner,
        make_tensorflow_runner,
    )

    images = real_images(args.images, args.size)
    x = preprocess_input(images.astype(np.float32))
    model = build_backbone(weights="none", image_size=args.size, batch_size=args.batch_size).model

    runners, build_times = {}, {}
    start = time.perf_counter()
    runners["tensorflow float32"] = make_tensorflow_runner(model, "float32")
    build_times["tensorflow float32"] = time.perf_counter() - start
    start = time.perf_counter()
    runners["tensorflow bfloat16"] = make_tensorflow_runner(model, "bfloat16")
    build_times["tensorflow bfloat16"] = time.perf_counter() - start
    ov_version = None
    if not args.no_openvino:
        try:
            import openvino

            ov_version = openvino.__version__
        except ImportError:
            print("OpenVINO not installed: skipped (pip install 'tripletsk[openvino]')")
        if ov_version:
            for precision in ("f32", "bf16"):
                start = time.perf_counter()
                runner = make_openvino_runner(model, precision, batch_size=args.batch_size)
                # Without bf16 instructions OpenVINO computes f32 whatever was asked: say so.
                ran = {"float32": "f32", "bfloat16": "bf16"}[runner.precision]
                name = f"openvino {precision}" + ("" if ran == precision else f"->{ran}")
                runners[name] = runner
                build_times[name] = time.perf_counter() - start

    b = args.batch_size
    features, first_pass, rates, ratios, n_full = time_interleaved(
        runners, x, b, args.rounds, "tensorflow float32"
    )
    for name, seconds in first_pass.items():
        build_times[name] += seconds

    ref = features["tensorflow float32"]
    ceiling = matmul_ratio()
    centre = ref.mean(axis=0)
    others = cosine_rows(ref, np.roll(ref, 1, axis=0))
    nn_ref = nearest_other(ref)
    print(
        f"machine: {os.cpu_count()} CPUs, native bf16: {cpu_supports_bfloat16()}; TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}, OpenVINO {ov_version or 'not installed'}"
    )
    print(
        f"ResNet50 to avg_pool, {args.size} px, batch {b}, {n_full} real images (crops/flips of "
        f"2 photos), medians of {args.rounds} interleaved rounds"
    )
    print()
    print(f"{'backend':>20} {'images/s':>9} {'vs TF fp32':>10} {'cos min':>8} {'cos mean':>8} "
          f"{'ccos min':>8} {'ccos mean':>9} {'same NN':>7} {'setup s':>8}")  # fmt: skip
    for name in runners:
        cos = cosine_rows(features[name], ref)
        ccos = cosine_rows(features[name] - centre, ref - centre)
        same_nn = np.mean(nearest_other(features[name]) == nn_ref)
        print(
            f"{name:>20} {np.median(rates[name]):9.1f} {np.median(ratios[name]):9.2f}x "
            f"{cos.min():8.4f} {cos.mean():8.4f} {ccos.min():8.4f} {ccos.mean():9.4f} "
            f"{same_nn:7.2f} {build_times[name]:8.1f}"
        )
    print()
    print(f"hardware ceiling: TensorFlow bf16 / f32 matmul GFLOP/s on this CPU = {ceiling:.2f}x")
    print(f"cosine between different images' float32 features: mean {others.mean():.4f}")
    print("cos: cosine similarity of each image's features to its TensorFlow float32 features;")
    print("ccos: the same after subtracting the mean float32 feature of the images (the part")
    print("that tells images apart); same NN: share of images whose nearest other image is")
    print("the same as with TensorFlow float32. setup s: building the runner (bf16 copy /")
    print("OpenVINO conversion and compilation) plus the first pass (tracing, kernels).")


if __name__ == "__main__":
    main()
