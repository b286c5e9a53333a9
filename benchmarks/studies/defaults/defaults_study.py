"""Choose TripletEncoder's defaults on validation splits of training images, never test images.

A sequential search, one factor at a time from a base setting: for each factor (mining, margin,
learning rate, batch composition, ...) every candidate value is fitted with labels
(``fit(X, y)``) on each data set, scored on that data set's validation images (held out from
its *training* images, stratified), and the value with the best mean MAP@R over the data sets
is kept for the following factors. Data sets:

* ``digits``: scikit-learn's digits, pixels; the training part of the 70/30 split of
  ``examples/digits_triplets.py`` (seed 0), of which 25% is validation;
* ``fashion``: Fashion-MNIST pixels, the 5,000 class-balanced training images of
  ``examples/fashion_mnist.py`` (seed 0), 25% validation;
* ``fashion-resnet``: the same images as random-weight ResNet50 features (64 px);
* ``fashion-mobilenet``: the same images as ImageNet MobileNet features (224 px).

The backbone features are read from the ``.npy`` cache that ``examples/fashion_mnist.py
--cache-dir DIR`` writes; a data set whose file is missing is skipped. Each result is appended
to ``--out`` (JSON lines) as soon as it is measured. Run::

    python benchmarks/studies/defaults/defaults_study.py --data /work/data/fashion-mnist \\
        --cache-dir /work/data/features --out study.jsonl
    python benchmarks/studies/defaults/defaults_study.py --test-once \\
        --set mining=semi_hard ...  # then, once

``--test-once`` fits the given setting on all 5,000 Fashion-MNIST training images and reports
P@1 and MAP@R on the 2,000 disjoint test images, and the held-out triplet accuracy of
``examples/digits_triplets.py`` (triplets, not labels) with the same setting.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))

import digits_triplets
import fashion_mnist

from tripletsk import TripletEncoder
from tripletsk.evaluation.metrics import label_triplet_accuracy, retrieval_report

# (factor, candidate settings): each candidate is a dict of parameters. Batch composition
# moves samples_per_class and batch_size together: with 10 classes, P = batch_size //
# samples_per_class above 10 cannot be filled, and batches shrink to 10 * samples_per_class.
STEPS = [
    ("mining", [{"mining": m} for m in
                ("batch_hard", "semi_hard", "batch_all", "random", "hybrid")]),
    ("margin", [{"margin": m} for m in (0.2, 0.5, 1.0)]),
    ("learning_rate", [{"learning_rate": lr} for lr in (1e-3, 3e-3)]),
    ("batch", [{"samples_per_class": k, "batch_size": b}
               for k, b in ((4, 256), (8, 80), (16, 160), (32, 320))]),
    ("n_components", [{"n_components": n} for n in (10, 32, 64)]),
    ("dropout", [{"dropout": d} for d in (0.0, 0.2, 0.5)]),
    ("standardize", [{"standardize": s} for s in (True, False)]),
    ("epochs", [{"max_epochs": 50}, {"max_epochs": 100}, {"max_epochs": 200},
                {"max_epochs": 200, "early_stopping": True}]),
    ("hidden_units", [{"hidden_units": h} for h in (256, 512, 1024, (512, 512))]),
    ("soft_margin", [{}, {"margin": None}]),  # {}: keep the chosen margin
    ("depth", [{"hidden_units": h} for h in ((512, 512), (1024, 1024), (512, 512, 512))]),
]  # fmt: skip


def datasets(
    data_dir, cache_dir, seed: int = 0, only=None, test_size: float = 0.25, split_seed=None
) -> dict:
    """name -> (X_fit, y_fit, X_val, y_val), validation from the training images only.

    ``seed`` picks the training images (as the examples do); ``split_seed`` (default ``seed``)
    the stratified validation share ``test_size`` of them.
    """
    split_seed = seed if split_seed is None else split_seed
    found = {}
    X, y = load_digits(return_X_y=True)
    train, _ = train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed, stratify=y)
    found["digits"] = (X[train], y[train])
    images, y_train, _, _ = fashion_mnist.split(data_dir, 5000, 2000, seed)
    found["fashion"] = (fashion_mnist.pixels(images), y_train)
    tag = f"5000-2000-seed{seed}"
    for name, stem in (("fashion-resnet", "resnet50-random-64px"),
                       ("fashion-mobilenet", "mobilenet-imagenet-224px")):  # fmt: skip
        path = Path(cache_dir or ".") / f"{stem}-train-{tag}.npy"
        if path.exists():
            found[name] = (np.load(path), y_train)
        else:
            print(f"skipping {name}: {path} not found", file=sys.stderr)
    result = {}
    for name, (X, y) in found.items():
        if only and name not in only:
            continue
        fit, val = train_test_split(np.arange(len(y)), test_size=test_size,
                                    random_state=split_seed, stratify=y)  # fmt: skip
        result[name] = (X[fit], y[fit], X[val], y[val])
    return result


def validate(params: dict, data, seed: int = 0) -> dict:
    X_fit, y_fit, X_val, y_val = data
    start = time.perf_counter()
    encoder = TripletEncoder(random_state=seed, **study_params(params)).fit(X_fit, y_fit)
    seconds = time.perf_counter() - start
    emb = encoder.transform(X_val)
    report = retrieval_report(emb, y_val, ks=(1,))
    return {
        "precision_at_1": report["precision_at_1"],
        "map_at_r": report["map_at_r"],
        "triplet_accuracy": label_triplet_accuracy(emb, y_val),
        "fit_seconds": round(seconds, 1),
        "epochs": encoder.n_iter_,
        "final_loss": float(encoder.loss_curve_[-1]),
        "final_active": float(encoder.active_fraction_[-1]),
    }


# The defaults before 2026-12-03, to which every recorded setting of results/*.jsonl (beside
# this script) is relative (so that the records keep their meaning after the defaults changed;
# the stopping rule and batch of before issue 21 included, and the plain soft margin of before
# 2026-12-06 for settings with margin=None).
STUDY_DEFAULTS = {"hidden_units": 512, "n_components": 10, "dropout": 0.2, "input_dropout": 0.0,
                  "margin": 1.0, "weight_averaging": 0.0, "batch_size": 256, "max_epochs": 100,
                  "tol": 1e-4, "n_iter_no_change": 10, "stopping": "loss",
                  "soft_margin_scale": 1.0}  # fmt: skip


def study_params(params: dict) -> dict:
    """A recorded setting (relative to ``STUDY_DEFAULTS``) as ``TripletEncoder`` parameters."""
    return {**STUDY_DEFAULTS, **params}


def _without_defaults(params: dict) -> dict:
    """The setting as it differs from the study's defaults, so equal settings share one result."""
    defaults = {**TripletEncoder().get_params(), **STUDY_DEFAULTS}
    return {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}


