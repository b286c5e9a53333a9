"""``make-triplets`` and ``fit``: triplet files from folders, and training a TripletEncoder."""

from __future__ import annotations

import argparse
import ast
import os
import warnings
from collections.abc import Sequence

import numpy as np

from tripletsk.cache.store import DEFAULT_CACHE
from tripletsk.cli._common import add_command, check_output_path
from tripletsk.errors import UsageError, UserError

__all__ = ["parse_params", "register"]


def register(sub) -> None:
    """Add ``make-triplets`` and ``fit`` to the sub-commands ``sub``."""
    _add_make_triplets(sub)
    _add_fit(sub)


def _add_make_triplets(sub) -> None:
    p = add_command(
        sub,
        "make-triplets",
        "Write a triplet file from class folders (images/<class>/<image>).",
        "tripletsk make-triplets cache/features.h5 -n 2000 -o train.txt "
        "--split test.txt --test-size 0.3",
    )
    p.add_argument("source", metavar="SOURCE", help="feature cache (.h5) or folder of images")
    p.add_argument(
        "-n",
        "--n-triplets",
        type=int,
        required=True,
        help="distinct triplets to write (all there are, if fewer exist)",
    )
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


def _add_fit(sub) -> None:
    p = add_command(
        sub,
        "fit",
        "Fit a TripletEncoder on cached features and save it.",
        "tripletsk fit --features cache/features.h5 --triplets train.txt -o model.npz\n"
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
        "-o",
        "--output",
        required=True,
        help="model file: .npz (arrays and JSON, safe to share), or .joblib (a pickle: "
        "loading it runs code, so other commands then need --trust-pickle)",
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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_fit)


def _keys_of(source: str) -> tuple[np.ndarray, object]:
    """Image keys of a cache file or an image folder, and the store (None for a folder)."""
    from tripletsk.cache.store import FeatureStore
    from tripletsk.triplets.folders import list_image_keys

    if os.path.isdir(source):
        return list_image_keys(source), None
    if not os.path.exists(source):  # not the cache's message: SOURCE may be a folder too
        raise UserError(f"SOURCE not found: {source} (a feature cache .h5 or a folder of images)")
    store = FeatureStore(source)
    return np.array(store.keys, dtype=object), store


def _run_make_triplets(args: argparse.Namespace) -> int:
    from sklearn.model_selection import train_test_split

    from tripletsk.triplets.files import write_triplets
    from tripletsk.triplets.folders import labels_from_folders, make_triplets_from_folders

    if args.n_triplets < 1:
        raise UsageError("-n/--n-triplets must be at least 1")
    if not 0 < args.test_size < 1:
        raise UsageError("--test-size must be between 0 and 1")
    outputs = [("-o/--output", args.output)] + ([("--split", args.split)] if args.split else [])
    planned = {}  # each output as found now: one that appears meanwhile is not replaced
    for option, path in outputs:
        planned[path] = check_output_path(path, option)
        if os.path.exists(path) and os.path.samefile(path, args.source):
            raise UsageError(f"{option}: {path} is SOURCE; write the triplets to another file")
    if args.split and os.path.abspath(args.split) == os.path.abspath(args.output):
        raise UsageError(f"--split: {args.split} is also -o/--output; give two different files")
    keys, store = _keys_of(args.source)
    if args.strategy == "hard" and store is None:
        raise UsageError("--strategy hard needs a feature cache as SOURCE, not a folder")
    labels = labels_from_folders(keys)
    parts = [("-o/--output", args.output, keys, args.n_triplets)]
    if args.split:
        # Hold out images, not triplets: the same share of each class, so no test image is
        # ever seen in training.
        try:
            train_keys, test_keys = train_test_split(
                keys, test_size=args.test_size, stratify=labels, random_state=args.seed
            )
        except ValueError as exc:
            raise UserError(
                f"cannot hold out --test-size {args.test_size} of each class: {exc}"
            ) from None
        share = args.test_size / (1 - args.test_size)
        n_test = args.n_test or max(1, round(args.n_triplets * share))
        parts = [
            ("-o/--output", args.output, train_keys, args.n_triplets),
            ("--split", args.split, test_keys, n_test),
        ]
    # Every part is made before any file is written: a part that cannot be made leaves none.
    rng = np.random.RandomState(args.seed)
    made = []
    for option, path, part_keys, n in parts:
        part_keys = np.sort(part_keys)
        features = store.lookup(part_keys.tolist()) if args.strategy == "hard" else None
        try:
            with warnings.catch_warnings():  # fewer distinct triplets: said below, once
                warnings.filterwarnings("ignore", "Only .* distinct", UserWarning)
                triplets = make_triplets_from_folders(
                    part_keys, n, strategy=args.strategy, features=features, random_state=rng
                )
        except ValueError as exc:
            hint = (
                "; hold out more of each class (raise --test-size) or use more images per class"
                if args.split
                else ""
            )
            reason = str(exc).rstrip(".")
            raise UserError(
                f"cannot make the triplets of {option} {path}: {reason}{hint}"
            ) from None
        made.append((path, triplets, part_keys, n))
    for path, triplets, part_keys, n in made:
        write_triplets(planned[path], triplets)
        n_classes = len(set(labels_from_folders(part_keys).tolist()))
        fewer = (
            f" (asked for {n}, but only {len(triplets)} distinct triplets exist over these "
            "images: add images or ask for fewer)"
            if len(triplets) < n
            else ""
        )
        print(
            f"wrote {len(triplets)} distinct triplets over {len(part_keys)} images "
            f"({n_classes} classes) to {path}{fewer}"
        )
    return 0


def parse_params(assignments: Sequence[str]) -> dict:
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

    from tripletsk.cache.store import FeatureStore
    from tripletsk.estimator import TripletEncoder
    from tripletsk.modelfile import cache_record, model_format, save_model
    from tripletsk.triplets.files import read_triplet_indices
    from tripletsk.triplets.folders import labels_from_folders

    params = parse_params(args.params)
    # Outputs are checked now, not after training.
    try:
        model_format(args.output)
    except UserError as exc:
        raise UsageError(f"-o/--output: {exc}") from None
    output = check_output_path(args.output, "-o/--output")
    plot = check_output_path(args.plot, "--plot") if args.plot else None
    user_verbose = params.get("verbose", 0)
    # A progress bar on a terminal (verbose=0), lines per epoch with --set verbose=1.
    model = TripletEncoder(**{**params, **({"verbose": -1} if args.quiet else {})})
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
        # Read in blocks as row numbers, then given to fit as keys (the cache's own strings).
        rows = read_triplet_indices(args.triplets, store.keys).indices
        triplets = np.asarray(store.keys, dtype=object)[rows]
        model.fit(triplets)
        training = {
            "mode": "triplets",
            "triplets": args.triplets,
            "n_triplets": len(triplets),
            "n_images": len(np.unique(rows)),
        }
    # Per-epoch lines are for this run; the saved model keeps the verbosity the user set.
    # The cache path, not the open store, so that .npz files keep it too.
    model.set_params(verbose=user_verbose, features=store.path)
    save_model(output, model, cache_record(store), training)
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
        from tripletsk.evaluation.plotting import plot_loss_curves

        plot_loss_curves(model, plot)
        print(f"wrote {args.plot}")
    return 0
