"""The matching calibration inside ``tripletsk export`` outputs, where any runtime can read it.

``tripletsk calibrate`` stores a distance threshold with the model (``encoder.calibration_``,
:mod:`tripletsk.evaluation.matching`); an exported model carries it too, as JSON:

* ``.keras``: a zip member ``tripletsk_matching.json`` (Keras ignores members it does not know);
* SavedModel folder: ``assets.extra/tripletsk_matching.json`` (TensorFlow Serving's folder for
  extra files);
* OpenVINO IR: the model's runtime information ``tripletsk/matching`` (``model.get_rt_info``).

It is written into the export before the export is published under its name.
"""

from __future__ import annotations

import json
import os
import zipfile

__all__ = ["MEMBER", "read_calibration", "write_calibration"]

MEMBER = "tripletsk_matching.json"
_RT_PATH = ["tripletsk", "matching"]


def write_calibration(path: str, fmt: str, calibration: dict, ov_model=None) -> None:
    """Add ``calibration`` (a JSON-ready dict) to the export of format ``fmt`` at ``path``, an
    export not yet published (its temporary name: written in place). For OpenVINO, pass
    ``ov_model`` before it is saved: the calibration goes into its runtime information."""
    text = json.dumps(calibration, sort_keys=True)
    if fmt == "keras":
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr(MEMBER, text)
    elif fmt == "savedmodel":
        folder = os.path.join(path, "assets.extra")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, MEMBER), "w", encoding="utf-8") as fh:
            fh.write(text)
    elif fmt == "openvino":
        ov_model.set_rt_info(text, _RT_PATH)
    else:
        raise ValueError(f"unknown export format {fmt!r}")


def read_calibration(path: str | os.PathLike) -> dict | None:
    """The matching calibration stored in an export (any format), or None.

    Raises
    ------
    tripletsk.errors.ModelFileError
        If one is stored but is not a valid calibration.
    """
    from tripletsk.evaluation.matching import check_calibration

    path = os.fspath(path)
    text = None
    if os.path.isdir(path):
        member = os.path.join(path, "assets.extra", MEMBER)
        if os.path.isfile(member):
            with open(member, encoding="utf-8") as fh:
                text = fh.read(1 << 20)
    elif path.lower().endswith(".xml"):
        import openvino as ov

        model = ov.Core().read_model(path)
        if model.has_rt_info(_RT_PATH):
            text = model.get_rt_info(_RT_PATH).astype(str)
    else:
        with zipfile.ZipFile(path) as zf:
            if MEMBER in zf.namelist() and zf.getinfo(MEMBER).file_size < 1 << 20:
                text = zf.read(MEMBER).decode("utf-8")
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return check_calibration(value, path)
