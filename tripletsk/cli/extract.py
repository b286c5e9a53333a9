"""``extract-features`` and ``merge-features``: the command-line side of extraction.

Arguments become the keyword arguments of :func:`tripletsk.extraction.extract_features` (or of
:func:`tripletsk.extraction.distributed.extract_with_dask` on a Dask cluster); library errors speak
of those parameters, and this module words the ones a user meets most often in terms of the flags.
"""

from __future__ import annotations

import argparse
import sys

from tripletsk.cli._common import UsageError, add_command
from tripletsk.errors import CacheMismatchError, UserError, WeightsUnavailableError

__all__ = ["add_extract_arguments", "extraction_options", "register", "run_extract"]


def register(sub) -> None:
    """Add ``extract-features`` and ``merge-features`` to the sub-commands ``sub``."""
    p = add_command(
        sub,
        "extract-features",
        "Pass every image of a folder once through a frozen backbone (ResNet50 by default) and "
        "cache the features (HDF5).",
        "tripletsk extract-features images/ -o cache/features.h5\n"
        "tripletsk extract-features images/ --weights none --image-size 32   # offline test\n"
        "tripletsk extract-features images/ --backbone EfficientNetV2B0 -o cache/effnet.h5\n"
        "tripletsk extract-features images/ --backbone my_model.keras --preprocessing tf",
    )
    add_extract_arguments(p)
    _add_scale_arguments(p)
    p.set_defaults(run=_run_extract)

    p = add_command(
        sub,
        "merge-features",
        "Merge the shard caches of `extract-features --shard I/N` into one cache.",
        "tripletsk merge-features cache/features-*-of-4.h5 -o cache/features.h5",
    )
    p.add_argument("shards", metavar="SHARD", nargs="+", help="the N shard caches")
    p.add_argument("-o", "--output", required=True, help="merged cache to write")
    p.add_argument(
        "--remove-shards", action="store_true", help="delete the shard files after the merge"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no summary")
    p.set_defaults(run=_run_merge)


def add_extract_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``extract-features`` arguments to ``parser``: the extraction parameters that have
    an option (:data:`tripletsk.extraction.parameters.PARAMETERS`), but ``--shard``."""
    from tripletsk.extraction.parameters import cli_parameters

    for p in cli_parameters(exclude=("shard",)):
        p.add_to(parser)
    return parser


def _shard_arg(value: str) -> tuple[int, int]:
    from tripletsk.cache.shards import parse_shard

    try:
        return parse_shard(value)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """``extract-features`` options to spread the work over processes and machines."""
    from tripletsk.extraction.parameters import PARAMETERS

    g = parser.add_argument_group("scaling out (docs/scaling.md)")
    where = g.add_mutually_exclusive_group()
    PARAMETERS["shard"].add_to(where, type=_shard_arg)
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a Dask cluster (e.g. tcp://host:8786); workers need the images folder and "
        "the output folder at the same paths",
    )
    where.add_argument(
        "--dask-workers",
        type=int,
        metavar="N",
        help="run on a local Dask cluster of N worker processes",
    )
    g.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="with --scheduler/--dask-workers: number of shards (default: 4 per worker)",
    )
    g.add_argument(
        "--gpus",
        metavar="auto|LIST",
        help="with --dask-workers: one worker per GPU (auto: all visible; or e.g. 0,1)",
    )


def extraction_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`extract_features` that the parsed options set (those it
    passes to every shard on a Dask cluster; the options ``args`` lacks at their defaults)."""
    from tripletsk.extraction.parameters import DEFAULTS, SHARD_PARAMETERS, cli_parameters

    shared = [p.name for p in cli_parameters() if p.name in SHARD_PARAMETERS]
    return {k: getattr(args, k, DEFAULTS[k]) for k in [*shared, "quiet"]}


def _check_sizes(args: argparse.Namespace) -> None:
    """The size options, checked here to name the flags (the library names its parameters)."""
    if args.image_size < 32:
        raise UserError(f"--image-size must be at least 32, got {args.image_size}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")


def _run_extract(args: argparse.Namespace) -> int:
    if args.shards is not None and args.scheduler is None and args.dask_workers is None:
        raise UsageError("--shards needs --scheduler or --dask-workers")
    if args.gpus is not None and args.dask_workers is None and args.scheduler is None:
        raise UsageError("--gpus needs --dask-workers (a local cluster, one worker per GPU)")
    if args.dask_workers is not None and args.dask_workers < 1:
        raise UsageError(f"--dask-workers must be at least 1, got {args.dask_workers}")
    if args.shards is not None and args.shards < 1:
        raise UsageError(f"--shards must be at least 1, got {args.shards}")
    if args.replace and (args.scheduler is not None or args.dask_workers is not None):
        raise UsageError(
            "--replace works without --scheduler/--dask-workers; delete the cache file instead"
        )
    _check_sizes(args)
    from tripletsk.cache.roots import ImageFolderMismatchError

    dask = args.scheduler is not None or args.dask_workers is not None or args.gpus is not None
    try:
        return run_extract_dask(args) if dask else run_extract(args)
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(
            f"{e} On the command line: --weights PATH, or --weights none."
        ) from None
    except ImageFolderMismatchError as e:
        # --replace works without a cluster only: a Dask run's way out is deleting the file.
        fresh = f"delete {e.holder}" if dask else "add --replace"
        raise CacheMismatchError(e.message("use another -o FILE", fresh)) from None


def _print_summary(args: argparse.Namespace, summary) -> None:
    if not args.quiet:
        print(summary.format())
    elif summary.failed:
        where = f"; see {summary.failed_list}" if summary.failed_list else ""
        print(f"{len(summary.failed)} file(s) could not be read as images{where}", file=sys.stderr)


def run_extract(args: argparse.Namespace) -> int:
    """Run ``extract-features`` from parsed arguments; print the summary; return the exit code.

    User mistakes raise :class:`~tripletsk.errors.UserError` (the CLI prints it as one line).
    """
    from tripletsk.extraction import extract_features

    try:
        s = extract_features(
            args.images_dir,
            output=args.output,
            shard=getattr(args, "shard", None),
            replace=getattr(args, "replace", False),
            **extraction_options(args),
        )
    except KeyboardInterrupt:
        print(
            f"interrupted: finished images are saved in {args.output}; run the same command "
            "again to continue",
            file=sys.stderr,
        )
        return 130
    _print_summary(args, s)
    return 0


def run_extract_dask(args: argparse.Namespace) -> int:
    """``tripletsk extract-features --scheduler ADDRESS | --dask-workers N`` from parsed args."""
    from tripletsk.extraction.distributed import extract_with_dask

    s = extract_with_dask(
        args.images_dir,
        args.output,
        scheduler=args.scheduler,
        n_workers=args.dask_workers,
        n_shards=args.shards,
        gpus=args.gpus,
        **extraction_options(args),
    )
    _print_summary(args, s)
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    from tripletsk.cache.merge import merge_shards

    summary = merge_shards(args.shards, args.output, remove=args.remove_shards)
    if not args.quiet:
        print(summary.format())
    return 0
