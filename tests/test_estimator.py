"""TripletEncoder: the scikit-learn contract, every input form, errors, quality, persistence."""

import importlib.util
import pickle
import random
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from tests.helpers import random_cache
from tripletsk import TripletEncoder
from tripletsk.errors import NonFiniteFeaturesError, SharedImagesWarning
from tripletsk.estimator import EmbeddingCollapseWarning
from tripletsk.evaluation.metrics import label_triplet_accuracy
from tripletsk.triplets.mining import sample_label_triplets

SMALL = dict(hidden_units=16, n_components=4, max_epochs=3, batch_size=32, random_state=0)

# decision_function scores triplets (n, 3, d), as DESIGN.md specifies, not samples. These checks
# call it on (n, d) samples, so they cannot pass; what they also check of transform (pickling,
# idempotence, subset and order invariance, dtypes, no mutation) is tested below instead.
_DECISION_ON_SAMPLES = "calls decision_function on samples; it scores triplets (n, 3, d)"
EXPECTED_FAILED_CHECKS = {
    name: _DECISION_ON_SAMPLES
    for name in (
        "check_n_features_in_after_fitting",
        "check_estimators_dtypes",
        "check_estimators_pickle",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
        "check_dict_unchanged",
        "check_fit_idempotent",
        "check_fit2d_predict1d",
    )
}


