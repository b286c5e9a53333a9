"""``backend="auto"``: the fastest agreeing runner, chosen on the first batch, recorded, kept.

Real image files, a real MobileNet (alpha 0.25, random weights, 32x32, batch 4: converted to
OpenVINO for the trial in a fraction of ResNet50's time, and the choice does not depend on the
network), real runners and caches. The
choice between runners is tested through the record the trial leaves (its timings and
cosines): what it holds decides, so the tests need no timing of their own.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.helpers import make_images
from tripletsk.cache.store import FeatureStore
from tripletsk.cli import cli
from tripletsk.extraction import auto, extract_features
from tripletsk.extraction.backbone import resolve_network
from tripletsk.extraction.model_folders import models_dir

pytest.importorskip("openvino")

BACKBONE = "MobileNet(alpha=0.25)"
RUN = {"weights": "none", "image_size": 32, "batch_size": 4, "progress": False, "quiet": True,
       "backbone": BACKBONE}  # fmt: skip
AUTO = {**RUN, "backend": "auto"}
OV, TF = "openvino/float32", "tensorflow/float32"


def record_of(cache) -> str:
    return auto.record_path(models_dir(cache), resolve_network("none", backbone=BACKBONE), 32, 4)


def set_record(cache, per_image: dict, cosine: dict) -> None:
    """Time the runners of ``per_image`` as given, and every other runner the trial timed on
    this CPU (bfloat16 where the CPU has bfloat16 instructions, as on a Zen 4 or a Xeon with
    AMX) ten times slower than the slowest of them: the choice is between the given ones."""
    with open(record_of(cache)) as f:
        record = json.load(f)
    slower = 10 * max(per_image.values())
    record["per_image"] = {n: slower for n in record["per_image"]} | per_image
    record["cosine"].update(cosine)
    with open(record_of(cache), "w") as f:
        json.dump(record, f)


def runner_of(cache) -> str:
    prov = FeatureStore(cache).provenance
    return f"{prov['backend']}/{prov['compute_dtype']}"


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A folder extracted once with auto: the trial runs and is recorded."""
    d = tmp_path_factory.mktemp("auto")
    images = make_images(d / "images", 10)
    cache = d / "out" / "first.h5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auto, "TRIAL_MIN_IMAGES", 1)  # (a trial is for larger runs)
        extract_features(images, cache, **AUTO)
    return {"images": images, "cache": cache, "out": d / "out"}


@pytest.fixture()
def no_trial(monkeypatch):
    """Fail a test whose run would time the runners again."""

    def refuse(self, pending):
        raise AssertionError("the recorded trial should have been used")

    monkeypatch.setattr(auto._Trial, "run", refuse)


@pytest.mark.slow
def test_the_trial_times_each_runner_and_records_the_choice(first):
    with open(record_of(first["cache"])) as f:
        record = json.load(f)
    tried = set(record["per_image"])
    assert {TF, OV} <= tried and "openvino/int8" not in tried  # 10 images: not worth quantizing
    assert record["sample"] == 4 and record["cosine"][OV] >= 0.99
    chosen = runner_of(first["cache"])
    assert chosen in tried
    assert chosen == min((n for n in tried if n == TF or record["cosine"][n] >= 0.99),
                         key=record["per_image"].get)  # fmt: skip
    reason = FeatureStore(first["cache"]).provenance["backend_choice"]
    assert reason.startswith(f"auto: {chosen}, the fastest agreeing runner")
    assert all(name in reason for name in tried)
    if "openvino/int8" in auto.candidates():
        assert "int8 not tried: fewer than 1000 images" in reason


def test_a_small_first_run_uses_the_reference_untimed(tmp_path, no_trial):
    images = make_images(tmp_path / "images", 5)
    out = tmp_path / "out" / "small.h5"
    extract_features(images, out, **AUTO)
    assert runner_of(out) == TF
    reason = FeatureStore(out).provenance["backend_choice"]
    # (6 files to extract: the 5 images and one that is not an image)
    assert reason.startswith(f"auto: {TF}; not timed: 6 images to extract, fewer than 256")
    models = out.parent / ".tripletsk-models"
    assert not models.exists() or not [p for p in os.listdir(models) if p.startswith("auto-")]


