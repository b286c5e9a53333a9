"""Builders and checks shared by the test modules: real image folders (Pillow), real feature
caches, the comparison of two caches, a short training loop and an extraction in a new
process. Fixtures built from them live in conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from tripletsk.cache.format import FINGERPRINT_DTYPE, FORMAT_NAME, FORMAT_VERSION
from tripletsk.cache.store import FeatureStore
from tripletsk.cache.writer import write_cache

#: Two classes of clearly different colour, for labelled image folders.
TWO_COLOURS = {"c0": (200, 30, 30), "c1": (30, 200, 30)}


def date_back(paths: Iterable[Path], seconds: float = 3600.0) -> None:
    """Set the modification time of ``paths`` ``seconds`` in the past.

    Files written less than 3 s before they are hashed are hashed again on the next run (the
    "racy" rule of extraction): dated back, a rerun is a pure cache hit."""
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


def noise_images(
    root: Path, names: int | Iterable[str], *, shape: tuple[int, int] = (40, 40), seed: int = 0
) -> Path:
    """One RGB PNG of random pixels, ``shape`` (height, width), at ``root / name`` for each name
    (an int ``n``: ``0.png`` ... ``{n-1}.png``); the pixels depend on ``seed`` and the name's
    position. Dated back an hour; return ``root``."""
    if isinstance(names, int):
        names = [f"{i}.png" for i in range(names)]
    paths = []
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, i])
        path = Path(root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    date_back(paths)
    return Path(root)


def make_images(root: Path, n: int = 24, *, broken: str = "a/broken.jpg") -> Path:
    """``n`` small PNGs ``00.png``, ``01.png``... alternately in folders ``a`` and ``b``, plus
    one file that is not an image at ``broken``; all dated back an hour."""
    noise_images(root, [f"{'ab'[i % 2]}/{i:02d}.png" for i in range(n)])
    if broken:
        path = Path(root) / broken
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG truncated, not an image")
        date_back([path])
    return Path(root)


def colour_image(
    colour: tuple[int, int, int], i: int, *, size: int = 32, noise: float = 25.0, seed: int = 0
) -> Image.Image:
    """A ``size`` px image of ``colour`` plus Gaussian noise, with a stripe of the complementary
    colour at a height set by ``i``: images of one colour are alike yet all distinct."""
    rng = np.random.default_rng([seed, *colour, i])
    pixels = np.clip(np.array(colour) + rng.normal(0, noise, (size, size, 3)), 0, 255)
    top = (3 * i) % (size - 4)
    pixels[top : top + 4] = 255 - np.array(colour)
    return Image.fromarray(pixels.astype(np.uint8))


def colour_classes(
    root: Path,
    colours: Mapping[str, tuple[int, int, int]],
    n_per_class: int,
    *,
    size: int = 32,
    noise: float = 25.0,
    seed: int = 0,
) -> Path:
    """A labelled image folder: ``root/<class>/<i>.png``, ``n_per_class`` images of each class's
    colour (see `colour_image`); return ``root``."""
    for name, colour in colours.items():
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            image = colour_image(colour, i, size=size, noise=noise, seed=seed)
            image.save(Path(root) / name / f"{i}.png")
    return Path(root)


#: Provenance of caches that hold arbitrary vectors rather than a backbone's features.
PLAIN_PROVENANCE = {"model": "test", "layer": "test", "weights": "none", "image_size": 8,
                    "preprocessing": "none", "compute_dtype": "float32", "backend": "none",
                    "weights_source": "none", "versions": "{}"}  # fmt: skip


def look_alike_image(seed: int, side: int = 48) -> Image.Image:
    """A smooth colour ramp with noise of its own in blocks of 4 px: an 8 px thumbnail sees
    mostly the ramp, so two of them (other seeds) are near there (0.28 apart, where a resized
    copy is 0.01 from its original) and far at full size (0.5, a resized copy 0.07)."""
    y, x = np.mgrid[0:side, 0:side] / side
    ramp = np.stack([200 * x, 200 * y, 100 + 80 * x * y], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 20, (side // 4, side // 4, 3))
    noise = noise.repeat(4, axis=0).repeat(4, axis=1)  # blocks of 4 px: kept at 24 px
    return Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8))


def as_written_before_the_jpeg_fix(index_path) -> None:
    """Rewrite a thumbnail index's recorded digest as tripletsk wrote it before thumbnails kept
    a margin above their size when drafting a JPEG (its rows made by that older decoding), its
    manifest's own digest recomputed as the writer does."""
    import json

    from tripletsk.index.format import MANIFEST, _manifest_digest

    path = os.path.join(index_path, MANIFEST)
    with open(path) as fh:
        manifest = json.load(fh)
    manifest["model"]["digest"] = f"thumbnails:{manifest['model']['size']}px-lanczos-rgb-centred-l2"
    manifest["digest"] = _manifest_digest(manifest)
    with open(path, "w") as fh:
        json.dump(manifest, fh)


