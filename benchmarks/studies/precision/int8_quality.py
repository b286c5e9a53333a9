"""Held-out retrieval with int8 backbone features against float32 ones (digits, Fashion-MNIST).

The images become RGB uint8 images of ``--size`` px; a frozen backbone of tripletsk
(``--backbone``, default ResNet50; ``--weights``, default ``none``: random weights from a seed,
no download) turns them into features three ways, each through tripletsk's own
:class:`~tripletsk.extraction.backbone.Backbone` (uint8 pixels in, as extraction runs it):

* ``tf fp32``: TensorFlow float32, the reference;
* ``ov f32``: OpenVINO f32 (to separate the backend from the quantization);
* ``ov int8``: OpenVINO int8 quantized by NNCF, calibrated on the calibration sample of the
  training images only (:func:`tripletsk.extraction.int8.calibration_keys`, 128 images by
  default, ``--calibration``), as ``extract-features --precision int8`` would.

``--dataset digits``: scikit-learn's 1797 digits (8x8, nearest-neighbour upscaling); for each
of ``--splits`` class-balanced splits (stratified, 30% test, disjoint images).
``--dataset fashion --data DIR``: the 5,000 / 2,000 disjoint class-balanced Fashion-MNIST split
of ``examples/fashion_mnist.py`` (28x28 grey, bilinear upscaling as extraction resizes); one
split, the encoder fitted with ``--splits`` seeds. Quantization is calibrated once per split.

A ``TripletEncoder(random_state=seed)`` (defaults otherwise) is fitted on the training images'
labels for each feature set, and the test images' embeddings are scored with leave-one-out
retrieval (:func:`tripletsk.evaluation.metrics.retrieval_report`): precision@1 and MAP@R. Only the
features differ. The raw features' own retrieval (no encoder) is printed as context.

Usage::

    python benchmarks/studies/precision/int8_quality.py                  # digits, 64 px, 3 splits
    python benchmarks/studies/precision/int8_quality.py --size 224 --splits 1
    python benchmarks/studies/precision/int8_quality.py --dataset fashion --data DIR --size 224 \\
        --backbone "MobileNet(alpha=0.25)" --weights mobilenet_2_5_224_tf.h5 --splits 2
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))


def _rgb(grey: np.ndarray, size: int, resample) -> np.ndarray:
    """(n, h, w) uint8 grey -> (n, size, size, 3) uint8 RGB."""
    from PIL import Image

    out = np.empty((len(grey), size, size, 3), np.uint8)
    for i, g in enumerate(grey):
        out[i] = np.asarray(Image.fromarray(g).resize((size, size), resample))[..., None]
    return out


def digit_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits as (n, size, size, 3) uint8 RGB images, and their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    grey = np.clip(X.reshape(-1, 8, 8) * (255 / 16), 0, 255).astype(np.uint8)
    return _rgb(grey, size, Image.NEAREST), y


def fashion_images(folder, size: int):
    """The Fashion-MNIST split of examples/fashion_mnist.py as RGB images: (images, labels,
    [(train rows, test rows)])."""
    from fashion_mnist import split
    from PIL import Image

    X_tr, y_tr, X_te, y_te = split(folder)
    images = _rgb(np.concatenate([X_tr, X_te]), size, Image.BILINEAR)
    n = len(y_tr)
    return images, np.concatenate([y_tr, y_te]), (np.arange(n), np.arange(n, n + len(y_te)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("digits", "fashion"), default="digits")
    parser.add_argument("--data", help="Fashion-MNIST folder of *-ubyte.gz (--dataset fashion)")
    parser.add_argument("--backbone", default="ResNet50")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--calibration", type=int, default=None, help="calibration images (default: the rule's)"
    )
    args = parser.parse_args(argv)
    print("load average {:.2f} {:.2f} {:.2f} (start)".format(*os.getloadavg()))

    from sklearn.model_selection import train_test_split

    from tripletsk import TripletEncoder
    from tripletsk.evaluation.metrics import retrieval_report
    from tripletsk.extraction import build_backbone
    from tripletsk.extraction.backbone import build_keras_model, preprocess, resolve_network
    from tripletsk.extraction.int8 import CALIBRATION_SIZE, calibration_identity, calibration_keys
    from tripletsk.extraction.quantization import quantize_openvino_int8

    if args.dataset == "digits":
        images, y = digit_images(args.size)
        splits = [
            train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed, stratify=y)
            for seed in range(args.splits)
        ]
    else:
        if not args.data:
            parser.error("--dataset fashion needs --data DIR")
        images, y, split = fashion_images(args.data, args.size)
        splits = [split] * args.splits  # one split; the encoder's seed varies
    keys = np.array([f"image_{i:05d}" for i in range(len(y))])
    spec = resolve_network(args.weights, 0, args.backbone)
    size, b = args.size, args.batch_size

    def features(**how) -> np.ndarray:
        return build_backbone(spec, size, spec.seed, b, **how)(images)

    start = time.perf_counter()
    feats = {"tf fp32": features(), "ov f32": features(backend="openvino", precision="float32")}
    print(f"{spec.arch.describe()} float features: {time.perf_counter() - start:.0f} s")
    cache = tempfile.mkdtemp(prefix="tripletsk-int8-quality-")

    reports = {}
    int8 = {}  # calibration identity -> int8 features (one split can repeat on fashion)
    index = {k: i for i, k in enumerate(keys)}
    for seed, (train, test) in enumerate(splits):
        # Calibrate on training images only: the rule extraction uses, on the train keys.
        n_cal = args.calibration or CALIBRATION_SIZE
        chosen = calibration_keys(keys[train].tolist(), n_cal)
        rows = np.array([index[k] for k in chosen])
        cal_id = calibration_identity(
            [(k, hashlib.blake2b(images[index[k]].tobytes()).hexdigest()) for k in chosen]
        )
        if cal_id not in int8:
            start = time.perf_counter()
            folder, _ = quantize_openvino_int8(
                build_keras_model(spec, size), preprocess(images[rows], spec.arch), cache, cal_id
            )
            int8[cal_id] = features(backend="openvino", precision="int8", int8_folder=folder)
            print(f"split {seed}: int8 quantization + features {time.perf_counter() - start:.0f} s")
        split_feats = {**feats, "ov int8": int8[cal_id]}
        for name, F in split_feats.items():
            enc = TripletEncoder(random_state=seed).fit(F[train], y[train])
            rep = retrieval_report(enc.transform(F[test]), y[test])
            raw = retrieval_report(F[test], y[test])
            reports.setdefault(name, []).append(
                (rep["precision_at_1"], rep["map_at_r"], raw["precision_at_1"], raw["map_at_r"])
            )
            print(
                f"  {name:>8}: encoder P@1 {rep['precision_at_1']:.4f} MAP@R "
                f"{rep['map_at_r']:.4f} | raw features P@1 {raw['precision_at_1']:.4f} "
                f"MAP@R {raw['map_at_r']:.4f}",
                flush=True,
            )

    ref = np.array(reports["tf fp32"])
    print()
    what = ("stratified splits (30% test)" if args.dataset == "digits"
            else "encoder seeds on the 5,000 / 2,000 split")  # fmt: skip
    print(
        f"{args.dataset} {len(y)} images at {size} px, {spec.arch.describe()} weights="
        f"{args.weights}, {args.splits} {what}; TripletEncoder() fitted on train labels; "
        f"int8 calibrated on {args.calibration or CALIBRATION_SIZE} training images"
    )
    print(f"{'features':>8} {'P@1':>7} {'MAP@R':>7} {'dP@1 vs tf fp32':>16} {'dMAP@R':>8} "
          f"{'raw P@1':>8} {'raw MAP@R':>9}")  # fmt: skip
    for name, rows in reports.items():
        r = np.array(rows)
        d = r - ref
        print(
            f"{name:>8} {r[:, 0].mean():7.4f} {r[:, 1].mean():7.4f} {d[:, 0].mean():+16.4f} "
            f"{d[:, 1].mean():+8.4f} {r[:, 2].mean():8.4f} {r[:, 3].mean():9.4f}"
        )
    d = np.array(reports["ov int8"])[:, 0] - ref[:, 0]
    print(f"int8 - fp32 held-out P@1 per split: {np.round(d, 4).tolist()}")
    print("load average {:.2f} {:.2f} {:.2f} (end)".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
