"""Import TensorFlow without its start-up chatter on the user's terminal.

TensorFlow's native code writes a dozen lines to file descriptor 2 while it loads and while it
looks for devices (oneDNN notices, "Could not find cuda drivers", an ``E0000 ... cuInit`` error
on every machine without a GPU). ``TF_CPP_MIN_LOG_LEVEL`` no longer reaches the lines written
before absl's logging starts, so the only reliable way to keep them off a command's output is
to point descriptor 2 elsewhere for the duration of the import and the device probe. When the
import fails, what it wrote is replayed so that nothing useful is hidden.

Every module of tripletsk that needs TensorFlow gets it from :func:`import_tensorflow`, so the
first import, wherever it happens, is the quiet one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["import_keras", "import_tensorflow"]


@contextlib.contextmanager
def _stderr_captured() -> Iterator[tempfile.TemporaryFile]:
    """Send file descriptor 2 (native and Python writes alike) to a temporary file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow():
    """Return the ``tensorflow`` module, importing it quietly the first time.

    Examples
    --------
    >>> tf = import_tensorflow()
    >>> int(tf.constant(2) * 3)
    6
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # later INFO/WARNING lines too
    with _stderr_captured() as captured:
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the device probe prints the cuInit error
        except BaseException as exc:
            error = exc
            captured.seek(0)
            said = captured.read()
        else:
            return tf
    os.write(2, said)  # the import failed: what it wrote may say why
    raise error


def import_keras():
    """Return the ``keras`` module, TensorFlow (its backend here) imported quietly first."""
    import_tensorflow()
    import keras

    return keras
