"""The ``tripletsk`` command line: from a folder of images to predictions, scores and search.

Commands: ``extract-features``, ``merge-features``, ``make-triplets``, ``fit``, ``predict``,
``score``, ``search``, ``info``; ``tripletsk COMMAND --help`` shows an example of each (see
``docs/cli.md``).

Exit status: 0 on success, 2 for a usage error (bad option), 1 for any other error. Errors the
user can fix (a missing file, a bad triplet line, an unknown image, a model/cache mismatch) are
one line on stderr, ``tripletsk: error: ...``; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import sys
import textwrap
import traceback
import warnings
from collections.abc import Sequence

import numpy as np

from tripletsk import __version__
from tripletsk.errors import UnknownKeyError, UserError
from tripletsk.store import DEFAULT_CACHE

__all__ = ["build_parser", "cli"]

PROG = "tripletsk"
#: Distances of TripletEncoder, as scikit-learn names them.
_METRIC = {"l2": "euclidean", "l1": "manhattan", "sqeuclidean": "sqeuclidean", "cosine": "cosine"}


class UsageError(Exception):
    """A bad option value found after parsing; reported like argparse's errors (status 2)."""


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def _command(subparsers, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="example:\n" + textwrap.indent(textwrap.dedent(example).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m", "--model", required=True, help="model file written by `tripletsk fit`"
    )
    parser.add_argument(
        "--features",
        default=None,
        help="feature cache (default: the one the model was fitted on)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tripletsk`` command."""
    from tripletsk.extraction import add_extract_arguments

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Learn image similarity with triplet loss on cached ResNet50 features.",
        epilog="Run `tripletsk COMMAND --help` for an example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(
        sub,
        "extract-features",
        "Pass every image of a folder once through ResNet50 and cache the features (HDF5).",
        "tripletsk extract-features images/ -o cache/features.h5\n"
        "tripletsk extract-features images/ --weights none --image-size 32   # offline test",
    )
    add_extract_arguments(p)
    _add_scale_arguments(p)
    p.set_defaults(run=_run_extract)

    p = _command(
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

    p = _command(
        sub,
        "make-triplets",
        "Write a triplet file from class folders (images/<class>/<image>).",
        "tripletsk make-triplets cache/features.h5 -n 2000 -o train.txt "
        "--split test.txt --test-size 0.3",
    )
    p.add_argument("source", metavar="SOURCE", help="feature cache (.h5) or folder of images")
    p.add_argument("-n", "--n-triplets", type=int, required=True, help="triplets to write")
    p.add_argument("-o", "--output", required=True, help="triplet file to write")
    p.add_argument(
        "--split",
        metavar="TEST_FILE",
        help="also write test triplets here, over images held out of the training file "
        "(the same share of each class)",
    )
    p.add_argument(
        "--test-size", type=float, default=0.25, help="share of images held out (default: 0.25)"
    )
    p.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="test triplets (default: N x test_size / (1 - test_size))",
    )
    p.add_argument(
        "--strategy",
        choices=("random", "hard"),
        default="random",
        help="hard: far positives and near negatives in feature space (needs a cache)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(run=_run_make_triplets)

    p = _command(
        sub,
        "fit",
        "Fit a TripletEncoder on cached features and save it.",
        "tripletsk fit --features cache/features.h5 --triplets train.txt -o model.joblib\n"
        "tripletsk fit --labels-from-folders -o model.npz --set margin=0.3 --set distance=cosine",
    )
    p.add_argument("--features", default=DEFAULT_CACHE, help="feature cache (default: %(default)s)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--triplets", help="training triplet file (anchor positive negative)")
    source.add_argument(
        "--labels-from-folders",
        action="store_true",
        help="fit on every cached image, labelled by its first folder",
    )
    p.add_argument(
        "-o", "--output", required=True, help="model file: .joblib, or .npz (safe to share)"
    )
    p.add_argument(
        "--set",
        dest="params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a TripletEncoder parameter, e.g. --set margin=0.3 (repeatable)",
    )
    p.add_argument("--plot", metavar="PNG", help="draw the loss curves to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch progress")
    p.set_defaults(run=_run_fit)

    p = _command(
        sub,
        "predict",
        "For each triplet <A, B, C>: 1 if A is more similar to B than to C, else 0.",
        "tripletsk predict --model model.joblib --triplets test.txt > predictions.txt",
    )
    _add_model_arguments(p)
    p.add_argument("--triplets", required=True, help="triplet file")
    p.add_argument("-o", "--output", help="write the predictions here instead of stdout")
    p.set_defaults(run=_run_predict)

    p = _command(
        sub,
        "score",
        "Triplet accuracy on a triplet file, and retrieval metrics when labels are known.",
        "tripletsk score --model model.joblib --triplets test.txt --labels-from-folders",
    )
    _add_model_arguments(p)
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

    p = _command(
        sub,
        "search",
        "Find the cached images most similar to each query (a cached key or an image file).",
        "tripletsk search --model model.joblib 3/0.png -k 5\n"
        "tripletsk search --model model.joblib photo.jpg -k 8 --sheet neighbours.png",
    )
    _add_model_arguments(p)
    p.add_argument("queries", metavar="QUERY", nargs="+", help="cached key or image file")
    p.add_argument("-k", type=int, default=5, help="neighbours per query (default: 5)")
    p.add_argument("--json", action="store_true", help="print the neighbours as JSON")
    p.add_argument("--sheet", metavar="PNG", help="draw each query beside its neighbours")
    p.add_argument(
        "--images-dir",
        help="folder of the cached images, for --sheet (default: the one recorded in the cache)",
    )
    p.set_defaults(run=_run_search)

    p = _command(
        sub,
        "info",
        "Show what a feature cache or a model file holds.",
        "tripletsk info cache/features.h5\ntripletsk info model.joblib",
    )
    p.add_argument("path", metavar="PATH", help="feature cache (.h5) or model (.joblib, .npz)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=_run_info)
    return parser


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _shard_arg(value: str) -> tuple[int, int]:
    from tripletsk.shards import parse_shard

    try:
        return parse_shard(value)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """``extract-features`` options to spread the work over processes and machines."""
    g = parser.add_argument_group("scaling out (docs/scaling.md)")
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--shard",
        type=_shard_arg,
        metavar="I/N",
        help="extract only shard I of N (1-based); merge the N files with merge-features",
    )
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


def _run_extract(args: argparse.Namespace) -> int:
    if args.shards is not None and args.scheduler is None and args.dask_workers is None:
        raise UsageError("--shards needs --scheduler or --dask-workers")
    if args.gpus is not None and args.dask_workers is None and args.scheduler is None:
        raise UsageError("--gpus needs --dask-workers (a local cluster, one worker per GPU)")
    if args.dask_workers is not None and args.dask_workers < 1:
        raise UsageError(f"--dask-workers must be at least 1, got {args.dask_workers}")
    if args.shards is not None and args.shards < 1:
        raise UsageError(f"--shards must be at least 1, got {args.shards}")
    if args.scheduler is not None or args.dask_workers is not None or args.gpus is not None:
        from tripletsk.distributed import run_extract_dask

        return run_extract_dask(args)
    from tripletsk.extraction import run_extract

    return run_extract(args)


def _run_merge(args: argparse.Namespace) -> int:
    from tripletsk.shards import merge_shards

    summary = merge_shards(args.shards, args.output, remove=args.remove_shards)
    if not args.quiet:
        print(summary.format())
    return 0


def _keys_of(source: str) -> tuple[np.ndarray, object]:
    """Image keys of a cache file or an image folder, and the store (None for a folder)."""
    from tripletsk.store import FeatureStore
    from tripletsk.triplets import list_image_keys

    if os.path.isdir(source):
        return list_image_keys(source), None
    store = FeatureStore(source)
    return np.array(store.keys, dtype=object), store


def _run_make_triplets(args: argparse.Namespace) -> int:
    from sklearn.model_selection import train_test_split

    from tripletsk.triplets import labels_from_folders, make_triplets_from_folders

    if args.n_triplets < 1:
        raise UsageError("-n/--n-triplets must be at least 1")
    if not 0 < args.test_size < 1:
        raise UsageError("--test-size must be between 0 and 1")
    keys, store = _keys_of(args.source)
    if args.strategy == "hard" and store is None:
        raise UsageError("--strategy hard needs a feature cache as SOURCE, not a folder")
    labels = labels_from_folders(keys)
    parts = [(args.output, keys, args.n_triplets)]
    if args.split:
        # Hold out images, not triplets: the same share of each class, so no test image is
        # ever seen in training.
        try:
            train_keys, test_keys = train_test_split(
                keys, test_size=args.test_size, stratify=labels, random_state=args.seed
            )
        except ValueError as exc:
            raise UserError(f"cannot hold out {args.test_size} of each class: {exc}") from None
        share = args.test_size / (1 - args.test_size)
        n_test = args.n_test or max(1, round(args.n_triplets * share))
        parts = [(args.output, train_keys, args.n_triplets), (args.split, test_keys, n_test)]
    rng = np.random.RandomState(args.seed)
    for path, part_keys, n in parts:
        part_keys = np.sort(part_keys)
        features = store.lookup(part_keys.tolist()) if args.strategy == "hard" else None
        make_triplets_from_folders(
            part_keys, n, strategy=args.strategy, features=features, random_state=rng, path=path
        )
        n_classes = len(set(labels_from_folders(part_keys).tolist()))
        print(f"wrote {n} triplets over {len(part_keys)} images ({n_classes} classes) to {path}")
    return 0


def _parse_params(assignments: Sequence[str]) -> dict:
    """``NAME=VALUE`` strings to a dict; values as Python literals, else as strings."""
    from tripletsk.estimator import TripletEncoder

    valid = sorted(set(TripletEncoder().get_params()) - {"features"})
    params = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise UsageError(f"--set expects NAME=VALUE, got {item!r}")
        if name == "features":
            raise UsageError("--set features: give the cache with --features CACHE")
        if name not in valid:
            raise UsageError(
                f"--set {name}: unknown TripletEncoder parameter; valid names: {', '.join(valid)}"
            )
        try:
            params[name] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            params[name] = text.strip()  # e.g. distance=cosine
    return params


def _run_fit(args: argparse.Namespace) -> int:
    from sklearn.utils._param_validation import InvalidParameterError

    from tripletsk.estimator import TripletEncoder
    from tripletsk.modelfile import cache_record, model_format, save_model
    from tripletsk.store import FeatureStore
    from tripletsk.triplets import labels_from_folders, read_triplets

    params = _parse_params(args.params)
    try:
        model_format(args.output)  # a bad extension fails now, not after training
    except UserError as exc:
        raise UsageError(f"-o/--output: {exc}") from None
    user_verbose = params.get("verbose", 0)
    model = TripletEncoder(**{"verbose": 0 if args.quiet else 1, **params})
    try:
        model._validate_params()  # bad --set values are usage errors, found before any work
    except InvalidParameterError as exc:
        raise UsageError(f"--set: {exc}") from None
    store = FeatureStore(args.features)
    model.set_params(features=store)
    if args.labels_from_folders:
        keys = np.array(store.keys, dtype=object)
        model.fit(keys, labels_from_folders(keys))
        training = {"mode": "labels-from-folders", "n_images": len(keys)}
    else:
        triplets = read_triplets(args.triplets, known_keys=set(store.keys))
        model.fit(triplets)
        training = {
            "mode": "triplets",
            "triplets": args.triplets,
            "n_triplets": len(triplets),
            "n_images": len(np.unique(triplets.astype(str))),
        }
    # Per-epoch lines are for this run; the saved model keeps the verbosity the user set.
    # The cache path, not the open store, so that .npz files keep it too.
    model.set_params(verbose=user_verbose, features=store.path)
    save_model(args.output, model, cache_record(store), training)
    what = (
        f"{training['n_triplets']} triplets of {training['n_images']} images"
        if "n_triplets" in training
        else f"{training['n_images']} labelled images"
    )
    print(
        f"fitted on {what} in {model.n_iter_} epochs (final loss {model.loss_curve_[-1]:.4f}); "
        f"wrote {args.output}"
    )
    if args.plot:
        from tripletsk.plotting import plot_loss_curves

        plot_loss_curves(model, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _load(args: argparse.Namespace):
    """The fitted model of ``--model`` and its feature cache, checked against each other."""
    from tripletsk.modelfile import load_model, open_model_cache

    fitted = load_model(args.model)
    store = open_model_cache(fitted, args.features)
    return fitted, store


def _read_checked(path: str, store) -> np.ndarray:
    from tripletsk.triplets import read_triplets

    return read_triplets(path, known_keys=set(store.keys))


def _run_predict(args: argparse.Namespace) -> int:
    fitted, store = _load(args)
    triplets = _read_checked(args.triplets, store)
    text = "".join(f"{p}\n" for p in fitted.model.predict_triplets(triplets).tolist())
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _paired(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    from sklearn.metrics.pairwise import paired_distances

    if metric == "sqeuclidean":
        return paired_distances(a, b, metric="euclidean") ** 2
    return paired_distances(a, b, metric=metric)


def _triplet_distances(vectors: np.ndarray, index: np.ndarray, metric: str):
    """(d_ap, d_an) of triplets given as rows ``index`` (n, 3) into ``vectors``."""
    a, p, n = (vectors[index[:, i]] for i in range(3))
    return _paired(a, p, metric), _paired(a, n, metric)


def _run_score(args: argparse.Namespace) -> int:
    from tripletsk.metrics import retrieval_report
    from tripletsk.triplets import labels_from_folders

    if any(k < 1 for k in args.ks):
        raise UsageError("-k/--ks values must be positive")
    fitted, store = _load(args)
    model = fitted.model
    triplets = _read_checked(args.triplets, store)
    keys, index = np.unique(triplets.astype(str), return_inverse=True)
    index = index.reshape(-1, 3)
    embeddings = model.transform(keys)
    metric = _METRIC[model.distance]
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
        from tripletsk.plotting import plot_distance_histograms

        raw = store.lookup(keys.tolist())
        scaled = (raw - model.feature_mean_) / model.feature_scale_
        before = _triplet_distances(scaled, index, "euclidean")
        after = _triplet_distances(embeddings, index, metric)
        plot_distance_histograms(
            before, after, args.plot, after_label=f"learned embedding ({model.distance})"
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
            rel = os.path.relpath(os.path.abspath(query), image_root).replace(os.sep, "/")
            key = rel if rel in store else None
        return key, query
    try:
        store.indices([query])  # raises with the nearest known keys
    except UnknownKeyError as exc:
        raise UnknownKeyError(f"{exc}; a query is a cached key or an existing image file") from None
    raise AssertionError("unreachable: the key was not in the store")


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
    from tripletsk.search import build_index

    if args.k < 1:
        raise UsageError("-k must be at least 1")
    fitted, store = _load(args)
    model = fitted.model
    image_root = args.images_dir or store.attrs.get("image_root")
    if args.sheet and (not image_root or not os.path.isdir(image_root)):
        raise UserError(
            f"the folder of the cached images ({image_root or 'not recorded in the cache'}) "
            "is not found; pass --images-dir"
        )
    found = [_query_key(q, store, store.attrs.get("image_root")) for q in args.queries]
    index = build_index(model, store.keys, metric=_METRIC[model.distance])
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
        from tripletsk.plotting import plot_neighbour_sheet

        sheet = [
            (q, path or os.path.join(image_root, key), hits)
            for q, (key, path), hits in zip(args.queries, found, results, strict=True)
        ]
        plot_neighbour_sheet(sheet, args.sheet, image_root)
        print(f"wrote {args.sheet}", file=sys.stderr if args.json else sys.stdout)
    return 0


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


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and not isinstance(exc, UserError) and exc.args:
        return str(exc.args[0])  # KeyError's str() would add quotes
    return " ".join(str(exc).split()) or type(exc).__name__


def cli(argv: Sequence[str] | None = None) -> int:
    """Run the ``tripletsk`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status instead of exiting, so that it can be called from Python:
    0 on success, 2 for a usage error, 1 for any other error, 130 if interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's usage error (status 2)
        return int(exc.code or 0)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line per warning, no source line
        try:
            return int(args.run(args) or 0)
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
