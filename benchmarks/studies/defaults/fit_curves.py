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

    python benchmarks/studies/defaults/fit_curves.py --data DIR --out curves.jsonl --splits 0 1 2 \\
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
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))

from defaults_study import datasets, parse_settings

import tripletsk.training.fitting as fitting
import tripletsk.training.loop as training
from tripletsk import TripletEncoder
from tripletsk.evaluation.metrics import label_triplet_accuracy, retrieval_report
from tripletsk.training.averaging import average_weights
from tripletsk.training.head import forward

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
            mean, scale = standardized["mean_scale"]
            return forward((X - mean) / scale, weights)

        fit_acc = label_triplet_accuracy(emb(X_fit[sample]), y_fit[sample])
        record["fit_error_avg"].append(round(1.0 - fit_acc, 5))
        # The raw weights of the epoch, and their bias-corrected average at decay 0.9.
        n = len(result.loss_curve)
        step = 0.1 / (1.0 - 0.9**n)
        ema["weights"] = raw if n == 1 else average_weights(ema["weights"], raw, 1 - step)
        for name, weights in (("val", averaged), ("raw", raw), ("ema90", ema["weights"])):
            report = retrieval_report(emb(X_val, weights), y_val, ks=(1,))
            record[f"{name}_p1"].append(round(report["precision_at_1"], 4))
            record[f"{name}_mapr"].append(round(report["map_at_r"], 4))
        clock["excluded"] += time.perf_counter() - begin

    original, original_standardization = training.train_head, fitting.standardization
    # The fit's (mean, scale), known before its first epoch (the fitted attributes are not).
    standardized = {}

    def standardization(*args, **kwargs):
        standardized["mean_scale"] = original_standardization(*args, **kwargs)
        return standardized["mean_scale"]

    def train_head(*args, **kwargs):
        clock["start"] = time.perf_counter()
        return original(*args, on_epoch=on_epoch, **kwargs)

    training.train_head, fitting.standardization = train_head, standardization
    try:
        start = time.perf_counter()
        encoder.fit(X_fit, y_fit)
        total = time.perf_counter() - start - clock["excluded"]
    finally:
        training.train_head, fitting.standardization = original, original_standardization
    return {"fit_seconds": round(total, 1), "epochs": encoder.n_iter_, **record}


def stop_epoch(figures, tol: float, n_iter_no_change: int) -> int | None:
    """The epoch (from 1) at which ``tripletsk.training.stopping.Stopping`` stops on ``figures``
    (lower is better), or None."""
    from tripletsk.training.stopping import Stopping

    rule = Stopping("error", tol, n_iter_no_change)
    for epoch, figure in enumerate(figures, start=1):
        if rule.update(loss=0.0, error=figure, score=None)[1]:
            return epoch
    return None


def report(path: Path, epochs=(30, 45, 60, 75, 90, 100), rules=()) -> str:
    """Mean validation P@1 / MAP@R over splits at given epochs, per setting and data set
    (the setting's own average, then the EMA at decay 0.9 where recorded); then for each
    rule (tol, n_iter_no_change) the epochs it stops at and the figures there."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    groups: dict = {}
    for r in rows:
        # With a constant rate the trajectory does not depend on when the fit stops: records
        # that differ only there are one curve (the longest is kept).
        same = {"max_epochs", "tol", "n_iter_no_change", "stopping"}
        if r["params"]["learning_rate_schedule"] != "constant":
            same = set()
        p = {k: v for k, v in r["params"].items() if k not in same}
        by_split = groups.setdefault((r["dataset"], json.dumps(p, sort_keys=True)), {})
        if len(r["loss"]) > len(by_split.get(r["split"], {"loss": ()})["loss"]):
            by_split[r["split"]] = r
    lines = ["| data | setting | average | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
             "|---" * (len(epochs) + 3) + "|"]  # fmt: skip
    for (dataset, params), by_split in groups.items():
        rs = [by_split[s] for s in sorted(by_split)]
        p = json.loads(params)
        schedule = p["learning_rate_schedule"]
        if schedule != "constant":
            schedule += f" over {p['max_epochs']} epochs"
        setting = (f"{p['hidden_units']} / {p['batch_size']}, lr {p['learning_rate']:g} "
                   f"{schedule}, splits {sorted(by_split)}")  # fmt: skip
        for name, key in ((f"EMA {p['weight_averaging']}", "val"), ("EMA 0.9", "ema90")):
            if not all(f"{key}_p1" in r for r in rs):
                continue
            cells = []
            for e in epochs:
                if any(len(r[f"{key}_p1"]) < e for r in rs):
                    cells.append("")
                    continue
                p1 = np.mean([r[f"{key}_p1"][e - 1] for r in rs])
                mapr = np.mean([r[f"{key}_mapr"][e - 1] for r in rs])
                cells.append(f"{p1:.3f} / {mapr:.3f}")
            lines.append(f"| {dataset} | {setting} | {name} | " + " | ".join(cells) + " |")
        for tol, patience in rules:
            stops = [stop_epoch(r["error"], tol, patience) for r in rs]
            at = [len(r["error"]) if s is None else s for r, s in zip(rs, stops, strict=True)]
            figures = []
            for key in ("val", "ema90"):
                if all(f"{key}_p1" in r for r in rs):
                    p1 = np.mean([r[f"{key}_p1"][e - 1] for r, e in zip(rs, at, strict=True)])
                    mapr = np.mean([r[f"{key}_mapr"][e - 1] for r, e in zip(rs, at, strict=True)])
                    figures.append(f"{key} {p1:.3f} / {mapr:.4f}")
            marks = [f"{e}{'' if s else '*'}" for e, s in zip(at, stops, strict=True)]
            lines.append(f"|  | tol {tol:g}, n_iter_no_change {patience}: stops at "
                         f"{', '.join(marks)} | " + "; ".join(figures) + " |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="Fashion-MNIST folder of *-ubyte.gz")
    parser.add_argument("--cache-dir", help="backbone features of examples/fashion_mnist.py")
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "fit_curves.jsonl")
    )
    parser.add_argument("--set", action="append", metavar="PARAM=VALUE")
    parser.add_argument("--splits", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="*", default=["fashion"])
    parser.add_argument("--max-epochs", type=int, default=100, help="unless --set")
    parser.add_argument("--report", action="store_true", help="print --out as a table")
    parser.add_argument("--rule", action="append", default=[], metavar="TOL,N_ITER_NO_CHANGE",
                        help="with --report: where this stopping rule stops")  # fmt: skip
    args = parser.parse_args(argv)
    if args.report:
        rules = [(float(t), int(n)) for t, n in (r.split(",") for r in args.rule)]
        print(report(Path(args.out), rules=rules))
        return
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
