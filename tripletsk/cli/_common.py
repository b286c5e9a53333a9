"""What the commands of the ``tripletsk`` command line share."""

from __future__ import annotations

import argparse
import textwrap

__all__ = ["PROG", "UsageError", "add_command", "add_model_arguments", "load_model_and_cache"]

PROG = "tripletsk"


class UsageError(Exception):
    """A bad option value found after parsing; reported like argparse's errors (status 2)."""


def add_command(subparsers, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    """A sub-command whose help shows ``summary`` and an example."""
    return subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--features`` of the commands that use a fitted model."""
    parser.add_argument(
        "-m", "--model", required=True, help="model file written by `tripletsk fit`"
    )
    parser.add_argument(
        "--features",
        default=None,
        help="feature cache (default: the one the model was fitted on)",
    )


def load_model_and_cache(args: argparse.Namespace):
    """The fitted model of ``--model`` and its feature cache, checked against each other."""
    from tripletsk.modelfile import load_model, open_model_cache

    fitted = load_model(args.model)
    store = open_model_cache(fitted, args.features)
    return fitted, store
