"""The command line on real files: digit PNGs, a real feature cache (random weights, 32x32),
real triplet files and model files; every command's success and each user mistake.

The cache's network is the small MobileNet(alpha=0.25) (DIM features): what is tested is the
commands, whichever the network (its build and trace cost a third of ResNet50's). It is
extracted at the default batch size, the one `search` extracts a query image file at: one trace."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import joblib
import numpy as np
import pytest

from tripletsk.cli import cli
from tripletsk.cli import info as info_command
from tripletsk.cli.train import parse_params
from tripletsk.errors import UserError
from tripletsk.estimator import TripletEncoder
from tripletsk.modelfile import load_model
from tripletsk.triplets.files import read_triplets
from tripletsk.triplets.folders import labels_from_folders

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["extract-features", "make-triplets", "fit", "predict", "score", "search", "info"]
TINY = ["--set", "max_epochs=3", "--set", "hidden_units=32", "--set", "random_state=0"]
BACKBONE, DIM = "MobileNet(alpha=0.25)", 256  # the cache's network and its feature width


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``tripletsk argv`` in-process; (exit status, stdout, stderr)."""
    status = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with images/<digit>/<n>.png (4 digits x 10), their cache and triplet files."""
    root = tmp_path_factory.mktemp("cli")
    _load_example("make_digit_images").write_digit_images(
        str(root / "images"), per_class=10, size=32, classes=4
    )
    cache = root / "cache.h5"
    argv = [
        "extract-features",
        root / "images",
        "-o",
        cache,
        "--weights",
        "none",
        "--image-size",
        "32",
        "--backbone",
        BACKBONE,
        "-q",
    ]
    assert cli([str(a) for a in argv]) == 0
    argv = [
        "make-triplets",
        cache,
        "-n",
        "200",
        "-o",
        root / "train.txt",
        "--split",
        root / "test.txt",
        "--test-size",
        "0.3",
    ]
    assert cli([str(a) for a in argv]) == 0
    return root


@pytest.fixture(scope="module")
def model(work):
    """A tiny model fitted on the training triplets, saved as .npz, with its loss plot."""
    path = work / "model.npz"
    argv = [
        "fit",
        "--features",
        work / "cache.h5",
        "--triplets",
        work / "train.txt",
        "-o",
        path,
        "--plot",
        work / "loss.png",
        "-q",
        *TINY,
    ]
    assert cli([str(a) for a in argv]) == 0
    return path


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _assert_one_line_error(err: str, match: str) -> None:
    lines = err.strip().splitlines()
    assert lines[-1].startswith("tripletsk: error: "), err
    assert match in lines[-1], err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_an_example(capsys, command):
    status, out, _ = run(capsys, command, "--help")
    assert status == 0
    assert "example:" in out and f"tripletsk {command}" in out


def test_no_command_is_a_usage_error(capsys):
    status, _, err = run(capsys)
    assert status == 2
    assert "required" in err


# ------------------------------------------------------------------------ extract, triplets


def test_extract_features_cached_every_image(capsys, work):
    status, out, _ = run(capsys, "info", work / "cache.h5")
    assert status == 0
    assert "n_images: 40" in out and "image_size: 32" in out
    assert f"image_root: {work / 'images'}" in out


def test_make_triplets_split_keeps_images_disjoint(work):
    train = read_triplets(work / "train.txt")
    test = read_triplets(work / "test.txt")
    assert len(train) == 200 and len(test) == round(200 * 0.3 / 0.7)
    train_images, test_images = set(train.ravel()), set(test.ravel())
    assert not train_images & test_images
    # Each class keeps 30% of its 10 images for testing.
    assert sorted(labels_from_folders(sorted(test_images))) == sorted(["0", "1", "2", "3"] * 3)
    for t in (train, test):  # positives share the anchor's folder, negatives do not
        labels = labels_from_folders(t.ravel()).reshape(-1, 3)
        assert (labels[:, 0] == labels[:, 1]).all() and (labels[:, 0] != labels[:, 2]).all()


@pytest.mark.parametrize("strategy", ["random", "hard"])
def test_make_triplets_from_cache_strategies(capsys, work, tmp_path, strategy):
    out_file = tmp_path / "t.txt"
    status, out, _ = run(
        capsys,
        "make-triplets",
        work / "cache.h5",
        "-n",
        "15",
        "-o",
        out_file,
        "--strategy",
        strategy,
    )
    assert status == 0 and "wrote 15 distinct triplets over 40 images (4 classes)" in out
    assert read_triplets(out_file, known_keys=set(_cache_keys(work))).shape == (15, 3)


def test_make_triplets_from_a_folder(capsys, work, tmp_path):
    status, _, _ = run(
        capsys, "make-triplets", work / "images", "-n", "5", "-o", tmp_path / "t.txt"
    )
    assert status == 0
    assert read_triplets(tmp_path / "t.txt").shape == (5, 3)


@pytest.mark.parametrize("strategy", ["random", "hard"])
def test_make_triplets_writes_distinct_triplets_or_says_fewer_exist(
    capsys, work, tmp_path, strategy
):
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    argv = ["make-triplets", work / "cache.h5", "-n", "150", "-o", train, "--split", test]
    status, out, _ = run(
        capsys, *argv, "--test-size", "0.3", "--n-test", "500", "--strategy", strategy
    )
    assert status == 0
    # 12 test images, 3 of each of 4 classes: 12 anchors x 2 positives x 9 negatives, for
    # both strategies (hard's 10 farthest / nearest candidates are all of them here).
    exist = 12 * 2 * 9
    lines = out.splitlines()
    assert lines[0] == f"wrote 150 distinct triplets over 28 images (4 classes) to {train}"
    assert lines[1] == (
        f"wrote {exist} distinct triplets over 12 images (4 classes) to {test} (asked for "
        f"500, but only {exist} distinct triplets exist over these images: add images or "
        "ask for fewer)"
    )
    for path, n in ((train, 150), (test, exist)):
        rows = [tuple(row) for row in read_triplets(path).tolist()]
        assert len(rows) == n == len(set(rows))


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--test-size", "1.5", "--split", "x.txt"], "--test-size must be between 0 and 1"),
        (["-n", "0"], "must be at least 1"),
    ],
)
def test_make_triplets_usage_errors(capsys, work, tmp_path, extra, match):
    argv = ["make-triplets", work / "cache.h5", "-n", "5", "-o", tmp_path / "t.txt", *extra]
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert match in err


def test_make_triplets_missing_source_names_both_kinds(capsys, tmp_path):
    argv = ["make-triplets", tmp_path / "nope", "-n", "5", "-o", tmp_path / "t.txt"]
    status, _, err = run(capsys, *argv)
    assert status == 1
    _assert_one_line_error(err, f"SOURCE not found: {tmp_path / 'nope'}")
    assert "a folder of images" in err and "features=" not in err
    assert not (tmp_path / "t.txt").exists()


def test_make_triplets_hard_needs_a_cache(capsys, work, tmp_path):
    status, _, err = run(
        capsys,
        "make-triplets",
        work / "images",
        "-n",
        "5",
        "-o",
        tmp_path / "t.txt",
        "--strategy",
        "hard",
    )
    assert status == 2 and "needs a feature cache" in err


def _cache_keys(work: Path) -> list[str]:
    with h5py.File(work / "cache.h5", "r") as f:
        return [k.decode() for k in f["keys"][()]]


# -------------------------------------------------------------------------------------- fit


def test_fit_writes_model_with_cache_record_and_plot(work, model):
    payload = load_model(model)
    assert isinstance(payload.model, TripletEncoder)
    assert payload.model.n_iter_ == 3 and payload.model.hidden_units == 32
    assert payload.model.verbose == 0  # -q progress is not a saved parameter
    assert payload.cache["dim"] == DIM and payload.cache["n_images"] == 40
    assert payload.cache["provenance"]["image_size"] == 32
    assert payload.training == {
        "mode": "triplets",
        "triplets": str(work / "train.txt"),
        "n_triplets": 200,
        "n_images": 28,
    }
    assert _is_png(work / "loss.png")


def test_fit_prints_loss_per_epoch_with_verbose(capsys, work, tmp_path):
    status, out, err = run(
        capsys,
        "fit",
        "--features",
        work / "cache.h5",
        "--triplets",
        work / "train.txt",
        "-o",
        tmp_path / "m.npz",
        *TINY,
        "--set",
        "verbose=1",
    )
    assert status == 0
    assert [line.split(":")[0] for line in out.splitlines()[:3]] == [
        "epoch 1",
        "epoch 2",
        "epoch 3",
    ]
    assert "wrongly ordered" in out.splitlines()[0] and "fit:" not in err  # no bar: no tty
    assert "fitted on 200 triplets of 28 images in 3 epochs" in out
    # .npz is an ordinary saved encoder: TripletEncoder.load reads it without the CLI.
    loaded = TripletEncoder.load(tmp_path / "m.npz")
    assert loaded.n_features_in_ == DIM and loaded.get_params()["features"] == str(
        work / "cache.h5"
    )
    status, out, _ = run(capsys, "info", tmp_path / "m.npz")
    assert status == 0 and "mode: triplets" in out and "provenance:" in out


def test_fit_labels_from_folders(capsys, work, tmp_path):
    status, out, _ = run(
        capsys,
        "fit",
        "--features",
        work / "cache.h5",
        "--labels-from-folders",
        "-o",
        tmp_path / "m.joblib",
        "-q",
        *TINY,
    )
    assert status == 0 and "fitted on 40 labelled images" in out
    assert joblib.load(tmp_path / "m.joblib")["training"]["mode"] == "labels-from-folders"


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("margin=0.3", {"margin": 0.3}),
        ("distance=cosine", {"distance": "cosine"}),
        ("hidden_units=(16, 8)", {"hidden_units": (16, 8)}),
        ("margin=None", {"margin": None}),
        ("early-stopping=True", {"early_stopping": True}),
    ],
)
def test_set_values_are_literals_or_strings(assignment, expected):
    assert parse_params([assignment]) == expected


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--set", "marign=0.3"], "unknown TripletEncoder parameter; valid names: batch_size"),
        (["--set", "margin"], "expects NAME=VALUE"),
        (["--set", "features=x.h5"], "give the cache with --features CACHE"),
        (["--set", "margin=-1"], "'margin' parameter of TripletEncoder must be"),
        (["-o", "model.txt"], "unknown model file extension '.txt'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_fit_usage_errors(capsys, work, tmp_path, extra, match):
    argv = [
        "fit",
        "--features",
        work / "cache.h5",
        "--triplets",
        work / "train.txt",
        "-o",
        tmp_path / "m.joblib",
        *extra,
    ]
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert "usage: tripletsk" in err and match in err
    assert not (tmp_path / "m.joblib").exists()


def test_fit_unknown_key_names_the_line(capsys, work, tmp_path):
    bad = tmp_path / "train.txt"
    bad.write_text("0/0.png 0/1.png 1/0.png\n0/0.png 0/01.png 1/0.png\n")
    status, _, err = run(
        capsys,
        "fit",
        "--features",
        work / "cache.h5",
        "--triplets",
        bad,
        "-o",
        tmp_path / "m.joblib",
    )
    assert status == 1
    _assert_one_line_error(err, "line 2: '0/01.png' (did you mean '0/1.png'")


def test_fit_missing_cache(capsys, work, tmp_path):
    status, _, err = run(
        capsys,
        "fit",
        "--features",
        tmp_path / "nope.h5",
        "--triplets",
        work / "train.txt",
        "-o",
        tmp_path / "m.joblib",
    )
    assert status == 1
    _assert_one_line_error(err, "feature cache not found")


# ---------------------------------------------------------------------------------- predict


def test_predict_one_answer_per_triplet_in_order(capsys, work, model, tmp_path):
    status, out, _ = run(capsys, "predict", "--model", model, "--triplets", work / "test.txt")
    assert status == 0
    answers = out.split()
    test = read_triplets(work / "test.txt")
    assert len(answers) == len(test) and set(answers) <= {"0", "1"}
    encoder = load_model(model).model
    assert answers == [str(p) for p in encoder.predict_triplets(test)]
    status, _, _ = run(
        capsys,
        "predict",
        "--model",
        model,
        "--triplets",
        work / "test.txt",
        "-o",
        tmp_path / "p.txt",
    )
    assert status == 0 and (tmp_path / "p.txt").read_text() == out


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "triplet file not found"),
        ("0/0.png 0/1.png 1/0.png\n0/0.png 0/1.png\n", "line 2: expected 3 names"),
        ("0/0.png 0/1.png 7/0.png\n", "line 1: '7/0.png'"),
        ("# only a comment\n", "no triplets found"),
    ],
)
def test_predict_bad_triplet_files(capsys, model, tmp_path, content, match):
    path = tmp_path / "t.txt"
    if content is not None:
        path.write_text(content)
    status, out, err = run(capsys, "predict", "--model", model, "--triplets", path)
    assert status == 1 and out == ""
    _assert_one_line_error(err, match)


def test_predict_missing_model(capsys, work, tmp_path):
    status, _, err = run(
        capsys, "predict", "--model", tmp_path / "none.joblib", "--triplets", work / "test.txt"
    )
    assert status == 1
    _assert_one_line_error(err, "model file not found")


def test_predict_not_a_model(capsys, work, tmp_path):
    path = tmp_path / "fake.npz"
    np.savez(path, x=np.zeros(3))
    status, _, err = run(capsys, "predict", "--model", path, "--triplets", work / "test.txt")
    assert status == 1
    _assert_one_line_error(err, "not a tripletsk model")


@pytest.fixture(scope="module")
def other_cache(work):
    """A copy of the cache that claims other backbone weights (a real HDF5 file)."""
    path = work / "other.h5"
    shutil.copy(work / "cache.h5", path)
    with h5py.File(path, "a") as f:
        f.attrs["weights"] = "none:seed=7:init=numpy-he-uniform-v1"  # (MobileNet's init)
    return path


@pytest.mark.parametrize("command", ["predict", "score"])
def test_model_cache_provenance_mismatch(capsys, work, model, other_cache, command):
    status, _, err = run(
        capsys,
        command,
        "--model",
        model,
        "--triplets",
        work / "test.txt",
        "--features",
        other_cache,
    )
    assert status == 1
    _assert_one_line_error(err, "was fitted on features made with other settings")
    assert "weights 'none:seed=0:init=numpy-he-uniform-v1' vs 'none:seed=7" in err


def test_model_cache_width_mismatch(capsys, work, tmp_path):
    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(20, 16)), np.repeat([0, 1], 10)
    encoder = TripletEncoder(hidden_units=8, max_epochs=1, random_state=0).fit(X, y)
    joblib.dump(encoder, tmp_path / "bare.joblib")  # an encoder saved from Python
    status, _, err = run(
        capsys,
        "predict",
        "--model",
        tmp_path / "bare.joblib",
        "--triplets",
        work / "test.txt",
        "--features",
        work / "cache.h5",
        "--trust-pickle",
    )
    assert status == 1
    _assert_one_line_error(err, "expects 16 features per image but")


def test_features_option_overrides_recorded_cache(capsys, work, model, tmp_path):
    moved = tmp_path / "moved.h5"
    shutil.copy(work / "cache.h5", moved)
    status, out, _ = run(
        capsys, "predict", "--model", model, "--triplets", work / "test.txt", "--features", moved
    )
    assert status == 0 and len(out.split()) == len(read_triplets(work / "test.txt"))


# ------------------------------------------------------------------------------------ score


def test_score_agrees_with_predict(capsys, work, model):
    status, out, _ = run(
        capsys, "score", "--model", model, "--triplets", work / "test.txt", "--json"
    )
    assert status == 0
    scores = json.loads(out)
    _, predictions, _ = run(capsys, "predict", "--model", model, "--triplets", work / "test.txt")
    assert scores["triplet_accuracy"] == pytest.approx(
        np.mean([int(p) for p in predictions.split()])
    )
    assert "map_at_r" not in scores  # no labels asked for


def test_score_skips_k_beyond_the_images_with_a_warning(capsys, work, model):
    status, out, err = run(
        capsys,
        "score",
        "--model",
        model,
        "--triplets",
        work / "test.txt",
        "--labels-from-folders",
        "-k",
        "1",
        "50",
    )
    assert status == 0
    assert "recall_at_1 " in out and "recall_at_50" not in out
    assert err.startswith("tripletsk: warning: recall@k is computed only for k below the 12")


def test_score_with_folder_labels_and_histogram(capsys, work, model, tmp_path):
    plot = tmp_path / "hist.png"
    status, out, _ = run(
        capsys,
        "score",
        "--model",
        model,
        "--triplets",
        work / "test.txt",
        "--labels-from-folders",
        "-k",
        "1",
        "5",
        "--plot",
        plot,
    )
    assert status == 0
    names = [line.split()[0] for line in out.splitlines() if not line.startswith("wrote")]
    assert names[:2] == ["triplet_accuracy", "n_triplets"]
    assert set(names[2:]) == {
        "precision_at_1",
        "recall_at_1",
        "recall_at_5",
        "r_precision",
        "map_at_r",
        "n_queries",
    }
    assert "n_queries          12" in out  # the 12 held-out test images
    assert _is_png(plot)


# ----------------------------------------------------------------------------------- search


def test_search_by_key_excludes_the_query(capsys, model):
    status, out, _ = run(
        capsys, "search", "--model", model, "0/0.png", "2/3.png", "-k", "3", "--json"
    )
    assert status == 0
    results = json.loads(out)
    assert [r["query"] for r in results] == ["0/0.png", "2/3.png"]
    for r in results:
        keys = [n["key"] for n in r["neighbours"]]
        distances = [n["distance"] for n in r["neighbours"]]
        assert len(keys) == 3 and r["query"] not in keys
        assert distances == sorted(distances)


def test_search_new_image_file_finds_its_twin_and_draws_a_sheet(capsys, work, model, tmp_path):
    query = tmp_path / "query.png"  # outside the image folder: extracted on the fly
    shutil.copy(work / "images" / "3" / "4.png", query)
    sheet = tmp_path / "sheet.png"
    # A key, the file, a key again: each query gets its own neighbours, in order.
    argv = ["search", "--model", model, "0/0.png", query, "2/3.png", "-k", "4", "--sheet", sheet]
    status, out, _ = run(capsys, *argv)
    assert status == 0
    lines = out.splitlines()
    assert lines[0::5] == ["query: 0/0.png", f"query: {query}", "query: 2/3.png", f"wrote {sheet}"]
    rank, distance, key = lines[6].split()
    assert (rank, key) == ("1", "3/4.png") and float(distance) < 1e-3
    _, by_key, _ = run(capsys, "search", "--model", model, "2/3.png", "-k", "4")
    assert by_key.splitlines() == lines[10:15]
    width, height = _png_size(sheet)
    assert width > height  # 3 rows of 5 images


def test_search_file_inside_image_folder_is_not_its_own_neighbour(capsys, work, model):
    status, out, _ = run(capsys, "search", "--model", model, work / "images" / "1" / "2.png")
    assert status == 0
    neighbours = [line.split()[-1] for line in out.splitlines()[1:]]
    assert len(neighbours) == 5 and "1/2.png" not in neighbours


def test_search_unknown_query(capsys, model):
    status, _, err = run(capsys, "search", "--model", model, "0/00.png")
    assert status == 1
    _assert_one_line_error(err, "A query is a cached key or an existing image file")
    assert "did you mean '0/0.png'" in err
    assert ".;" not in err and ".." not in err  # one sentence ends, the next begins


def test_search_sheet_without_images(capsys, work, model, tmp_path):
    status, _, err = run(
        capsys,
        "search",
        "--model",
        model,
        "0/0.png",
        "--sheet",
        tmp_path / "s.png",
        "--images-dir",
        tmp_path / "gone",
    )
    assert status == 1
    _assert_one_line_error(err, "pass --images-dir")


def test_search_too_many_neighbours_warns_in_one_line(capsys, model):
    status, out, err = run(capsys, "search", "--model", model, "0/0.png", "-k", "100")
    assert status == 0 and len(out.splitlines()) == 1 + 39
    assert err.strip() == (
        "tripletsk: warning: Asked for 100 neighbours but only 39 can be returned; returning 39."
    )


# ------------------------------------------------------------------------------------- info


def test_info_model(capsys, model):
    status, out, _ = run(capsys, "info", model, "--json")
    assert status == 0
    info = json.loads(out)
    assert info["n_features_in"] == DIM and info["n_epochs"] == 3
    assert len(info["loss_curve"]) == 3 and info["parameters"]["hidden_units"] == 32
    assert info["cache"]["provenance"]["weights"].startswith("none:seed=0")


@pytest.mark.parametrize(("name", "match"), [("gone.h5", "not found: "), ("m.txt", "extension")])
def test_info_bad_path(capsys, tmp_path, name, match):
    if name.endswith(".txt"):
        (tmp_path / name).write_text("hello")
    status, _, err = run(capsys, "info", tmp_path / name)
    assert status == 1
    _assert_one_line_error(err, match)


# ------------------------------------------------------------------ errors, debug, processes


def test_debug_shows_the_traceback(capsys, work, tmp_path):
    status, _, err = run(
        capsys,
        "--debug",
        "predict",
        "--model",
        tmp_path / "none.joblib",
        "--triplets",
        work / "test.txt",
    )
    assert status == 1
    assert "Traceback" in err and "tripletsk: error: model file not found" in err


@pytest.mark.parametrize("debug", [False, True])
def test_unexpected_error_is_one_line_with_debug_hint(capsys, monkeypatch, model, debug):
    def broken(args):
        raise RuntimeError("something broke")

    monkeypatch.setattr(info_command, "_run_info", broken)
    status, _, err = run(capsys, *(["--debug"] if debug else []), "info", model)
    assert status == 1
    assert "tripletsk: error: unexpected RuntimeError: something broke" in err
    assert ("Traceback" in err) is debug and ("run with --debug" in err) is not debug


def test_repeated_image_warning_is_one_line(capsys, model, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("0/0.png 0/0.png 1/0.png\n")
    status, out, err = run(capsys, "predict", "--model", model, "--triplets", path)
    assert status == 0 and out.strip() in {"0", "1"}
    assert err.startswith("tripletsk: warning: ") and "repeat an image" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    from tripletsk.evaluation import plotting

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(UserError, match=r"pip install tripletsk\[plot\]"):
        plotting._pyplot()


@pytest.mark.parametrize(
    ("argv", "status", "match"),
    [
        (
            ["predict", "--model", "missing.joblib", "--triplets", "t.txt"],
            1,
            "model file not found",
        ),
        (["fit", "--triplets"], 2, "expected one argument"),
    ],
)
def test_python_dash_m_exit_status(tmp_path, argv, status, match):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "tripletsk", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == status
    assert match in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr


def test_info_starts_without_scikit_learn_or_tensorflow(work):
    # Importing scikit-learn costs ~2 s of CPU and TensorFlow ~12 s: commands that need
    # neither (info, --help, duplicates, search on an index) start without them.
    code = (
        "import sys; from tripletsk.cli import cli; status = cli(sys.argv[1:]); "
        "print(status, [m for m in ('sklearn', 'tensorflow', 'keras') if m in sys.modules])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "info", str(work / "cache.h5")],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.splitlines()[-1] == "0 []", proc.stdout + proc.stderr


# ------------------------------------------------------------- trust: files and what runs


class _Payload:
    """Unpickling this creates a folder: the proof that a pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("command", ["predict", "score", "search"])