def write_feature_cache(
    path, keys, features, *, provenance=None, failed=(), block=None, dtype="float32"
):
    """Write ``features`` (n, d) under ``keys`` to a real cache at ``path`` (stored as ``dtype``,
    in blocks of ``block`` rows); return ``path``."""
    features = np.asarray(features, dtype=np.float32)
    block = block or max(1, len(features))
    fingerprints = np.zeros(len(keys), dtype=FINGERPRINT_DTYPE)
    fingerprints["size"] = np.arange(len(keys))
    write_cache(
        path,
        keys=list(keys),
        fingerprints=fingerprints,
        feature_blocks=(features[i : i + block] for i in range(0, len(features), block)),
        dim=features.shape[1],
        dtype=dtype,
        failed=list(failed),
        attrs={
            **(provenance or PLAIN_PROVENANCE),
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
        },
    )
    return path


#: Provenance of a cache said to hold ResNet50 features (the tests of the cache itself).
RESNET_PROVENANCE = {"backbone": "resnet50", "weights": "none:seed=0", "image_size": 32,
                     "preprocessing": "p1", "compute_dtype": "float32", "backend": "tensorflow",
                     "weights_source": "none", "versions": "{}"}  # fmt: skip


#: Keys of a small cache: nested folders, a repeated file name, a non-ASCII name, a capital suffix.
CACHE_KEYS = ["a/x.jpg", "a/y.jpg", "b/x.jpg", "b/z é.png", "c/w.PNG"]


def random_cache(path, keys, dim=8, dtype="float32", failed=(), block=3, seed=0) -> np.ndarray:
    """A real cache at ``path`` of standard normal features (``RESNET_PROVENANCE``) under
    ``keys``, written in blocks of ``block`` rows; return the features."""
    features = np.random.default_rng(seed).normal(size=(len(keys), dim)).astype(np.float32)
    write_feature_cache(path, keys, features, provenance=RESNET_PROVENANCE, failed=failed,
                        block=block, dtype=dtype)  # fmt: skip
    return features


def image_folder_cache(folder: Path, path, *, dim: int = 4, seed: int = 0) -> list[str]:
    """A real cache at ``path`` of the images under ``folder`` as extraction records them (keys
    relative to the folder, each file's blake2b, the folder as ``image_root``) but with random
    features: for what reads the images themselves, without a network. Return the keys."""
    import hashlib

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    keys = [p.relative_to(folder).as_posix() for p in files]
    fingerprints = np.zeros(len(keys), dtype=FINGERPRINT_DTYPE)
    fingerprints["size"] = [p.stat().st_size for p in files]
    fingerprints["blake2b"] = [
        hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest().encode() for p in files
    ]
    features = np.random.default_rng(seed).normal(size=(len(keys), dim)).astype(np.float32)
    attrs = {**PLAIN_PROVENANCE, "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
             "image_root": str(folder.resolve())}  # fmt: skip
    write_cache(path, keys=keys, fingerprints=fingerprints, feature_blocks=[features], dim=dim,
                dtype="float32", failed=[], attrs=attrs)  # fmt: skip
    return keys


