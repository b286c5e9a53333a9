"""Per-epoch curves of a fit on validation splits: when quality stops improving, and which
training-only signal says so (issue 21: a fit that stops by itself).

Each run fits ``TripletEncoder(random_state=split, **setting)`` with labels on the 4,000 /
1,000 stratified validation split ``split`` of the 5,000 Fashion-MNIST training images of
``examples/fashion_mnist.py`` (seed 0; or another data set of ``defaults_study.datasets``),
and records after every epoch: the training seconds so far (the recording excluded), the
epoch's loss, its training triplet error (wrongly ordered triplets among all those of its
batches, ``error_curve_``), the triplet error of the fitted (averaged) head on 1,000 of the
training rows, and the validation P@1 / MAP@R of the fitted head. The test images are never
read. One JSON line per fit is appended to ``--out``; a (data set, split, setting) already
there is skipped. ``--set`` is relative to today's defaults; the record holds the setting in
full (``RECORDED``)::

    python benchmarks/fit_curves.py --data DIR --out curves.jsonl --splits 0 1 2 \\
        --set hidden_units=1024

With a constant learning rate the trajectory does not depend on when a fit stops, so one
curve answers every stopping rule: ``python benchmarks/stopping_rules.py curves.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from defaults_study import datasets, parse_settings

import tripletsk._training as training
from tripletsk import TripletEncoder
from tripletsk.head import forward
from tripletsk.metrics import label_triplet_accuracy, retrieval_report

RECORDED = ("hidden_units", "n_components", "dropout", "input_dropout", "margin",
            "weight_averaging", "batch_size", "learning_rate", "learning_rate_schedule",
            "max_epochs", "tol", "n_iter_no_change", "stopping")  # fmt: skip


def curves(params: dict, data, seed: int) -> dict:
    """Fit once, recording the figures above after each epoch."""
    X_fit, y_fit, X_val, y_val = data
    sample = np.random.RandomState(seed).permutation(len(y_fit))[:1000]
    encoder = TripletEncoder(random_state=seed, verbose=-1, **params)
    names = ("seconds", "loss", "error", "active", "fit_error_avg", "val_p1", "val_mapr",
             "raw_p1", "raw_mapr", "ema90_p1", "ema90_mapr")  # fmt: skip
    record = {k: [] for k in names}
    ema = {"weights": None}
    clock = {"start": None, "excluded": 0.0}

    def on_epoch(result, averaged, raw):
        begin = time.perf_counter()
        record["seconds"].append(round(begin - clock["start"] - clock["excluded"], 2))
        record["loss"].append(result.loss_curve[-1])
        record["error"].append(result.error_curve[-1])
        record["active"].append(result.active_fraction[-1])

        def emb(X, weights=averaged):
            return forward((X - encoder.feature_mean_) / encoder.feature_scale_, weights)

        fit_acc = label_triplet_accuracy(emb(X_fit[sample]), y_fit[sample])
        record["fit_error_avg"].append(round(1.0 - fit_acc, 5))
        # The raw weights of the epoch, and their bias-corrected average at decay 0.9.
        n = len(result.loss_curve)
        step = 0.1 / (1.0 - 0.9**n)
        ema["weights"] = raw if n == 1 else training.average_weights(ema["weights"], raw, 1 - step)
        for name, weights in (("val", averaged), ("raw", raw), ("ema90", ema["weights"])):
            report = retrieval_report(emb(X_val, weights), y_val, ks=(1,))
            record[f"{name}_p1"].append(round(report["precision_at_1"], 4))
            record[f"{name}_mapr"].append(round(report["map_at_r"], 4))
        clock["excluded"] += time.perf_counter() - begin

    original = training.train_head

    def train_head(*args, **kwargs):
        clock["start"] = time.perf_counter()
        return original(*args, on_epoch=on_epoch, **kwargs)

    training.train_head = train_head
    try:
        start = time.perf_counter()
        encoder.fit(X_fit, y_fit)
        total = time.perf_counter() - start - clock["excluded"]
    finally:
        training.train_head = original
    return {"fit_seconds": round(total, 1), "epochs": encoder.n_iter_, **record}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="Fashion-MNIST folder of *-ubyte.gz")
    parser.add_argument("--cache-dir", help="backbone features of examples/fashion_mnist.py")
    parser.add_argument("--out", default="docs/defaults_study/fit_curves.jsonl")
    parser.add_argument("--set", action="append", metavar="PARAM=VALUE")
    parser.add_argument("--splits", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="*", default=["fashion"])
    parser.add_argument("--max-epochs", type=int, default=100, help="unless --set")
    args = parser.parse_args(argv)
    params = parse_settings(args.set)
    params.setdefault("max_epochs", args.max_epochs)
    # Recorded in full, so that a record keeps its meaning when the defaults change.
    full = TripletEncoder(**params).get_params()
    params = {**{k: full[k] for k in RECORDED}, **params}
    out = Path(args.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["dataset"], r["split"], json.dumps(r["params"], sort_keys=True)))
    key = json.dumps(params, sort_keys=True)
    for split in args.splits:
        todo = [n for n in args.datasets if (n, split, key) not in done]
        if not todo:
            continue
        data = datasets(args.data, args.cache_dir, 0, todo, test_size=0.2, split_seed=split)
        for name in todo:
            row = {"dataset": name, "split": split, "params": params,
                   **curves(params, data[name], split)}  # fmt: skip
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}),
                  f"val MAP@R at the end {row['val_mapr'][-1]}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