def test_pickle_model_is_refused_without_trust_pickle(capsys, work, tmp_path, command):
    marker = tmp_path / "pwned"
    joblib.dump({"model": _Payload(marker)}, tmp_path / "evil.joblib")
    extra = ["0/0.png"] if command == "search" else ["--triplets", work / "test.txt"]
    status, _, err = run(capsys, command, "--model", tmp_path / "evil.joblib", *extra)
    assert status == 1
    _assert_one_line_error(err, "--trust-pickle")
    assert not marker.exists()


def test_info_never_opens_a_pickle(capsys, tmp_path):
    marker = tmp_path / "pwned"
    joblib.dump({"model": _Payload(marker)}, tmp_path / "evil.joblib")
    status, out, _ = run(capsys, "info", tmp_path / "evil.joblib")
    assert status == 0 and "not opened: loading runs code" in out
    assert not marker.exists()


def test_trust_pickle_opens_a_joblib_model(capsys, work, tmp_path):
    path = tmp_path / "m.joblib"
    argv = ["fit", "--features", work / "cache.h5", "--triplets", work / "train.txt", "-o", path]
    assert run(capsys, *argv, "-q", *TINY)[0] == 0
    argv = ["predict", "--model", path, "--triplets", work / "test.txt"]
    assert run(capsys, *argv)[0] == 1
    status, out, _ = run(capsys, *argv, "--trust-pickle")
    assert status == 0 and len(out.split()) == len(read_triplets(work / "test.txt"))


