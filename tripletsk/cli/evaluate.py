"""``predict``, ``score`` and ``search``: using a fitted model on its feature cache."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

from tripletsk.cli._common import (
    UsageError,
    add_command,
    add_model_arguments,
    check_output_path,
    load_model_and_cache,
)
from tripletsk.distances import sklearn_metric, triplet_distances
from tripletsk.errors import UnknownKeyError, UserError
from tripletsk.outputs import writing

__all__ = ["register"]


def register(sub) -> None:
    """Add ``predict``, ``score`` and ``search`` to the sub-commands ``sub``."""
    p = add_command(
        sub,
        "predict",
        "For each triplet <A, B, C>: 1 if A is more similar to B than to C, else 0.",
        "tripletsk predict --model model.npz --triplets test.txt > predictions.txt",
    )
    add_model_arguments(p)
    p.add_argument("--triplets", required=True, help="triplet file")
    p.add_argument("-o", "--output", help="write the predictions here instead of stdout")
    p.set_defaults(run=_run_predict)

    p = add_command(
        sub,
        "score",
        "Triplet accuracy on a triplet file, and retrieval metrics when labels are known.",
        "tripletsk score --model model.npz --triplets test.txt --labels-from-folders",
    )
    add_model_arguments(p)
    p.add_argument("--triplets", required=True, help="triplet file")
    p.add_argument(
        "--labels-from-folders",
        action="store_true",
        help="also report precision@1, MAP@R, R-precision and recall@k over the images of "
        "the triplets, labelled by their first folder",
    )
    p.add_argument("-k", "--ks", type=int, nargs="+", default=[1, 5, 10], help="recall@k cut-offs")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument(
        "--plot", metavar="PNG", help="draw distance histograms (before / after training)"
    )
    p.set_defaults(run=_run_score)

    p = add_command(
        sub,
        "search",
        "Find the cached images most similar to each query (a cached key or an image file).",
        "tripletsk search --model model.npz 3/0.png -k 5\n"
        "tripletsk search --model model.npz photo.jpg -k 8 --sheet neighbours.png\n"
        "tripletsk search --index cache/index photo.jpg -k 5      # `tripletsk index` made it",
    )
    add_model_arguments(p, required=False)
    p.add_argument(
        "--index",
        help="search this stored index (`tripletsk index`) instead of embedding the cache: "
        "only query images not in the cache go through the backbone",
    )
    p.add_argument(
        "--method",
        choices=("auto", "exact", "approximate"),
        default="auto",
        help="with --index: exact, approximate, or auto (approximate when the index has it)",
    )
    p.add_argument("queries", metavar="QUERY", nargs="+", help="cached key or image file")
    p.add_argument("-k", type=int, default=5, help="neighbours per query (default: 5)")
    p.add_argument("--json", action="store_true", help="print the neighbours as JSON")
    p.add_argument("--sheet", metavar="PNG", help="draw each query beside its neighbours")
    p.add_argument(
        "--images-dir",
        help="folder of the cached images, for --sheet (default: the one recorded in the cache)",
    )
    p.set_defaults(run=_run_search)


def _read_checked(path: str, store) -> np.ndarray:
    """The triplets of ``path`` as (n, 3) row numbers into ``store``, read in blocks: a
    5,000,000-line file is 60 MB of row numbers, never 15 million Python strings."""
    from tripletsk.triplets.files import read_triplet_indices

    return read_triplet_indices(path, store.keys).indices


def _prediction_text(predictions: np.ndarray) -> str:
    """``"1\\n0\\n..."``, one line per prediction, built in NumPy."""
    text = np.empty(2 * len(predictions), dtype=np.uint8)
    text[0::2] = ord("0") + predictions
    text[1::2] = ord("\n")
    return text.tobytes().decode("ascii")


def _run_predict(args: argparse.Namespace) -> int:
    output = check_output_path(args.output, "-o/--output") if args.output else None
    fitted, store = load_model_and_cache(args)
    triplets = _read_checked(args.triplets, store)
    text = _prediction_text(fitted.model.predict_triplets(triplets))
    if output:
        with writing(output, "predictions") as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _run_score(args: argparse.Namespace) -> int:
    from tripletsk.evaluation.metrics import retrieval_report
    from tripletsk.training.sources import unique_inverse
    from tripletsk.triplets.folders import labels_from_folders

    if any(k < 1 for k in args.ks):
        raise UsageError("-k/--ks values must be positive")
    plot = check_output_path(args.plot, "--plot") if args.plot else None
    fitted, store = load_model_and_cache(args)
    model = fitted.model
    triplets = _read_checked(args.triplets, store)
    rows, index = unique_inverse(triplets)
    keys = np.array(store.keys, dtype=object)[rows]
    embeddings = model.transform(rows)
    metric = sklearn_metric(model.distance)
    scores = {"triplet_accuracy": float(model.score(triplets)), "n_triplets": len(triplets)}
    if args.labels_from_folders:
        ks = sorted({k for k in args.ks if k < len(keys)})
        if not ks:
            raise UsageError(f"every -k is at least the number of images ({len(keys)})")
        if len(ks) < len(set(args.ks)):
            warnings.warn(
                f"recall@k is computed only for k below the {len(keys)} images of the triplets",
                UserWarning,
                stacklevel=1,
            )
        report = retrieval_report(embeddings, labels_from_folders(keys), ks=ks, metric=metric)
        scores.update(report)
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        for name, value in scores.items():
            print(f"{name:<18} {value:.4f}" if isinstance(value, float) else f"{name:<18} {value}")
    if args.plot:
        from tripletsk.evaluation.plotting import plot_distance_histograms

        raw = store.lookup(keys.tolist())
        scaled = (raw - model.feature_mean_) / model.feature_scale_
        before = triplet_distances(scaled, index, "l2")
        after = triplet_distances(embeddings, index, model.distance)
        plot_distance_histograms(
            before, after, plot, after_label=f"learned embedding ({model.distance})"
        )
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _query_key(query: str, store, image_root: str | None) -> tuple[str | None, str | None]:
    """(cached key, image file) of a search query; either may be None."""
    if query in store:
        return query, None
    if os.path.isfile(query):
        key = None
        if image_root:  # a file inside the image folder: leave its cached copy out of results
            key = _cached_key_of_file(query, image_root, store)
        return key, query
    try:
        store.indices([query])  # raises with the nearest known keys
    except UnknownKeyError as exc:
        what = str(exc).rstrip(". ")
        hint = "A query is a cached key or an existing image file"
        raise UnknownKeyError(f"{what}. {hint}") from None
    raise AssertionError("unreachable: the key was not in the store")


def _cached_key_of_file(path: str, image_root: str, store) -> str | None:
    """The cached key of an image file, reached by its path or through symlinks, or None."""
    candidates = (
        os.path.relpath(os.path.abspath(path), image_root),
        os.path.relpath(os.path.realpath(path), os.path.realpath(image_root)),
    )
    for rel in candidates:
        key = rel.replace(os.sep, "/")
        if key in store:
            return key
    return None


def _query_features(found: list, store) -> np.ndarray:
    """Feature rows of the queries: cached rows for keys, the backbone's output for files."""
    from tripletsk.extraction import features_for_files

    files = [path for _, path in found if path is not None]
    # One backbone run for all files, with the cache's own weights and image size.
    extracted = iter(features_for_files(files, like=store) if files else [])
    return np.stack(
        [store.lookup([key])[0] if path is None else next(extracted) for key, path in found]
    )


