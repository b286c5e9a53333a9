"""Fitting on a feature cache larger than memory: random order versus ``stream=True``.

Writes a real HDF5 cache of N images x 2048 float32 features (default 200,000: 1.5 GiB) whose
rows are sorted by class (as a cache of ``class/image.jpg`` folders is), then fits
``TripletEncoder(features=cache, mining="batch_hard")`` on all its keys and labels for one
epoch, each run in a fresh process:

* ``in memory``: no memory limit, cache already in the page cache: the reference speed;
* ``random``, ``stream``: inside a Linux memory cgroup whose limit (default 1 GiB) is smaller
  than the cache, so the page cache cannot hold it, starting with the cache evicted. ``random``
  is ``stream=False`` (rows in random order), ``stream`` reads blocks of consecutive rows.

Each run reports the fit's wall time, the bytes it read from disk (``/proc/self/io``) as a
multiple of the cache's size, the peak anonymous memory (the process's own, sampled) and, in
the cgroup, its peak usage (process plus page cache). The ratios to read: time against the
in-memory run, bytes read against the cache. The cgroup needs root and cgroup v1 or v2 with a
memory controller (a container usually has it); without one, the limited runs are skipped.

Usage::

    python benchmarks/streaming.py                  # 200,000 images, 1 GiB limit
    python benchmarks/streaming.py --rows 100000 --limit-mib 600
    python benchmarks/streaming.py --early-stopping  # plus a validation pass per epoch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DIM = 2048
IMAGES_PER_CLASS = 100


def write_class_sorted_cache(path: Path, rows: int) -> None:
    """A cache of ``rows`` images in classes of 100, rows sorted by class, written in blocks."""
    from tripletsk.cache.format import FINGERPRINT_DTYPE, FORMAT_NAME, FORMAT_VERSION
    from tripletsk.cache.writer import write_cache

    n_classes = rows // IMAGES_PER_CLASS
    keys = [f"c{i // IMAGES_PER_CLASS:05d}/{i:07d}.jpg" for i in range(rows)]
    rng = np.random.RandomState(0)
    noise = rng.standard_normal((4096, DIM)).astype(np.float32)

    def blocks():
        centres = np.random.RandomState(1)
        for start in range(0, rows, 4096):
            stop = min(start + 4096, rows)
            labels = np.arange(start, stop) // IMAGES_PER_CLASS
            first = labels[0]
            centre = centres.standard_normal((labels[-1] - first + 1, DIM)).astype(np.float32)
            yield 0.5 * centre[labels - first] + noise[: stop - start]

    provenance = {"model": "synthetic", "layer": "none", "weights": "none", "image_size": 0,
                  "preprocessing": "none", "compute_dtype": "float32", "backend": "none",
                  "weights_source": "none", "versions": "{}"}  # fmt: skip
    write_cache(
        path,
        keys=keys,
        fingerprints=np.zeros(rows, dtype=FINGERPRINT_DTYPE),
        feature_blocks=blocks(),
        dim=DIM,
        dtype="float32",
        failed=[],
        attrs={**provenance, "format": FORMAT_NAME, "format_version": FORMAT_VERSION},
    )
    print(f"wrote {path}: {rows} images in {n_classes} classes, "
          f"{os.path.getsize(path) / 2**30:.2f} GiB")  # fmt: skip


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (they must not be mapped anywhere)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("read_bytes")).split()[1])


def child(path: str, stream: bool, early_stopping: bool) -> None:
    from tripletsk import TripletEncoder
    from tripletsk.cache.store import FeatureStore

    keys = np.array(FeatureStore(path).keys)
    labels = np.array([k.split("/")[0] for k in keys])
    TripletEncoder(features=np.zeros((64, DIM), np.float32), max_epochs=1).fit(
        np.arange(64), np.arange(64) % 4
    )  # warm up TensorFlow (tracing, thread pools) outside the measurement
    peak_anon = [0]

    def sample():
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], _status_kib("RssAnon:"))
            time.sleep(0.05)

    done = threading.Event()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    read_before, start = _read_bytes(), time.perf_counter()
    enc = TripletEncoder(
        features=path, max_epochs=1, random_state=0, stream=stream, early_stopping=early_stopping
    )
    enc.fit(keys, labels)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    print(json.dumps({"wall": wall, "read": _read_bytes() - read_before,
                      "peak_anon": peak_anon[0] * 1024, "loss": enc.loss_curve_[-1]}))  # fmt: skip


class MemoryCgroup:
    """A memory-limited cgroup (v2 or v1) to run children in, or None when unavailable."""

    def __init__(self, limit: int):
        self.dir = None
        name = f"tripletsk-bench-{os.getpid()}"
        for root, limit_file, peak_file in (
            ("/sys/fs/cgroup", "memory.max", "memory.peak"),
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.max_usage_in_bytes"),
        ):
            candidate = Path(root) / name
            if not (Path(root) / limit_file).exists() and not Path(root, "cgroup.procs").exists():
                continue
            try:
                candidate.mkdir()
                (candidate / limit_file).write_text(str(limit))
            except OSError:
                if candidate.exists():
                    candidate.rmdir()
                continue
            if (candidate / limit_file).exists():
                self.dir, self.peak_file = candidate, peak_file
                return

    def peak(self) -> int | None:
        try:
            return int((self.dir / self.peak_file).read_text())
        except (OSError, ValueError):
            return None

    def reset_peak(self) -> None:
        if self.peak_file == "memory.max_usage_in_bytes":
            (self.dir / self.peak_file).write_text("0")

    def remove(self) -> None:
        if self.dir is not None:
            self.dir.rmdir()


def run(path: Path, stream: bool, cgroup: MemoryCgroup | None, early_stopping: bool) -> dict:
    command = [sys.executable, __file__, "--child", str(path)] + (["--stream"] if stream else [])
    command += ["--early-stopping"] if early_stopping else []
    preexec = None
    if cgroup is not None:
        evict(path)
        cgroup.reset_peak()
        procs = cgroup.dir / "cgroup.procs"

        def preexec():  # join the cgroup before exec: everything the child does counts
            procs.write_text(str(os.getpid()))

    out = subprocess.run(command, capture_output=True, text=True, preexec_fn=preexec)
    if out.returncode:
        killed = " (killed: out of memory)" if out.returncode in (-9, 137) else ""
        return {"error": f"exit {out.returncode}{killed}"}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["cgroup_peak"] = cgroup.peak() if cgroup is not None else None
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--limit-mib", type=int, default=1024)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--early-stopping",
        action="store_true",
        help="fit with early_stopping=True: a held-out 10%% is embedded after the epoch",
    )
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.stream, args.early_stopping)
        return
    gib = 2**30
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        path = Path(tmp) / "features.h5"
        write_class_sorted_cache(path, args.rows)
        size = os.path.getsize(path)
        cgroup = MemoryCgroup(args.limit_mib * 2**20)
        if cgroup.dir is None:
            print("no writable memory cgroup here: the limited runs are skipped")
        else:
            print(f"memory cgroup {cgroup.dir} limited to {args.limit_mib} MiB "
                  f"({args.limit_mib * 2**20 / size:.2f} of the cache)")  # fmt: skip
        runs = [("in memory", False, None)]
        if cgroup.dir is not None:
            runs += [("random", False, cgroup), ("stream", True, cgroup)]
        try:
            results = {}
            header = ("run", "fit s", "vs in memory", "read GiB", "read / cache",
                      "peak anon GiB", "cgroup peak GiB")  # fmt: skip
            widths = (10, 7, 12, 9, 12, 13, 15)
            print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
            for name, stream, group in runs:
                r = results[name] = run(path, stream, group, args.early_stopping)
                if "error" in r:
                    print(f"{name:>10} {r['error']}")
                    continue
                peak = "-" if r["cgroup_peak"] is None else f"{r['cgroup_peak'] / gib:.2f}"
                print(
                    f"{name:>10} {r['wall']:7.1f} {r['wall'] / results['in memory']['wall']:11.2f}x"
                    f" {r['read'] / gib:9.2f} {r['read'] / size:12.2f} "
                    f"{r['peak_anon'] / gib:13.2f} {peak:>15}"
                )
        finally:
            cgroup.remove()
    if "random" in results and "stream" in results and "error" not in results["stream"]:
        if "error" not in results["random"]:
            ratio = results["random"]["wall"] / results["stream"]["wall"]
            print(f"stream is {ratio:.2f}x faster than random order when the cache does not fit")


if __name__ == "__main__":
    main()