@pytest.mark.parametrize("option", ["-o", "--plot"])
def test_fit_checks_outputs_before_training(capsys, work, tmp_path, monkeypatch, option):
    def no_training(*args, **kwargs):
        raise AssertionError("fit trained before checking its outputs")

    monkeypatch.setattr(TripletEncoder, "fit", no_training)
    outputs = {"-o": tmp_path / "m.npz", "--plot": tmp_path / "loss.png"}
    outputs[option] = tmp_path / "missing" / "dir" / outputs[option].name
    argv = ["fit", "--features", work / "cache.h5", "--triplets", work / "train.txt"]
    status, _, err = run(capsys, *argv, "-o", outputs["-o"], "--plot", outputs["--plot"])
    assert status == 2
    assert f"{option}" in err and "missing/dir does not exist" in err


def test_make_triplets_refuses_one_file_for_both_parts(capsys, work, tmp_path):
    both = tmp_path / "t.txt"
    both.write_text("kept\n")
    argv = ["make-triplets", work / "cache.h5", "-n", "10", "-o", both, "--split", both]
    status, _, err = run(capsys, *argv)
    assert status == 2 and "--split" in err and "also -o/--output" in err
    assert both.read_text() == "kept\n"


def test_make_triplets_refuses_to_overwrite_its_source(capsys, work, tmp_path):
    cache = tmp_path / "cache.h5"
    shutil.copy(work / "cache.h5", cache)
    before = cache.read_bytes()
    status, _, err = run(capsys, "make-triplets", cache, "-n", "10", "-o", cache)
    assert status == 2 and "is SOURCE" in err
    assert cache.read_bytes() == before


