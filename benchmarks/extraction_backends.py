"""Whole ``extract-features`` processes per backend: per-image time from the slope between two
folder sizes, fixed cost, and ``--backend auto`` against the fastest explicit choice.

Writes two folders of photo-like JPEGs (``benchmarks/extraction.py``'s ``write_photos``; the
small folder's photos are the first of the large one's), runs one warm-up process of each
configuration (int8 quantizes its backbone once, OpenVINO keeps its converted models, auto
records its choice: what a user's second run finds; int8 and auto on both folders, whose int8
models differ), then ``--rounds`` interleaved rounds: in
each, every configuration extracts both folders, each a new ``python -m tripletsk
extract-features`` process into a fresh cache in one output folder, timed from start to exit.

Per configuration and round: the per-image time is the slope ``(T_large - T_small) / (N_large -
N_small)`` (what each further image costs: fixed costs cancel), the fixed cost ``T_small -
N_small * slope`` (interpreter, imports, model build or load, auto's choice). Reported: medians
over rounds, each configuration's per-round ratio to TensorFlow float32 (its slope over TF's,
whole-process time at each size), and for ``auto`` its whole-process time over the fastest
explicit configuration's in the same round, at each size. ``uptime`` before and after every
round. Which runner auto chose is read back from each cache.

Usage::

    python benchmarks/extraction_backends.py                         # 48 / 144 photos of 256 px
    python benchmarks/extraction_backends.py --sizes 128 384 --photo-size 1600x1200
    python benchmarks/extraction_backends.py --configs tensorflow/float32 auto
    python benchmarks/extraction_backends.py --baseline ../old-checkout \
        --configs tensorflow/float32 before:openvino/int8 openvino/int8   # before/after

Weights are random (``--weights none``) so it runs offline; the model's cost is the same.
"""

from __future__ import annotations

import argparse
import os
import shutil
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
from extraction_int8 import cpu_model, isa_flags  # noqa: E402

DEFAULT_CONFIGS = ("tensorflow/float32", "openvino/float32", "openvino/int8", "auto")


def uptime() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def command(config: str, photos: Path, output: Path, args) -> list[str]:
    backend, _, precision = config.removeprefix("before:").partition("/")
    cmd = [sys.executable, "-m", "tripletsk", "extract-features", str(photos), "-o", str(output),
           "--weights", "none", "--image-size", str(args.image_size),
           "--batch-size", str(args.batch_size), "--backend", backend, "-q"]  # fmt: skip
    if precision:
        cmd += ["--precision", precision]
    return cmd


CPU_SECONDS: dict = {}  # (config, photos, output) -> CPU seconds (user + system) of the run


def run(config: str, photos: Path, output: Path, args) -> float:
    """Seconds from process start to exit of one extraction into a fresh cache (its CPU
    seconds go to :data:`CPU_SECONDS`)."""
    if output.exists():
        output.unlink()
    t = time.perf_counter()
    code = Path(args.baseline) if config.startswith("before:") else HERE.parent
    env = {**os.environ, "PYTHONPATH": str(code)}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command(config, photos, output, args), cwd=code, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{config} failed:\n{err.read().decode()[-3000:]}")
    CPU_SECONDS[(config, photos, output)] = usage.ru_utime + usage.ru_stime
    return seconds