@parametrize_with_checks(
    [TripletEncoder(hidden_units=8, max_epochs=2, batch_size=32, random_state=0)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_scikit_learn_contract(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.RandomState(0)
    centres = rng.normal(0, 1.0, size=(4, 12))  # overlapping classes: raw accuracy ~0.92
    y = np.repeat(np.arange(4), 15)
    X = (centres[y] + rng.normal(size=(60, 12))).astype(np.float32)
    return X, y


@pytest.fixture(scope="module")
def fitted(blobs):
    X, y = blobs
    return TripletEncoder(**SMALL).fit(X, y)


# --------------------------------------------------------------------------- quality


def load_example(name):
    """Import ``examples/<name>.py``: the tests run the examples' own code."""
    path = Path(__file__).parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # the example end to end: digits images, the default fit (~15 s of CPU)
def test_digits_triplets_default_reaches_099_held_out():
    figures = load_example("digits_triplets").run(seed=0)
    assert figures["shared_images"] == 0  # disjoint train and test images
    assert figures["raw_pixel_accuracy"] < 0.92  # raw pixel distance: about 0.88
    assert figures["held_out_accuracy"] >= 0.99


@pytest.mark.slow
def test_digits_labels_batch_hard_and_hybrid_reach_099_held_out():
    results = load_example("compare_mining").compare(["batch_hard", "hybrid"])
    for mining, figures in results.items():
        assert figures["triplet_accuracy"] >= 0.99, mining
        assert figures["precision_at_1"] >= 0.95, mining


@pytest.mark.parametrize("mining", ["random", "batch_all", "semi_hard"])
def test_every_mining_strategy_learns(blobs, mining):
    X, y = blobs
    before = label_triplet_accuracy(X, y)
    params = {**SMALL, "mining": mining, "max_epochs": 100, "dropout": 0.0, "n_components": 10,
              "input_dropout": 0.0}  # fmt: skip
    enc = TripletEncoder(**params).fit(X, y)
    assert enc.score(X, y) > before
    assert len(enc.active_fraction_) == enc.n_iter_
    assert 0 <= min(enc.active_fraction_) <= max(enc.active_fraction_) <= 1


# --------------------------------------------------------------------------- input forms


def test_feature_triplets_index_triplets_and_key_triplets_agree(blobs):
    X, y = blobs
    T = sample_label_triplets(y, 200, random_state=0)
    keys = np.array([f"img/{i}.jpg" for i in range(len(X))])
    mapping = dict(zip(keys, X, strict=True))
    by_vectors = TripletEncoder(**SMALL).fit(X[T])
    by_index = TripletEncoder(features=X, **SMALL).fit(T)
    by_key = TripletEncoder(features=mapping, **SMALL).fit(keys[T])
    emb = by_vectors.transform(X)
    np.testing.assert_allclose(by_index.transform(np.arange(len(X))), emb, atol=1e-5)
    np.testing.assert_allclose(by_key.transform(keys), emb, atol=1e-5)
    np.testing.assert_array_equal(
        by_key.predict_triplets(keys[T]), by_vectors.predict_triplets(X[T])
    )


def test_labelled_fit_on_keys_and_indices(blobs):
    X, y = blobs
    keys = np.array([f"k{i}" for i in range(len(X))])
    by_key = TripletEncoder(features=dict(zip(keys, X, strict=True)), **SMALL).fit(keys, y)
    by_index = TripletEncoder(features=X, **SMALL).fit(np.arange(len(X)), y)
    np.testing.assert_allclose(
        by_key.transform(keys), by_index.transform(np.arange(len(X))), atol=1e-5
    )
    # With features set, 2-d inputs are still feature rows.
    np.testing.assert_allclose(
        by_index.transform(X), by_index.transform(np.arange(len(X))), atol=1e-5
    )


@pytest.fixture(scope="module")
def key_cache(tmp_path_factory):
    """A real HDF5 cache (the library's writer) of 12 keys in two class folders; its features
    are random: what is tested is how keys reach the rows, not what a backbone computes."""
    keys = [f"c{i % 2}/{i}.png" for i in range(12)]
    path = tmp_path_factory.mktemp("cache") / "features.h5"
    random_cache(path, keys, dim=48)
    return path


def test_key_triplets_through_a_real_feature_cache(key_cache):
    from tripletsk.cache.store import FeatureStore

    store = FeatureStore(key_cache)
    keys = np.array(store.keys)
    y = np.array([k.split("/")[0] for k in keys])
    T = keys[sample_label_triplets(y, 60, random_state=0)]
    by_path = TripletEncoder(features=str(key_cache), **SMALL).fit(T)
    by_store = TripletEncoder(features=store, **SMALL).fit(T)
    assert by_path.n_features_in_ == store.dim == 48
    np.testing.assert_allclose(by_path.transform(keys), by_store.transform(keys), atol=1e-5)
    assert clone(by_store).features.path == store.path
    from tripletsk.evaluation.search import search

    found = search(by_path, [keys[0]], k=3)  # the cache path is enough to know what to search
    assert found.keys.shape == (1, 3) and keys[0] not in found.keys[0]
    with pytest.raises(ValueError, match=r"1 keys? .*not in|unknown"):
        by_path.transform(["c0/missing.png"])


def test_default_cache_missing_says_how_to_proceed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="tripletsk extract-features"):
        TripletEncoder().fit([["a.jpg", "b.jpg", "c.jpg"]])


# --------------------------------------------------------------------------- predictions


def test_decision_function_predict_and_score_agree_with_distances(fitted, blobs):
    X, y = blobs
    T = sample_label_triplets(y, 50, random_state=1)
    emb = fitted.transform(X)
    expected = np.linalg.norm(emb[T[:, 0]] - emb[T[:, 2]], axis=1) - np.linalg.norm(
        emb[T[:, 0]] - emb[T[:, 1]], axis=1
    )
    np.testing.assert_allclose(fitted.decision_function(X[T]), expected, atol=1e-5)
    pred = fitted.predict_triplets(X[T])
    assert pred.dtype.kind == "i"
    np.testing.assert_array_equal(pred, (expected > 0).astype(int))
    assert fitted.score(X[T]) == pytest.approx(pred.mean())


def test_a_tie_predicts_zero(fitted, blobs):
    X, _ = blobs
    tie = np.stack([X[0], X[1], X[1]])[None]
    assert fitted.decision_function(tie)[0] == 0
    assert fitted.predict_triplets(tie)[0] == 0


def test_labelled_score_counts_every_valid_triplet(fitted, blobs):
    X, y = blobs
    X, y = X[::3], y[::3]
    emb = fitted.transform(X)
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    right = [d[a, p] < d[a, n] for a in range(len(y)) for p in range(len(y)) for n in range(len(y))
             if a != p and y[a] == y[p] and y[a] != y[n]]  # fmt: skip
    assert fitted.score(X, y) == pytest.approx(np.mean(right))


def test_transform_is_unit_norm_and_float32(fitted, blobs):
    emb = fitted.transform(blobs[0])
    assert emb.shape == (60, 4) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_transform_is_invariant_to_subsets_and_order(fitted, blobs):
    X, _ = blobs
    full = fitted.transform(X)
    order = np.random.RandomState(0).permutation(len(X))
    np.testing.assert_allclose(fitted.transform(X[order]), full[order], atol=1e-6)
    np.testing.assert_allclose(fitted.transform(X[5:9]), full[5:9], atol=1e-6)


def test_pair_threshold_chosen_on_validation_pairs(fitted, blobs):
    X, y = blobs
    A, B = X[:-1], X[1:]
    same = (y[:-1] == y[1:]).astype(int)
    fitted_copy = clone(fitted).fit(X, y).fit_threshold(A, B, same)
    assert np.isfinite(fitted_copy.threshold_)
    assert np.mean(fitted_copy.predict_pairs(A, B) == same) >= 0.9


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make_input", "match"),
    [
        (lambda X: np.full((4, 3, 12), np.nan), "NaN"),
        (lambda X: np.full((4, 3, 12), np.inf), "infinity"),
        (lambda X: np.empty((0, 3, 12)), "empty"),
        (lambda X: np.ones((4, 4, 12)), r"shape \(n, 3, d\)"),
        (lambda X: np.ones((4, 3)), "requires y"),
        (lambda X: np.array([[0, 1, 2]]), "need features="),
    ],
)
def test_bad_triplets_raise_clear_errors(make_input, match, blobs):
    with pytest.raises(ValueError, match=match):
        TripletEncoder(**SMALL).fit(make_input(blobs[0]))


@pytest.mark.parametrize(
    ("triplets", "match"),
    [
        ([[0, 1, 60]], r"1 indices are outside the 60 rows"),
        ([[0, -1, 2]], r"1 indices are outside"),
        ([["a", "b", "c"]], "integer row indices"),
        ([[0.5, 1, 2]], "integer indices or string keys"),
    ],
)
def test_bad_indices_raise_clear_errors(triplets, match, blobs):
    with pytest.raises(ValueError, match=match):
        TripletEncoder(features=blobs[0], **SMALL).fit(np.array(triplets))


def test_unknown_keys_are_named_and_counted(blobs):
    mapping = {f"k{i}": x for i, x in enumerate(blobs[0])}
    with pytest.raises(ValueError, match=r"2 keys are not in features .*'nope1'"):
        TripletEncoder(features=mapping, **SMALL).fit(np.array([["k0", "nope1", "nope2"]]))


def test_nan_in_features_is_rejected(blobs):
    X = blobs[0].copy()
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TripletEncoder(features=X, **SMALL).fit(np.array([[0, 1, 3]]))


def test_mining_needs_labels(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="mining='batch_hard' mines triplets from labels"):
        TripletEncoder(mining="batch_hard", **SMALL).fit(X[sample_label_triplets(y, 10)])


@pytest.mark.parametrize(
    ("y", "match"), [(np.zeros(60), "at least 2 classes"), (np.arange(60), "at least 2 samples")]
)
def test_labels_that_define_no_triplet(blobs, y, match):
    with pytest.raises(ValueError, match=match):
        TripletEncoder(**SMALL).fit(blobs[0], y)


@pytest.mark.parametrize(
    ("param", "value"),
    [("margin", -1.0), ("distance", "hamming"), ("dropout", 1.0), ("mining", "hardest"),
     ("n_components", 0), ("learning_rate", 0.0), ("hidden_units", (8, 0)),
     ("soft_margin_scale", 0.0), ("soft_margin_scale", -2.0)],
)  # fmt: skip
def test_invalid_parameters_are_rejected_in_fit_not_init(blobs, param, value):
    enc = TripletEncoder(**{**SMALL, param: value})  # __init__ only stores
    assert enc.get_params()[param] == value
    with pytest.raises(ValueError, match=param):
        enc.fit(*blobs)


def test_wrong_width_at_transform(fitted):
    with pytest.raises(ValueError, match="X has 5 features, but TripletEncoder is expecting 12"):
        fitted.transform(np.ones((2, 5)))


# --------------------------------------------------------------------------- scikit-learn


def test_grid_search_on_triplets_uses_its_own_score(blobs):
    X, y = blobs
    T = sample_label_triplets(y, 120, random_state=0)
    # Plain cv=3 on triplets shares images between folds: score says so (model_selection's
    # TripletImageKFold does not; tests/evaluation/test_model_selection.py).
    with pytest.warns(SharedImagesWarning, match="TripletImageKFold"):
        grid = GridSearchCV(
            TripletEncoder(features=X, **SMALL),
            {"margin": [0.5, None], "distance": ["l2", "cosine"]},
            cv=3,
        ).fit(T)
    assert len(grid.cv_results_["params"]) == 4
    assert 0.5 <= grid.best_score_ <= 1.0
    with pytest.warns(SharedImagesWarning):  # the training triplets
        assert grid.score(T) == pytest.approx(grid.best_estimator_.score(T))


@pytest.mark.slow
def test_pipeline_with_knn_in_grid_search(blobs):
    X, y = blobs
    params = {**SMALL, "mining": "batch_hard", "max_epochs": 30}
    pipe = make_pipeline(TripletEncoder(**params), KNeighborsClassifier(3))
    grid = GridSearchCV(pipe, {"tripletencoder__margin": [0.5, 1.0]}, cv=3).fit(X, y)
    assert grid.best_score_ >= 0.6  # 4 overlapping classes: chance is 0.25
    assert grid.best_estimator_.predict(X).shape == y.shape
    assert cross_val_score(pipe, X, y, cv=3).mean() >= 0.6


def test_clone_keeps_params_and_drops_fit(fitted):
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params()
    assert not hasattr(twin, "weights_")


def test_same_random_state_gives_identical_embeddings(blobs):
    X, y = blobs
    a = TripletEncoder(**SMALL).fit(X, y).transform(X)
    b = TripletEncoder(**SMALL).fit(X, y).transform(X)
    c = TripletEncoder(**{**SMALL, "random_state": 1}).fit(X, y).transform(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_fit_leaves_global_random_state_alone(blobs):
    import tensorflow as tf

    np.random.seed(123)
    random.seed(123)
    tf.random.set_seed(123)
    expected = (np.random.random_sample(), random.random(), float(tf.random.uniform([])))
    np.random.seed(123)
    random.seed(123)
    tf.random.set_seed(123)
    TripletEncoder(**SMALL).fit(*blobs)
    assert (np.random.random_sample(), random.random(), float(tf.random.uniform([]))) == expected


def test_joblib_round_trip_needs_no_keras_model(fitted, blobs, tmp_path):
    path = tmp_path / "model.joblib"
    joblib.dump(fitted, path)
    restored = joblib.load(path)
    np.testing.assert_array_equal(restored.transform(blobs[0]), fitted.transform(blobs[0]))
    assert "keras" not in pickle.dumps(fitted).decode("latin-1").lower()


def test_safe_save_and_load(fitted, blobs, tmp_path):
    path = tmp_path / "model.npz"
    fitted.save(path)
    with np.load(path, allow_pickle=False) as data:  # loads without executing anything
        assert "meta" in data.files
    restored = TripletEncoder.load(path)
    np.testing.assert_array_equal(restored.transform(blobs[0]), fitted.transform(blobs[0]))
    assert restored.get_params() == fitted.get_params()  # parameters round-trip exactly
    assert restored.loss_curve_ == fitted.loss_curve_


# --------------------------------------------------------------------------- training


def test_large_mean_relu_features_do_not_collapse():
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(5), 20)
    signal = rng.normal(size=(5, 64))[y] + rng.normal(scale=0.5, size=(100, 64))
    X = np.maximum(signal, 0) * 50 + 1000  # ReLU-pooled-like: positive, huge mean
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmbeddingCollapseWarning)
        enc = TripletEncoder(hidden_units=32, max_epochs=20, random_state=0).fit(X, y)
    emb = enc.transform(X)
    assert np.linalg.norm(emb - emb.mean(0), axis=1).mean() > 0.1
    assert enc.score(X, y) > 0.9


