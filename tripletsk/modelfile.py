"""Model files of the command line: a fitted TripletEncoder plus the cache it was fitted on.

``tripletsk fit`` writes, next to the encoder, where its features came from (the cache's path
and provenance: backbone, weights, image size, preprocessing) and how it was trained. The other
commands use this to find the cache again and to refuse a cache whose features are not
comparable with the training ones.

Two formats, chosen by the file's extension:

* ``.joblib`` (or ``.pkl``): ``joblib.dump`` of a dict ``{"format": "tripletsk-model",
  "format_version": 1, "model": TripletEncoder, "cache": {...}, "training": {...}}``.
  Loading a joblib file runs code from it, so :func:`load_model` refuses it unless
  ``trust_pickle=True`` (``--trust-pickle`` on the command line), and :func:`model_info` never
  opens it.
* ``.npz``: :meth:`TripletEncoder.save` (arrays and JSON only, safe to load from anyone), with
  the same ``cache`` and ``training`` metadata added as one more JSON member,
  ``tripletsk_cli.npy``. ``TripletEncoder.load`` ignores that member, so the file stays an
  ordinary saved encoder.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from tripletsk.cache.provenance import check_features_provenance
from tripletsk.cache.store import DEFAULT_CACHE, FeatureStore
from tripletsk.errors import CacheMismatchError, CacheNotFoundError, UserError
from tripletsk.outputs import writing

__all__ = [
    "MODEL_EXTENSIONS",
    "FittedModel",
    "cache_record",
    "check_model_cache",
    "load_model",
    "model_info",
    "open_model_cache",
    "save_model",
]

FORMAT_NAME = "tripletsk-model"
FORMAT_VERSION = 1
_NPZ_NAME = "tripletsk_cli"  # np.load lists members without their ".npy"
#: Model file extensions and their format.
MODEL_EXTENSIONS = {".joblib": "joblib", ".pkl": "joblib", ".npz": "npz"}


@dataclass
class FittedModel:
    """A fitted encoder and what the command line recorded about it.

    Attributes
    ----------
    model : TripletEncoder
        The fitted encoder.
    path : str
        The file it was loaded from.
    cache : dict
        The training cache: ``path`` (as given), ``abspath``, ``provenance``, ``dim``,
        ``n_images``; empty when unknown (e.g. an encoder saved from Python).
    training : dict
        How it was fitted (``mode``, ``triplets``, ``n_triplets``, ``n_images``).
    """

    model: object
    path: str
    cache: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)


def model_format(path: str | os.PathLike) -> str:
    """``"joblib"`` or ``"npz"`` from the file extension; ``UserError`` for anything else."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in MODEL_EXTENSIONS:
        raise UserError(
            f"{os.fspath(path)}: unknown model file extension {ext!r}; use .joblib or .npz "
            "(.npz is safe to load from others)"
        )
    return MODEL_EXTENSIONS[ext]


def cache_record(store: FeatureStore) -> dict:
    """What a model file remembers of its training cache."""
    return {
        "path": store.path,
        "abspath": os.path.abspath(store.path),
        "provenance": store.provenance,
        "dim": store.dim,
        "n_images": len(store),
        "image_root": store.attrs.get("image_root"),
    }


def save_model(
    path: str | os.PathLike, model, cache: dict | None = None, training: dict | None = None
) -> None:
    """Write a fitted encoder with its cache and training records (format by extension).

    The file is written under a temporary name and moved in, so an interrupted save never
    leaves half a model behind, and a file that appeared at ``path`` since it was planned
    (``path`` may be a :class:`~tripletsk.outputs.Output` planned when a command started) is
    never replaced (:mod:`tripletsk.outputs`).
    """
    fmt = model_format(path)
    meta = {"cache": cache or {}, "training": training or {}}
    with writing(path, "model") as tmp:
        if fmt == "joblib":
            import joblib

            joblib.dump(
                {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model": model, **meta},
                tmp,
            )
        else:
            model.save(tmp)
            # np.savez wrote a zip file: one more member keeps everything in a single file.
            with zipfile.ZipFile(tmp, "a") as zf, zf.open(_NPZ_NAME + ".npy", "w") as member:
                np.lib.format.write_array(member, np.array(json.dumps(meta)))


def load_model(path: str | os.PathLike, *, trust_pickle: bool = False) -> FittedModel:
    """Read a model file written by :func:`save_model` (or a bare saved TripletEncoder).

    Parameters
    ----------
    path : str or path-like
        A ``.npz`` file (arrays and JSON: safe) or a ``.joblib``/``.pkl`` file (pickle).
    trust_pickle : bool, default False
        Load pickle-based files. Unpickling runs code stored in the file, so only pass True
        for files you made yourself or whose author you trust.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    UserError
        If it is not a tripletsk model, or is a pickle file and ``trust_pickle`` is False.
    """
    path = os.fspath(path)
    fmt = model_format(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    if fmt == "joblib" and not trust_pickle:
        raise UserError(
            f"{path} is a pickle file (.joblib/.pkl): loading it runs code stored in it, so it "
            "is refused; pass --trust-pickle (trust_pickle=True) only if you trust its author, "
            "or use a model saved as .npz"
        )
    if fmt == "npz":
        from tripletsk.estimator import TripletEncoder

        try:
            model = TripletEncoder.load(path)
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data[_NPZ_NAME])) if _NPZ_NAME in data.files else {}
        except UserError:
            raise  # already names the file and the problem
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise UserError(f"{path} is not a tripletsk model saved as .npz ({exc})") from None
        return FittedModel(model, path, meta.get("cache", {}), meta.get("training", {}))
    import joblib

    try:
        payload = joblib.load(path)
    except Exception as exc:  # pickle raises many kinds of errors for a foreign file
        raise UserError(f"{path} is not a readable joblib model file ({exc})") from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT_NAME:
        return FittedModel(
            payload["model"], path, payload.get("cache", {}), payload.get("training", {})
        )
    if hasattr(payload, "transform") and hasattr(payload, "n_features_in_"):
        return FittedModel(payload, path)  # an encoder dumped from Python
    raise UserError(f"{path} does not hold a fitted tripletsk model")


