"""Time and peak memory of ``tripletsk predict`` and ``score`` on a 5,000,000-line triplet file.

Sets up, in a work folder: a feature cache of 10,000 images (10 classes x 1,000; 2048 float32
features each, 82 MB), a small model fitted on it, and a triplet file of 5,000,000 random
triplets over its images (``7/0123.png 2/0456.png 5/0789.png``, about 165 MB). Then runs each
command as a real process of its own, ``python -m tripletsk ...``, and reads its wall time
and its peak resident memory (``ru_maxrss`` of that child, from ``os.wait4``).

``--code`` names the tripletsk checkouts to compare (default: this one); each round runs every
checkout's commands in turn (interleaved), and the script prints each one's median over the
rounds and the ratios to the first checkout. To compare with an older version::

    git archive 9afe934 | tar -x -C /tmp/before
    python benchmarks/triplet_files.py --code /tmp/before --code .

Usage::

    python benchmarks/triplet_files.py                # 5,000,000 lines, 3 rounds
    python benchmarks/triplet_files.py --lines 1000000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES, PER_CLASS, DIM = 10, 1000, 2048


def setup(work: Path, n_lines: int) -> None:
    """The cache, the model and the triplet file, unless already there."""
    sys.path.insert(0, str(REPO))
    from tripletsk.cache.format import FINGERPRINT_DTYPE, FORMAT_NAME, FORMAT_VERSION
    from tripletsk.cache.store import FeatureStore
    from tripletsk.cache.writer import write_cache
    from tripletsk.errors import ConvergenceWarning
    from tripletsk.estimator import TripletEncoder
    from tripletsk.modelfile import cache_record, save_model

    keys = [f"{c}/{i:04d}.png" for c in range(CLASSES) for i in range(PER_CLASS)]
    rng = np.random.RandomState(0)
    cache = work / "features.h5"
    if not cache.exists():
        centres = rng.normal(0, 1, (CLASSES, DIM)).astype(np.float32)
        blocks = (
            centres[np.arange(s, s + 1000) // PER_CLASS]
            + rng.normal(0, 2, (1000, DIM)).astype(np.float32)
            for s in range(0, len(keys), 1000)
        )
        provenance = {"backbone": "benchmark", "weights": "none", "image_size": 8,
                      "preprocessing": "none", "compute_dtype": "float32"}  # fmt: skip
        write_cache(cache, keys=keys, fingerprints=np.zeros(len(keys), FINGERPRINT_DTYPE),
                    feature_blocks=blocks, dim=DIM, dtype="float32", failed=[],
                    attrs={**provenance, "format": FORMAT_NAME,
                           "format_version": FORMAT_VERSION})  # fmt: skip
    model = work / "model.npz"
    if not model.exists():
        store = FeatureStore(cache)
        labels = np.array([k.split("/")[0] for k in keys])
        sample = rng.choice(len(keys), 2000, replace=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            encoder = TripletEncoder(features=str(cache), hidden_units=64, n_components=16,
                                     max_epochs=2, random_state=0)  # fmt: skip
            encoder.fit(np.array(keys)[sample], labels[sample])
        save_model(model, encoder, cache_record(store))
    triplets = work / f"triplets-{n_lines}.txt"
    if not triplets.exists():
        names = np.array(keys, dtype=object)
        with open(triplets, "w") as f:
            for start in range(0, n_lines, 500_000):
                rows = names[rng.randint(0, len(keys), (min(500_000, n_lines - start), 3))]
                f.write("".join(f"{a} {p} {n}\n" for a, p, n in rows.tolist()))


# ``python -m tripletsk`` that writes its peak resident memory (VmHWM, from exec on) to a file
# as it exits: a child's ru_maxrss would count the memory of this script it was forked from.
_REPORT_PEAK = (
    "import atexit, runpy, sys\n"
    "out = sys.argv.pop(1)\n"
    "def report():\n"
    "    with open('/proc/self/status') as f, open(out, 'w') as o:\n"
    "        o.write(next(line for line in f if line.startswith('VmHWM:')).split()[1])\n"
    "atexit.register(report)\n"
    "runpy.run_module('tripletsk', run_name='__main__', alter_sys=True)\n"
)


def run(code: Path, argv: list[str], work: Path) -> dict:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MiB) of ``python -m tripletsk
    argv`` with ``code`` first on the path, in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _REPORT_PEAK, "peak.txt", *argv], cwd=work,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed with {code}: {err}")
    peak = int((work / "peak.txt").read_text()) / 1024
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=5_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--code", action="append", type=Path, help="tripletsk checkout(s)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: temp)")
    args = parser.parse_args()
    codes = [c.resolve() for c in (args.code or [REPO])]
    work = args.work or Path(tempfile.mkdtemp(prefix="triplet-files-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    setup(work, args.lines)
    triplets = f"triplets-{args.lines}.txt"
    size = (work / triplets).stat().st_size
    print(f"setup {time.perf_counter() - start:.0f} s; {args.lines:,} lines, {size / 1e6:.0f} MB")
    commands = {
        "predict": ["predict", "--model", "model.npz", "--triplets", triplets, "-o", "out.txt"],
        "score": ["score", "--model", "model.npz", "--triplets", triplets, "--json"],
    }
    results = {(str(c), name): [] for c in codes for name in commands}
    for r in range(args.rounds):
        for name, argv in commands.items():
            for code in codes:
                if (work / "out.txt").exists():
                    os.remove(work / "out.txt")
                figure = run(code, argv, work)
                results[(str(code), name)].append(figure)
                shown = f"{figure['wall_s']:.1f} s, CPU {figure['cpu_s']:.1f} s"
                print(f"round {r + 1} {name:<8} {code}: {shown}, {figure['peak_mib']:.0f} MiB",
                      flush=True)  # fmt: skip
    print(f"load average: {os.getloadavg()}")
    summary = {}
    for (code, name), figures in results.items():
        summary[f"{name} {code}"] = {
            key: statistics.median(f[key] for f in figures)
            for key in ("wall_s", "cpu_s", "peak_mib")
        }
    print(json.dumps(summary, indent=2))
    if len(codes) > 1:
        for name in commands:
            first = summary[f"{name} {codes[0]}"]
            for code in codes[1:]:
                other = summary[f"{name} {code}"]
                ratios = ", ".join(f"{key} x{other[key] / first[key]:.3f}" for key in first)
                print(f"{name}: {code} vs {codes[0]}: {ratios}")


if __name__ == "__main__":
    main()