def _run_search(args: argparse.Namespace) -> int:
    from tripletsk.evaluation.search import build_index

    if args.index:
        if args.sheet:
            raise UsageError("--sheet is not available with --index yet")
        from tripletsk.cli.index import run_search_index

        return run_search_index(args)
    if not args.model:
        raise UsageError("pass --model MODEL (or --index INDEX)")
    if args.k < 1:
        raise UsageError("-k must be at least 1")
    sheet_output = check_output_path(args.sheet, "--sheet") if args.sheet else None
    fitted, store = load_model_and_cache(args)
    model = fitted.model
    image_root = args.images_dir or store.attrs.get("image_root")
    if args.sheet and (not image_root or not os.path.isdir(image_root)):
        raise UserError(
            f"the folder of the cached images ({image_root or 'not recorded in the cache'}) "
            "is not found; pass --images-dir"
        )
    found = [_query_key(q, store, store.attrs.get("image_root")) for q in args.queries]
    index = build_index(model, store.keys)
    neighbours = index.query(
        model.transform(_query_features(found, store)),
        k=args.k,
        exclude_self_keys=[key for key, _ in found],
    )
    results = neighbours.to_list()
    if args.json:
        print(
            json.dumps(
                [
                    {"query": q, "neighbours": [{"key": k, "distance": d} for k, d in hits]}
                    for q, hits in zip(args.queries, results, strict=True)
                ],
                indent=2,
            )
        )
    else:
        for q, hits in zip(args.queries, results, strict=True):
            print(f"query: {q}")
            for rank, (k, d) in enumerate(hits, start=1):
                print(f"{rank:4d}  {d:.4f}  {k}")
    if args.sheet:
        from tripletsk.evaluation.plotting import plot_neighbour_sheet

        sheet = [
            (q, path or os.path.join(image_root, key), hits)
            for q, (key, path), hits in zip(args.queries, found, results, strict=True)
        ]
        plot_neighbour_sheet(sheet, sheet_output, image_root)
        print(f"wrote {args.sheet}", file=sys.stderr if args.json else sys.stdout)
    return 0
