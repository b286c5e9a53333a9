"""Time per epoch: TripletEncoder on cached features against the original end-to-end design.

The original design pushes every triplet's three images through ResNet50 in every epoch: a
three-input Keras model (frozen ResNet50 shared by the three branches, the same dense head on
top, triplet loss on the stacked embeddings), trained with ``model.fit`` on a ``tf.data``
pipeline that reads and decodes the triplets' image files. tripletsk extracts each image's
features once into an HDF5 cache, then trains only the head.

Both are timed in the same run on the same real JPEG files (crops of scikit-learn's sample
photos) and the same triplets:

* one-off extraction with ``tripletsk.extraction.extract_features`` (whole pipeline, including
  building the backbone);
* cached epoch: ``TripletEncoder(features=cache).fit(triplet keys)``; the per-epoch time is the
  slope between fits of 1 and 1 + E epochs, so fixed costs (model build, tracing) are excluded
  and reported separately;
* end-to-end epoch: ``model.fit`` after a first (tracing) epoch, the mean of the next epochs;
* the ratio, and the number of epochs after which extraction has paid for itself.

Weights are random (``weights="none"``): the network's cost does not depend on them.

Usage::

    python benchmarks/cached_vs_end_to_end.py               # 64 images, 64 triplets, 224 px
    python benchmarks/cached_vs_end_to_end.py --images 32 --triplets 32 --e2e-epochs 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_images(folder: Path, n: int, size: int, n_classes: int, seed: int = 0) -> np.ndarray:
    """n JPEG files in class folders (crops/flips of the two sample photos); returns labels."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    for i, label in enumerate(labels):
        src = photos[label % len(photos)]
        h, w = src.shape[:2]
        ch, cw = rng.integers(h // 2, h), rng.integers(w // 2, w)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = Image.fromarray(src[y : y + ch, x : x + cw]).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        img.save(folder / f"c{label}" / f"img_{i:04d}.jpg", quality=90)
    return labels


def end_to_end_model(backbone, weights, dropout: float, size: int, seed: int):
    """The original design: three image inputs -> frozen ResNet50 -> shared head -> (n, 3, c)."""
    import keras

    from tripletsk.training.head import build_keras_head

    backbone.trainable = False
    head = build_keras_head(weights, dropout=dropout, seed=seed)
    inputs = [keras.Input((size, size, 3), name=name) for name in ("anchor", "pos", "neg")]
    embeddings = [head(backbone(x, training=False)) for x in inputs]
    stacked = keras.layers.Lambda(lambda e: keras.ops.stack(e, axis=1))(embeddings)
    return keras.Model(inputs, stacked)


def image_dataset(paths: np.ndarray, size: int, batch_size: int):
    """tf.data: read and decode each triplet's three files, every epoch."""
    import tensorflow as tf
    from keras.applications.resnet50 import preprocess_input

    def load(path):
        img = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        img = tf.image.resize(img, (size, size))
        return preprocess_input(img)

    def triplet(row):
        return (load(row[0]), load(row[1]), load(row[2])), tf.zeros(())

    ds = tf.data.Dataset.from_tensor_slices(paths).map(triplet, num_parallel_calls=2)
    return ds.batch(batch_size).prefetch(2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--triplets", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--e2e-epochs", type=int, default=2, help="timed end-to-end epochs")
    parser.add_argument("--e2e-batch", type=int, default=32, help="triplets per e2e step")
    parser.add_argument("--cached-epochs", type=int, default=1000, help="timed cached epochs")
    parser.add_argument("--repeats", type=int, default=3, help="cached timing repeats")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from tripletsk import TripletEncoder
    from tripletsk.cache.store import FeatureStore
    from tripletsk.extraction import extract_features
    from tripletsk.training.head import init_head_weights
    from tripletsk.training.losses import TripletLoss
    from tripletsk.triplets.mining import sample_label_triplets

    print(f"machine: {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, Keras {keras.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        labels = write_images(folder, args.images, args.size, args.classes)
        keys = np.array(
            [f"c{label}/img_{i:04d}.jpg" for i, label in enumerate(labels)], dtype=object
        )
        triplets = keys[sample_label_triplets(labels, n_triplets=args.triplets, random_state=0)]
        print(
            f"{args.images} JPEG files of {args.size}x{args.size}, {args.triplets} triplets, "
            f"head 2048 -> 512 -> 10"
        )

        # --- cached: extract once, then train the head on the cache
        cache = Path(tmp) / "features.h5"
        start = time.perf_counter()
        extract_features(folder, cache, weights="none", image_size=args.size, quiet=True)
        extraction = time.perf_counter() - start
        store = FeatureStore(cache)

        def cached_fit(epochs):
            enc = TripletEncoder(
                features=store, max_epochs=epochs, tol=0.0, n_iter_no_change=10**6, random_state=0
            )
            start = time.perf_counter()
            enc.fit(triplets)
            assert enc.n_iter_ == epochs
            return time.perf_counter() - start

        cached_fit(1)  # warm-up (imports, kernels)
        slopes, fixed, whole = [], [], []
        for _ in range(args.repeats):
            t1 = cached_fit(1)
            tn = cached_fit(1 + args.cached_epochs)
            slopes.append((tn - t1) / args.cached_epochs)
            fixed.append(t1 - slopes[-1])
            whole.append(tn / (1 + args.cached_epochs))
        cached_epoch = float(np.median(slopes))
        cached_fixed = float(np.median(fixed))
        cached_whole = float(np.median(whole))

        # --- end-to-end: the same triplets of files through ResNet50 every epoch
        from tripletsk.extraction import build_backbone

        backbone = build_backbone(weights="none", image_size=args.size).model
        init = init_head_weights(2048, (512,), 10, np.random.RandomState(0))
        model = end_to_end_model(backbone, init, 0.2, args.size, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=TripletLoss(margin=1.0))
        paths = np.array([[str(folder / k) for k in row] for row in triplets])
        ds = image_dataset(paths, args.size, args.e2e_batch)
        start = time.perf_counter()
        model.fit(ds, epochs=1, verbose=0)
        e2e_first = time.perf_counter() - start
        start = time.perf_counter()
        model.fit(ds, epochs=args.e2e_epochs, verbose=0)
        e2e_epoch = (time.perf_counter() - start) / args.e2e_epochs

    n_e = 1 + args.cached_epochs
    print()
    print(f"one-off feature extraction ({args.images} images):   {extraction:9.2f} s")
    print(f"cached epoch (slope of fit time over epochs):      {cached_epoch * 1e3:9.2f} ms")
    print(f"cached fit fixed cost (build, trace, scale):       {cached_fixed:9.2f} s")
    print(f"cached whole fit of {n_e} epochs / {n_e}:            {cached_whole * 1e3:9.2f} ms")
    print(f"end-to-end first epoch (with tracing):             {e2e_first:9.2f} s")
    print(f"end-to-end epoch (mean of {args.e2e_epochs}):                     {e2e_epoch:9.2f} s")
    print(f"speed-up per epoch (e2e / cached epoch):           {e2e_epoch / cached_epoch:9.0f} x")
    print(
        f"  conservative (fixed cost spread over {n_e} epochs): {e2e_epoch / cached_whole:7.0f} x"
    )
    print(
        f"extraction + cached fixed cost pay for themselves after "
        f"{(extraction + cached_fixed) / (e2e_epoch - cached_epoch):.1f} end-to-end epochs"
    )


if __name__ == "__main__":
    main()
