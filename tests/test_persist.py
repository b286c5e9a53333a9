"""Safe model files: a fitted encoder round-trips through .npz, and a damaged or hostile file
is refused with one error naming the file and the problem, before anything is computed."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from tripletsk.errors import ModelFileError
from tripletsk.estimator import TripletEncoder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(40, 12)), np.repeat([0, 1, 2, 3], 10)
    encoder = TripletEncoder(hidden_units=8, n_components=4, max_epochs=2, random_state=0)
    path = tmp_path_factory.mktemp("persist") / "model.npz"
    encoder.fit(X, y).save(path)
    return path, encoder, X


def _members(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _rewrite(src, dst, **changes) -> None:
    """A copy of the model ``src`` at ``dst`` with some members replaced."""
    arrays = {**_members(src), **changes}
    with open(dst, "wb") as f:
        np.savez(f, **arrays)


def test_round_trip_keeps_parameters_and_answers(saved, tmp_path):
    path, encoder, X = saved
    restored = TripletEncoder.load(path)
    assert restored.get_params() == encoder.get_params()
    np.testing.assert_array_equal(restored.transform(X), encoder.transform(X))


def test_round_trip_of_an_auto_width_head(tmp_path):
    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(40, 1500)), np.repeat([0, 1, 2, 3], 10)
    encoder = TripletEncoder(n_components=4, max_epochs=1, random_state=0).fit(X, y)
    assert encoder.hidden_units == "auto" and encoder.weights_[0][0].shape == (1500, 512)
    encoder.save(tmp_path / "auto.npz")
    restored = TripletEncoder.load(tmp_path / "auto.npz")
    assert restored.get_params() == encoder.get_params()
    np.testing.assert_array_equal(restored.transform(X), encoder.transform(X))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: {"kernel_0": np.full_like(m["kernel_0"], np.nan)}, "kernel_0 holds NaN"),
        (lambda m: {"bias_1": np.full_like(m["bias_1"], np.inf)}, "bias_1 holds NaN or infinite"),
        (lambda m: {"kernel_1": m["kernel_1"][:, :3]}, r"layer 1 has kernel \(8, 3\)"),
        (lambda m: {"kernel_0": m["kernel_0"][:5]}, r"layer 0 has kernel \(5, 8\)"),
        (lambda m: {"kernel_0": m["kernel_0"].astype(np.int8)}, "dtype int8; floating point"),
        (lambda m: {"feature_scale": -m["feature_scale"]}, "feature_scale must be positive"),
        (lambda m: {"kernel_0": np.array([{"x": 1}], dtype=object)}, "holds Python objects"),
    ],
)
def test_damaged_arrays_are_refused(saved, tmp_path, change, match):
    path, _, _ = saved
    bad = tmp_path / "bad.npz"
    _rewrite(path, bad, **change(_members(path)))
    with pytest.raises(ModelFileError, match=match) as info:
        TripletEncoder.load(bad)
    assert str(bad) in str(info.value)


def test_a_file_from_before_soft_margin_scale_loads_with_the_plain_soft_margin(saved, tmp_path):
    path, encoder, X = saved
    members = _members(path)
    meta = json.loads(str(members["meta"]))
    del meta["params"]["soft_margin_scale"]  # as files written before 2026-12-06
    old = tmp_path / "old.npz"
    _rewrite(path, old, meta=np.array(json.dumps(meta)))
    loaded = TripletEncoder.load(old)
    assert loaded.soft_margin_scale == 1.0 and encoder.soft_margin_scale == 4.0
    np.testing.assert_array_equal(loaded.transform(X), encoder.transform(X))


def test_a_pickle_from_before_soft_margin_scale_unpickles_with_the_plain_soft_margin(saved):
    import pickle

    _, encoder, X = saved
    old = pickle.loads(pickle.dumps(encoder))
    del old.soft_margin_scale  # as encoders pickled before 2026-12-06
    restored = pickle.loads(pickle.dumps(old))
    assert restored.get_params()["soft_margin_scale"] == 1.0
    np.testing.assert_array_equal(restored.transform(X), encoder.transform(X))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"margin": -3.0}, "invalid parameters"),
        ({"distance": "hamming"}, "invalid parameters"),
        ({"no_such_parameter": 1}, "invalid parameters"),
        ({"n_components": 7}, "layer 1 has kernel"),
    ],
)
def test_invalid_parameters_are_refused(saved, tmp_path, params, match):
    path, _, _ = saved
    members = _members(path)
    meta = json.loads(str(members["meta"]))
    meta["params"].update(params)
    bad = tmp_path / "bad.npz"
    _rewrite(path, bad, meta=np.array(json.dumps(meta)))
    with pytest.raises(ModelFileError, match=match):
        TripletEncoder.load(bad)


def test_zip_bomb_is_refused_before_unpacking(saved, tmp_path, monkeypatch):
    # The check reads each member's declared size; a 64 MiB limit instead of the 1 GiB default
    # lets the bomb be 80 MiB of zeros (compressing 1.25 GiB cost ~10 s of the quick run).
    from tripletsk import persist

    monkeypatch.setattr(persist, "_MAX_MEMBER_BYTES", 64 << 20)
    path, _, _ = saved
    bomb = tmp_path / "bomb.npz"
    with (
        zipfile.ZipFile(path) as src,
        zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
        # 80 MiB of zeros, about 80 KB packed.
        dims = b"{'descr': '<f4', 'fortran_order': False, 'shape': (20971520,), }"
        header = (b"\x93NUMPY\x01\x00v\x00" + dims).ljust(127) + b"\n"
        with dst.open("kernel_9.npy", "w", force_zip64=True) as member:
            member.write(header)
            zeros = bytes(1 << 24)
            for _ in range(5):
                member.write(zeros)
    with pytest.raises(
        ModelFileError, match=r"kernel_9.npy would unpack to 83,886,208 bytes \(limit 67,108,864\)"
    ):
        TripletEncoder.load(bomb)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a zip file", "not a readable .npz model file"),
        (None, "not a tripletsk model saved with save"),
    ],
)
def test_foreign_files_are_refused(tmp_path, content, match):
    path = tmp_path / "m.npz"
    if content is None:
        np.savez(path, meta=np.array(json.dumps({"format": "something else"})))
    else:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=match):
        TripletEncoder.load(path)
