"""The ``tripletsk`` command line: from a folder of images to predictions, scores and search.

Commands: ``extract-features``, ``merge-features``, ``make-triplets``, ``fit``, ``predict``,
``score``, ``search``, ``index``, ``duplicates``, ``calibrate``, ``match``, ``export``, ``info``;
``tripletsk COMMAND --help`` shows an example of each (see ``docs/cli.md``).

Exit status: 0 on success, 2 for a usage error (bad option), 1 for any other error. Errors the
user can fix (a missing file, a bad triplet line, an unknown image, a model/cache mismatch) are
one line on stderr, ``tripletsk: error: ...``; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from tripletsk import __version__
from tripletsk.cli import evaluate, export, extract, index, info, train
from tripletsk.cli._common import PROG
from tripletsk.errors import UsageError, UserError

__all__ = ["build_parser", "cli"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tripletsk`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Learn image similarity with triplet loss on cached ResNet50 features.",
        epilog="Run `tripletsk COMMAND --help` for an example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for commands in (extract, train, evaluate, index, export, info):  # in the order of the help
        commands.register(sub)
    return parser


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and not isinstance(exc, UserError) and exc.args:
        return str(exc.args[0])  # KeyError's str() would add quotes
    return " ".join(str(exc).split()) or type(exc).__name__


def _drop_stdout() -> None:
    """After a reader closed stdout (``tripletsk info CACHE | head``): send what is left to
    /dev/null so that flushing at exit fails no more (Python's documented way, "Note on
    SIGPIPE" in the signal module), and say nothing: nobody is reading."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # no file descriptor (in-process)
        pass


def cli(argv: Sequence[str] | None = None) -> int:
    """Run the ``tripletsk`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status instead of exiting, so that it can be called from Python:
    0 on success, 2 for a usage error, 1 for any other error (and, silently, when the reader
    of its output has gone: ``tripletsk info CACHE | head``), 130 if interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's usage error (status 2)
        return int(exc.code or 0)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line per warning, no source line
        try:
            status = int(args.run(args) or 0)
            sys.stdout.flush()  # a reader that has gone (`| head`) shows here, not at exit
            return status
        except BrokenPipeError:
            _drop_stdout()
            return 1
        except UsageError as exc:
            subparser = parser._subparsers._group_actions[0].choices[args.command]
            with contextlib.suppress(SystemExit):
                subparser.error(str(exc))  # prints usage and the message on stderr
            return 2
        except KeyboardInterrupt:
            _error("interrupted")
            return 130
        except (UserError, ValueError, KeyError, OSError) as exc:
            if args.debug:
                traceback.print_exc()
            _error(_message(exc))
            return 1
        except Exception as exc:  # a bug: say so briefly, the traceback is one flag away
            if args.debug:
                traceback.print_exc()
                _error(f"unexpected {type(exc).__name__}: {_message(exc)}")
            else:
                _error(
                    f"unexpected {type(exc).__name__}: {_message(exc)} "
                    "(run with --debug for the traceback)"
                )
            return 1