@pytest.mark.slow
def test_auto_features_equal_those_of_the_runner_it_chose(first):
    backend, precision = runner_of(first["cache"]).split("/")
    explicit = first["out"] / "explicit.h5"
    extract_features(first["images"], explicit, backend=backend, precision=precision, **RUN)
    assert FeatureStore(explicit).keys == FeatureStore(first["cache"]).keys
    np.testing.assert_array_equal(
        FeatureStore(explicit).to_array(), FeatureStore(first["cache"]).to_array()
    )
    assert "backend_choice" not in FeatureStore(explicit).attrs  # an explicit choice


@pytest.mark.slow
@pytest.mark.parametrize(
    ("per_image", "cosine", "expected"),
    [
        ({TF: 0.02, OV: 0.01}, {OV: 1.0}, OV),  # faster and agreeing
        ({TF: 0.01, OV: 0.02}, {OV: 1.0}, TF),  # slower
        ({TF: 0.02, OV: 0.01}, {OV: 0.98}, TF),  # faster, but its features disagree
    ],
)
def test_the_fastest_agreeing_runner_is_chosen(first, no_trial, per_image, cosine, expected):
    set_record(first["cache"], per_image, cosine)
    out = first["out"] / f"choice-{expected.replace('/', '-')}.h5"
    extract_features(first["images"], out, **AUTO)
    assert runner_of(out) == expected
    assert "timed by an earlier run" in FeatureStore(out).provenance["backend_choice"]
    os.remove(out)


@pytest.mark.slow
def test_an_explicit_choice_is_kept(first, no_trial):
    set_record(first["cache"], {TF: 0.02, OV: 0.01}, {OV: 1.0})
    out = first["out"] / "kept.h5"
    extract_features(first["images"], out, backend="tensorflow", **RUN)
    assert runner_of(out) == TF
    os.remove(out)
    extract_features(first["images"], out, backend="auto", precision="float32", **RUN)
    assert runner_of(out) == OV  # auto among the float32 runners only
    os.remove(out)


@pytest.mark.slow
def test_a_cache_keeps_the_runner_auto_chose(first, no_trial):
    set_record(first["cache"], {TF: 0.02, OV: 0.01}, {OV: 1.0})
    out = first["out"] / "resume.h5"
    extract_features(first["images"], out, **AUTO)
    made = FeatureStore(out).provenance["backend_choice"]
    assert runner_of(out) == OV
    set_record(first["cache"], {TF: 0.01, OV: 0.02}, {OV: 1.0})  # TF would now be chosen
    new = first["images"] / "a" / "new.png"
    os.link(first["images"] / "a" / "00.png", new)
    try:
        summary = extract_features(first["images"], out, **AUTO)
    finally:
        os.remove(new)
    assert summary.extracted == 1 and runner_of(out) == OV
    assert FeatureStore(out).provenance["backend_choice"] == made
    os.remove(out)