def test_collapse_is_detected_and_warned():
    X = np.ones((40, 8)) * 1e3
    X[:, 0] += np.arange(40) * 1e-6  # nearly constant: no signal survives
    y = np.repeat([0, 1], 20)
    with pytest.warns(EmbeddingCollapseWarning, match="collapsed"):
        TripletEncoder(hidden_units=8, standardize=False, max_epochs=3, random_state=0).fit(X, y)


def test_warnings_of_fit_point_at_the_line_that_called_fit(blobs):
    """Each step of a fit warns with a stacklevel that counts the frames down to it: the
    warnings must name this file, whichever step (epoch plan, loop, collapse check) issued it."""
    X, y = blobs
    few_classes = {**SMALL, "mining": "batch_hard", "samples_per_class": 4, "batch_size": 64}
    collapsing = np.ones((40, 8)) * 1e3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TripletEncoder(**few_classes).fit(X, y)  # P x K short of classes; max_epochs reached
        TripletEncoder(hidden_units=8, standardize=False, max_epochs=3, random_state=0).fit(
            collapsing, np.repeat([0, 1], 20)
        )
    ours = {
        "classes per batch": UserWarning,
        "reached max_epochs": ConvergenceWarning,
        "collapsed": EmbeddingCollapseWarning,
    }
    for words, category in ours.items():
        found = [w for w in caught if issubclass(w.category, category) and words in str(w.message)]
        assert found and all(w.filename == __file__ for w in found), (words, found)


