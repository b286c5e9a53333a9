"""Issue 13's augmentation lever on Fashion-MNIST pixels: horizontal flips as extra samples.

The 5,000 training images of ``examples/fashion_mnist.py`` (seed 0) are split 4,000 / 1,000
(stratified, split seeds 0-2, as ``lr_schedule_levers.py`` does); each fit image is
added a second time, mirrored left-right, with its label, and ``TripletEncoder(**setting)`` is
fitted on the 8,000 rows; the 1,000 validation images (not flipped) are scored with
leave-one-out P@1 and MAP@R. The test images are never read. One JSON line per split::

    python benchmarks/studies/defaults/fashion_flip_probe.py --data DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))

from defaults_study import datasets, validate

#: The best validated setting of docs/findings/defaults_study.md ("lead + input_dropout").
SETTING = {"margin": None, "dropout": 0.0, "hidden_units": 1024, "n_components": 64,
           "input_dropout": 0.1}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="Fashion-MNIST folder of *-ubyte.gz")
    parser.add_argument("--splits", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args(argv)
    for split in args.splits:
        data = datasets(args.data, None, 0, ["fashion"], test_size=0.2, split_seed=split)
        X_fit, y_fit, X_val, y_val = data["fashion"]
        flipped = X_fit.reshape(-1, 28, 28)[:, :, ::-1].reshape(len(X_fit), -1)
        both = (np.vstack([X_fit, flipped]), np.concatenate([y_fit, y_fit]), X_val, y_val)
        row = {"dataset": "fashion+hflip", "split": split, "params": SETTING,
               **validate(SETTING, both, seed=split)}  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