def chosen(output: Path) -> str:
    """backend/precision (and auto's reason) recorded in a cache."""
    import h5py

    with h5py.File(output, "r") as f:
        a = f.attrs
        text = f"{a['backend']}/{a['compute_dtype']}"
        if "backend_choice" in a:
            text += f" ({a['backend_choice']})"
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=(48, 144), metavar=("SMALL", "LARGE"))
    ap.add_argument("--photo-size", default="256x256", help="WxH of the JPEGs written")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                    help="backend/precision, or a backend alone")  # fmt: skip
    ap.add_argument("--keep", help="keep the photos and caches in this folder")
    ap.add_argument("--baseline", help="a checkout of other code: configs 'before:B/P' run it")
    args = ap.parse_args(argv)
    small, large = sorted(args.sizes)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    caps = {k: v for k, v in os.environ.items() if k in ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA")}
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; flags: {isa_flags()}")
    print(f"ISA caps: {caps or 'none (native)'}")
    w, h = map(int, args.photo_size.lower().split("x"))
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="tripletsk-backends-"))
    try:
        write_photos(tmp / "large", large, (w, h))
        (tmp / "small").mkdir(exist_ok=True)
        for p in sorted((tmp / "large").iterdir())[:small]:
            shutil.copy2(p, tmp / "small" / p.name)
        photos = {small: tmp / "small", large: tmp / "large"}
        out = tmp / "out"
        out.mkdir(exist_ok=True)
        print(f"{small} / {large} JPEGs of {w}x{h}, image size {args.image_size}, batch "
              f"{args.batch_size}; every run a new process")  # fmt: skip
        for config in args.configs:  # warm-up: quantize, convert, record auto's choice
            # (int8 models and auto's int8 agreement are per collection: both folders)
            for n in (small, large) if ("int8" in config or config == "auto") else (small,):
                t = run(config, photos[n], out / "warmup.h5", args)
                print(f"warm-up {config}, {n} photos: {t:.1f} s -> {chosen(out / 'warmup.h5')}")
        times = {c: {small: [], large: []} for c in args.configs}
        cpu = {c: {small: [], large: []} for c in args.configs}
        for r in range(1, args.rounds + 1):
            before = uptime()
            for n in (small, large):
                for config in args.configs:
                    target = out / f"r{r}-{n}-{config.replace('/', '-').replace(':', '-')}.h5"
                    times[config][n].append(run(config, photos[n], target, args))
                    cpu[config][n].append(CPU_SECONDS[(config, photos[n], target)])
            line = "; ".join(
                f"{c} {times[c][small][-1]:.1f}/{times[c][large][-1]:.1f} s" for c in args.configs
            )
            print(f"round {r} ({small}/{large} photos): {line}  [{before} -> {uptime()}]")
        if "auto" in args.configs:
            print(f"auto chose: {chosen(out / f'r{args.rounds}-{large}-auto.h5')}")
        report(times, args.configs, small, large, args.rounds)
        cpu_report(cpu, args.configs, small, large, args.rounds)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def report(times: dict, configs, small: int, large: int, rounds: int) -> None:
    def slope(c, r):
        return (times[c][large][r] - times[c][small][r]) / (large - small)

    ref = configs[0]
    print(f"\nmedians of {rounds} rounds; ratios are per round, then the median; reference {ref}")
    ts, tl = f"T{small} s", f"T{large} s"
    print(f"{'config':>20} {'ms/image':>9} {'fixed s':>8} {'img/s':>7} {'speed-up':>9} "
          f"{ts:>7} {'x':>6} {tl:>7} {'x':>6}")  # fmt: skip
    for c in configs:
        slopes = [slope(c, r) for r in range(rounds)]
        fixed = [times[c][small][r] - small * slopes[r] for r in range(rounds)]
        speedup = [slope(ref, r) / slopes[r] for r in range(rounds)]
        whole = {n: [times[ref][n][r] / times[c][n][r] for r in range(rounds)] for n in times[c]}
        med = statistics.median
        print(
            f"{c:>20} {med(slopes) * 1e3:9.1f} {med(fixed):8.1f} {1 / med(slopes):7.1f} "
            f"{med(speedup):8.2f}x {med(times[c][small]):7.1f} {med(whole[small]):5.2f}x "
            f"{med(times[c][large]):7.1f} {med(whole[large]):5.2f}x"
            f"   (speed-up per round {', '.join(f'{s:.2f}' for s in speedup)})"
        )
    explicit = [c for c in configs if c != "auto" and not c.startswith("before:")]
    if "auto" in configs and explicit:
        for n in (small, large):
            ratios = [
                times["auto"][n][r] / min(times[c][n][r] for c in explicit) for r in range(rounds)
            ]
            best = [min(explicit, key=lambda c, r=r: times[c][n][r]) for r in range(rounds)]
            per_round = ", ".join(f"{x:.3f}" for x in ratios)
            print(f"auto / fastest explicit whole process at {n} photos: median "
                  f"{statistics.median(ratios):.3f} (per round {per_round}; fastest: "
                  f"{', '.join(best)})")  # fmt: skip
        sl = [slope("auto", r) / min(slope(c, r) for c in explicit) for r in range(rounds)]
        print(f"auto / fastest explicit per-image slope: median {statistics.median(sl):.3f}")
    print("speed-up: TF float32's per-image slope over this one's; x: TF's whole-process time")
    print("over this one's at that folder size")


def cpu_report(cpu: dict, configs, small: int, large: int, rounds: int) -> None:
    """CPU seconds (user + system, all threads) per image, from the slope: less sensitive than
    wall time to other jobs taking the cores, though not what a user waits for."""
    med = statistics.median
    ref = configs[0]
    for c in configs:
        slopes = [(cpu[c][large][r] - cpu[c][small][r]) / (large - small) for r in range(rounds)]
        refs = [(cpu[ref][large][r] - cpu[ref][small][r]) / (large - small) for r in range(rounds)]
        print(
            f"{c:>20} CPU {med(slopes) * 1e3:7.1f} ms/image, fixed "
            f"{med(cpu[c][small][r] - small * slopes[r] for r in range(rounds)):6.1f} CPU s; "
            f"{ref} / this: {med(a / b for a, b in zip(refs, slopes, strict=True)):.2f}x"
        )


if __name__ == "__main__":
    main()
