"""``tripletsk index``, ``search --index``, ``duplicates``, ``calibrate`` and ``match`` on real
files: digit PNGs, a MobileNet cache (alpha 0.25, random weights, 32x32: the cheapest backbone
to build, twice per run), a model file."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tripletsk.cli import cli
from tripletsk.index.embedding_index import EmbeddingIndex
from tripletsk.modelfile import load_model

REPO = Path(__file__).resolve().parents[2]
EXTRACT = ["--backbone", "MobileNet(alpha=0.25)", "--weights", "none", "--image-size", "32",
           "--batch-size", "8", "-q"]  # fmt: skip


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(capsys, *argv) -> tuple[int, str, str]:
    """Run ``tripletsk argv`` in-process; (exit status, stdout, stderr)."""
    status = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _assert_one_line_error(err: str, match: str) -> None:
    lines = err.strip().splitlines()
    assert lines[-1].startswith("tripletsk: error: "), err
    assert match in lines[-1], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """images/<digit>/<n>.png (4 digits x 8), their cache, a model fitted on folder labels and
    its index."""
    root = tmp_path_factory.mktemp("index_cli")
    _load_example("make_digit_images").write_digit_images(
        str(root / "images"), per_class=8, size=32, classes=4
    )
    cache, model = root / "cache.h5", root / "model.npz"
    assert cli(["extract-features", str(root / "images"), "-o", str(cache), *EXTRACT]) == 0
    _random_model(cache, model, seed=0)
    assert cli(["index", "--model", str(model), "-o", str(root / "index")]) == 0
    return root


def _random_model(cache, path, seed):
    """A model file of a linear head with random weights (no training: these tests are about
    the index, not the embedding), recorded as fitted on ``cache``."""
    from tripletsk.cache.store import FeatureStore
    from tripletsk.estimator import TripletEncoder
    from tripletsk.modelfile import cache_record, save_model

    store = FeatureStore(cache)
    rng = np.random.RandomState(seed)
    enc = TripletEncoder(hidden_units=(), n_components=16)
    enc.weights_ = [(rng.randn(store.dim, 16).astype(np.float32), np.zeros(16, np.float32))]
    features = store.to_array()
    enc.feature_mean_ = features.mean(axis=0)
    enc.feature_scale_ = features.std(axis=0) + 1e-3
    enc.n_features_in_, enc.n_iter_, enc.loss_curve_, enc.active_fraction_ = store.dim, 0, [], []
    enc.validation_scores_ = enc.best_validation_score_ = None
    save_model(path, enc, cache_record(store))


def _copy_work(work, tmp_path):
    """A private copy of the images, cache, model and index (tests that change them)."""
    for name in ("images", "index"):
        shutil.copytree(work / name, tmp_path / name)
    for name in ("cache.h5", "model.npz"):
        shutil.copy(work / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("command", ["index", "duplicates", "calibrate", "match"])
def test_help_shows_an_example(capsys, command):
    status, out, _ = run(capsys, command, "--help")
    assert status == 0
    assert "example:" in out and f"tripletsk {command}" in out


def test_search_needs_a_model_or_an_index(capsys):
    status, _, err = run(capsys, "search", "0/0.png")
    assert status == 2 and "pass --model MODEL (or --index INDEX)" in err


def test_duplicates_of_a_folder_that_is_not_an_index(capsys, tmp_path):
    status, _, err = run(capsys, "duplicates", "--index", tmp_path, "--threshold", "0.1")
    assert status == 1
    _assert_one_line_error(err, "not an embedding index (no index.json)")


def test_index_search_equals_search_of_the_whole_cache(capsys, work):
    query = ["0/0.png", "2/3.png", "-k", "4", "--json"]
    status, out, err = run(capsys, "search", "--index", work / "index", *query)
    assert status == 0 and "backbone" not in err and "search: exact" in err
    _, reference, _ = run(capsys, "search", "--model", work / "model.npz", *query)
    got, expected = json.loads(out), json.loads(reference)
    for g, e in zip(got, expected, strict=True):
        assert [n["key"] for n in g["neighbours"]] == [n["key"] for n in e["neighbours"]]
        np.testing.assert_allclose(
            [n["distance"] for n in g["neighbours"]],
            [n["distance"] for n in e["neighbours"]],
            atol=1e-5,
        )


def test_a_file_outside_the_cache_loads_the_backbone_and_says_so(capsys, work, tmp_path):
    query = tmp_path / "query.png"
    shutil.copy(work / "images" / "3" / "4.png", query)
    status, out, err = run(capsys, "search", "--index", work / "index", query, "-k", "2")
    assert status == 0
    assert "1 image(s) not in the cache" in err and "loading the backbone" in err
    _rank, distance, key = out.splitlines()[1].split()
    assert key == "3/4.png" and float(distance) < 1e-3
    inside = work / "images" / "1" / "2.png"  # cached: no backbone, not its own neighbour
    status, out, err = run(capsys, "search", "--index", work / "index", inside, "-k", "3")
    neighbours = [line.split()[-1] for line in out.splitlines()[1:]]
    assert "backbone" not in err and len(neighbours) == 3 and "1/2.png" not in neighbours


@pytest.mark.slow  # extracts again (the quick twin: tests/index/test_embedding_index.py)
def test_a_grown_cache_makes_the_index_stale_until_it_is_updated(capsys, work, tmp_path):
    w = _copy_work(work, tmp_path)
    shutil.copy(w / "images" / "0" / "1.png", w / "images" / "0" / "copy.png")
    (w / "images" / "3" / "7.png").unlink()
    # (The copied cache belongs to the original folder: --replace makes it the copy's; the
    # content hashes of the unchanged images stay equal, so only the new one is embedded.)
    argv = ["extract-features", w / "images", "-o", w / "cache.h5", "--replace", *EXTRACT]
    assert cli([str(a) for a in argv]) == 0
    status, _, err = run(capsys, "search", "--index", w / "index", "0/0.png", "--features",
                         w / "cache.h5")  # fmt: skip
    assert status == 1
    _assert_one_line_error(err, "is out of date")
    assert f"-o {w / 'index'}" in err
    status, out, _ = run(capsys, "index", "--model", w / "model.npz", "-o", w / "index",
                         "--features", w / "cache.h5")  # fmt: skip
    assert status == 0
    assert "32 images (1 embedded, 31 kept, 1 dropped)" in out
    index = EmbeddingIndex(w / "index")
    assert "0/copy.png" in index and "3/7.png" not in index
    status, out, _ = run(capsys, "duplicates", "--index", w / "index", "--threshold", "1e-6")
    assert status == 0 and out.splitlines() == ["0/1.png\t0/copy.png"]


def test_an_index_of_another_model_is_not_overwritten(capsys, work, tmp_path):
    w = _copy_work(work, tmp_path)
    other = w / "other.npz"
    _random_model(w / "cache.h5", other, seed=1)
    before = (w / "index" / "index.json").read_bytes()
    status, _, err = run(capsys, "index", "--model", other, "-o", w / "index")
    assert status == 1
    _assert_one_line_error(err, "holds the embeddings of another model")
    assert (w / "index" / "index.json").read_bytes() == before
    status, _, err = run(capsys, "match", "--index", w / "index", "0/0.png", "--model", other)
    assert status == 1
    _assert_one_line_error(err, "built with another model")
    status, out, _ = run(capsys, "index", "--model", other, "-o", w / "index", "--replace")
    assert status == 0 and "built" in out


def test_calibrate_stores_the_threshold_and_match_uses_it(capsys, work, tmp_path):
    w = _copy_work(work, tmp_path)
    keys = [f"{d}/{i}.png" for d in range(4) for i in range(8)]
    (w / "val.txt").write_text("\n".join(keys) + "\n")
    status, out, err = run(capsys, "match", "--index", w / "index", "0/0.png", "--model",
                           w / "model.npz")  # fmt: skip
    assert status == 1
    _assert_one_line_error(err, "has no matching threshold: run `tripletsk calibrate")
    argv = ["calibrate", "--index", w / "index", "--queries", w / "val.txt", "--precision",
            "0.5", "--bootstrap", "50", "--json", "--model", w / "model.npz"]  # fmt: skip
    status, out, _ = run(capsys, *argv)
    assert status == 0
    calibration = json.loads(out)
    assert calibration["precision"] >= 0.5 and calibration["n_queries"] == 32
    stored = load_model(w / "model.npz").model.calibration_
    assert stored["threshold"] == calibration["threshold"]
    # The index is still current: the threshold is not part of what makes the embeddings.
    status, out, _ = run(capsys, "match", "--index", w / "index", "0/0.png", "1/1.png",
                         "--json", "--model", w / "model.npz")  # fmt: skip
    assert status == 0
    for m in json.loads(out):
        assert (m["match"] is None) == (m["distance"] > calibration["threshold"])
        assert m["match"] != m["query"]
    status, out, _ = run(capsys, "match", "--index", w / "index", "0/0.png", "--threshold", "0")
    assert out.split("\t")[1] == "no match"


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "pass one of --model MODEL (a fitted model's embeddings), --features-only"),
        (["--model", "m.npz", "--features-only", "--features", "c.h5"], "not more"),
        (["--thumbnails", "--features-only", "--features", "c.h5"], "not more"),
        (["--features-only"], "--features-only needs --features CACHE"),
        (["--thumbnails"], "--thumbnails needs --features CACHE"),
        (["--model", "m.npz", "--thumbnail-size", "4"], "--thumbnail-size goes with --thumbnails"),
    ],
)
def test_index_needs_a_model_or_features_only(capsys, tmp_path, argv, message):
    status, _, err = run(capsys, "index", "-o", tmp_path / "index", *argv)
    assert status == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "index").exists()


def test_a_features_only_index_is_never_taken_for_a_models(capsys, work, tmp_path):
    from tripletsk.cache.store import FeatureStore

    w = _copy_work(work, tmp_path)
    features = ["--features-only", "--features", w / "cache.h5"]
    status, out, _ = run(capsys, "index", *features, "-o", w / "features")
    assert status == 0
    assert "32 images (32 embedded, 0 kept, 0 dropped); L2-normalised backbone features" in out
    index = EmbeddingIndex(w / "features")
    assert index.features_only and index.model["kind"] == "features" and index.distance == "l2"
    x = FeatureStore(w / "cache.h5").lookup(index.keys)
    expected = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(index.all_embeddings(), expected, rtol=1e-5, atol=1e-6)
    manifests = {p: (w / p / "index.json").read_bytes() for p in ("features", "index")}
    status, _, err = run(capsys, "index", "--model", w / "model.npz", "-o", w / "features")
    assert status == 1
    _assert_one_line_error(err, "holds backbone features without a model")
    status, _, err = run(capsys, "index", *features, "-o", w / "index")
    assert status == 1
    _assert_one_line_error(err, "holds the embeddings of a model, not backbone features")
    assert {p: (w / p / "index.json").read_bytes() for p in manifests} == manifests
    refused = {
        "not the embeddings of": ["match", "0/0.png", "--model", w / "model.npz", "--threshold", 1],
        "no model, so no calibrated threshold): pass --threshold": ["match", "0/0.png"],
        "is a features-only index (no model)": [
            "calibrate",
            "--queries",
            "v.txt",
            "--precision",
            1,
        ],
    }
    for message, argv in refused.items():
        status, _, err = run(capsys, argv[0], "--index", w / "features", *argv[1:])
        assert status == 1
        _assert_one_line_error(err, message)
    status, out, _ = run(capsys, "match", "--index", w / "features", "0/0.png", "--threshold", "2")
    assert status == 0 and out.split("\t")[1] not in ("no match", "0/0.png")
    status, out, _ = run(capsys, "index", *features, "-o", w / "features")
    assert status == 0 and "32 images (0 embedded, 32 kept, 0 dropped)" in out


def test_a_features_only_index_embeds_a_new_image_with_the_backbone_alone(capsys, work, tmp_path):
    argv = ["--features-only", "--features", work / "cache.h5", "-o", tmp_path / "features"]
    assert run(capsys, "index", *argv)[0] == 0
    query = tmp_path / "query.png"
    shutil.copy(work / "images" / "3" / "4.png", query)
    status, out, err = run(capsys, "search", "--index", tmp_path / "features", query, "-k", "2")
    assert status == 0 and "loading the backbone" in err
    _rank, distance, key = out.splitlines()[1].split()
    assert key == "3/4.png" and float(distance) < 1e-3


def test_a_thumbnail_index_answers_a_new_image_without_the_backbone(capsys, work, tmp_path):
    from PIL import Image

    argv = ["--thumbnails", "--features", work / "cache.h5", "-o", tmp_path / "thumbs"]
    status, out, _ = run(capsys, "index", *argv)
    assert status == 0 and "32 images (32 embedded" in out and "8 px thumbnails" in out
    query = tmp_path / "query.png"
    Image.open(work / "images" / "3" / "4.png").resize((64, 64), Image.BILINEAR).save(query)
    status, out, err = run(capsys, "search", "--index", tmp_path / "thumbs", query, "-k", "2")
    assert status == 0 and "backbone" not in err
    _rank, distance, key = out.splitlines()[1].split()
    assert key == "3/4.png" and float(distance) < 0.1
    status, out, _ = run(capsys, "match", "--index", tmp_path / "thumbs", query, "--threshold", 0.1)
    assert status == 0 and out.split("\t")[1] == "3/4.png"
    status, _, err = run(capsys, "match", "--index", tmp_path / "thumbs", query)
    assert status == 1
    _assert_one_line_error(err, "is a thumbnail index (no model, so no calibrated threshold)")
    status, _, err = run(capsys, "index", "--model", work / "model.npz", "-o", tmp_path / "thumbs")
    assert status == 1
    _assert_one_line_error(err, "holds 8 px image thumbnails (`tripletsk index --thumbnails`)")


def test_duplicates_of_a_thumbnail_index_find_planted_copies(capsys, tmp_path):
    from PIL import Image

    from tests.helpers import image_folder_cache, noise_images

    images = noise_images(tmp_path / "images", 8)
    Image.open(images / "5.png").resize((100, 100), Image.BILINEAR).save(images / "5 big.png")
    Image.open(images / "5.png").resize((25, 25), Image.BILINEAR).save(images / "5 small.png")
    image_folder_cache(images, tmp_path / "cache.h5")
    argv = ["--thumbnails", "--features", tmp_path / "cache.h5", "-o", tmp_path / "thumbs"]
    assert run(capsys, "index", *argv)[0] == 0
    status, out, err = run(capsys, "duplicates", "--index", tmp_path / "thumbs", "--threshold", 0.3)
    assert status == 0 and out.splitlines() == ["5 big.png\t5 small.png\t5.png"]
    assert "1 group(s) of near-duplicates, 3 images" in err
    status, out, err = run(
        capsys,
        "duplicates",
        "--index",
        tmp_path / "thumbs",
        "--threshold",
        0.3,
        "--pairs",
        "--json",
    )
    pairs = json.loads(out)["pairs"]
    assert status == 0 and len(pairs) == 3 and "3 pair(s) within distance 0.3" in err
    distances = [p["distance"] for p in pairs]
    assert distances == sorted(distances, reverse=True) and 0 < distances[-1] < 0.3
    assert {frozenset((p["a"], p["b"])) for p in pairs} == {
        frozenset(pair) for pair in [("5.png", "5 big.png"), ("5.png", "5 small.png"),
                                     ("5 big.png", "5 small.png")]
    }  # fmt: skip


@pytest.fixture
def look_alikes(capsys, tmp_path):
    """orig.png, its 96 px and 24 px copies, a distinct image near it at 8 px (other.png), and
    their thumbnail index."""
    from PIL import Image

    from tests.helpers import image_folder_cache, look_alike_image

    (tmp_path / "images").mkdir()
    original = look_alike_image(1)
    original.save(tmp_path / "images" / "orig.png")
    original.resize((96, 96), Image.BILINEAR).save(tmp_path / "images" / "big.png")
    original.resize((24, 24), Image.BILINEAR).save(tmp_path / "images" / "small.png")
    look_alike_image(2).save(tmp_path / "images" / "other.png")
    image_folder_cache(tmp_path / "images", tmp_path / "cache.h5")
    argv = ["--thumbnails", "--features", tmp_path / "cache.h5", "-o", tmp_path / "thumbs"]
    assert run(capsys, "index", *argv)[0] == 0
    return tmp_path


def test_duplicates_verified_on_the_images_drop_a_look_alike(capsys, look_alikes):
    argv = ["duplicates", "--index", look_alikes / "thumbs", "--threshold", 0.3]
    status, out, _ = run(capsys, *argv)
    assert status == 0 and out.splitlines() == ["big.png\torig.png\tother.png\tsmall.png"]
    status, out, err = run(capsys, *argv, "--verify-threshold", 0.2)
    assert status == 0 and out.splitlines() == ["big.png\torig.png\tsmall.png"]
    assert "1 group(s) of near-duplicates, 3 images" in err and "verified within 0.2" in err
    status, out, err = run(capsys, *argv, "--verify-threshold", 2, "--pairs", "--json")
    answer = json.loads(out)
    assert status == 0 and answer["verify_threshold"] == 2 and len(answer["pairs"]) == 6
    farthest = answer["pairs"][0]  # the images' distances, farthest first
    assert {farthest["a"], farthest["b"]} == {"orig.png", "other.png"} and farthest[
        "distance"
    ] > 0.45
    assert "(distances: the images')" in err


def test_duplicates_verification_of_a_changed_image_is_one_error_line(capsys, look_alikes):
    (look_alikes / "images" / "small.png").write_bytes(b"not the cached image")
    argv = ["--index", look_alikes / "thumbs", "--threshold", 0.3, "--verify-threshold", 0.2]
    status, _, err = run(capsys, "duplicates", *argv)
    assert status == 1
    _assert_one_line_error(err, "small.png changed since it was cached")
    (look_alikes / "images" / "small.png").unlink()
    status, _, err = run(capsys, "duplicates", *argv, "--pairs")
    assert status == 1
    _assert_one_line_error(err, "the image of the cached key 'small.png' cannot be read")


def test_a_thumbnail_index_of_the_older_jpeg_decoding_is_one_error_line(capsys, look_alikes):
    from tests.helpers import as_written_before_the_jpeg_fix

    thumbs = look_alikes / "thumbs"
    as_written_before_the_jpeg_fix(thumbs)
    rebuild = (
        f"rebuild it with `tripletsk index --thumbnails --features {look_alikes / 'cache.h5'} "
        f"-o {thumbs} --replace`"
    )
    for argv in (
        ["duplicates", "--index", thumbs, "--threshold", 0.3],
        ["search", "--index", thumbs, "orig.png"],
        ["index", "--thumbnails", "--features", look_alikes / "cache.h5", "-o", thumbs],
    ):
        status, _, err = run(capsys, *argv)
        assert status != 0
        _assert_one_line_error(err, "holds thumbnails made by another version of tripletsk")
        _assert_one_line_error(err, rebuild)
    assert run(capsys, "index", "--thumbnails", "--features", look_alikes / "cache.h5", "-o",
               thumbs, "--replace")[0] == 0  # fmt: skip
    assert run(capsys, "duplicates", "--index", thumbs, "--threshold", 0.3)[0] == 0


def test_duplicates_verification_is_refused_on_a_model_index(capsys, work):
    argv = ["--index", work / "index", "--threshold", 0.1, "--verify-threshold", 0.2]
    status, out, err = run(capsys, "duplicates", *argv)
    last = err.strip().splitlines()[-1]
    assert status == 2 and out == "" and "Traceback" not in err
    assert last.startswith("tripletsk duplicates: error: --verify-threshold compares the images")
    assert "is a model index; build one with `tripletsk index --thumbnails" in last


@pytest.fixture
def same_size(capsys, tmp_path):
    """A grey orig.png (48 px), its JPEG re-save (quality 85, 0.05 away at 48 px), near.png
    (the same size, one 4 px block brighter: a distinct image 0.12 away), two noise images, and
    their thumbnail index."""
    from PIL import Image

    from tests.helpers import image_folder_cache, look_alike_image, noise_images

    images = noise_images(tmp_path / "images", 2)
    original = look_alike_image(1).convert("L")
    original.save(images / "orig.png")
    original.save(images / "resaved.jpg", quality=85)
    pixels = np.asarray(original).astype(np.int16)
    pixels[20:24, 20:24] += 60
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(images / "near.png")
    image_folder_cache(images, tmp_path / "cache.h5")
    argv = ["--thumbnails", "--features", tmp_path / "cache.h5", "-o", tmp_path / "thumbs"]
    assert run(capsys, "index", *argv)[0] == 0
    return tmp_path / "thumbs"


def test_duplicates_same_size_threshold_drops_a_same_size_look_alike(capsys, same_size):
    argv = ["duplicates", "--index", same_size, "--threshold", 0.1, "--verify-threshold", 0.2]
    status, out, _ = run(capsys, *argv)
    assert status == 0 and out.splitlines() == ["near.png\torig.png\tresaved.jpg"]
    status, out, err = run(capsys, *argv, "--same-size-threshold", 0.08)
    assert status == 0 and out.splitlines() == ["orig.png\tresaved.jpg"]
    assert "verified within 0.2 (same-size pairs within 0.08) on the images" in err
    status, out, _ = run(capsys, *argv, "--same-size-threshold", 0.08, "--pairs", "--json")
    answer = json.loads(out)
    assert status == 0 and (answer["verify_threshold"], answer["same_size_threshold"]) == (
        0.2,
        0.08,
    )
    assert [{p["a"], p["b"]} for p in answer["pairs"]] == [{"orig.png", "resaved.jpg"}]
    assert 0.02 < answer["pairs"][0]["distance"] <= 0.08


@pytest.mark.parametrize(
    "options, match",
    [
        (["--same-size-threshold", 0.05], "--same-size-threshold S tightens --verify-threshold V"),
        (["--verify-threshold", 0.1, "--same-size-threshold", 0.2],
         "--same-size-threshold (0.2) must be at most --verify-threshold (0.1)"),
        (["--verify-threshold", 0.1, "--same-size-threshold", -1],
         "--same-size-threshold must be a finite distance >= 0; got -1.0"),
        (["--verify-threshold", "nan"],
         "--verify-threshold must be a finite distance >= 0; got nan"),
    ],
)  # fmt: skip
def test_duplicates_bad_same_size_threshold_is_a_usage_error(capsys, same_size, options, match):
    status, out, err = run(capsys, "duplicates", "--index", same_size, "--threshold", 0.1, *options)
    last = err.strip().splitlines()[-1]
    assert status == 2 and out == "" and "Traceback" not in err
    assert last.startswith("tripletsk duplicates: error: ") and match in last


def test_info_shows_what_an_index_holds(capsys, work, tmp_path):
    status, out, _ = run(capsys, "info", work / "index", "--json")
    info = json.loads(out)
    assert status == 0 and info["kind"] == "embedding index" and info["rows"] == "model"
    assert (info["n_rows"], info["dim"], info["distance"]) == (32, 16, "l2")
    assert info["model"]["path"] == str(work / "model.npz") and info["cache"]["n_images"] == 32
    assert info["search"] == "exact"
    status, _, err = run(capsys, "info", tmp_path)
    assert status == 1
    _assert_one_line_error(err, "not an embedding index (no index.json)")
