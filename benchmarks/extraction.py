"""Extraction throughput: the full pipeline against the bare model, and memory as N grows.

Writes real JPEG photos (crops of scikit-learn's sample photos, resized to an ordinary photo size,
with a little noise so no two files are alike) to a temporary folder, then measures in one run:

* pipeline images/s: ``extract_features`` end to end on those files (discovery, reading, hashing,
  decoding and resizing in threads, the compiled model, journal writes, the final cache write),
  with the model already built (its build time is reported separately);
* bare-model images/s: the same compiled model on the same images, already decoded and resized
  in memory, in batches of the same size;
* their ratio;
* peak RSS of a fresh process extracting N and 2N images (memory should not grow with N).

Usage::

    python benchmarks/extraction.py                  # 128 photos of 1600x1200, batch 32, 224 px
    python benchmarks/extraction.py --n 64 --photo-size 1024x768 --rss-n 96

Weights are random (``--weights none``) so it runs offline; the model's cost is the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> int:
    """Write n JPEG photos of ``size`` (w, h) into ``folder``; returns total bytes."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two real photos, 427x640
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    w, h = size
    for i in range(n):
        src = photos[i % len(photos)]
        ch, cw = rng.integers(300, 427), rng.integers(400, 640)
        y, x = rng.integers(0, 427 - ch + 1), rng.integers(0, 640 - cw + 1)
        crop = Image.fromarray(src[y : y + ch, x : x + cw]).resize((w, h), Image.BICUBIC)
        arr = np.asarray(crop, dtype=np.int16) + rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        p = folder / f"photo_{i:05d}.jpg"
        img.save(p, quality=90)
        total += p.stat().st_size
    return total


