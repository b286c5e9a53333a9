"""Can any comparison on the images tell a resized copy from a similar distinct image?

Issue 22's last near-duplicate miss is one pair of distinct Fashion-MNIST test images (t6991 /
t7357, two white trousers) that every verification so far kept. This study measures, on the
t10k pixels directly (no index, no model):

* ``closest_pairs``: the closest pairs of distinct t10k images at 28 px (centred, unit-norm
  grey pixels, as the verification compares them): is t6991 / t7357 an outlier (a photo stored
  twice) or one of a continuum of similar items?
* ``copies``: how far a resized copy lies from its original under two comparisons:
  ``common_size``, today's verification (both shrunk to the smaller side with Lanczos), and
  ``pillow_filters``, the smallest distance over Pillow's six resampling filters applied to one
  image to give it the other's exact size, both ways. Copies are made by Pillow's bilinear
  filter (as ``index_fashion.py`` plants them) and by other means (SciPy's spline zoom,
  two-step resizes, a JPEG re-save after resizing), 300 random t10k images each.

Run::

    python benchmarks/studies/index/resize_separation.py --data /work/data/fashion-mnist \\
        --out benchmarks/studies/index/results/resize_separation.json
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os

import numpy as np
from PIL import Image

R = Image.Resampling
FILTERS = (R.NEAREST, R.BOX, R.BILINEAR, R.HAMMING, R.BICUBIC, R.LANCZOS)


def load_t10k(data: str) -> np.ndarray:
    raw = gzip.decompress(open(os.path.join(data, "t10k-images-idx3-ubyte.gz"), "rb").read())
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)


def unit(pixels) -> np.ndarray:
    x = np.asarray(pixels, np.float64).ravel()
    x = x - x.mean()
    norm = np.linalg.norm(x)
    return x / norm if norm else x


def common_size(a: Image.Image, b: Image.Image) -> float:
    """Today's verification: both shrunk (Lanczos) to the smaller side, at most 64 px."""
    s = min(*a.size, *b.size, 64)
    a, b = (unit(im.resize((s, s), R.LANCZOS)) for im in (a, b))
    return float(np.linalg.norm(a - b))


def pillow_filters(a: Image.Image, b: Image.Image) -> float:
    """The smallest distance when one image is resized to the other's size by any Pillow filter."""
    best = common_size(a, b)
    if a.size == b.size:
        return best
    for src, dst in ((a, b), (b, a)):
        for f in FILTERS:
            best = min(best, float(np.linalg.norm(unit(src.resize(dst.size, f)) - unit(dst))))
    return best


def _decoded(im: Image.Image, fmt: str = "PNG", **kw) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _jpeg(im: Image.Image) -> Image.Image:
    return _decoded(im, "JPEG", quality=90)


def _zoom(g: Image.Image, factor: float, order: int) -> Image.Image:
    from scipy import ndimage

    z = ndimage.zoom(np.asarray(g, np.float64), factor, order=order)
    return Image.fromarray(np.clip(z, 0, 255).round().astype(np.uint8))


COPIES = {
    "up56 Pillow bilinear (as planted)": lambda g: _decoded(g.resize((56, 56), R.BILINEAR)),
    "down20 Pillow bilinear (as planted)": lambda g: _decoded(g.resize((20, 20), R.BILINEAR)),
    "up56x40 Pillow bilinear (aspect changed)": lambda g: _decoded(g.resize((56, 40), R.BILINEAR)),
    "up56 SciPy cubic spline": lambda g: _decoded(_zoom(g, 2, 3)),
    "down20 SciPy linear": lambda g: _decoded(_zoom(g, 20 / 28, 1)),
    "up42 two bicubic steps (35, 42)": lambda g: _decoded(
        g.resize((35, 35), R.BICUBIC).resize((42, 42), R.BICUBIC)
    ),
    "down20 two Lanczos steps (24, 20)": lambda g: _decoded(
        g.resize((24, 24), R.LANCZOS).resize((20, 20), R.LANCZOS)
    ),
    "up56 bilinear, JPEG quality 90": lambda g: _jpeg(g.resize((56, 56), R.BILINEAR)),
    "down20 bilinear, JPEG quality 90": lambda g: _jpeg(g.resize((20, 20), R.BILINEAR)),
}


def closest_pairs(x: np.ndarray, n: int = 12) -> list:
    """The ``n`` closest pairs of distinct images (each image's nearest other, deduplicated)."""
    u = np.stack([unit(im) for im in x])
    nearest, dist = np.zeros(len(u), int), np.zeros(len(u))
    for start in range(0, len(u), 2000):
        gram = u[start : start + 2000] @ u.T
        gram[np.arange(len(gram)), start + np.arange(len(gram))] = -np.inf
        j = gram.argmax(1)
        nearest[start : start + len(j)] = j
        dist[start : start + len(j)] = np.sqrt(np.maximum(2 - 2 * gram[np.arange(len(j)), j], 0))
    pairs = {}
    for i in np.argsort(dist):
        pairs.setdefault(tuple(sorted((int(i), int(nearest[i])))), round(float(dist[i]), 4))
        if len(pairs) == n:
            break
    return [{"pair": f"t{a} / t{b}", "distance": d} for (a, b), d in pairs.items()]


def _quantiles(values: list) -> dict:
    q = np.quantile(values, [0.5, 0.99, 1.0]).round(4)
    return {"median": float(q[0]), "p99": float(q[1]), "max": float(q[2])}


def copies(x: np.ndarray, n: int = 300, seed: int = 0) -> dict:
    chosen = np.random.default_rng(seed).choice(len(x), n, replace=False)
    found = {}
    for name, make in COPIES.items():
        d = {"common_size": [], "pillow_filters": []}
        for i in chosen:
            grey = Image.fromarray(x[i])
            original, copy = grey.convert("RGB"), make(grey).convert("RGB")
            d["common_size"].append(common_size(original, copy))
            d["pillow_filters"].append(pillow_filters(original, copy))
        found[name] = {how: _quantiles(v) for how, v in d.items()}
        print(name, found[name], flush=True)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder of the Fashion-MNIST .gz files")
    ap.add_argument("--out", help="write the results here as JSON")
    args = ap.parse_args()
    x = load_t10k(args.data)
    result = {"closest_pairs_28px": closest_pairs(x), "copies": copies(x)}
    print(json.dumps(result["closest_pairs_28px"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
