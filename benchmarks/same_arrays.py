"""Arrays a refactor must not change: run before and after a change, then compare bit for bit.

Extraction (random-weight ResNet50 at 32 px on 24 JPEG/PNG files), fits on the cache's
triplets and on digits with every mining word, the default fit, an early-stopping fit,
``ImageFeatures`` and an embedding index's search and duplicates, all with fixed seeds and one
TensorFlow thread (so the results are deterministic), saved to one ``.npz``::

    git worktree add /tmp/before <commit>
    (cd /tmp/before && PYTHONPATH=. python $OLDPWD/benchmarks/same_arrays.py /tmp/before.npz)
    PYTHONPATH=. python benchmarks/same_arrays.py /tmp/after.npz
    python benchmarks/same_arrays.py --compare /tmp/before.npz /tmp/after.npz

Only public names are used (``tripletsk.TripletEncoder``, ``FeatureStore``, ``ImageFeatures``,
``EmbeddingIndex``, ``extract_features``), so the script runs on both sides of a layout change.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

import numpy as np


def _images(root: str) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(3):
        os.makedirs(os.path.join(root, f"c{c}"))
        for i in range(8):
            pixels = (rng.random((40, 48, 3)) * 80 + c * 60).astype(np.uint8)
            Image.fromarray(pixels).save(
                os.path.join(root, f"c{c}", f"{i}{('.jpg', '.png')[i % 2]}")
            )


def compute(out_path: str) -> None:
    warnings.simplefilter("ignore")
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from sklearn.datasets import load_digits

    import tripletsk
    from tripletsk import EmbeddingIndex, ImageFeatures, TripletEncoder, extract_features

    out = {}
    tmp = tempfile.mkdtemp()
    root = os.path.join(tmp, "images")
    _images(root)
    cache = os.path.join(tmp, "f.h5")
    extract_features(
        root, cache, weights=None, image_size=32, batch_size=8, quiet=True, backend="tensorflow"
    )
    keys = sorted(tripletsk.FeatureStore(cache).keys)
    out["extract_keys"] = np.array(keys)
    out["extract_features"] = tripletsk.FeatureStore(cache).lookup(keys)
    triplets = np.array(
        [[keys[i], keys[(i + 1) % 8 + 8 * (i // 8)], keys[(i + 8) % 24]] for i in range(24)]
    )
    enc = TripletEncoder(features=cache, random_state=0, max_epochs=5).fit(triplets)
    out["cache_fit_transform"] = enc.transform(keys)
    out["cache_fit_decision"] = enc.decision_function(triplets)
    X, y = load_digits(return_X_y=True)
    for mining in ["auto", "batch_hard", "semi_hard", "batch_all", "hybrid", "random"]:
        fitted = TripletEncoder(mining=mining, random_state=0, max_epochs=4).fit(X[:1000], y[:1000])
        out[f"digits_{mining}"] = fitted.transform(X[1000:1200])
    default = TripletEncoder(random_state=0).fit(X[:1000], y[:1000])
    out["digits_default"] = default.transform(X[1000:])
    out["digits_default_epochs"] = np.array([default.n_iter_])
    stopped = TripletEncoder(
        random_state=1,
        learning_rate_schedule="cosine",
        weight_averaging=0,
        early_stopping=True,
        max_epochs=30,
    ).fit(X[:1000], y[:1000])
    out["digits_es"] = stopped.transform(X[1000:1100])
    features = ImageFeatures(
        root=root,
        cache=os.path.join(tmp, "g.h5"),
        weights=None,
        image_size=32,
        backend="tensorflow",
    )
    out["image_features"] = features.fit_transform(
        np.array([os.path.join(root, k) for k in keys[:6]])
    )
    Z = default.transform(X)
    index = EmbeddingIndex.create(os.path.join(tmp, "ix"), [str(i) for i in range(len(Z))], Z)
    neighbours = index.search(Z[:50], k=5)
    out["index_rows"] = neighbours.indices
    out["index_dist"] = neighbours.distances
    out["dups"] = np.array([len(g) for g in index.duplicates(0.05)])
    np.savez(out_path, **out)
    print(f"saved {len(out)} arrays to {out_path}")


def compare(before_path: str, after_path: str) -> int:
    before, after = np.load(before_path), np.load(after_path)
    names = sorted(set(before.files) | set(after.files))
    differ = [
        name
        for name in names
        if name not in before.files
        or name not in after.files
        or before[name].shape != after[name].shape
        or not np.array_equal(before[name], after[name])
    ]
    for name in differ:
        print(f"DIFFERS: {name}")
    print(f"{len(names) - len(differ)}/{len(names)} arrays identical")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="OUT.npz, or with --compare: BEFORE.npz AFTER.npz")
    parser.add_argument("--compare", action="store_true", help="compare two saved runs")
    args = parser.parse_args()
    if args.compare:
        if len(args.paths) != 2:
            parser.error("--compare takes BEFORE.npz AFTER.npz")
        return compare(*args.paths)
    compute(args.paths[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