def model_info(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict:
    """A summary of a model file (parameters, training curves, training cache) for ``info``.

    A pickle-based file is not opened unless ``trust_pickle`` is True (opening it runs code):
    its summary then only says so.
    """
    path = os.fspath(path)
    if model_format(path) == "joblib" and not trust_pickle:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model file not found: {path}")
        return {
            "path": path,
            "kind": "model",
            "format": "pickle file (not opened: loading runs code; pass --trust-pickle to read it)",
        }
    fitted = load_model(path, trust_pickle=trust_pickle)
    m = fitted.model
    params = m.get_params()
    params["features"] = getattr(params["features"], "path", params["features"])
    if not isinstance(params["features"], str | type(None)):
        params["features"] = type(params["features"]).__name__
    if not isinstance(params["random_state"], int | type(None)):
        params["random_state"] = repr(params["random_state"])
    return {
        "path": path,
        "kind": "model",
        "format": "npz (arrays and JSON)" if path.lower().endswith(".npz") else "pickle file",
        "parameters": params,
        "n_features_in": m.n_features_in_,
        "n_components": m.n_components,
        "n_epochs": m.n_iter_,
        "loss_curve": [round(float(v), 6) for v in m.loss_curve_],
        "active_fraction": [round(float(v), 6) for v in m.active_fraction_],
        "error_curve": [round(float(v), 6) for v in getattr(m, "error_curve_", None) or []],
        "validation_scores": m.validation_scores_,
        "best_validation_score": m.best_validation_score_,
        "threshold": getattr(m, "threshold_", None),
        "matching": getattr(m, "calibration_", None),  # tripletsk calibrate
        "cache": fitted.cache,
        "training": fitted.training,
    }


def check_model_cache(fitted: FittedModel, store: FeatureStore) -> None:
    """Raise :class:`CacheMismatchError` if ``store``'s features do not fit the model.

    The feature width must match, and so must the provenance (backbone, weights, image size,
    preprocessing, precision) of the features it was fitted on: features of another backbone
    have the same width but mean something else. The provenance is the model's own fitted
    ``feature_provenance_`` (recorded by ``fit`` however the model is saved), or for files
    written before it existed the cache record of ``tripletsk fit``; the comparison is
    :func:`tripletsk.cache.provenance.check_features_provenance`, the one ``transform`` makes.
    """
    n_in = getattr(fitted.model, "n_features_in_", None)
    if n_in is not None and n_in != store.dim:
        raise CacheMismatchError(
            f"{fitted.path} expects {n_in} features per image but {store.path} holds "
            f"{store.dim}: pass --features with the cache the model was fitted on"
            + (f" ({fitted.cache['path']})" if fitted.cache.get("path") else "")
        )
    recorded = getattr(fitted.model, "feature_provenance_", None)
    check_features_provenance(
        recorded or fitted.cache.get("provenance"),
        store,
        model=fitted.path,
        fitted_on=fitted.cache.get("path") or _path_or_none(fitted.model.get_params()["features"]),
    )


def open_model_cache(fitted: FittedModel, features: str | os.PathLike | None = None):
    """The feature cache for ``fitted``: ``features`` if given, else the one it was fitted on.

    A recorded relative path is tried from the current folder first, then as the absolute
    path recorded at fit time. The encoder's ``features`` is set to the opened store.

    Returns
    -------
    FeatureStore
    """
    if features is not None:
        candidates = [os.fspath(features)]
    else:
        recorded = fitted.cache.get("path") or _path_or_none(fitted.model.get_params()["features"])
        candidates = [recorded, fitted.cache.get("abspath")]
        candidates = [c for c in candidates if c] or [str(DEFAULT_CACHE)]
    path = next((c for c in candidates if os.path.exists(c)), None)
    if path is None:
        fitted_on = f" (the model was fitted on {fitted.cache['path']})" if fitted.cache else ""
        raise CacheNotFoundError(
            f"feature cache not found: {candidates[0]}{fitted_on}; pass --features CACHE, or "
            f"make it with `tripletsk extract-features IMAGES_DIR -o {candidates[0]}`"
        )
    store = FeatureStore(path)
    check_model_cache(fitted, store)
    fitted.model.set_params(features=store)
    return store


def _path_or_none(features) -> str | None:
    if isinstance(features, str | os.PathLike):
        return os.fspath(features)
    return getattr(features, "path", None)
