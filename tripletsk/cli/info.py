"""``info``: what a feature cache, a model file or an embedding index holds."""

from __future__ import annotations

import argparse
import json
import os

from tripletsk.cli._common import add_command, add_trust_pickle_argument
from tripletsk.errors import UserError

__all__ = ["register"]


_SUMMARY = "Show what a feature cache, a model file or an embedding index holds."
_EXAMPLE = "tripletsk info cache/features.h5\ntripletsk info model.npz\ntripletsk info cache/index"


def register(sub) -> None:
    """Add ``info`` to the sub-commands ``sub``."""
    p = add_command(sub, "info", _SUMMARY, _EXAMPLE)
    p.add_argument(
        "path", metavar="PATH", help="feature cache (.h5), model (.joblib, .npz) or index folder"
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    add_trust_pickle_argument(p)
    p.set_defaults(run=_run_info)


def _is_cache(path: str) -> bool:
    import h5py

    return os.path.isfile(path) and h5py.is_hdf5(path)


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
    from tripletsk.cache.store import FeatureStore
    from tripletsk.modelfile import model_info

    path = args.path
    if not os.path.exists(path):
        raise FileNotFoundError(f"not found: {path}")
    if os.path.isdir(path):
        from tripletsk.index.embedding_index import EmbeddingIndex

        info = {"kind": "embedding index", **EmbeddingIndex(path).info()}
    elif _is_cache(path):
        store = FeatureStore(path)
        info = {"kind": "feature cache", **store.info()}
        info["failed"] = [f"{k}: {reason}" for k, reason in store.failed[:10]]
    elif os.path.splitext(path)[1].lower() in (".h5", ".hdf5"):
        raise UserError(f"{path} is not an HDF5 file, so not a feature cache (nor a model file)")
    else:
        info = model_info(path, trust_pickle=args.trust_pickle)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_info(info)
    return 0
