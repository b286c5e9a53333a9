"""Calibrated matching: the threshold for a target precision, its curve and intervals, stored in
model files and exports, and used by ``EmbeddingIndex.match``."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from tests.helpers import noise_images, small_backbone_file
from tripletsk.errors import ModelFileError, UserError
from tripletsk.estimator import TripletEncoder
from tripletsk.evaluation.matching import calibrate, calibrate_index, precision_recall_curve
from tripletsk.index.embedding_index import EmbeddingIndex


def _encoder() -> TripletEncoder:
    """A fitted linear encoder made by hand (3 features -> 2 dimensions): no training."""
    enc = TripletEncoder(hidden_units=(), n_components=2)
    enc.weights_ = [(np.array([[1, 0], [0, 1], [1, 1]], np.float32), np.zeros(2, np.float32))]
    enc.feature_mean_, enc.feature_scale_ = np.zeros(3, np.float32), np.ones(3, np.float32)
    enc.n_features_in_, enc.n_iter_, enc.loss_curve_, enc.active_fraction_ = 3, 1, [1.0], [1.0]
    enc.validation_scores_ = enc.best_validation_score_ = None
    return enc


def _queries(n, seed):
    """Distances of n queries to their nearest image; correct ones nearer on average."""
    rng = np.random.RandomState(seed)
    correct = rng.rand(n) < 0.7
    distances = np.where(correct, rng.gamma(2.0, 0.1, n), rng.gamma(4.0, 0.12, n))
    return distances, correct


def test_curve_counts_matched_queries_up_to_each_distance():
    t, p, r, m = precision_recall_curve([0.3, 0.1, 0.3, 0.5], [0, 1, 1, 1])
    assert t.tolist() == [0.1, 0.3, 0.5]
    assert p.tolist() == [1.0, 2 / 3, 0.75]
    assert r.tolist() == [0.25, 0.5, 0.75]
    assert m.tolist() == [0.25, 0.75, 1.0]


@pytest.mark.parametrize("target", [0.9, 0.95])
def test_threshold_is_the_largest_reaching_the_target_and_holds_on_new_queries(target):
    d, c = _queries(4000, seed=0)
    cal = calibrate(d, c, target, n_bootstrap=200)
    t, p, _, _ = precision_recall_curve(d, c)
    assert cal.precision >= target
    assert (p[t > cal.threshold] < target).all()  # no larger threshold reaches it
    lo, hi = cal.interval["precision"]
    assert lo <= cal.precision <= hi and hi - lo < 0.05
    assert cal.interval["threshold"][0] <= cal.threshold <= cal.interval["threshold"][1]
    d2, c2 = _queries(4000, seed=1)  # other queries from the same population
    assert abs(c2[d2 <= cal.threshold].mean() - target) < 0.02


def test_an_unreachable_target_names_the_best_precision():
    with pytest.raises(UserError, match=r"no threshold reaches precision 0.99 .*the best is 0.500"):
        calibrate([0.1, 0.2], [False, True], 0.99)


def test_calibrate_index_leaves_each_query_out_and_match_says_no_match(tmp_path):
    x = np.array([[0, 0], [0.1, 0], [5, 5], [5.1, 5], [0, 0.15], [9, 9]], np.float32)
    keys = ["a/1", "a/2", "b/1", "b/2", "b/3", "c/1"]  # b/3 sits among the a's: a wrong match
    index = EmbeddingIndex.create(tmp_path / "i", keys, x)
    rows = index.rows_of(keys)
    labels = [k.split("/")[0] for k in keys]
    cal = calibrate_index(index, x, labels, 1.0, exclude_rows=rows, n_bootstrap=20)
    assert cal.precision == 1.0 and cal.threshold == pytest.approx(0.1)
    matched = index.match(x, cal.threshold, exclude_rows=rows)
    assert matched.keys.tolist() == ["a/2", "a/1", "b/2", "b/1", None, None]


def test_calibration_is_saved_with_the_model_and_checked_on_load(tmp_path):
    enc = _encoder()
    d, c = _queries(500, seed=2)
    enc.calibration_ = calibrate(d, c, 0.9, n_bootstrap=20).to_dict()
    enc.save(tmp_path / "m.npz")
    assert TripletEncoder.load(tmp_path / "m.npz").calibration_ == json.loads(
        json.dumps(enc.calibration_)
    )
    for hostile in ({"threshold": float("nan")}, {"threshold": -1}, "a string", [1, 2]):
        enc.calibration_ = hostile
        enc.save(tmp_path / "bad.npz")
        with pytest.raises(ModelFileError, match="matching calibration is not valid"):
            TripletEncoder.load(tmp_path / "bad.npz")


def test_read_calibration_of_a_keras_file_refuses_hostile_json(tmp_path):
    from tripletsk.export_metadata import MEMBER, read_calibration

    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", "{}")
    assert read_calibration(path) is None
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(MEMBER, '{"threshold": "DROP TABLE"}')
    with pytest.raises(ModelFileError, match="not valid"):
        read_calibration(path)


@pytest.fixture(scope="module")
def calibrated_model(tmp_path_factory):
    """A model file with a calibration, fitted (by hand) on a cache of a small backbone of the
    user's (a model file): what is checked is the metadata, which no network changes, and
    ResNet50 made an OpenVINO export cost about a minute."""
    from tripletsk.cache.store import FeatureStore
    from tripletsk.extraction import extract_features
    from tripletsk.modelfile import cache_record, save_model

    root = tmp_path_factory.mktemp("calibrated")
    noise_images(root / "images" / "a", 2, shape=(32, 32))
    cache = root / "f.h5"
    extract_features(root / "images", output=cache, weights="imagenet", image_size=32,
                     quiet=True, backbone=small_backbone_file(root / "mine.keras"),
                     preprocessing="torch")  # fmt: skip
    store = FeatureStore(cache)
    enc = TripletEncoder(hidden_units=(), n_components=2)
    rng = np.random.RandomState(0)
    enc.weights_ = [(rng.randn(store.dim, 2).astype(np.float32), np.zeros(2, np.float32))]
    enc.feature_mean_ = np.zeros(store.dim, np.float32)
    enc.feature_scale_ = np.ones(store.dim, np.float32)
    enc.n_features_in_, enc.n_iter_, enc.loss_curve_, enc.active_fraction_ = store.dim, 1, [1], [1]
    enc.validation_scores_ = enc.best_validation_score_ = None
    enc.calibration_ = calibrate(*_queries(300, seed=3), 0.9, n_bootstrap=10).to_dict()
    save_model(root / "m.npz", enc, cache_record(store))
    return root / "m.npz", enc.calibration_


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["model.keras", "served", "model.xml"])
def test_exports_carry_the_calibration(calibrated_model, tmp_path, suffix):
    from tripletsk.export import export_model
    from tripletsk.export_metadata import read_calibration

    if suffix.endswith(".xml"):
        pytest.importorskip("openvino")
    model_file, calibration = calibrated_model
    out = export_model(model_file, tmp_path / suffix)
    assert read_calibration(out)["threshold"] == calibration["threshold"]
