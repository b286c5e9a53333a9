"""examples/fashion_mnist.py: the idx reader, the split and the figures, on small written files."""

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest


def load_example():
    path = Path(__file__).parents[1] / "examples" / "fashion_mnist.py"
    spec = importlib.util.spec_from_file_location("fashion_mnist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fm = load_example()


def write_idx(path, array):
    """Write ``array`` (uint8) as an idx file, gzipped when the name ends in .gz."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def write_dataset(folder, n_train=60, n_test=40, n_classes=10, seed=0):
    rng = np.random.RandomState(seed)
    parts = {}
    for part, n in (("train", n_train), ("test", n_test)):
        images = rng.randint(0, 256, (n, 28, 28))
        labels = np.arange(n) % n_classes
        rng.shuffle(labels)
        image_file, label_file = fm.FILES[part]
        write_idx(Path(folder) / image_file, images)
        write_idx(Path(folder) / label_file, labels)
        parts[part] = images.astype(np.uint8), labels
    return parts


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5)])
def test_read_idx_round_trip(tmp_path, name, shape):
    array = np.arange(np.prod(shape)).reshape(shape) % 256
    write_idx(tmp_path / name, array)
    np.testing.assert_array_equal(fm.read_idx(tmp_path / name), array)


def test_read_idx_rejects_a_foreign_or_truncated_file(tmp_path):
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an unsigned-byte idx file"):
        fm.read_idx(tmp_path / "text")
    write_idx(tmp_path / "short", np.zeros((2, 3)))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"header says shape \(2, 3\)"):
        fm.read_idx(tmp_path / "short")


def test_split_is_class_balanced_disjoint_and_seeded(tmp_path):
    parts = write_dataset(tmp_path)
    X_tr, y_tr, X_te, y_te = fm.split(tmp_path, n_train=30, n_test=20, seed=3)
    assert X_tr.shape == (30, 28, 28) and X_te.shape == (20, 28, 28)
    assert np.bincount(y_tr).tolist() == [3] * 10
    assert np.bincount(y_te).tolist() == [2] * 10
    # Train images come from the training file, test images from the test file.
    train_rows = {row.tobytes() for row in parts["train"][0]}
    assert all(image.tobytes() in train_rows for image in X_tr)
    assert not any(image.tobytes() in train_rows for image in X_te)
    again = fm.split(tmp_path, n_train=30, n_test=20, seed=3)
    np.testing.assert_array_equal(again[0], X_tr)
    other = fm.split(tmp_path, n_train=30, n_test=20, seed=4)
    assert not np.array_equal(other[0], X_tr)


def test_split_needs_a_multiple_of_the_classes(tmp_path):
    write_dataset(tmp_path)
    with pytest.raises(ValueError, match="cannot be split evenly over 10 classes"):
        fm.split(tmp_path, n_train=25, n_test=20)


def test_missing_or_unreadable_data_exits_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="--data must be the folder"):
        fm.main(["--data", str(tmp_path), "--no-backbones"])
    write_dataset(tmp_path)
    (tmp_path / fm.FILES["test"][1]).write_bytes(b"garbage")
    with pytest.raises(SystemExit, match="Cannot read Fashion-MNIST"):
        fm.load(tmp_path, "test")


def test_set_rejects_unknown_parameters(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fm.main(["--data", str(tmp_path), "--set", "not_a_param=1"])
    assert "not_a_param is not a TripletEncoder parameter" in capsys.readouterr().err


def test_evaluate_reports_retrieval_triplets_and_pairs_with_base_rate():
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(4), 10)
    separated = np.eye(4)[y] * 5 + rng.normal(0, 0.1, (40, 4))
    figures = fm.evaluate(separated, y, separated, y, n_pairs=200)
    assert figures["precision_at_1"] == 1.0
    assert figures["map_at_r"] == 1.0
    assert figures["triplet_accuracy"] == 1.0
    assert figures["pair_accuracy"] == 1.0
    assert figures["pair_base_rate"] == 0.5
    noise = rng.normal(0, 1, (40, 4))
    assert fm.evaluate(noise, y, noise, y, n_pairs=200)["map_at_r"] < 0.6


@pytest.mark.slow
def test_backbone_features_are_what_extract_features_gives(tmp_path):
    """The example's in-memory features equal tripletsk's extraction of the same images
    written as grey PNG files (same resize, network, preprocessing and random weights)."""
    from PIL import Image

    from tripletsk.cache.store import FeatureStore
    from tripletsk.extraction import extract_features

    images = np.random.RandomState(0).randint(0, 256, (3, 28, 28)).astype(np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    cache = tmp_path / "f.h5"
    extract_features(tmp_path, cache, weights="none", image_size=32, quiet=True, progress=False)
    want = FeatureStore(cache).lookup([f"{i}.png" for i in range(3)])
    got = fm.resnet50_random_features(images, size=32)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
