"""What the commands of the ``tripletsk`` command line share."""

from __future__ import annotations

import argparse
import os
import textwrap

from tripletsk.errors import UsageError
from tripletsk.outputs import Output, plan_output

__all__ = [
    "PROG",
    "add_command",
    "add_model_arguments",
    "add_trust_pickle_argument",
    "check_output_path",
    "load_model_and_cache",
]

PROG = "tripletsk"


def add_command(subparsers, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    """A sub-command whose help shows ``summary`` and an example."""
    return subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--model`` and ``--features`` of the commands that use a fitted model."""
    parser.add_argument(
        "-m", "--model", required=required, help="model file written by `tripletsk fit`"
    )
    parser.add_argument(
        "--features",
        default=None,
        help="feature cache (default: the one the model was fitted on)",
    )
    add_trust_pickle_argument(parser)


def add_trust_pickle_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-pickle``: the one way to open a pickle-based (.joblib, .pkl) model file."""
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="open a .joblib/.pkl model: loading a pickle runs code stored in the file, so only "
        "for files you made or whose author you trust (.npz models need no such trust)",
    )


def load_model_and_cache(args: argparse.Namespace):
    """The fitted model of ``--model`` and its feature cache, checked against each other."""
    from tripletsk.modelfile import load_model, open_model_cache

    fitted = load_model(args.model, trust_pickle=args.trust_pickle)
    store = open_model_cache(fitted, args.features)
    return fitted, store


def check_output_path(path: str, option: str) -> Output:
    """Fail before any work when ``path`` (the value of ``option``) cannot be written.

    Returns the planned :class:`~tripletsk.outputs.Output` (what is at ``path`` now): write
    the output through it, so that a file that appears there while the command works is
    never replaced.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{option}: {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise UsageError(f"{option}: the folder {os.path.dirname(path)} does not exist; create it")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option}: the folder {os.path.dirname(path) or '.'} is not writable")
    return plan_output(path)
