"""``export``: a fitted model as one Keras, TensorFlow SavedModel or OpenVINO model."""

from __future__ import annotations

import argparse

from tripletsk.cli._common import add_command, add_model_arguments

__all__ = ["register"]

_SUMMARY = (
    "Write a fitted model as one model from RGB pixels to its embedding: the cache's backbone "
    "and preprocessing, then the head (.keras, .xml for OpenVINO IR, or a SavedModel folder)."
)
_EXAMPLE = """
tripletsk export --model model.npz -o model.keras
tripletsk export --model model.npz -o exported/          # TensorFlow SavedModel folder
tripletsk export --model model.npz -o model.xml          # OpenVINO IR (needs openvino)
"""


def register(sub) -> None:
    """Add ``export`` to the sub-commands ``sub``."""
    from tripletsk.export import FORMATS

    p = add_command(sub, "export", _SUMMARY, _EXAMPLE)
    add_model_arguments(p)
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="file or folder to write: .keras, .xml (OpenVINO IR, with its .bin), or a folder "
        "name without suffix (TensorFlow SavedModel)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="export format (default: from the output's suffix)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="the backbone weights file the cache was made with, if it has moved",
    )
    p.add_argument(
        "--backbone",
        default=None,
        metavar="FILE",
        help="the backbone model file the cache was made with (--backbone FILE), if it has moved",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from tripletsk.export import export_format, export_model

    fmt = export_format(args.output, args.format)  # a bad suffix fails before any work
    path = export_model(
        args.model,
        args.output,
        format=fmt,
        features=args.features,
        weights=args.weights,
        backbone=args.backbone,
        force=args.force,
        trust_pickle=args.trust_pickle,
    )
    print(f"wrote {path} ({fmt})")
    return 0
