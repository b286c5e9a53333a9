"""Saving a fitted TripletEncoder as ``.npz`` arrays plus JSON, loadable without running code.

Weights and standardisation are stored as arrays, parameters and history as one JSON string
(``meta``). Unlike joblib or pickle files, such a file is safe to load when it comes from
someone else. The layout is described in ``docs/formats.md`` (Model files).
"""

from __future__ import annotations

import json
import os

import numpy as np

from tripletsk.head import normalize_hidden_units

FORMAT = "tripletsk.TripletEncoder"
FORMAT_VERSION = 1
# Fitted attributes stored in the JSON as they are.
_HISTORY = ("n_features_in_", "n_iter_", "loss_curve_", "active_fraction_",
            "validation_scores_", "best_validation_score_")  # fmt: skip


def save_encoder(encoder, path) -> None:
    """Write fitted ``encoder`` to ``path`` (see :meth:`TripletEncoder.save`)."""
    params = encoder.get_params()
    features = params.pop("features")
    if not isinstance(params["random_state"], int | None):
        params["random_state"] = None  # a RandomState instance has no JSON form
    params["hidden_units"] = list(normalize_hidden_units(params["hidden_units"]))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "params": params,
        "features": os.fspath(features) if isinstance(features, str | os.PathLike) else None,
        **{name: getattr(encoder, name) for name in _HISTORY},
        "threshold_": getattr(encoder, "threshold_", None),
    }
    arrays = {"feature_mean": encoder.feature_mean_, "feature_scale": encoder.feature_scale_}
    for i, (kernel, bias) in enumerate(encoder.weights_):
        arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = kernel, bias
    with open(path, "wb") as file:
        np.savez(file, meta=np.array(json.dumps(meta)), **arrays)


def load_encoder(cls, path, features=None):
    """An instance of ``cls`` fitted as saved in ``path``; nothing in the file is executed."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tripletsk model saved with save().")
        n_layers = sum(1 for name in data.files if name.startswith("kernel_"))
        weights = [(data[f"kernel_{i}"], data[f"bias_{i}"]) for i in range(n_layers)]
        mean, scale = data["feature_mean"], data["feature_scale"]
    params = meta["params"]
    params["hidden_units"] = tuple(params["hidden_units"])
    model = cls(features=features if features is not None else meta["features"], **params)
    model.weights_, model.feature_mean_, model.feature_scale_ = weights, mean, scale
    for name in _HISTORY:
        setattr(model, name, meta[name])
    if meta["threshold_"] is not None:
        model.threshold_ = meta["threshold_"]
    return model
