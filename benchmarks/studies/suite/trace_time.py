"""A pytest plugin: how much of a test run is TensorFlow tracing graphs.

Wraps TensorFlow's private ``tracing_compilation._create_concrete_function`` (TF 2.21) to time
each trace, by traced function and by test, and writes one JSON file per process (each
pytest-xdist worker) into ``$TRACE_TIME_DIR`` (default: the current folder). Run::

    rm -rf /tmp/traces && mkdir /tmp/traces
    TRACE_TIME_DIR=/tmp/traces PYTHONPATH=benchmarks/studies/suite \\
        python -m pytest -m "not slow" -q -p trace_time
    python benchmarks/studies/suite/trace_time.py /tmp/traces
"""

from __future__ import annotations

import atexit
import collections
import glob
import json
import os
import sys
import time

_stats = {"by_name": {}, "by_file": {}}


def _install() -> None:
    from tensorflow.python.eager.polymorphic_function import tracing_compilation as tc

    original = tc._create_concrete_function

    def timed(function_type, type_context, func_graph, tracing_options):
        start = time.perf_counter()
        try:
            return original(function_type, type_context, func_graph, tracing_options)
        finally:
            seconds = time.perf_counter() - start
            test_file = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[0]
            for table, key in (("by_name", tracing_options.name), ("by_file", test_file)):
                count, total = _stats[table].get(key, (0, 0.0))
                _stats[table][key] = (count + 1, total + seconds)

    tc._create_concrete_function = timed
    atexit.register(_dump)


def _dump() -> None:
    folder = os.environ.get("TRACE_TIME_DIR", ".")
    with open(os.path.join(folder, f"trace_time_{os.getpid()}.json"), "w") as f:
        json.dump(_stats, f)


def pytest_configure(config) -> None:  # a pytest hook: runs in each worker
    _install()


def report(folder: str) -> None:
    totals = {"by_name": collections.Counter(), "by_file": collections.Counter()}
    counts = collections.Counter()
    for path in glob.glob(os.path.join(folder, "trace_time_*.json")):
        with open(path) as f:
            stats = json.load(f)
        for table in totals:
            for key, (count, seconds) in stats[table].items():
                totals[table][key] += seconds
                if table == "by_name":
                    counts[key] += count
    print(f"{sum(counts.values())} traces, {sum(totals['by_name'].values()):.1f} s")
    for key, seconds in totals["by_name"].most_common(5):
        print(f"  {counts[key]:4d} traces {seconds:6.1f} s  {key}")
    for key, seconds in totals["by_file"].most_common(8):
        print(f"  {seconds:6.1f} s  {key}")


if __name__ == "__main__":
    report(sys.argv[1])
