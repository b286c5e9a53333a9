"""Outputs never replace a file that appeared while the command worked (tripletsk.outputs).

Each command checks its outputs when it starts; a user's file saved at the same name during
the slow part (training, reading a cache, drawing) used to be replaced with exit 0. The slow
part is wrapped here so that the user's file appears exactly then.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from tests.helpers import PLAIN_PROVENANCE, noise_images
from tripletsk.cache.store import FeatureStore
from tripletsk.cli import cli
from tripletsk.errors import ConvergenceWarning
from tripletsk.estimator import TripletEncoder
from tripletsk.modelfile import cache_record, save_model
from tripletsk.outputs import OutputChangedError, plan_output, publish, writing
from tripletsk.triplets.files import write_triplets

KEYS = [f"{c}/{i}.png" for c in "abc" for i in range(6)]
MINE = "the user's own file\n"


# --------------------------------------------------------------------------- the mechanism


def test_a_file_that_appears_is_not_replaced_and_the_work_is_kept(tmp_path):
    path = tmp_path / "model.npz"
    planned = plan_output(path)
    path.write_text(MINE)  # appears after the plan
    with pytest.raises(OutputChangedError, match=r"model\.npz appeared .* not replaced") as err:
        with writing(planned, "model") as tmp:
            open(tmp, "w").write("new model")
    assert path.read_text() == MINE
    kept = str(err.value).split("kept as ")[1].split(":")[0]
    assert open(kept).read() == "new model"


def test_a_file_that_was_replaced_meanwhile_is_not_replaced(tmp_path):
    path = tmp_path / "model.npz"
    path.write_text("old model")
    planned = plan_output(path)  # the command may replace this very file...
    os.remove(path)
    path.write_text(MINE)  # ...not another one saved at its name
    with pytest.raises(OutputChangedError, match="was changed or replaced by another program"):
        with writing(planned, "model") as tmp:
            open(tmp, "w").write("new model")
    assert path.read_text() == MINE


def test_the_file_found_at_the_start_is_replaced(tmp_path):
    path = tmp_path / "model.npz"
    path.write_text("old model")
    with writing(plan_output(path), "model") as tmp:
        open(tmp, "w").write("new model")
    assert path.read_text() == "new model" and os.listdir(tmp_path) == ["model.npz"]


@pytest.mark.parametrize("appears", ["empty folder", "file", "folder with a file"])
def test_a_folder_output_never_replaces_what_appeared(tmp_path, appears):
    """``os.rename`` of a folder silently replaces an empty folder: the name is claimed first."""
    path = tmp_path / "exported"
    planned = plan_output(path)
    if appears == "file":
        path.write_text(MINE)
    else:
        path.mkdir()
        if appears == "folder with a file":
            (path / "notes.txt").write_text(MINE)
    tmp = tmp_path / ".exported.tmp"
    tmp.mkdir()
    (tmp / "saved_model.pb").write_bytes(b"new")
    with pytest.raises(OutputChangedError, match="exported appeared"):
        publish(str(tmp), planned, "export")
    assert (tmp / "saved_model.pb").exists()
    assert not (path / "saved_model.pb").exists()


def test_an_error_while_writing_leaves_no_temporary_file(tmp_path):
    with pytest.raises(RuntimeError), writing(tmp_path / "t.txt") as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------- every CLI output


@pytest.fixture(scope="module")
def work(tmp_path_factory, write_feature_cache):
    """Images, a cache of their (made-up) features recording the image folder, triplet files
    and a model fitted on them."""
    root = tmp_path_factory.mktemp("outputs")
    noise_images(root / "images", KEYS, shape=(8, 8))
    rng = np.random.RandomState(0)
    features = np.repeat(rng.normal(0, 3, (3, 8)), 6, axis=0) + rng.normal(0, 1, (18, 8))
    provenance = {**PLAIN_PROVENANCE, "image_root": str(root / "images")}
    cache = write_feature_cache(root / "cache.h5", KEYS, features, provenance=provenance)
    triplets = [[KEYS[i], KEYS[(i + 1) % 6 + 6 * (i // 6)], KEYS[(i + 6) % 18]] for i in range(18)]
    write_triplets(root / "triplets.txt", triplets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # The head `fit` makes by default: the commands' fits below reuse its compiled graph.
        model = TripletEncoder(features=str(cache), max_epochs=2, random_state=0).fit(
            np.array(triplets, dtype=object)
        )
    save_model(root / "model.npz", model, cache_record(FeatureStore(cache)))
    return root


def _commands(work, out):
    model = ["--model", work / "model.npz"]
    triplets = ["--triplets", work / "triplets.txt"]
    fit = ["fit", "--features", work / "cache.h5", *triplets, "-q", "--set", "max_epochs=1"]
    return {
        # command: (argv, what runs while the output is being made)
        "fit -o": ([*fit, "-o", out("m.npz")], "tripletsk.estimator.TripletEncoder.fit"),
        "fit --plot": ([*fit, "-o", work / "m2.npz", "--plot", out("loss.png")],
                       "tripletsk.estimator.TripletEncoder.fit"),
        "predict -o": (["predict", *model, *triplets, "-o", out("p.txt")],
                       "tripletsk.cli.evaluate.load_model_and_cache"),
        "score --plot": (["score", *model, *triplets, "--plot", out("d.png")],
                         "tripletsk.cli.evaluate.load_model_and_cache"),
        "search --sheet": (["search", *model, KEYS[0], "--sheet", out("s.png")],
                           "tripletsk.cli.evaluate.load_model_and_cache"),
        "make-triplets -o": (["make-triplets", work / "cache.h5", "-n", "5", "-o", out("t.txt")],
                             "tripletsk.triplets.folders.make_triplets_from_folders"),
    }  # fmt: skip


def _appear_during(monkeypatch, target: str, path) -> None:
    """While ``target`` runs, the user saves their own file at ``path``."""
    module_name, _, attr = target.rpartition(".")
    owner_name, _, cls = module_name.rpartition(".")
    import importlib

    try:
        owner = importlib.import_module(module_name)
    except ModuleNotFoundError:  # a method of a class
        owner = getattr(importlib.import_module(owner_name), cls)
    original = getattr(owner, attr)

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        path.write_text(MINE)
        return result

    monkeypatch.setattr(owner, attr, wrapped)


@pytest.mark.parametrize(
    "command",
    ["fit -o", "fit --plot", "predict -o", "score --plot", "search --sheet", "make-triplets -o"],
)
def test_an_output_that_appears_while_the_command_works_is_kept(
    work, tmp_path, monkeypatch, capsys, command
):
    argv, slow_part = _commands(work, lambda name: tmp_path / name)[command]
    output = argv[-1]
    _appear_during(monkeypatch, slow_part, output)
    status = cli([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert output.read_text() == MINE
    assert status == 1 and "Traceback" not in err, err
    assert f"{output} appeared (it did not exist when the command started)" in err
    assert "it was not replaced" in err and "is kept as" in err


@pytest.mark.parametrize("command", ["fit -o", "predict -o", "make-triplets -o"])
def test_an_output_present_from_the_start_is_still_rewritten(work, tmp_path, capsys, command):
    argv, _ = _commands(work, lambda name: tmp_path / name)[command]
    argv[-1].write_text("an earlier run's output\n")
    assert cli([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert argv[-1].read_bytes() != b"an earlier run's output\n"
    assert sorted(os.listdir(tmp_path)) == [argv[-1].name]  # no temporary file left


# ------------------------------------------------------------- a reader that goes away


@pytest.mark.parametrize("command", ["info", "predict"])
def test_a_closed_pipe_ends_the_command_quietly(work, command):
    """``tripletsk info CACHE | head`` ended with "tripletsk: error: [Errno 32] Broken pipe"
    (or Python's "Exception ignored ... BrokenPipeError" at exit)."""
    import subprocess
    import sys
    from pathlib import Path

    argv = {
        "info": ["info", work / "cache.h5"],
        "predict": ["predict", "--model", work / "model.npz", "--triplets", work / "triplets.txt"],
    }[command]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "tripletsk", *map(str, argv)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # the reader is gone before the first line (as `head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert err == "", err


def test_a_stream_output_is_written_into_not_replaced(tmp_path):
    """``-o /dev/stdout`` or a named pipe: replacing it would be wrong (as root, it would
    replace the device's name in /dev)."""
    import stat
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    with writing(fifo, "predictions") as target, open(target, "w") as f:
        f.write("1\n0\n")
    reader.join(timeout=30)
    assert received == ["1\n0\n"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert os.listdir(tmp_path) == ["fifo"]
