"""Default fit in float32 against bfloat16 on Fashion-MNIST pixels, side by side (issue 21).

The 5,000 / 2,000 split of ``examples/fashion_mnist.py`` (seed 0); after one warm-up fit of
each precision (so that neither pays for tracing its graph), two rounds with the order
alternated. Prints the round, precision, fit seconds, epochs, test P@1 and MAP@R and the
number of warnings::

    PYTHONPATH=. python benchmarks/studies/defaults/precision_check.py --data DIR
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from default_fit_check import fashion_mnist, fit_and_score

from tripletsk import TripletEncoder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="Fashion-MNIST folder of *-ubyte.gz")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    train, y, test, y_test = fashion_mnist.split(args.data, 5000, 2000, 0)
    X, X_test = fashion_mnist.pixels(train), fashion_mnist.pixels(test)
    precisions = ["float32", "bfloat16"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warm-up fits stop at max_epochs on purpose
        for precision in precisions:
            TripletEncoder(random_state=0, verbose=-1, max_epochs=2, precision=precision).fit(X, y)
    print("round precision seconds epochs P@1 MAP@R warnings")
    for r in range(args.rounds):
        for precision in precisions if r % 2 == 0 else precisions[::-1]:
            row = fit_and_score({"precision": precision}, X, y, X_test, y_test)
            print(r, precision, row["fit_seconds"], row["epochs"], row["precision_at_1"],
                  row["map_at_r"], len(row["warnings"]), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
