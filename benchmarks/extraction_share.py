"""Where an extraction run's time goes, per backend: the model, preprocessing, decoding, waits.

Writes N photo-like JPEGs (``benchmarks/extraction.py``'s ``write_photos``), runs one warm-up
extraction per configuration (builds, converts or quantizes the model), then ``--rounds``
interleaved rounds of ``extract_features`` into fresh caches, in this process, and reports per
configuration (medians over rounds):

* ``run s``: the whole call; ``setup s``: until the model was ready (built, converted or
  loaded: ``summary.setup_seconds``); ``img/s``: N over the time after setup (the steady rate);
* ``model s``: inside ``Backbone.__call__`` (preprocessing + inference), and its share of the
  time after setup;
* ``prep s``: of which preprocessing in NumPy (``preprocess``; OpenVINO runners only: TensorFlow
  preprocesses inside its graph);
* ``decode core-s``: CPU time of the decoding threads (reading, hashing, decoding, resizing),
  summed over threads, and per image in ms;
* ``idle s``: the time after setup minus the model's (waiting for decoded batches, part
  writes, the final cache write).

The library keeps no timings: the script wraps its functions for the measured runs only.

Usage::

    python benchmarks/extraction_share.py                      # 144 photos of 256x256
    python benchmarks/extraction_share.py --n 128 --photo-size 1600x1200
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from extraction import write_photos  # noqa: E402  (benchmarks/extraction.py)
from extraction_int8 import cpu_model  # noqa: E402

CONFIGS = ("tensorflow/float32", "openvino/float32", "openvino/int8")


class Timer:
    """Wall seconds inside ``owner.name`` (all threads), and thread CPU seconds."""

    def __init__(self, owner, name: str):
        self.owner, self.name = owner, name
        self.wall = self.cpu = 0.0
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def patched(self):
        real = getattr(self.owner, self.name)

        def timed(*args, **kwargs):
            t, c = time.perf_counter(), time.thread_time()
            try:
                return real(*args, **kwargs)
            finally:
                with self.lock:
                    self.wall += time.perf_counter() - t
                    self.cpu += time.thread_time() - c

        setattr(self.owner, self.name, timed)
        try:
            yield self
        finally:
            setattr(self.owner, self.name, real)


def measure(photos: Path, output: Path, config: str, args) -> dict:
    import tripletsk.extraction.backbone as backbone
    import tripletsk.extraction.pipeline as pipeline
    from tripletsk.extraction import extract_features

    backend, precision = config.split("/")
    model = Timer(backbone.Backbone, "__call__")
    prep = Timer(backbone, "preprocess")
    decode = Timer(pipeline, "process_file")
    t = time.perf_counter()
    with model.patched(), prep.patched(), decode.patched():
        s = extract_features(photos, output, weights="none", image_size=args.image_size,
                             batch_size=args.batch_size, backend=backend, precision=precision,
                             quiet=True, progress=False)  # fmt: skip
    run = time.perf_counter() - t
    return {"run": run, "n": s.n_images, "model": model.wall, "prep": prep.wall,
            "decode": decode.cpu, "setup": s.setup_seconds}  # fmt: skip


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=144)
    ap.add_argument("--photo-size", default="256x256")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    load = "load average {:.2f} {:.2f} {:.2f}".format
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; {load(*os.getloadavg())}")
    w, h = map(int, args.photo_size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="tripletsk-share-") as tmp:
        tmp = Path(tmp)
        write_photos(tmp / "photos", args.n, (w, h))
        for config in args.configs:
            measure(tmp / "photos", tmp / "out" / f"warmup-{config.replace('/', '-')}.h5",
                    config, args)  # fmt: skip
        results = {c: [] for c in args.configs}
        for r in range(args.rounds):
            for config in args.configs:
                out = tmp / "out" / f"r{r}-{config.replace('/', '-')}.h5"
                results[config].append(measure(tmp / "photos", out, config, args))
            print(f"round {r + 1} done; {load(*os.getloadavg())}")
    print(f"{args.n} JPEGs of {w}x{h}, {args.image_size} px, batch {args.batch_size}, one "
          f"process, medians of {args.rounds} interleaved rounds")  # fmt: skip
    print(f"{'config':>20} {'run s':>7} {'setup s':>7} {'img/s':>6} {'model s':>8} {'share':>6} "
          f"{'prep s':>7} {'decode core-s':>13} {'ms/img':>6} {'idle s':>7}")  # fmt: skip
    med = statistics.median
    ref = args.configs[0]
    for config, rs in results.items():
        steady = [r["run"] - r["setup"] for r in rs]
        run, model = med(r["run"] for r in rs), med(r["model"] for r in rs)
        share = med(r["model"] / t for r, t in zip(rs, steady, strict=True))
        decode = med(r["decode"] for r in rs)
        idle = med(t - r["model"] for r, t in zip(rs, steady, strict=True))
        print(f"{config:>20} {run:7.2f} {med(r['setup'] for r in rs):7.2f} "
              f"{args.n / med(steady):6.1f} {model:8.2f} {share:6.0%} "
              f"{med(r['prep'] for r in rs):7.2f} {decode:13.2f} {decode / args.n * 1e3:6.1f} "
              f"{idle:7.2f}")  # fmt: skip
    for config, rs in results.items():
        ratios = [(a["run"] - a["setup"]) / (b["run"] - b["setup"])
                  for a, b in zip(results[ref], rs, strict=True)]  # fmt: skip
        print(f"steady speed-up of {config} over {ref}: median {med(ratios):.2f} "
              f"({', '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip
    print(load(*os.getloadavg()))


if __name__ == "__main__":
    main()
