"""How far to JPEG-draft (DCT-downscale) an image before its thumbnail is made.

Pillow decodes a JPEG at 1/2, 1/4 or 1/8 scale when asked (``Image.draft``), many times faster
for big photos, but a DCT-downscaled image shrunk to a thumbnail is not the PNG original shrunk
to it: drafting to the thumbnail's own size put half the JPEG re-saves of Fashion-MNIST's
28 px images outside the index's threshold (docs/findings.md, 2026-12-05). Each policy drafts
to a side of at least ``max(factor * size, floor)``, the resize taking the image's exact extent
(``before``: the decoding up to 2026-12-05, drafted to the thumbnail's size and the whole
drafted image resized; ``full``: no draft). Parts:

* ``fashion``: training-split originals of Fashion-MNIST (28 px PNG, the ``--work`` folder of
  ``index_fashion.py``) re-saved as JPEG (qualities 95, 85, 75, in memory): the share within
  ``--threshold`` of their original at 8 px, and the distances, per policy.
* ``photos``: random 4:3 crops of the two photos scikit-learn ships (china.jpg, flower.jpg,
  640x427) resized to long sides 28 to 4000 px (above 640 px upscaled, with Gaussian grain of
  sigma 3 so that a big photo is not smooth), stored as PNG and re-saved as JPEG: each JPEG's
  thumbnail distance to its PNG original's, at 8 px (the index) and at the verify size (the
  smaller side, at most 64 px), per policy, and to the same JPEG's thumbnail decoded in full.
* ``timing``: thumbnails of a 4000x3000 JPEG (quality 90) at 8 and 64 px per policy, in
  interleaved rounds, as ratios to decoding in full.

    python benchmarks/studies/index/thumbnail_draft.py --work /tmp/fashion_index \\
        --threshold 0.0455 --out results.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))  # the repository

from tripletsk.extraction.decode import decode  # noqa: E402
from tripletsk.index.thumbnails import _unit  # noqa: E402

#: name -> (factor, floor): draft to at least max(factor * size, floor) px, the resize taking
#: the image's exact extent; "full": no draft; "before": the decoding before 2026-12-05 (draft
#: to the thumbnail's size, the whole drafted image resized).
POLICIES = {"before": None, "1x": (1, 0), "2x": (2, 0), "4x": (4, 0), "8x_min64": (8, 64),
            "16x_min64": (16, 64), "full": (0, 0)}  # fmt: skip
QUALITIES = (95, 85, 75)
SIDES = (28, 40, 56, 100, 150, 300, 640, 2000, 4000)


def thumb(data: bytes, size: int, policy: str) -> np.ndarray:
    p = POLICIES[policy]
    draft = None if p is None else max(p[0] * size, p[1])
    pixels = decode(data, size, None, resample="lanczos", draft_size=draft)
    return _unit(pixels).astype(np.float64)


def _encode(im, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def fashion(work: str, threshold: float, n: int) -> dict:
    train = os.path.join(work, "train")
    keys = sorted(
        os.path.join(d, f) for d in os.listdir(train) for f in os.listdir(os.path.join(train, d))
        if "_" not in f
    )  # fmt: skip
    keys = [keys[i] for i in np.random.default_rng(0).choice(len(keys), n, replace=False)]
    from PIL import Image

    d = {p: {q: [] for q in QUALITIES} for p in POLICIES}
    for k in keys:
        png = open(os.path.join(train, k), "rb").read()
        im = Image.open(io.BytesIO(png)).convert("L")
        original = thumb(png, 8, "full")  # a PNG is never drafted
        for q in QUALITIES:
            jpg = _encode(im, "JPEG", quality=q)
            for p in POLICIES:
                d[p][q].append(float(np.linalg.norm(thumb(jpg, 8, p) - original)))
    return {"n": n, "threshold": threshold, "policies": {p: {str(q): {
        "within_threshold": float((np.array(x) <= threshold).mean()),
        "distance_min_median_max": np.percentile(x, [0, 50, 100]).round(4).tolist()}
        for q, x in by_q.items()} for p, by_q in d.items()}}  # fmt: skip


def _photos():
    from PIL import Image
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(a) for a in load_sample_images().images]


def _crops(n: int, rng):
    out = []
    for photo in _photos():
        w, h = photo.size
        for _ in range(n):
            cw = int(rng.uniform(0.5, 1.0) * min(w, h * 4 / 3))
            ch = cw * 3 // 4
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            out.append(photo.crop((x, y, x + cw, y + ch)))
    return out


def photos(n_crops: int) -> dict:
    from PIL import Image

    rng = np.random.default_rng(1)
    crops = _crops(n_crops, rng)
    rows = {}
    for side in SIDES:
        per = {p: {"8": {}, "verify": {}} for p in POLICIES}
        to_full = {p: {"8": [], "verify": []} for p in POLICIES}
        for crop in crops:
            im = crop.resize((side, side * 3 // 4), Image.LANCZOS)
            if side > 640:  # upscaled: add grain, as a big photo is not smooth
                a = np.asarray(im, np.float64) + rng.normal(0, 3, (side * 3 // 4, side, 3))
                im = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
            png = _encode(im, "PNG", compress_level=1)
            scales = (("8", 8), ("verify", min(64, side * 3 // 4)))
            original = {scale: thumb(png, size, "full") for scale, size in scales}  # no draft
            for q in QUALITIES:
                jpg = _encode(im, "JPEG", quality=q)
                for scale, size in scales:
                    full = thumb(jpg, size, "full")
                    for p in POLICIES:
                        t = full if p == "full" else thumb(jpg, size, p)
                        per[p][scale].setdefault(str(q), []).append(
                            float(np.linalg.norm(t - original[scale]))
                        )
                        to_full[p][scale].append(float(np.linalg.norm(t - full)))
        rows[str(side)] = {p: {scale: {
            "to_png_median_max": {q: [round(float(np.median(x)), 4), round(float(max(x)), 4)]
                                  for q, x in per[p][scale].items()},
            "to_full_decode_max": round(max(to_full[p][scale]), 5)}
            for scale in ("8", "verify")} for p in POLICIES}  # fmt: skip
    return {"crops": len(crops), "sides": rows}


def timing(rounds: int) -> dict:
    from PIL import Image

    rng = np.random.default_rng(2)
    im = _photos()[0].resize((4000, 3000), Image.BICUBIC)
    a = np.asarray(im, np.float64) + rng.normal(0, 3, (3000, 4000, 3))
    jpg = _encode(Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8)), "JPEG",
                  quality=90)  # fmt: skip
    seconds = {(p, s): [] for p in POLICIES for s in (8, 64)}
    for _ in range(rounds):
        for p in POLICIES:  # interleaved: each round times every policy once
            for s in (8, 64):
                t = time.perf_counter()
                thumb(jpg, s, p)
                seconds[(p, s)].append(time.perf_counter() - t)
    out = {"jpeg_bytes": len(jpg), "rounds": rounds, "load_average": os.getloadavg()[0]}
    for s in (8, 64):
        full = np.median(seconds[("full", s)])
        out[f"{s}px"] = {p: {"median_seconds": round(float(np.median(seconds[(p, s)])), 4),
                             "ratio_to_full": round(float(np.median(seconds[(p, s)]) / full), 3)}
                         for p in POLICIES}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="the --work folder of index_fashion.py (part fashion)")
    ap.add_argument("--threshold", type=float, default=0.0455,
                    help="the index threshold chosen on the training split")  # fmt: skip
    ap.add_argument("--parts", nargs="+", default=["fashion", "photos", "timing"])
    ap.add_argument("--n-fashion", type=int, default=2000)
    ap.add_argument("--crops", type=int, default=6, help="crops per photo")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    results = {}
    for part in args.parts:
        t = time.perf_counter()
        results[part] = {"fashion": lambda: fashion(args.work, args.threshold, args.n_fashion),
                         "photos": lambda: photos(args.crops),
                         "timing": lambda: timing(args.rounds)}[part]()  # fmt: skip
        print(f"{part}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
