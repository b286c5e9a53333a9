"""Learning-rate schedule and weight decay on Fashion-MNIST pixels, on validation splits.

A follow-up of ``defaults_study.py`` (beside this script; issue 13's quality target): each run
fits one ``TripletEncoder`` setting (``--set PARAM=VALUE``, the rest defaults) with labels on the
4,000 / 1,000 stratified validation splits (``--splits`` seeds) of the 5,000 class-balanced
Fashion-MNIST training images of ``examples/fashion_mnist.py`` (seed 0), and on the same kind
of splits of the digits' training images; the 2,000 test images are never read. Results are
appended to ``--out`` (JSON lines; a setting, data set and split already there is skipped).
``--digits-triplets`` adds ``examples/digits_triplets.py``'s protocol inside its training
images (inner splits 0-2). Run::

    S=benchmarks/studies/defaults
    python $S/lr_schedule_levers.py --data DIR --out schedule.jsonl --set n_components=64
    python $S/lr_schedule_levers.py --data DIR --out schedule.jsonl --report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from defaults_study import (
    _without_defaults,
    datasets,
    digits_triplet_validation,
    parse_settings,
    validate,
)


def _key(params: dict) -> str:
    return json.dumps(_without_defaults(params), sort_keys=True)


def run(data_dir, params: dict, out: Path, splits, names, digits_triplets: bool) -> None:
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["dataset"], r["split"], json.dumps(r["params"], sort_keys=True)))
    key = _key(params)
    todo = [(s, n) for s in splits for n in names if (n, s, key) not in done]
    for split in sorted({s for s, _ in todo}):
        data = datasets(data_dir, None, 0, names, test_size=0.2, split_seed=split)
        for name in (n for s, n in todo if s == split):
            row = {"dataset": name, "split": split, "params": json.loads(key),
                   **validate(params, data[name], seed=split)}  # fmt: skip
            _append(out, row)
    if digits_triplets:
        for inner in (0, 1, 2):
            if ("digits-triplets", inner, key) not in done:
                figures = digits_triplet_validation(params, 0, inner_seed=inner)
                _append(out, {"dataset": "digits-triplets", "split": inner,
                              "params": json.loads(key), **figures})  # fmt: skip


def _append(out: Path, row: dict) -> None:
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def report(out: Path) -> str:
    """One markdown row per setting: mean (and range) over splits, per data set."""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    table: dict = {}
    for r in rows:
        table.setdefault(json.dumps(r["params"]), {}).setdefault(r["dataset"], []).append(r)
    lines = [
        "| setting (vs defaults) | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for params, by_name in table.items():
        cells = []
        for name in names:
            rs = by_name.get(name, [])
            if not rs:
                cells.append("")
            elif name == "digits-triplets":
                acc = [r["triplet_accuracy"] for r in rs]
                cells.append(f"{np.mean(acc):.4f} ({len(rs)})")
            else:
                p1 = np.mean([r["precision_at_1"] for r in rs])
                mapr = [r["map_at_r"] for r in rs]
                ep = "/".join(str(r["epochs"]) for r in rs)
                cells.append(
                    f"{p1:.3f} / {np.mean(mapr):.3f} [{min(mapr):.3f}-{max(mapr):.3f}] ({ep} ep)"
                )
        setting = ", ".join(f"{k}={v}" for k, v in json.loads(params).items()) or "defaults"
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="Fashion-MNIST folder of *-ubyte.gz")
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "schedule.jsonl")
    )
    parser.add_argument("--set", action="append", metavar="PARAM=VALUE")
    parser.add_argument("--splits", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--datasets", nargs="*", default=["fashion"])
    parser.add_argument("--digits-triplets", action="store_true")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    if args.report:
        print(report(Path(args.out)))
        return
    params = parse_settings(args.set)
    run(args.data, params, Path(args.out), args.splits, args.datasets, args.digits_triplets)


if __name__ == "__main__":
    main()