@pytest.mark.slow
def test_an_interrupted_auto_run_resumes_with_its_runner(first, no_trial, monkeypatch):
    import tripletsk.extraction as ex

    set_record(first["cache"], {TF: 0.02, OV: 0.01}, {OV: 1.0})
    out = first["out"] / "interrupted.h5"
    calls, real = {"n": 0}, ex.Backbone.__call__

    def interrupting(self, images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(ex.Backbone, "__call__", interrupting)
    with pytest.raises(KeyboardInterrupt):
        extract_features(first["images"], out, **AUTO)
    monkeypatch.setattr(ex.Backbone, "__call__", real)
    assert len(FeatureStore(out)) == 4  # the first batch
    set_record(first["cache"], {TF: 0.01, OV: 0.02}, {OV: 1.0})  # TF would now be chosen
    summary = extract_features(first["images"], out, **AUTO)
    assert summary.extracted == 6 and runner_of(out) == OV
    whole = first["out"] / "whole.h5"
    extract_features(first["images"], whole, backend="openvino", **RUN)
    np.testing.assert_array_equal(FeatureStore(out).to_array(), FeatureStore(whole).to_array())
    os.remove(out)
    os.remove(whole)


@pytest.mark.slow
def test_shards_under_auto_all_use_the_same_runner(first, no_trial):
    set_record(first["cache"], {TF: 0.02, OV: 0.01}, {OV: 1.0})
    out = first["out"] / "shard.h5"
    extract_features(first["images"], out, shard="1/2", **AUTO)
    assert runner_of(out) == TF  # whatever this machine's record says
    assert "shards agree" in FeatureStore(out).provenance["backend_choice"]
    os.remove(out)


@pytest.mark.slow
def test_the_command_line_takes_auto(first, no_trial):
    set_record(first["cache"], {TF: 0.02, OV: 0.01}, {OV: 1.0})
    out = first["out"] / "cli.h5"
    args = ["extract-features", str(first["images"]), "-o", str(out), "--weights", "none",
            "--image-size", "32", "--batch-size", "4", "--backend", "auto", "--backbone",
            BACKBONE, "-q"]  # fmt: skip
    assert cli(args) == 0
    assert runner_of(out) == OV
    os.remove(out)


@pytest.mark.slow
def test_image_features_takes_auto(first, no_trial):
    from tripletsk import ImageFeatures

    set_record(first["cache"], {TF: 0.02, OV: 0.01}, {OV: 1.0})
    out = first["out"] / "image-features.h5"
    features = ImageFeatures(first["images"], out, weights="none", image_size=32, batch_size=4,
                             backend="auto", backbone=BACKBONE)  # fmt: skip
    got = features.transform(["a/00.png", "b/01.png"])
    assert runner_of(out) == OV
    np.testing.assert_array_equal(got, FeatureStore(out).lookup(["a/00.png", "b/01.png"]))
    os.remove(out)


@pytest.mark.slow
def test_dask_chooses_once_for_every_shard(first):
    pytest.importorskip("distributed")
    from tripletsk.extraction.distributed import extract_with_dask

    set_record(first["cache"], {TF: 0.02, OV: 0.01}, {OV: 1.0})
    out, single = first["out"] / "dask.h5", first["out"] / "single-openvino.h5"
    run = {k: v for k, v in AUTO.items() if k not in ("progress", "quiet")}
    extract_with_dask(first["images"], out, n_workers=1, n_shards=2, quiet=True, **run)
    assert runner_of(out) == OV  # chosen on the worker, from this folder's record
    assert "timed by an earlier run" in FeatureStore(out).provenance["backend_choice"]
    extract_features(first["images"], single, backend="openvino", **RUN)
    keys = FeatureStore(single).keys
    assert sorted(FeatureStore(out).keys) == sorted(keys)
    np.testing.assert_array_equal(FeatureStore(out).lookup(keys), FeatureStore(single).lookup(keys))
    os.remove(out)
    os.remove(single)


def test_int8_timed_for_another_collection_is_tried_again_not_a_crash(tmp_path, monkeypatch):
    """A record holding int8 timings of another collection's quantized model, and a collection
    with no quantized model yet: int8 is quantized and timed again (it once raised
    AttributeError on the missing model)."""
    from types import SimpleNamespace

    from tripletsk.extraction import int8
    from tripletsk.extraction.options import ExtractOptions

    if "openvino/int8" not in auto.candidates():
        pytest.skip("no int8 runner here (nncf not installed)")
    cache = tmp_path / "out" / "second.h5"
    (tmp_path / "images").mkdir()
    opts = ExtractOptions.from_arguments(tmp_path / "images", cache, **AUTO)
    names = auto.candidates()
    record = {"per_image": dict.fromkeys(names, 0.01),
              "cosine": {**dict.fromkeys(names, 1.0), "openvino/int8@first": 1.0}}  # fmt: skip
    del record["cosine"]["openvino/int8"]
    path = auto.record_path(models_dir(cache), opts.spec, 32, 4)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump(record, f)
    quantized = SimpleNamespace(digest="second", folder=str(tmp_path / "q"))
    monkeypatch.setattr(int8, "find_model", lambda *a, **k: None)
    monkeypatch.setattr(int8, "quantize_for", lambda *a, **k: quantized)
    timed = []

    class Trial:
        def __init__(self, opts, names, int8_model):
            timed.append((list(names), int8_model))

        def run(self, pending):
            per_image = {n: 0.02 if n == "openvino/int8" else 0.03 for n in names}
            return per_image, {n: 1.0 for n in names if n != auto.REFERENCE}, 4

        def keep(self, best):
            pass

    monkeypatch.setattr(auto, "_Trial", Trial)
    monkeypatch.setattr(auto, "INT8_MIN_IMAGES", 1)
    pending = [object()] * 300
    choice = auto.choose(opts, pending, pending)
    assert timed == [(names, quantized)]
    with open(path) as f:
        assert "openvino/int8@second" in json.load(f)["cosine"]
    assert (choice.backend, choice.precision, choice.int8_model) == ("openvino", "int8", quantized)
