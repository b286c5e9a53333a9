"""Saving a fitted TripletEncoder as ``.npz`` arrays plus JSON, loadable without running code.

Weights and standardisation are stored as arrays, parameters and history as one JSON string
(``meta``). Unlike joblib or pickle files, such a file is safe to load when it comes from
someone else. The layout is described in ``docs/formats.md`` (Model files).
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from tripletsk._npy import read_npy_header
from tripletsk.cache.provenance import validate_recorded_provenance
from tripletsk.errors import ModelFileError
from tripletsk.outputs import writing
from tripletsk.training.head import normalize_hidden_units

FORMAT = "tripletsk.TripletEncoder"
FORMAT_VERSION = 1
# Fitted attributes stored in the JSON as they are.
_HISTORY = ("n_features_in_", "n_iter_", "loss_curve_", "active_fraction_", "error_curve_",
            "validation_scores_", "best_validation_score_")  # fmt: skip


def save_encoder(encoder, path) -> None:
    """Write fitted ``encoder`` to ``path`` (see :meth:`TripletEncoder.save`)."""
    params = encoder.get_params()
    features = params.pop("features")
    if not isinstance(params["random_state"], int | None):
        params["random_state"] = None  # a RandomState instance has no JSON form
    if not isinstance(params["hidden_units"], int | str):  # "auto" stays
        params["hidden_units"] = list(params["hidden_units"])  # JSON has lists, not tuples
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "params": params,
        "features": os.fspath(features) if isinstance(features, str | os.PathLike) else None,
        **{name: getattr(encoder, name, None) for name in _HISTORY},
        "threshold_": getattr(encoder, "threshold_", None),
        # Matching calibration (tripletsk.evaluation.matching): a JSON dict, checked on load.
        "calibration_": getattr(encoder, "calibration_", None),
        # Where the features came from: checked against every cache the model reads.
        "feature_provenance_": getattr(encoder, "feature_provenance_", None),
    }
    arrays = {"feature_mean": encoder.feature_mean_, "feature_scale": encoder.feature_scale_}
    for i, (kernel, bias) in enumerate(encoder.weights_):
        arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = kernel, bias
    # Written whole under a temporary name, then moved in without replacing a file that
    # appeared meanwhile (tripletsk.outputs).
    with writing(path, "model") as tmp, open(tmp, "wb") as file:
        np.savez(file, meta=np.array(json.dumps(meta)), **arrays)


def load_encoder(cls, path, features=None):
    """An instance of ``cls`` fitted as saved in ``path``; nothing in the file is executed.

    Everything is checked before it is used, so that a damaged or hostile file gives one
    :class:`~tripletsk.errors.ModelFileError` naming the file and the problem instead of a
    model that answers nonsense: the members' unpacked sizes (before anything is unpacked),
    their dtypes and shapes (the layers must chain from ``n_features_in_`` to
    ``n_components``), finite values, and valid parameters.
    """
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as zf:
            sizes = {info.filename: info.file_size for info in zf.infolist()}
            _check_sizes(path, sizes)
            meta = _read_meta(path, zf)
            headers = {name[:-4]: _array_header(path, zf, name) for name in sizes}
            weights, mean, scale = _read_arrays(path, zf, headers)
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelFileError(f"{path}: not a readable .npz model file ({exc})") from None
    params = dict(meta["params"])
    # Files saved before the parameter existed were fitted with the plain soft margin.
    params.setdefault("soft_margin_scale", 1.0)
    if isinstance(params.get("hidden_units"), list):
        params["hidden_units"] = tuple(params["hidden_units"])
    try:
        model = cls(features=features if features is not None else meta.get("features"), **params)
        model._validate_params()
    except (TypeError, ValueError) as exc:  # unknown names, invalid values
        raise ModelFileError(f"{path}: invalid parameters ({exc})") from None
    try:  # absent from files saved before it was recorded: nothing to check then
        provenance = validate_recorded_provenance(meta.get("feature_provenance_"), path)
    except ValueError as exc:
        raise ModelFileError(str(exc)) from None
    _check_layers(path, model, weights, mean)
    model.weights_, model.feature_mean_, model.feature_scale_ = weights, mean, scale
    for name in _HISTORY:
        setattr(model, name, meta.get(name))
    if meta.get("threshold_") is not None:
        model.threshold_ = float(meta["threshold_"])
    if meta.get("calibration_") is not None:  # matching calibration (tripletsk.evaluation.matching)
        from tripletsk.evaluation.matching import check_calibration

        model.calibration_ = check_calibration(meta["calibration_"], path)
    model.feature_provenance_ = provenance
    return model


# A model's arrays are its head's weights: even a 2048 -> (4096, 4096) -> 64 head is 100 MB.
_MAX_MEMBER_BYTES = 1 << 30
_MAX_META_BYTES = 16 << 20


def _check_sizes(path: str, sizes: dict[str, int]) -> None:
    for name, size in sizes.items():
        limit = _MAX_META_BYTES if name == "meta.npy" else _MAX_MEMBER_BYTES
        if size > limit:
            raise ModelFileError(
                f"{path}: member {name} would unpack to {size:,} bytes (limit {limit:,}); "
                "not a tripletsk model, or a damaged one"
            )
    if "meta.npy" not in sizes:
        raise ModelFileError(f"{path}: not a tripletsk model (no 'meta' member)")


def _array_header(path: str, zf: zipfile.ZipFile, name: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of one ``.npy`` member, read from its header alone."""
    with zf.open(name) as member:
        try:
            shape, _, dtype = read_npy_header(member)
        except ValueError as exc:
            raise ModelFileError(f"{path}: member {name} is not a NumPy array ({exc})") from None
    if dtype.hasobject:
        raise ModelFileError(
            f"{path}: member {name} holds Python objects, which only a pickle can load; refused"
        )
    return shape, dtype


