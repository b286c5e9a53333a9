"""``index``, ``duplicates``, ``calibrate``, ``match`` and ``search --index``: using a stored
embedding index (:mod:`tripletsk.index.embedding_index`)."""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from tripletsk.cli._common import add_command, add_trust_pickle_argument
from tripletsk.cli.index_queries import (
    KIND_NAMES,
    checked_store,
    open_index,
    query_embeddings,
)
from tripletsk.errors import UsageError, UserError

__all__ = ["register", "run_search_index"]


def register(sub) -> None:
    """Add ``index``, ``duplicates``, ``calibrate`` and ``match`` to the sub-commands ``sub``."""
    p = add_command(
        sub,
        "index",
        "Embed every cached image with a fitted model once and store the embeddings (an "
        "existing index is brought up to date: only new images are embedded).",
        "tripletsk index --model model.npz -o cache/index\n"
        "tripletsk search --index cache/index photo.jpg -k 5\n"
        "tripletsk index --features-only --features cache/features.h5 -o cache/features-index\n"
        "tripletsk index --thumbnails --features cache/features.h5 -o cache/thumbnails\n"
        "tripletsk duplicates --index cache/thumbnails --threshold 0.05",
    )
    p.add_argument("-m", "--model", help="model file written by `tripletsk fit`")
    p.add_argument(
        "--features-only",
        action="store_true",
        help="no model: index the cached backbone features themselves, L2-normalised; needs "
        "--features",
    )
    p.add_argument(
        "--thumbnails",
        action="store_true",
        help="no model: index 8x8 thumbnails of the cached images (read from the folder the "
        "cache records), for near-duplicates; needs --features",
    )
    p.add_argument(
        "--thumbnail-size",
        type=int,
        default=None,
        metavar="PX",
        help="the thumbnails' side in pixels (default 8; an existing index keeps its own)",
    )
    p.add_argument("-o", "--output", required=True, metavar="INDEX", help="the index folder")
    p.add_argument("--features", help="feature cache (default: the one the model was fitted on)")
    p.add_argument(
        "--approximate",
        choices=("auto", "yes", "no"),
        default=None,
        help="keep an approximate-search structure: auto = from 200,000 images when faiss-cpu is "
        "installed (default for a new index; an existing one keeps its choice)",
    )
    p.add_argument("--replace", action="store_true", help="rebuild an existing index from scratch")
    add_trust_pickle_argument(p)
    p.set_defaults(run=_run_index)

    p = _index_command(
        sub,
        "duplicates",
        "Groups of near-duplicate images: every pair within --threshold (exact, all pairs), "
        "joined into connected groups.",
        "tripletsk duplicates --index cache/thumbnails --threshold 0.05 --verify-threshold 0.31 "
        "--same-size-threshold 0.27",
    )
    p.add_argument("--threshold", type=float, required=True, help="largest distance of a pair")
    p.add_argument(
        "--verify-threshold",
        type=float,
        metavar="V",
        help="thumbnail index only: keep a pair only if its images, both shrunk to the smaller "
        "one's size (at most 64 px), are within V (2 keeps every pair and shows that distance)",
    )
    p.add_argument(
        "--same-size-threshold",
        type=float,
        metavar="S",
        help="with --verify-threshold: keep a pair of images of the same width and height "
        "(not resized, so exact or re-encoded copies) only within S instead, S <= V "
        "(default: V)",
    )
    p.add_argument(
        "--pairs",
        action="store_true",
        help="print the close pairs with their distances, farthest first (the ones to look at), "
        "instead of the groups",
    )
    p.add_argument("--json", action="store_true", help="print the groups (or pairs) as JSON")
    p.set_defaults(run=_run_duplicates)

    p = _index_command(
        sub,
        "calibrate",
        "Choose the matching threshold for a target precision on labelled validation images "
        "(labels: first folder) and store it in the model file.",
        "tripletsk calibrate --index cache/index --queries val.txt --precision 0.95",
    )
    p.add_argument(
        "--queries",
        required=True,
        help="file of validation image keys, one per line, labelled by their first folder; each "
        "is matched against the rest of the index",
    )
    p.add_argument("--precision", type=float, required=True, help="target precision, e.g. 0.95")
    p.add_argument("--model", help="model file to store the threshold in (default: the index's)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (1000)")
    p.add_argument("--plot", metavar="PNG", help="draw the precision / recall curve")
    p.add_argument("--json", action="store_true", help="print the calibration as JSON")
    p.set_defaults(run=_run_calibrate)

    p = _index_command(
        sub,
        "match",
        "The matched image of each query (nearest in the index, within the calibrated "
        "threshold), or 'no match'.",
        "tripletsk match --index cache/index photo.jpg other.jpg",
    )
    p.add_argument("queries", metavar="QUERY", nargs="+", help="cached key or image file")
    p.add_argument("--threshold", type=float, help="distance threshold (default: calibrated)")
    p.add_argument("--model", help="model file (default: the one the index records)")
    p.add_argument("--features", help="feature cache (default: the one the index records)")
    p.add_argument("--json", action="store_true", help="print the matches as JSON")
    add_trust_pickle_argument(p)
    p.set_defaults(run=_run_match)