class Clock:
    """Seconds spent inside a function while patched in (the library keeps no timings)."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self.seconds = owner, name, 0.0

    @contextlib.contextmanager
    def patched(self):
        real = getattr(self.owner, self.name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t

        setattr(self.owner, self.name, timed)
        try:
            yield self
        finally:
            setattr(self.owner, self.name, real)


def rss_child(folder: str, output: str, image_size: int, batch_size: int) -> None:
    """Run one extraction in this (fresh) process and print its peak RSS as JSON."""
    import threading

    from tripletsk.extraction import extract_features

    parts = Path(output + ".parts")
    by_batch: dict[int, float] = {}  # finished batches -> current RSS (MB), sampled

    def sample() -> None:
        while True:
            try:
                with open("/proc/self/status") as fh:
                    rss = next(int(x.split()[1]) for x in fh if x.startswith("VmRSS:"))
                n = len(list(parts.glob("*.npz"))) if parts.exists() else 0
            except (OSError, StopIteration):
                return  # not Linux, or the run is over
            if n:
                by_batch[n] = rss / 1024
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    t = time.perf_counter()
    s = extract_features(
        folder, output, weights="none", image_size=image_size, batch_size=batch_size,
        progress=False,
    )  # fmt: skip
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    dt = time.perf_counter() - t
    first, last = (min(by_batch), max(by_batch)) if by_batch else (0, 0)
    res = {"n": s.n_images, "peak_rss_mb": peak_kb / 1024, "s": dt}
    if by_batch:
        res.update(first=[first, by_batch[first]], last=[last, by_batch[last]])
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=128, help="photos for the throughput runs")
    ap.add_argument("--photo-size", default="1600x1200", help="WxH of the photos written")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="interleaved bare/pipeline pairs")
    ap.add_argument("--rss-n", type=int, default=128, help="N for the memory runs (and 2N)")
    ap.add_argument("--rss-child", nargs=2, metavar=("FOLDER", "OUTPUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child, args.image_size, args.batch_size)
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    w, h = map(int, args.photo_size.lower().split("x"))
    s, b = args.image_size, args.batch_size
    with tempfile.TemporaryDirectory(prefix="tripletsk-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        nbytes = write_photos(tmp / "photos", args.n, (w, h))
        print(
            f"wrote {args.n} JPEG photos of {w}x{h} ({nbytes / args.n / 1e3:.0f} kB each) "
            f"in {time.perf_counter() - t:.1f} s; {os.cpu_count()} CPUs"
        )

        import tensorflow as tf

        import tripletsk.extraction.run as extraction_run
        from tripletsk.extraction import Backbone, extract_features, load_image, resolve_weights
        from tripletsk.extraction.backbone import cached_backbone

        t = time.perf_counter()
        backbone = cached_backbone(resolve_weights("none", 0), s, b)  # built and traced once
        print(f"model build + trace: {time.perf_counter() - t:.1f} s (TF {tf.__version__})")

        files = sorted((tmp / "photos").iterdir())
        t = time.perf_counter()
        images = np.stack([load_image(p, s) for p in files])
        decode_s = time.perf_counter() - t
        batches = [images[i : i + b] for i in range(0, len(images), b)]
        backbone(batches[0])  # warm

        def bare() -> float:
            t = time.perf_counter()
            for x in batches:
                backbone(x)
            return len(images) / (time.perf_counter() - t)

        def pipeline(tag: str) -> tuple[float, object]:
            # Forward passes and the final cache write, timed by wrapping the library's own
            # functions for this run only.
            model = Clock(Backbone, "__call__")
            final = Clock(extraction_run, "write_cache")
            t = time.perf_counter()
            with model.patched(), final.patched():
                summ = extract_features(
                    tmp / "photos", tmp / f"{tag}.h5", weights="none", image_size=s,
                    batch_size=b, progress=False,
                )  # fmt: skip
            dt = time.perf_counter() - t
            assert summ.extracted == len(files), summ
            idle = dt - model.seconds - final.seconds
            print(
                f"    pipeline run: {dt:.1f} s; model busy {model.seconds:.1f} s "
                f"({model.seconds / dt:.0%} of the run), model idle otherwise (discovery, "
                f"waiting for decoded images and part writes) {idle:.2f} s, "
                f"final cache write {final.seconds:.2f} s"
            )
            return len(files) / dt, summ

        # Interleave the two measurements, so both see the same machine (load from other
        # processes varies); the ratio of each adjacent pair, then the median.
        pairs = []
        for rep in range(args.reps):
            bare_ips = bare()
            pipe_ips, _ = pipeline(f"run{rep}")
            pairs.append((bare_ips, pipe_ips))
            print(
                f"  rep {rep + 1}: bare model {bare_ips:.2f} images/s, pipeline {pipe_ips:.2f} "
                f"images/s, ratio {pipe_ips / bare_ips:.3f}"
            )
        bare_med = float(np.median([p[0] for p in pairs]))
        pipe_med = float(np.median([p[1] for p in pairs]))
        ratio_med = float(np.median([p[1] / p[0] for p in pairs]))
        print(f"decode+resize only, 1 thread: {len(files) / decode_s:.1f} images/s")
        print(f"bare model (in-memory batches of {b}), median: {bare_med:.2f} images/s")
        print(f"pipeline (files -> cache, end to end), median: {pipe_med:.2f} images/s")
        print(f"ratio pipeline / bare model: median of pairs {ratio_med:.3f}")

        # memory: fresh processes extracting N and 2N photos
        rss = []
        for n in (args.rss_n, 2 * args.rss_n):
            # reuse the photos already written (as links) and write only the missing ones
            folder = tmp / f"rss{n}"
            reuse = files[:n]
            write_photos(folder, n - len(reuse), (w, h), seed=n)
            for p in reuse:
                os.symlink(p, folder / f"reused_{p.name}")
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(folder), str(tmp / f"rss{n}.h5"),
                 "--image-size", str(s), "--batch-size", str(b)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(out.returncode)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rss.append(res)
            print(
                f"peak RSS extracting {res['n']} photos in a fresh process: "
                f"{res['peak_rss_mb']:.0f} MB ({res['s']:.1f} s)"
            )
            if "first" in res:
                (b1, r1), (b2, r2) = res["first"], res["last"]
                print(
                    f"    RSS during that run: {r1:.0f} MB after batch {b1}, "
                    f"{r2:.0f} MB after batch {b2}"
                )
        print(f"peak RSS ratio 2N / N: {rss[1]['peak_rss_mb'] / rss[0]['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
