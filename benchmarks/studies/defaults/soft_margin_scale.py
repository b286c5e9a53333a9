"""Probe: a sharper or softer soft margin, ``softplus(s (d_ap - d_an)) / s``, on validation splits.

The soft margin on unit-norm embeddings sees differences in [-2, 2], so its gradient never
falls below ``sigmoid(-2)``; a scale ``s`` (as in normalised softmax losses) sharpens it. No
parameter exists for it: the probe replaces ``tripletsk.training.losses.triplet_margin_loss``
before any graph is traced (``s = 1`` is today's loss, bit for bit), then fits
``TripletEncoder(random_state=split)`` with labels on the 4,000 / 1,000 validation splits 0-2
of the Fashion training images (``defaults_study.datasets``); test images are never read.
One process per scale (graphs are traced once per process)::

    for s in 0.5 1 2 4 8; do
        PYTHONPATH=. python benchmarks/studies/defaults/soft_margin_scale.py --scale $s \\
            --data DIR --out benchmarks/studies/defaults/results/soft_margin_scale.jsonl
    done
"""

from __future__ import annotations

import argparse
import json
import time

from defaults_study import datasets

from tripletsk import TripletEncoder
from tripletsk._tensorflow import import_tensorflow
from tripletsk.evaluation.metrics import retrieval_report
from tripletsk.training import losses

tf = import_tensorflow()


def scaled_soft_margin(scale: float):
    original = losses.triplet_margin_loss

    def loss(d_ap, d_an, margin):
        if margin is None:
            return tf.nn.softplus(scale * (d_ap - d_an)) / scale
        return original(d_ap, d_an, margin)

    return loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, required=True)
    ap.add_argument("--data", required=True, help="folder of the Fashion-MNIST .gz files")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    losses.triplet_margin_loss = scaled_soft_margin(args.scale)
    for split in (0, 1, 2):
        X_fit, y_fit, X_val, y_val = datasets(
            args.data, None, 0, ["fashion"], test_size=0.2, split_seed=split
        )["fashion"]
        encoder = TripletEncoder(random_state=split)
        start = time.perf_counter()
        encoder.fit(X_fit, y_fit)
        seconds = time.perf_counter() - start
        report = retrieval_report(encoder.transform(X_val), y_val, ks=(1,))
        row = {"dataset": "fashion", "split": split, "scale": args.scale,
               "seconds": round(seconds, 2), "epochs": encoder.n_iter_,
               "p1": round(report["precision_at_1"], 4),
               "mapr": round(report["map_at_r"], 4)}  # fmt: skip
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