def _index_command(sub, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    """A command on a stored index: ``--index`` is its first option."""
    p = add_command(sub, name, summary, example)
    p.add_argument("--index", required=True, help="index folder (`tripletsk index`)")
    return p


def _run_index(args: argparse.Namespace) -> int:
    from tripletsk.index.build import (
        build_index_from_features,
        build_index_from_model,
        build_index_from_thumbnails,
    )

    chosen = [args.model, args.features_only, args.thumbnails]
    if sum(map(bool, chosen)) != 1:
        raise UsageError(
            "pass one of --model MODEL (a fitted model's embeddings), --features-only (the "
            "backbone features themselves) or --thumbnails (thumbnails of the images), "
            + ("not more" if any(chosen) else "and --features CACHE for the last two")
        )
    if not args.model and not args.features:
        option = "--thumbnails" if args.thumbnails else "--features-only"
        raise UsageError(f"{option} needs --features CACHE: the cache to index")
    if args.thumbnail_size is not None and not args.thumbnails:
        raise UsageError("--thumbnail-size goes with --thumbnails")
    options = {"replace": args.replace, "approximate": args.approximate}
    if args.features_only:
        index, report = build_index_from_features(args.output, args.features, **options)
    elif args.thumbnails:
        index, report = build_index_from_thumbnails(
            args.output, args.features, size=args.thumbnail_size, **options
        )
    else:
        index, report = build_index_from_model(
            args.output, args.model, args.features, trust_pickle=args.trust_pickle, **options
        )
    verb = "built" if report.created else "updated"
    rows = {
        "features": "L2-normalised backbone features, no model; ",
        "thumbnails": f"{index.model.get('size')} px thumbnails of the images, no model; ",
    }.get(index.kind, "")
    print(
        f"{verb} {index.path}: {report.n_rows} images ({report.n_embedded} embedded, "
        f"{report.n_kept} kept, {report.n_dropped} dropped); {rows}{_method_note(index, 'auto')}"
    )
    return 0


def _method_note(index, method: str) -> str:
    a = index.approximate
    if index.method(method) == "exact" or a is None:
        return "search: exact"
    return (
        f"search: approximate ({a['library']} {a['params'].get('kind', '')}), recall@10 "
        f"{a['recall_at_10']:.3f} against exact search on {a['recall_queries']} sampled rows"
    )


def run_search_index(args: argparse.Namespace) -> int:
    """``tripletsk search --index INDEX QUERY...``."""
    if args.k < 1:
        raise UsageError("-k must be at least 1")
    index = open_index(args.index)
    store = checked_store(index, args)
    embeddings, rows, _ = query_embeddings(index, args.queries, args, store=store)
    found = index.search(embeddings, args.k, method=args.method, exclude_rows=rows)
    print(_method_note(index, args.method), file=sys.stderr)
    _print_neighbours(args, found)
    return 0


def _print_neighbours(args, found) -> None:
    results = found.to_list()
    if args.json:
        print(json.dumps([
            {"query": q, "neighbours": [{"key": k, "distance": d} for k, d in hits]}
            for q, hits in zip(args.queries, results, strict=True)
        ], indent=2))  # fmt: skip
        return
    for q, hits in zip(args.queries, results, strict=True):
        print(f"query: {q}")
        for rank, (k, d) in enumerate(hits, start=1):
            print(f"{rank:4d}  {d:.4f}  {k}")


def _run_duplicates(args: argparse.Namespace) -> int:
    from tripletsk.index.build import check_index_current

    index = open_index(args.index)
    _check_verify_options(args, index)
    check_index_current(index)  # a thumbnail index of an older decoding is refused
    verify = {"verify": args.verify_threshold, "verify_same_size": args.same_size_threshold}
    try:
        if args.pairs:
            return _print_pairs(args, index, *index.duplicate_pairs(args.threshold, **verify))
        groups = index.duplicates(args.threshold, **verify)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps({**_thresholds(args), "groups": groups}, indent=2))
    else:
        for group in groups:
            print("\t".join(group))
    n = sum(len(g) for g in groups)
    print(
        f"{len(groups)} group(s) of near-duplicates, {n} images, {_within(args, index)} among "
        f"{len(index)} images",
        file=sys.stderr,
    )
    return 0