def assert_same_cache(a: str, b: str) -> None:
    """Same keys (order included), features, file fingerprints, failures and provenance (but
    ``backend_choice``, which says how the runner was chosen: shards take the precision's
    first runner, a single run times or not)."""
    x, y = FeatureStore(a), FeatureStore(b)
    assert x.keys == y.keys
    np.testing.assert_allclose(x.to_array(), y.to_array(), rtol=1e-5, atol=1e-6)
    for name in ("size", "mtime_ns", "blake2b"):  # hashed_ns is when the file was hashed
        assert np.array_equal(x.fingerprints[name], y.fingerprints[name])
    assert x.failed == y.failed
    how = "backend_choice"
    assert {k: v for k, v in x.provenance.items() if k != how} == {
        k: v for k, v in y.provenance.items() if k != how
    }
    assert x.dtype == y.dtype


def train_loop(X, y, *, epochs, record=None, poison_from=None, learning_rate=1e-2, **kwargs):
    """`train_head` of a (8,) -> 3 head on 200 label triplets of ``X``; from epoch
    ``poison_from`` on, every triplet's anchor is an extra row of infinite features, which makes
    the update NaN."""
    from tripletsk import TripletEncoder
    from tripletsk.training.config import TrainingConfig
    from tripletsk.training.head import init_head_weights
    from tripletsk.training.loop import train_head
    from tripletsk.training.rows import FeatureRows, array_take
    from tripletsk.triplets.mining import sample_label_triplets

    triplets = sample_label_triplets(y, 200, random_state=0)
    X = np.vstack([X, np.full(X.shape[1], np.inf, np.float32)])

    def epoch_batches(epoch, current_weights):
        if record is not None:
            record[epoch] = current_weights
        if poison_from is not None and epoch >= poison_from:
            yield np.column_stack([np.full(len(triplets), len(X) - 1), triplets[:, 1:]])
        else:
            yield from np.array_split(triplets, 4)

    params = {
        **TripletEncoder().get_params(),
        "margin": 1.0,
        "dropout": 0.0,
        "input_dropout": 0.0,
        "weight_averaging": 0.0,
        "learning_rate": learning_rate,
        "max_epochs": epochs,
        "tol": 0.0,
        "n_iter_no_change": 10**6,
        "stopping": "loss",
        "verbose": 0,
        **kwargs,
    }
    config = TrainingConfig.from_params(params, n_features=X.shape[1], labelled=False)
    init = init_head_weights(X.shape[1], (8,), 3, np.random.RandomState(0))
    items = FeatureRows(array_take(X), np.arange(len(X)), X.shape[1])
    return train_head(
        items, init, epoch_batches, config, labels=None, validation_score=None, seed=0
    )


def assert_same_weights(a, b) -> None:
    """Two lists of (kernel, bias) pairs hold the same numbers, bit for bit."""
    for (k1, b1), (k2, b2) in zip(a, b, strict=True):
        np.testing.assert_array_equal(k1, k2)
        np.testing.assert_array_equal(b1, b2)


class KeptBackbones(dict):
    """``cached_backbone``'s backbones, but ``clear`` (by which the library keeps one) drops only
    those that are not TensorFlow float32 (whose building warns, e.g. emulated bfloat16)."""

    def clear(self) -> None:
        # keys: (spec, image_size, batch_size, backend, precision, int8_folder, models_dir)
        for key in [k for k in self if k[3:5] != ("tensorflow", "float32")]:
            del self[key]


def extract_in_new_process(images, output, settings: dict) -> list[str]:
    """Extract ``images`` into ``output`` in a new Python process: ``[images extracted,
    whether TensorFlow was imported, whether Keras was]``."""
    code = textwrap.dedent(
        f"""
        import sys
        from tripletsk.extraction import extract_features
        s = extract_features({os.fspath(images)!r}, {os.fspath(output)!r}, **{settings!r})
        print(s.extracted, "tensorflow" in sys.modules, "keras" in sys.modules)
        """
    )
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.split()[-3:]


def small_backbone_file(path, size: int = 32) -> Path:
    """A user's own Keras model file, ``size`` px RGB in: conv -> global pooling -> classifier
    (``extract-features --backbone FILE``; features from its ``pool`` layer). Quick to build,
    export and convert where the claim does not depend on the network."""
    from tripletsk._tensorflow import import_keras

    keras = import_keras()
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(12, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(path)
    return Path(path)
