"""``info``: what a feature cache or a model file holds."""

from __future__ import annotations

import argparse
import json
import os

from tripletsk.cli._common import add_command

__all__ = ["register"]


def register(sub) -> None:
    """Add ``info`` to the sub-commands ``sub``."""
    p = add_command(
        sub,
        "info",
        "Show what a feature cache or a model file holds.",
        "tripletsk info cache/features.h5\ntripletsk info model.joblib",
    )
    p.add_argument("path", metavar="PATH", help="feature cache (.h5) or model (.joblib, .npz)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=_run_info)


def _is_cache(path: str) -> bool:
    import h5py

    return os.path.isfile(path) and h5py.is_hdf5(path)


def _model_info(path: str) -> dict:
    from tripletsk.modelfile import load_model

    fitted = load_model(path)
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
        "parameters": params,
        "n_features_in": m.n_features_in_,
        "n_components": m.n_components,
        "n_epochs": m.n_iter_,
        "loss_curve": [round(float(v), 6) for v in m.loss_curve_],
        "active_fraction": [round(float(v), 6) for v in m.active_fraction_],
        "validation_scores": m.validation_scores_,
        "best_validation_score": m.best_validation_score_,
        "threshold": getattr(m, "threshold_", None),
        "cache": fitted.cache,
        "training": fitted.training,
    }


def _print_info(info: dict) -> None:
    def show(d: dict, indent: int = 0) -> None:
        for name, value in d.items():
            if isinstance(value, dict):
                print(" " * indent + f"{name}:")
                show(value, indent + 2)
            elif isinstance(value, list) and len(value) > 8:
                head = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value[:3])
                tail = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value[-3:])
                print(" " * indent + f"{name}: [{head}, ..., {tail}] ({len(value)} values)")
            else:
                print(" " * indent + f"{name}: {value}")

    show(info)


def _run_info(args: argparse.Namespace) -> int:
    from tripletsk.store import FeatureStore

    path = args.path
    if not os.path.exists(path):
        raise FileNotFoundError(f"not found: {path}")
    if _is_cache(path):
        store = FeatureStore(path)
        info = {"kind": "feature cache", **store.info()}
        info["failed"] = [f"{k}: {reason}" for k, reason in store.failed[:10]]
    else:
        info = _model_info(path)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_info(info)
    return 0