def _read_member(zf: zipfile.ZipFile, name: str) -> np.ndarray:
    with zf.open(name + ".npy") as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _read_meta(path: str, zf: zipfile.ZipFile) -> dict:
    _array_header(path, zf, "meta.npy")
    try:
        meta = json.loads(str(_read_member(zf, "meta")))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: its 'meta' member is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a tripletsk model saved with save()")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {meta.get('format_version')!r}; this tripletsk reads "
            f"version {FORMAT_VERSION}"
        )
    if not isinstance(meta.get("params"), dict):
        raise ModelFileError(f"{path}: its 'meta' member has no parameters")
    return meta


def _read_arrays(path: str, zf: zipfile.ZipFile, headers: dict):
    n_layers = sum(1 for name in headers if name.startswith("kernel_"))
    needed = ["feature_mean", "feature_scale"]
    needed += [f"{kind}_{i}" for i in range(n_layers) for kind in ("kernel", "bias")]
    missing = [name for name in needed if name not in headers]
    if missing or n_layers == 0:
        raise ModelFileError(f"{path}: missing arrays {missing or ['kernel_0']}")
    arrays = {}
    for name in needed:
        _, dtype = headers[name]
        if dtype.kind != "f":
            raise ModelFileError(f"{path}: array {name} has dtype {dtype}; floating point needed")
        array = _read_member(zf, name)
        if not np.isfinite(array).all():
            raise ModelFileError(f"{path}: array {name} holds NaN or infinite values")
        arrays[name] = array
    weights = [(arrays[f"kernel_{i}"], arrays[f"bias_{i}"]) for i in range(n_layers)]
    scale = arrays["feature_scale"]
    if (scale <= 0).any():
        raise ModelFileError(f"{path}: array feature_scale must be positive")
    return weights, arrays["feature_mean"], scale


def _check_layers(path: str, model, weights, mean: np.ndarray) -> None:
    """The layers must chain: (d, h1), (h1,), ..., (hk, n_components), with mean of shape (d,)."""
    if mean.ndim != 1:
        raise ModelFileError(f"{path}: feature_mean has shape {mean.shape}; one axis expected")
    widths = [*normalize_hidden_units(model.hidden_units, mean.shape[0]), model.n_components]
    if len(weights) != len(widths):
        raise ModelFileError(
            f"{path}: {len(weights)} layers of weights for hidden_units={model.hidden_units} "
            f"and n_components={model.n_components} ({len(widths)} layers)"
        )
    fan_in = mean.shape[0]
    for i, ((kernel, bias), width) in enumerate(zip(weights, widths, strict=True)):
        if kernel.shape != (fan_in, width) or bias.shape != (width,):
            raise ModelFileError(
                f"{path}: layer {i} has kernel {kernel.shape} and bias {bias.shape}; expected "
                f"({fan_in}, {width}) and ({width},)"
            )
        fan_in = width
