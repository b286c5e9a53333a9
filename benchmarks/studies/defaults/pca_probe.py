"""Probe: the inputs projected by PCA before the default head, on validation splits only.

A cheaper first layer (``StandardScaler`` -> ``PCA(k)`` -> ``TripletEncoder()``, k = 128 or 256)
against ``TripletEncoder()`` alone (both with ``soft_margin_scale=1``, the default when
measured), fit with labels on the 4,000 / 1,000 stratified validation splits 0-2 of the 5,000
Fashion-MNIST training images (pixels, and the backbone rows of ``examples/fashion_mnist.py
--cache-dir``: ResNet50 random weights, ImageNet MobileNet); the test images are never read.
Results are appended to ``--out`` (JSON lines). Run::

    PYTHONPATH=. python benchmarks/studies/defaults/pca_probe.py --data DIR --cache-dir FEATS \\
        --out benchmarks/studies/defaults/results/pca_probe.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

from defaults_study import datasets
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tripletsk import TripletEncoder
from tripletsk.evaluation.metrics import retrieval_report

SETTINGS = {"defaults": None, "pca256": 256, "pca128": 128}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder of the Fashion-MNIST .gz files")
    ap.add_argument("--cache-dir", required=True, help="examples/fashion_mnist.py --cache-dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    for split in args.splits:
        data = datasets(args.data, args.cache_dir, 0, None, test_size=0.2, split_seed=split)
        for name in ("fashion", "fashion-resnet", "fashion-mobilenet"):
            X_fit, y_fit, X_val, y_val = data[name]
            for setting, k in SETTINGS.items():
                if k is not None and k >= X_fit.shape[1]:
                    continue  # MobileNet rows have 256 columns already
                # s = 1: the default when this was measured (results/pca_probe.jsonl)
                encoder = TripletEncoder(soft_margin_scale=1.0, random_state=split)
                model = encoder
                if k is not None:
                    model = make_pipeline(StandardScaler(), PCA(k, random_state=0), encoder)
                start = time.perf_counter()
                model.fit(X_fit, y_fit)
                seconds = time.perf_counter() - start
                report = retrieval_report(model.transform(X_val), y_val, ks=(1,))
                row = {"dataset": name, "split": split, "setting": setting,
                       "seconds": round(seconds, 2), "epochs": encoder.n_iter_,
                       "p1": round(report["precision_at_1"], 4),
                       "mapr": round(report["map_at_r"], 4)}  # fmt: skip
                print(row, flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