def search(data: dict, out: Path, base: dict, steps=STEPS, seed: int = 0) -> dict:
    """The sequential search; returns the chosen setting."""
    chosen = dict(base)
    done = {}
    if out.exists():  # resume: reuse what a previous run measured
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done[(r["dataset"], json.dumps(r["params"], sort_keys=True))] = r
    for factor, candidates in steps:
        means = []
        for candidate in candidates:
            params = _without_defaults({**chosen, **candidate})
            key = json.dumps(params, sort_keys=True)
            scores = []
            for name, split in data.items():
                if (name, key) not in done:
                    row = {"factor": factor, "dataset": name, "params": params,
                           **validate(params, split, seed)}  # fmt: skip
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    done[(name, key)] = row
                    print(json.dumps(row), flush=True)
                scores.append(done[(name, key)]["map_at_r"])
            means.append(float(np.mean(scores)))
        best = candidates[int(np.argmax(means))]
        summary = {str(c): round(m, 4) for c, m in zip(candidates, means, strict=True)}
        print(f"# {factor}: mean MAP@R {summary} -> {best}", flush=True)
        chosen.update(best)
    return chosen


LABEL_ONLY = {"mining", "samples_per_class", "hard_per_anchor", "refresh_every"}


def digits_triplet_validation(
    params: dict, seed: int = 0, n_triplets: int = 5000, inner_seed: int | None = None
) -> dict:
    """``examples/digits_triplets.py``'s protocol (fit on triplets) inside its training images.

    The training images (70%, split with ``seed`` as the example does) are split again 75/25
    with ``inner_seed`` (default ``seed``); 5,000 random triplets among the first part train,
    5,000 among the second score. The test images are never touched.
    """
    inner = seed if inner_seed is None else inner_seed
    from tripletsk.triplets.mining import sample_label_triplets

    X, y = load_digits(return_X_y=True)
    train, _ = train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed, stratify=y)
    fit, val = train_test_split(train, test_size=0.25, random_state=inner, stratify=y[train])
    T_fit = fit[sample_label_triplets(y[fit], n_triplets, random_state=inner)]
    T_val = val[sample_label_triplets(y[val], n_triplets, random_state=inner + 1)]
    start = time.perf_counter()
    settings = {k: v for k, v in study_params(params).items() if k not in LABEL_ONLY}
    encoder = TripletEncoder(features=X, random_state=inner, **settings).fit(T_fit)
    return {
        "triplet_accuracy": encoder.score(T_val),
        "fit_seconds": round(time.perf_counter() - start, 1),
        "epochs": encoder.n_iter_,
    }


def test_once(data_dir, params: dict, seed: int = 0) -> dict:
    """Test figures of one setting: Fashion-MNIST 5,000 / 2,000 pixels, and digits triplets."""
    train_images, y_train, test_images, y_test = fashion_mnist.split(data_dir, 5000, 2000, seed)
    encoder = TripletEncoder(random_state=seed, **study_params(params))
    encoder.fit(fashion_mnist.pixels(train_images), y_train)
    report = retrieval_report(encoder.transform(fashion_mnist.pixels(test_images)), y_test, ks=(1,))
    # digits_triplets.py fits on triplets (fit(T)): label-mining parameters do not apply, and
    # mining="auto" there uses the given triplets. Everything else (batch_size included:
    # triplets per step) is the same setting.
    digits = digits_triplets.run(
        seed=seed, **{k: v for k, v in study_params(params).items() if k not in LABEL_ONLY}
    )
    return {
        "fashion_precision_at_1": report["precision_at_1"],
        "fashion_map_at_r": report["map_at_r"],
        "fashion_epochs": encoder.n_iter_,
        "digits_held_out_triplet_accuracy": digits["held_out_accuracy"],
        "digits_epochs": digits["epochs"],
    }


