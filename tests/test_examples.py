"""Run each example as a user would, in a fresh folder, with small sizes; check what it prints
and writes. The quickstart runs the ``tripletsk`` command of this checkout; the Python example,
which starts no command, runs in this process."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tripletsk.triplets.files import read_triplets

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _write_shim(path: Path, interpreter: str, *args: str) -> None:
    """An executable script running ``interpreter *args``. A script, not a symlink: a symlink to
    a virtualenv's interpreter, placed elsewhere, starts the base interpreter without the
    virtualenv's packages."""
    path.write_text(f'#!/bin/sh\nexec "{interpreter}" {" ".join(args)} "$@"\n')
    path.chmod(0o755)


def test_python_shim_keeps_a_virtualenv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    _write_shim(tmp_path / "python", str(venv / "bin" / "python"))
    out = subprocess.run(
        [tmp_path / "python", "-c", "import sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(out).resolve() == venv.resolve()


@pytest.fixture
def env(tmp_path):
    """Environment whose ``tripletsk`` and ``python`` are this checkout's, whatever is installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_shim(bin_dir / "tripletsk", sys.executable, "-m", "tripletsk")
    _write_shim(bin_dir / "python", sys.executable)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "MPLBACKEND": "Agg",
    }


def _run(argv, cwd, env, **extra_env) -> str:
    proc = subprocess.run(
        argv, cwd=cwd, env={**env, **extra_env}, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_quickstart(tmp_path, env):
    out = _run(
        ["bash", EXAMPLES / "quickstart.sh", "work"], tmp_path, env, PER_CLASS="12", EPOCHS="5"
    )
    work = tmp_path / "work"
    assert "wrote 120 images" in out
    assert "wrote 2000 distinct triplets over 84 images (10 classes)" in out
    test = read_triplets(work / "test.txt")
    predictions = (work / "predictions.txt").read_text().split()
    assert len(predictions) == len(test) and set(predictions) <= {"0", "1"}
    accuracy = float(re.search(r"^triplet_accuracy +([\d.]+)$", out, re.M).group(1))
    assert accuracy == pytest.approx(predictions.count("1") / len(predictions), abs=1e-4)
    assert accuracy > 0.8  # digits are easy: far better than the 0.5 of chance
    precision = float(re.search(r"^precision_at_1 +([\d.]+)$", out, re.M).group(1))
    assert precision > 0.5  # chance is 0.1 with 10 classes
    found = re.findall(r"^ +\d+  ([\d.]+)  (\S+)$", out.split("query: 3/0.png")[1], re.M)
    distances = [float(d) for d, _ in found]
    assert len(found) == 5 and "3/0.png" not in [key for _, key in found]
    assert distances == sorted(distances)
    for picture in ("loss.png", "distances.png", "neighbours.png"):
        assert (work / picture).read_bytes()[:4] == b"\x89PNG"


# --epochs 3 keeps the test short, so its fits stop before they converge (the example at its
# default stops by itself without a warning); any other warning of the example fails the test.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.filterwarnings("error")
def test_sklearn_pipeline(tmp_path, monkeypatch, capsys):
    # Run as `python examples/sklearn_pipeline.py --epochs 3` is, but in this process: it
    # starts no command, so a new interpreter would only import TensorFlow again.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / "sklearn_pipeline.py"), "--epochs", "3"])
    runpy.run_path(str(EXAMPLES / "sklearn_pipeline.py"), run_name="__main__")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["labelled mode"] * 2 + ["triplet mode"] * 2
    assert "'embed__margin'" in lines[0] and "'distance'" in lines[2]
    figures = [float(x) for x in re.findall(r"(?:accuracy|pixels|distances):? (0\.\d+|1\.0+)", out)]
    assert len(figures) == 6 and all(0 <= f <= 1 for f in figures)
    held_out = float(re.search(r"held-out triplet accuracy ([\d.]+)", out).group(1))
    assert held_out > 0.7
