"""Held-out retrieval with int8 backbone features against float32 ones, on digits.

scikit-learn's digits (1797 images of 8x8, grey 0-16) become RGB uint8 images of ``--size``
px (nearest-neighbour upscaling); the frozen ResNet50 of tripletsk (random weights from a seed,
as ``weights="none"``: no download) turns them into features three ways:

* ``tf fp32``: TensorFlow float32, the reference;
* ``ov f32``: OpenVINO f32 (to separate the backend from the quantization);
* ``ov int8``: OpenVINO int8 quantized by NNCF, calibrated on the calibration sample of the
  training images only (:func:`tripletsk.quantization.calibration_keys`, 128 images by
  default, ``--calibration``), as
  ``extract-features --precision int8`` would.

For each of ``--splits`` class-balanced splits (stratified, 30% test, disjoint images), a
``TripletEncoder(random_state=0)`` is fitted on the training images' labels for each feature
set, and the test images' embeddings are scored with leave-one-out retrieval
(:func:`tripletsk.metrics.retrieval_report`): precision@1 and MAP@R. The same splits, seeds
and settings for every feature set; only the features differ. The raw features' own retrieval
(no encoder) is printed as context.

Usage::

    python benchmarks/int8_quality.py                  # 64 px, 3 splits
    python benchmarks/int8_quality.py --size 224 --splits 1
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def digit_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits as (n, size, size, 3) uint8 RGB images, and their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    grey = np.clip(X.reshape(-1, 8, 8) * (255 / 16), 0, 255).astype(np.uint8)
    out = np.empty((len(grey), size, size, 3), np.uint8)
    for i, g in enumerate(grey):
        out[i] = np.asarray(Image.fromarray(g).resize((size, size), Image.NEAREST))[..., None]
    return out, y


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--calibration", type=int, default=None, help="calibration images (default: the rule's)"
    )
    args = parser.parse_args(argv)
    print("load average {:.2f} {:.2f} {:.2f} (start)".format(*os.getloadavg()))

    from keras.applications.resnet50 import preprocess_input
    from sklearn.model_selection import train_test_split

    from tripletsk import TripletEncoder
    from tripletsk.backends import make_openvino_runner, make_tensorflow_runner
    from tripletsk.extraction import build_backbone
    from tripletsk.metrics import retrieval_report
    from tripletsk.quantization import (
        CALIBRATION_SIZE,
        calibration_identity,
        calibration_keys,
        make_openvino_int8_runner,
    )

    images, y = digit_images(args.size)
    keys = np.array([f"digit_{i:04d}" for i in range(len(y))])
    model = build_backbone(weights="none", image_size=args.size, batch_size=args.batch_size).model
    b = args.batch_size

    def features(runner) -> np.ndarray:
        return np.concatenate(
            [
                runner(preprocess_input(images[i : i + b].astype(np.float32)))
                for i in range(0, len(images), b)
            ]
        )

    start = time.perf_counter()
    feats = {"tf fp32": features(make_tensorflow_runner(model, "float32"))}
    feats["ov f32"] = features(make_openvino_runner(model, "f32"))
    print(f"float features: {time.perf_counter() - start:.0f} s")
    cache = tempfile.mkdtemp(prefix="tripletsk-int8-quality-")

    reports = {}
    for seed in range(args.splits):
        train, test = train_test_split(
            np.arange(len(y)), test_size=0.3, random_state=seed, stratify=y
        )
        # Calibrate on training images only: the rule extraction uses, on the train keys.
        n_cal = args.calibration or CALIBRATION_SIZE
        chosen = calibration_keys(keys[train].tolist(), n_cal)
        index = {k: i for i, k in enumerate(keys)}
        rows = np.array([index[k] for k in chosen])
        cal_id = calibration_identity(
            [(k, hashlib.blake2b(images[index[k]].tobytes()).hexdigest()) for k in chosen]
        )
        calibration = preprocess_input(images[rows].astype(np.float32))
        start = time.perf_counter()
        int8 = make_openvino_int8_runner(model, calibration, cache, calibration_id=cal_id)
        split_feats = {**feats, "ov int8": features(int8)}
        print(f"split {seed}: int8 quantization + features {time.perf_counter() - start:.0f} s")
        for name, F in split_feats.items():
            enc = TripletEncoder(random_state=0).fit(F[train], y[train])
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
    print(
        f"digits {len(y)} images at {args.size} px, ResNet50 weights=none, {args.splits} "
        "stratified splits (30% test); TripletEncoder(random_state=0) fitted on train labels; "
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
