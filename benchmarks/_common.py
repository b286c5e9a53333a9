"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations


def peak_rss() -> int:
    """Peak resident memory of this process in bytes (Linux VmHWM; unlike ru_maxrss it is
    not inherited from the parent across fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def time_interleaved(runners: dict, x, batch_size: int, rounds: int, reference: str):
    """Run every runner over the whole batches of ``x``: once to warm up (first-call
    compilation), then ``rounds`` times interleaved, so that load from other jobs falls on
    all of them alike.

    Returns ``(features, first_pass_s, rates, ratios, n)``: each runner's features from the
    warm-up pass, its warm-up seconds, its images/s per round, and per round the time of
    ``reference`` over its time; ``n`` images (whole batches only: one compiled shape each).
    """
    import time

    import numpy as np

    n = (len(x) // batch_size) * batch_size

    def run_all(runner):
        return np.concatenate([runner(x[i : i + batch_size]) for i in range(0, n, batch_size)])

    features, first_pass = {}, {}
    for name, runner in runners.items():
        start = time.perf_counter()
        features[name] = run_all(runner)
        first_pass[name] = time.perf_counter() - start
    rates = {name: [] for name in runners}
    ratios = {name: [] for name in runners}
    for _ in range(rounds):
        elapsed = {}
        for name, runner in runners.items():
            start = time.perf_counter()
            run_all(runner)
            elapsed[name] = time.perf_counter() - start
            rates[name].append(n / elapsed[name])
        for name in runners:
            ratios[name].append(elapsed[reference] / elapsed[name])
    return features, first_pass, rates, ratios, n
