"""Write scikit-learn's handwritten digits as PNG files in class folders: images/<digit>/<n>.png.

Real image files for the examples and tests, made offline: the 8x8 digits (grey levels 0..16)
are scaled to 0..255 and enlarged to ``--size`` pixels.

Usage::

    python examples/make_digit_images.py images --per-class 30 --size 32
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digit_images(
    out_dir: str, per_class: int = 30, size: int = 32, classes: int = 10
) -> list[str]:
    """Write ``per_class`` images of each of the first ``classes`` digits; return their keys.

    Parameters
    ----------
    out_dir : str
        Folder to write ``<digit>/<n>.png`` into (created if needed).
    per_class : int, default=30
        Images per digit (the data set has about 180 of each).
    size : int, default=32
        Width and height of the written images, in pixels.
    classes : int, default=10
        Digits 0 to ``classes - 1`` are written.

    Returns
    -------
    keys : list of str
        ``"<digit>/<n>.png"`` for every written file.
    """
    digits = load_digits()
    keys = []
    for digit in range(classes):
        rows = np.flatnonzero(digits.target == digit)[:per_class]
        os.makedirs(os.path.join(out_dir, str(digit)), exist_ok=True)
        for n, row in enumerate(rows):
            pixels = (digits.images[row] * (255 / 16)).astype(np.uint8)
            image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
            key = f"{digit}/{n}.png"
            image.save(os.path.join(out_dir, key))
            keys.append(key)
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write <digit>/<n>.png into")
    parser.add_argument("--per-class", type=int, default=30, help="default: %(default)s")
    parser.add_argument("--size", type=int, default=32, help="pixels (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=10, help="digits 0..N-1 (default: 10)")
    args = parser.parse_args()
    keys = write_digit_images(args.out_dir, args.per_class, args.size, args.classes)
    print(f"wrote {len(keys)} images to {args.out_dir}/<digit>/<n>.png")


if __name__ == "__main__":
    main()