def test_make_triplets_split_writes_nothing_unless_every_part_can_be_made(capsys, tmp_path):
    for label in "abc":
        for i in range(3):
            (tmp_path / "img" / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "img" / label / f"{i}.png").touch()
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("previous\n")
    argv = ["make-triplets", tmp_path / "img", "-n", "20", "-o", train, "--split", test]
    status, _, err = run(capsys, *argv, "--test-size", "0.3")
    assert status == 1
    _assert_one_line_error(err, "raise --test-size")
    assert train.read_text() == "previous\n" and not test.exists()


def test_info_on_a_file_that_is_not_hdf5(capsys, tmp_path):
    (tmp_path / "features.h5").write_text("not a cache")
    status, _, err = run(capsys, "info", tmp_path / "features.h5")
    assert status == 1
    _assert_one_line_error(err, "is not an HDF5 file")


def test_search_sheet_draws_a_placeholder_for_a_deleted_image(capsys, work, model, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(work / "images", images)
    _, out, _ = run(capsys, "search", "--model", model, "0/0.png", "-k", "3")
    nearest = out.splitlines()[1].split()[-1]
    (images / nearest).unlink()
    sheet = tmp_path / "sheet.png"
    argv = ["search", "--model", model, "0/0.png", "-k", "3", "--images-dir", images]
    status, _, err = run(capsys, *argv, "--sheet", sheet)
    assert status == 0 and _is_png(sheet)
    assert f"{nearest}: cannot read the image" in err and "placeholder" in err


def test_search_query_through_a_symlink_is_not_its_own_neighbour(capsys, work, model, tmp_path):
    link = tmp_path / "link.png"
    link.symlink_to(work / "images" / "1" / "2.png")
    status, out, _ = run(capsys, "search", "--model", model, link)
    assert status == 0
    neighbours = [line.split()[-1] for line in out.splitlines()[1:]]
    assert len(neighbours) == 5 and "1/2.png" not in neighbours