def markdown(path: Path) -> str:
    """The results of a --out file as one markdown table per factor (validation figures)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    by_setting: dict = {}
    for r in rows:
        key = (r["factor"], json.dumps(r["params"]))
        by_setting.setdefault(key, {})[r["dataset"]] = r
    lines = []
    factor = None
    for (f, params), results in by_setting.items():
        if f != factor:
            factor = f
            lines += ["", f"**{f}**", "",
                      "| setting (vs today's defaults) | " + " | ".join(names) + " | mean MAP@R |",
                      "|---" * (len(names) + 2) + "|"]  # fmt: skip
        cells = []
        for name in names:
            r = results.get(name)
            cells.append(
                f"{r['precision_at_1']:.3f} / {r['map_at_r']:.3f} / {r['triplet_accuracy']:.3f}"
                f" ({r['fit_seconds']:.0f} s, {r['epochs']} ep)"
                if r
                else ""
            )
        mean = np.mean([r["map_at_r"] for r in results.values()])
        setting = ", ".join(f"{k}={v}" for k, v in json.loads(params).items()) or "defaults"
        lines.append(f"| {setting} | " + " | ".join(cells) + f" | {mean:.4f} |")
    return "\n".join(lines)


def reference(data) -> dict:
    """Non-triplet baselines on one validation split: LDA and a softmax MLP classifier."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.neural_network import MLPClassifier

    X_fit, y_fit, X_val, y_val = data
    lda = LinearDiscriminantAnalysis().fit(X_fit, y_fit)
    mlp = MLPClassifier((512,), random_state=0, max_iter=200, early_stopping=True)
    mlp.fit(X_fit, y_fit)
    hidden = np.maximum(X_val @ mlp.coefs_[0] + mlp.intercepts_[0], 0)
    out = {"lda_accuracy": lda.score(X_val, y_val), "mlp_accuracy": mlp.score(X_val, y_val)}
    for name, emb in (("lda", lda.transform(X_val)), ("mlp_hidden", hidden),
                      ("mlp_probabilities", mlp.predict_proba(X_val))):  # fmt: skip
        report = retrieval_report(emb, y_val, ks=(1,))
        out[f"{name}_p1_mapr"] = (round(report["precision_at_1"], 4), round(report["map_at_r"], 4))
    return out


def parse_settings(pairs) -> dict:
    params = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    return params


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="Fashion-MNIST folder of *-ubyte.gz")
    parser.add_argument("--cache-dir", help="backbone features of examples/fashion_mnist.py")
    parser.add_argument("--out", default="defaults_study.jsonl")
    parser.add_argument("--datasets", nargs="*", help="only these data sets")
    parser.add_argument("--steps", nargs="*", help="only these factors, in this order")
    parser.add_argument(
        "--set",
        action="append",
        metavar="PARAM=VALUE",
        help="base setting (search) or the setting to test (--test-once)",
    )
    parser.add_argument("--test-once", action="store_true")
    parser.add_argument(
        "--reference", action="store_true", help="LDA and softmax-MLP baselines on validation"
    )
    parser.add_argument(
        "--triplet-check",
        action="store_true",
        help="digits fit(T) validation of the setting and of each parameter reverted",
    )
    parser.add_argument("--report", action="store_true", help="print --out as markdown tables")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    params = parse_settings(args.set)
    if args.report:
        print(markdown(Path(args.out)))
        return
    if args.reference:
        for name, split in datasets(args.data, args.cache_dir, args.seed, args.datasets).items():
            print(json.dumps({"dataset": name, **reference(split)}), flush=True)
        return
    if args.triplet_check:
        # The setting, then each of its parameters put back to today's default in turn.
        variants = [params] + [{k: v for k, v in params.items() if k != drop} for drop in params]
        for variant in variants:
            if set(params) - set(variant) <= LABEL_ONLY and variant is not params:
                continue  # the same fit(T) setting as the full one
            figures = digits_triplet_validation(variant, args.seed)
            print(json.dumps({"params": variant, **figures}), flush=True)
        return
    if args.test_once:
        print(json.dumps({"params": params, **test_once(args.data, params, args.seed)}))
        return
    steps = [s for s in STEPS if not args.steps or s[0] in args.steps]
    if args.steps:
        steps.sort(key=lambda s: args.steps.index(s[0]))
    data = datasets(args.data, args.cache_dir, args.seed, args.datasets)
    chosen = search(data, Path(args.out), params, steps, args.seed)
    print("chosen:", json.dumps(chosen))


if __name__ == "__main__":
    main()