_FORMER_HEAD = {"margin": 1.0, "hidden_units": 512, "n_components": 10, "dropout": 0.2,
                "input_dropout": 0.0, "weight_averaging": 0.0, "stopping": "loss", "tol": 1e-4,
                "n_iter_no_change": 10}  # fmt: skip


@pytest.mark.parametrize("head", ["hinge, former head", "soft margin, defaults"])
# (1.0, True) and (6.0, False) fit longer: in the full run.
@pytest.mark.parametrize(
    ("signal", "stuck"),
    [(0.0, True), pytest.param(1.0, True, marks=pytest.mark.slow),
     pytest.param(6.0, False, marks=pytest.mark.slow)],
)  # fmt: skip
def test_a_fit_stuck_at_the_margin_warns(signal, stuck, head):
    # Batch-hard on weak signal: every anchor stays active, the loss sits at the margin (the
    # hinge's margin, or log 2 for the soft margin) and the embeddings shrink together. The
    # old check (|loss - margin| < 0.1%) never fired for it.
    rng = np.random.RandomState(0)
    y = rng.randint(0, 10, 400)
    X = rng.normal(size=(400, 32)) + signal * np.eye(10, 32)[y]
    params = _FORMER_HEAD if head.startswith("hinge") else {}
    encoder = TripletEncoder(
        mining="batch_hard", samples_per_class=4, batch_size=40, max_epochs=30, random_state=0,
        **params,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoder.fit(X, y)
    messages = [str(w.message) for w in caught if w.category is EmbeddingCollapseWarning]
    assert bool(messages) == stuck, messages
    if stuck:
        assert "the loss stayed at the margin" in messages[0]
        assert ("log 2" in messages[0]) == (not params)


def test_a_sharper_soft_margin_is_stuck_at_its_own_value():
    # The same weak signal as above: the loss sits at log 2 / s, not at log 2.
    rng = np.random.RandomState(0)
    y = rng.randint(0, 10, 400)
    encoder = TripletEncoder(
        mining="batch_hard", samples_per_class=4, batch_size=40, max_epochs=30, random_state=0,
        soft_margin_scale=4.0,
    )  # fmt: skip
    with pytest.warns(
        EmbeddingCollapseWarning, match=r"stayed at the margin \(0\.1[78]\d*, log 2 / 4"
    ):
        encoder.fit(rng.normal(size=(400, 32)), y)


def test_huge_learning_rate_never_leaves_nan(blobs):
    X, y = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = TripletEncoder(**{**SMALL, "learning_rate": 1e3, "max_epochs": 5}).fit(X, y)
    assert all(np.isfinite(k).all() and np.isfinite(b).all() for k, b in enc.weights_)
    assert np.isfinite(enc.loss_curve_).all()


@pytest.mark.parametrize("labelled", [True, False])
def test_early_stopping_keeps_the_best_epoch(blobs, labelled):
    X, y = blobs
    params = {**SMALL, "max_epochs": 30, "early_stopping": True, "n_iter_no_change": 3}
    if labelled:
        enc = TripletEncoder(**params).fit(X, y)
    else:
        enc = TripletEncoder(features=X, **params).fit(
            sample_label_triplets(y, 300, random_state=0)
        )
    assert len(enc.validation_scores_) == enc.n_iter_ == len(enc.loss_curve_)
    assert enc.best_validation_score_ == max(enc.validation_scores_)


def test_verbose_prints_each_epoch(blobs, capsys):
    TripletEncoder(**{**SMALL, "verbose": 1}).fit(*blobs)
    out = capsys.readouterr().out
    assert out.count("epoch ") == 3 and "loss" in out


def test_hard_mining_on_triplets_learns(blobs):
    X, y = blobs
    T = sample_label_triplets(y, 300, random_state=0)
    params = {**SMALL, "max_epochs": 30, "dropout": 0.0}
    enc = TripletEncoder(features=X, mining="hard", **params).fit(T)
    with pytest.warns(SharedImagesWarning, match="flatters"):  # training accuracy, on purpose
        training_accuracy = enc.score(T)
    assert training_accuracy > np.mean(
        np.linalg.norm(X[T[:, 0]] - X[T[:, 1]], axis=1)
        < np.linalg.norm(X[T[:, 0]] - X[T[:, 2]], axis=1)
    )
    with pytest.raises(ValueError, match="mining='hard' mines within given triplets"):
        TripletEncoder(mining="hard", **SMALL).fit(X, y)


def test_bfloat16_training_keeps_float32_weights_and_learns(blobs):
    X, y = blobs
    params = {**SMALL, "max_epochs": 30}
    fp32 = TripletEncoder(**params).fit(X, y)
    bf16 = TripletEncoder(precision="bfloat16", **params).fit(X, y)
    assert all(k.dtype == np.float32 for k, _ in bf16.weights_)
    assert bf16.score(X, y) >= fp32.score(X, y) - 0.03


def test_bfloat16_training_warns_where_it_is_emulated(blobs, monkeypatch):
    import tensorflow as tf

    import tripletsk.extraction.runners as backends

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("TensorFlow computes bfloat16 on the GPU here")
    X, y = blobs
    monkeypatch.setattr(backends, "cpu_supports_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="Training in bfloat16: .* emulated"):
        TripletEncoder(**{**SMALL, "precision": "bfloat16", "max_epochs": 1}).fit(X, y)


# ---------------------------------------------------------------------- memory and streaming


def test_fit_and_transform_do_not_copy_the_features(monkeypatch):
    """A fit holds the features plus O(batch): here every row is used, and NumPy's peak
    allocation stays a fraction of the features (TensorFlow's own buffers are not traced)."""
    import tracemalloc

    import tripletsk.training.rows as rows_module
    import tripletsk.training.windows as windows

    monkeypatch.setattr(rows_module, "CHUNK_BYTES", 2**20)
    monkeypatch.setattr(windows, "WINDOW_BYTES", 2**20)
    monkeypatch.setattr(windows, "RESIDENT_BYTES", 2**20)  # else read once: one copy
    rng = np.random.RandomState(0)
    X = rng.normal(size=(20_000, 256)).astype(np.float32)  # 20 MB
    T = rng.permutation(len(X)).reshape(-1, 4)[:, :3]
    enc = TripletEncoder(features=X, **{**SMALL, "max_epochs": 1, "batch_size": 256})
    enc.fit(T[:10])  # TensorFlow's one-off allocations happen here, before tracing
    tracemalloc.start()
    try:
        enc.fit(T)
        emb = enc.transform(np.arange(len(X)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert emb.shape == (len(X), 4)
    assert peak < X.nbytes / 4, f"peak {peak / 1e6:.1f} MB for {X.nbytes / 1e6:.1f} MB"


@pytest.fixture(scope="module")
def class_sorted_digits_cache(tmp_path_factory, write_feature_cache):
    """Digits as a real HDF5 cache whose rows are sorted by class: a worst case for reading
    in storage order, since a block of rows holds a single class."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.argsort(y, kind="stable")
    X, y = X[order].astype(np.float32), y[order]
    keys = [f"{label}/{i:04d}.png" for i, label in enumerate(y)]
    path = write_feature_cache(tmp_path_factory.mktemp("digits") / "features.h5", keys, X)
    return path, np.array(keys), y


@pytest.mark.filterwarnings("ignore:batch_size=64 with samples_per_class=4")
@pytest.mark.parametrize("stream", [pytest.param(False, marks=pytest.mark.slow), True])
def test_stream_reads_a_cache_block_by_block_and_still_learns(
    class_sorted_digits_cache, monkeypatch, stream
):
    import tripletsk.training.rows as rows_module
    import tripletsk.training.windows as windows
    from tripletsk.cache.store import FeatureStore

    path, keys, y = class_sorted_digits_cache
    block_rows, window_rows = 32, 256  # 64-d rows: 8 KiB blocks, 64 KiB windows
    monkeypatch.setattr(rows_module, "BLOCK_BYTES", block_rows * 64 * 4)
    monkeypatch.setattr(windows, "WINDOW_BYTES", window_rows * 64 * 4)
    monkeypatch.setattr(windows, "RESIDENT_BYTES", 0)  # windows for stream=False too
    reads = []
    original_take = FeatureStore.take

    def recording_take(self, idx, out=None):
        reads.append(np.asarray(idx).copy())
        return original_take(self, idx, out)

    monkeypatch.setattr(FeatureStore, "take", recording_take)
    held_out = np.random.RandomState(0).rand(len(y)) < 0.3
    # The P x K batches this test was written for (16 x 4; the test is about reading order).
    params = dict(max_epochs=20, batch_size=64, random_state=0, stream=stream)
    params.update(mining="batch_hard", samples_per_class=4)
    enc = TripletEncoder(features=FeatureStore(path), **params)
    enc.fit(keys[~held_out], y[~held_out])
    assert len(enc.loss_curve_) == 20
    # Training reads are per window (the statistics pass reads whole chunks in order).
    window_reads = [r for r in reads if len(r) <= 2 * window_rows]
    blocks_per_read = max(len(np.unique(r // block_rows)) for r in window_reads)
    # Two streamed windows can share a training window: at most 2 x (256/32 + 1) blocks.
    if stream:
        assert blocks_per_read <= 2 * (window_rows // block_rows + 1)
    else:  # rows at random: a window touches most of the 57 blocks
        assert blocks_per_read > 2 * (window_rows // block_rows + 1)
    emb = enc.transform(keys[held_out])
    assert label_triplet_accuracy(emb, y[held_out]) >= 0.98


@pytest.mark.parametrize("labelled", [False, True])
def test_windows_train_exactly_as_one_resident_tensor(blobs, monkeypatch, labelled):
    """Reading rows per window (large sets) only changes how batches are fed, not training."""
    import tripletsk.training.windows as windows

    X, y = blobs
    T = sample_label_triplets(y, 300, random_state=0)
    params = {**SMALL, "features": X, "dropout": 0.2, "max_epochs": 4}

    def fit():
        enc = TripletEncoder(**params)
        return enc.fit(np.arange(len(X)), y) if labelled else enc.fit(T)

    resident = fit()
    monkeypatch.setattr(windows, "RESIDENT_BYTES", 0)
    monkeypatch.setattr(windows, "WINDOW_BYTES", 40 * 12 * 4)  # 40 rows: many windows
    windowed = fit()
    for (k1, b1), (k2, b2) in zip(resident.weights_, windowed.weights_, strict=True):
        np.testing.assert_allclose(k1, k2, atol=1e-5)
        np.testing.assert_allclose(b1, b2, atol=1e-5)
    np.testing.assert_allclose(resident.loss_curve_, windowed.loss_curve_, rtol=1e-5)


def test_transform_names_the_key_of_a_nan_feature_row(tmp_path, write_feature_cache):
    rng = np.random.RandomState(0)
    keys = [f"img{i}.png" for i in range(30)] + ["broken.png"]
    features = np.vstack([rng.normal(size=(30, 6)), np.full((1, 6), np.nan)])
    cache = write_feature_cache(tmp_path / "features.h5", keys, features)
    encoder = TripletEncoder(features=cache, hidden_units=4, max_epochs=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        encoder.fit(np.array(keys[:30]), np.arange(30) % 3)  # the NaN row is not used
    assert np.isfinite(encoder.transform(keys[:30])).all()
    with pytest.raises(NonFiniteFeaturesError, match=r"'broken\.png' are NaN or infinite"):
        encoder.transform(["img1.png", "broken.png", "img2.png"])
