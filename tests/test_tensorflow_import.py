"""The quiet TensorFlow import: no start-up chatter, but a failed import still says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import noise_images

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, pythonpath: list[Path]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )


def test_import_and_first_op_write_nothing_to_stderr():
    code = (
        "from tripletsk._tensorflow import import_tensorflow\n"
        "tf = import_tensorflow()\n"
        "print(int(tf.reduce_sum(tf.ones((2, 2)))))\n"
    )
    proc = _python(code, [REPO])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "4"
    assert proc.stderr == ""


def test_failed_import_replays_what_it_wrote(tmp_path):
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os\nos.write(2, b'libfoo.so: cannot open shared object file\\n')\n"
        "raise ImportError('broken tensorflow')\n"
    )
    code = "from tripletsk._tensorflow import import_tensorflow\nimport_tensorflow()\n"
    proc = _python(code, [tmp_path, REPO])
    assert proc.returncode != 0
    assert "libfoo.so: cannot open shared object file" in proc.stderr
    assert "ImportError: broken tensorflow" in proc.stderr


@pytest.mark.slow  # a whole extract-features process (TensorFlow, the backbone)
def test_extract_features_command_writes_nothing_to_stderr(tmp_path):
    noise_images(tmp_path / "img" / "a", 2)
    argv = ["extract-features", tmp_path / "img", "-o", tmp_path / "c.h5", "-q"]
    argv += ["--weights", "none", "--image-size", "32"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "tripletsk", *map(str, argv)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
