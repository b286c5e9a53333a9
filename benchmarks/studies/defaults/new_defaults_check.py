"""The defaults of 2026-12-03 against the former ones on every data set of the defaults study.

For digits and Fashion-MNIST backbone features (ResNet50 random weights at 64 px, the real
ImageNet MobileNet at 224 px: the ``.npy`` files ``examples/fashion_mnist.py --cache-dir``
writes), on the 4,000 / 1,000 validation splits 0-2 of the training images (the test images
are never read): ``TripletEncoder`` with the former head and with today's defaults, fit on the
labels, leave-one-out P@1 / MAP@R on the validation images. One JSON line per fit::

    python benchmarks/studies/defaults/new_defaults_check.py --data DIR --cache-dir FEATS \\
        > new.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))

from defaults_study import datasets, validate

# Both relative to defaults_study.py's STUDY_DEFAULTS (the former defaults, with
# the batch and stopping rule of before issue 21): "TODAY" is the head of 2026-12-03.
FORMER = {"hidden_units": 512, "n_components": 10, "dropout": 0.2, "input_dropout": 0.0,
          "margin": 1.0, "weight_averaging": 0.0}  # fmt: skip
TODAY = {"hidden_units": 2048, "n_components": 64, "dropout": 0.0, "input_dropout": 0.1,
         "margin": None, "weight_averaging": 0.97}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="Fashion-MNIST folder of *-ubyte.gz")
    parser.add_argument("--cache-dir", required=True, help="the example's backbone features")
    parser.add_argument("--datasets", default="fashion-resnet,fashion-mobilenet,digits")
    parser.add_argument("--splits", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args(argv)
    names = args.datasets.split(",")
    for split in args.splits:
        data = datasets(args.data, args.cache_dir, 0, names, test_size=0.2, split_seed=split)
        for name in names:
            for label, params in (("old", FORMER), ("new", TODAY)):
                row = {"dataset": name, "split": split, "setting": label,
                       **validate(params, data[name], seed=split)}  # fmt: skip
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
