"""int8 extraction end to end: ``extract_features`` images/s with OpenVINO int8 vs TensorFlow
float32 on the same photos.

Writes N photo-like JPEGs (``benchmarks/extraction.py``'s ``write_photos``), runs one warm-up
extraction of each (the int8 one quantizes the backbone once into ``.tripletsk-models/``, which
later runs reuse), then interleaves ``--reps`` pairs (TensorFlow float32, OpenVINO int8), each
into a fresh cache, and reports per run images/s over the whole run (``summary.seconds``:
model build included, since the process keeps one model and every run builds its own; for
int8 also decoding the calibration sample and finding the cached quantized model), the
int8 / float32 ratio of those per pair, the medians, and ``uptime`` before and after. It also
shows ``n / (seconds - setup_seconds)``, for information only: the first batches are decoded
while the model is built, so it overstates the speed of runs with a long setup; use a large
``--n`` to make the setup small.

With ``--cli``, every run is instead a new ``python -m tripletsk extract-features`` process,
timed from start to exit (interpreter start, imports, model build or load included): what a
user of the command waits for. Its "after setup" figure is the one the command prints.

Usage (the CPU caps must be set before TensorFlow and OpenVINO load, hence in the environment)::

    python benchmarks/extraction_int8_pipeline.py                      # native ISA
    ONEDNN_MAX_CPU_ISA=AVX2 OV_CPU_MAX_ISA=AVX2 python benchmarks/extraction_int8_pipeline.py

Weights are random (``weights="none"``) so it runs offline; the model's cost is the same.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from extraction import write_photos  # noqa: E402  (benchmarks/extraction.py)

CONFIGS = {
    "tensorflow float32": {"backend": "tensorflow", "precision": "float32"},
    "openvino int8": {"backend": "openvino", "precision": "int8"},
}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_once(photos: Path, output: Path, config: dict, args) -> tuple[float, float]:
    """(images/s of the whole run, images/s once the model was ready) of one fresh cache."""
    from tripletsk.extraction import extract_features

    s = extract_features(photos, output, weights="none", image_size=args.image_size,
                         batch_size=args.batch_size, quiet=True, progress=False,
                         **config)  # fmt: skip
    steady = s.seconds - (s.setup_seconds or 0.0)
    return s.n_images / s.seconds, s.n_images / steady


def run_cli(photos: Path, output: Path, config: dict, args) -> tuple[float, float]:
    """(images/s from process start to exit, images/s after setup) of one
    ``python -m tripletsk extract-features`` process."""
    cmd = [sys.executable, "-m", "tripletsk", "extract-features", str(photos), "-o", str(output),
           "--weights", "none", "--image-size", str(args.image_size),
           "--batch-size", str(args.batch_size), "--backend", config["backend"],
           "--precision", config["precision"]]  # fmt: skip
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, check=True)
    wall = time.perf_counter() - t
    n = int(re.search(r"\((\d+) images\)", res.stdout).group(1))
    steady = float(re.search(r"([\d.]+) images/s after setup", res.stdout).group(1))
    return n / wall, steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=128, help="photos")
    ap.add_argument("--photo-size", default="1600x1200", help="WxH of the photos written")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="interleaved float32/int8 pairs")
    ap.add_argument("--cli", action="store_true", help="each run a new process (see above)")
    args = ap.parse_args()
    run = run_cli if args.cli else run_once
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    caps = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA") if k in os.environ}
    mode = "a new process per run" if args.cli else "one process"
    print(f"ISA caps: {caps or 'none (native)'}; {os.cpu_count()} CPUs; {mode}")
    print(f"before: {uptime()}")
    w, h = map(int, args.photo_size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="tripletsk-int8-bench-") as tmp:
        tmp = Path(tmp)
        write_photos(tmp / "photos", args.n, (w, h))
        for name, config in CONFIGS.items():  # warm-up; int8 quantizes here, once
            t = time.perf_counter()
            run(tmp / "photos", tmp / "out" / f"warmup-{config['backend']}.h5", config, args)
            print(f"warm-up {name}: {time.perf_counter() - t:.1f} s")
        results = {name: [] for name in CONFIGS}
        for rep in range(1, args.reps + 1):
            line = []
            for name, config in CONFIGS.items():
                out = tmp / "out" / f"rep{rep}-{config['backend']}.h5"
                results[name].append(run(tmp / "photos", out, config, args))
                whole, steady = results[name][-1]
                line.append(f"{name} {whole:.2f} images/s ({steady:.2f} after setup)")
            ratio = results["openvino int8"][-1][0] / results["tensorflow float32"][-1][0]
            print(f"  pair {rep}: {'; '.join(line)}; ratio int8/float32 {ratio:.2f}")
        ratios = [i[0] / f[0] for f, i in zip(*results.values(), strict=True)]
        for name, runs in results.items():
            print(f"{name}: median {statistics.median(r[0] for r in runs):.2f} images/s whole "
                  f"run, {statistics.median(r[1] for r in runs):.2f} after setup")  # fmt: skip
        median = statistics.median(ratios)
        print(f"ratio int8 / float32 (whole runs), median of pairs: {median:.2f}")
    print(f"after: {uptime()}")


if __name__ == "__main__":
    main()