def _check_verify_options(args, index) -> None:
    """UsageError, naming the option, for a bad --verify-threshold or --same-size-threshold."""
    verify, same_size = args.verify_threshold, args.same_size_threshold
    if same_size is not None and verify is None:
        raise UsageError(
            "--same-size-threshold S tightens --verify-threshold V for pairs of images of the "
            "same size, and needs it: add --verify-threshold V"
        )
    for option, value in (("--verify-threshold", verify), ("--same-size-threshold", same_size)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{option} must be a finite distance >= 0; got {value}")
    if same_size is not None and same_size > verify:
        raise UsageError(
            f"--same-size-threshold ({same_size}) must be at most --verify-threshold ({verify}): "
            "same-size pairs (exact or re-encoded copies) are held to the tighter threshold"
        )
    if verify is not None and index.kind != "thumbnails":
        raise UsageError(
            f"--verify-threshold compares the images of a thumbnail index, and {index.path} is a "
            f"{KIND_NAMES.get(index.kind, 'model')} index; build one with `tripletsk index "
            "--thumbnails --features CACHE -o INDEX`"
        )


def _thresholds(args) -> dict:
    """The thresholds of a ``duplicates`` run, for its JSON."""
    out = {"threshold": args.threshold}
    if args.verify_threshold is not None:
        out["verify_threshold"] = args.verify_threshold
    if args.same_size_threshold is not None:
        out["same_size_threshold"] = args.same_size_threshold
    return out


def _within(args, index) -> str:
    """What the pairs of a ``duplicates`` run are within, for its summary line."""
    within = f"within distance {args.threshold} ({index.distance})"
    if args.verify_threshold is None:
        return within
    same_size = args.same_size_threshold
    tighter = "" if same_size is None else f" (same-size pairs within {same_size})"
    return (
        f"{within} and verified within {args.verify_threshold}{tighter} on the images at their "
        "common size"
    )


def _print_pairs(args, index, rows_i, rows_j, distances) -> int:
    order = np.argsort(-distances, kind="stable")
    pairs = [(index.keys[rows_i[o]], index.keys[rows_j[o]], float(distances[o])) for o in order]
    if args.json:
        print(json.dumps({**_thresholds(args), "pairs": [
            {"a": a, "b": b, "distance": d} for a, b, d in pairs]}, indent=2))  # fmt: skip
    else:
        for a, b, d in pairs:
            print(f"{d:.4f}\t{a}\t{b}")
    what = "" if args.verify_threshold is None else " (distances: the images')"
    print(
        f"{len(pairs)} pair(s) {_within(args, index)} among {len(index)} images, farthest "
        f"first{what}",
        file=sys.stderr,
    )
    return 0


def _read_keys(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            keys = [line.strip() for line in fh]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the query keys ({exc})") from None
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise UserError(f"{path}: no query keys (one image key per line)")
    return keys


def _run_calibrate(args: argparse.Namespace) -> int:
    from tripletsk.evaluation.matching import calibrate_index
    from tripletsk.modelfile import load_model, save_model
    from tripletsk.triplets.folders import labels_from_folders

    if not 0 < args.precision <= 1:
        raise UsageError("--precision must be in (0, 1]")
    if args.plot:
        from tripletsk.cli._common import check_output_path

        check_output_path(args.plot, "--plot")
    index = open_index(args.index)
    if not index.has_model:
        raise UserError(
            f"{index.path} is a {KIND_NAMES[index.kind]} index (no model): a threshold is "
            "calibrated for a model and stored in its file. Calibrate an index built with "
            "--model, or pass --threshold to `tripletsk match`"
        )
    checked_store(index, args)
    keys = _read_keys(args.queries)
    rows = index.rows_of(keys)
    model_path = args.model or index.model.get("path") or index.model.get("abspath")
    if not model_path:
        raise UserError(f"{index.path} records no model file; pass --model")
    fitted = load_model(model_path)
    from tripletsk.index.build import check_index_current

    check_index_current(index, encoder=fitted.model)
    calibration = calibrate_index(
        index, index.embeddings(rows), labels_from_folders(keys), args.precision,
        exclude_rows=rows, n_bootstrap=args.bootstrap,
    )  # fmt: skip
    fitted.model.calibration_ = calibration.to_dict()
    save_model(model_path, fitted.model, fitted.cache, fitted.training)
    _report_calibration(args, calibration, model_path)
    if args.plot:
        from tripletsk.evaluation.plotting import plot_precision_recall

        plot_precision_recall(calibration, args.plot)
    return 0


def _report_calibration(args, c, model_path: str) -> None:
    if args.json:
        print(json.dumps(c.to_dict(), indent=2))
        return
    ci = c.interval
    print(
        f"threshold {c.threshold:.4f} ({c.distance}) for precision {c.target_precision} on "
        f"{c.n_queries} queries: precision {c.precision:.3f} "
        f"[{ci['precision'][0]:.3f}, {ci['precision'][1]:.3f}], recall {c.recall:.3f} "
        f"[{ci['recall'][0]:.3f}, {ci['recall'][1]:.3f}], {c.match_rate:.1%} matched; "
        f"threshold interval [{ci['threshold'][0]:.4f}, {ci['threshold'][1]:.4f}] "
        f"({ci['confidence']:.0%} bootstrap); stored in {model_path}"
    )


def _run_match(args: argparse.Namespace) -> int:
    index = open_index(args.index)
    store = checked_store(index, args)
    embeddings, rows, fitted = query_embeddings(
        index, args.queries, args, need_model=args.threshold is None, store=store
    )
    threshold = args.threshold
    if threshold is None:
        calibration = getattr(fitted.model, "calibration_", None)
        if calibration is None:
            raise UserError(
                f"{fitted.path} has no matching threshold: run `tripletsk calibrate --index "
                f"{index.path} --queries VAL.txt --precision 0.95`, or pass --threshold"
            )
        threshold = calibration["threshold"]
    matches = index.match(embeddings, threshold, exclude_rows=rows)
    if args.json:
        print(json.dumps([
            {"query": q, "match": k, "distance": float(d)}
            for q, k, d in zip(args.queries, matches.keys, matches.distances, strict=True)
        ], indent=2))  # fmt: skip
    else:
        for q, k, d in zip(args.queries, matches.keys, matches.distances, strict=True):
            print(f"{q}\t{'no match' if k is None else k}\t{d:.4f}")
    return 0
