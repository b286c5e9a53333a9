"""Backbone images/s in TensorFlow fp32, OpenVINO f32 and OpenVINO int8 (NNCF), and agreement.

The frozen ResNet50 of tripletsk (up to ``avg_pool``, 224 px, batch 32, random weights from a
seed as with ``weights="none"``: the cost does not depend on the values) is run on the same
real images (crops and flips of scikit-learn's two sample photos, already decoded and resized:
the bare model, not the extraction pipeline). Every runner goes from the uint8 batch to the
features, preprocessing included:

* ``tf fp32``: ResNet50's ``preprocess_input`` in NumPy, then the compiled ``tf.function``;
* ``ov f32``: the same preprocessing, then OpenVINO f32 (THROUGHPUT streams, the default);
* ``ov int8``: the same preprocessing, then the model quantized by NNCF
  (:func:`tripletsk.extraction.quantization.make_openvino_int8_runner`, calibrated on
  ``--calibration`` other crops of the photos, never the measured ones);

With ``--tune``, int8 also runs with other OpenVINO settings: performance hint THROUGHPUT
(streams, a batch split between them) or LATENCY (one stream), fixed or dynamic batch shape,
CPU pinning off, requests of a quarter and a sixteenth of the usual size (each batch then runs
as several rounds of requests).

Rounds are interleaved (every runner once per round); each runner's speed-up over TensorFlow
fp32 is the median of its per-round ratios. Agreement: cosine of each image's features to its
TensorFlow fp32 features, plain and centred (after subtracting the mean fp32 feature).

The kernels OpenVINO chose are printed (most used convolution implementation, e.g.
``brgconv_avx512_amx_I8``), so a run restricted to a lower instruction set can be checked::

    ONEDNN_MAX_CPU_ISA=AVX2 OV_CPU_MAX_ISA=AVX2 python benchmarks/extraction_int8.py

Usage::

    python benchmarks/extraction_int8.py                  # 64 images, batch 32, 3 rounds
    python benchmarks/extraction_int8.py --tune --images 96
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import time_interleaved  # noqa: E402
from extraction_bf16 import cosine_rows, real_images  # noqa: E402


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def isa_flags() -> str:
    """The CPU's vector/matrix extensions that matter here, from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "avx_vnni")
    return " ".join(f for f in wanted if f in flags) or "none of AVX2/AVX-512/AMX"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(
                line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line
            )
        info = {k.strip(): v.strip() for k, v in info.items()}
        return f"{info['model name']} (family {info['cpu family']} model {info['model']})"
    except (OSError, KeyError):
        return "unknown CPU"


def conv_kernels(runner) -> str:
    """The most used convolution implementations of a compiled OpenVINO model."""
    counts = collections.Counter()
    for op in runner.compiled_model.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "Convolution":
            counts[info["primitiveType"].astype(str)] += 1
    return ", ".join(f"{k} x{v}" for k, v in counts.most_common(2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=128, help="calibration images")
    parser.add_argument("--cache", help="quantized-model cache folder (default: a temporary one)")
    parser.add_argument("--tune", action="store_true", help="also other OpenVINO settings")
    args = parser.parse_args(argv)
    print(load(), "(start)")

    import keras
    import openvino
    import tensorflow as tf
    from keras.applications.resnet50 import preprocess_input

    from tripletsk.extraction import build_backbone, quantization
    from tripletsk.extraction import runners as backends

    images = real_images(args.images, args.size, seed=0)
    calibration = preprocess_input(real_images(args.calibration, args.size, seed=1).astype("f4"))
    model = build_backbone(weights="none", image_size=args.size, batch_size=args.batch_size).model
    b = args.batch_size

    def preprocessed(run):
        return lambda x: run(preprocess_input(x.astype(np.float32)))

    cache = args.cache or tempfile.mkdtemp(prefix="tripletsk-int8-bench-")
    setup = {}

    def timed(name, build):
        start = time.perf_counter()
        runner = build()
        setup[name] = time.perf_counter() - start
        return runner

    tf_run = timed("tf fp32", lambda: backends.make_tensorflow_runner(model, "float32"))
    ov_f32 = timed("ov f32", lambda: backends.make_openvino_runner(model, "f32", batch_size=b))
    int8 = timed(
        "ov int8",
        lambda: quantization.make_openvino_int8_runner(model, calibration, cache, batch_size=b),
    )
    folder = int8.model_folder
    runners = {
        "tf fp32": preprocessed(tf_run),
        "ov f32": preprocessed(ov_f32),
        "ov int8": preprocessed(int8),
    }
    compiled = {"ov f32": ov_f32, "ov int8": int8}
    if args.tune:
        variants = {
            "int8 tput dyn": dict(batch_size=None),
            "int8 lat fixed": dict(batch_size=b, performance_hint="LATENCY"),
            "int8 lat dyn": dict(batch_size=None, performance_hint="LATENCY"),
            "int8 tput fixed nopin": dict(batch_size=b, pinning=False),
            # smaller requests, several rounds of them per batch (the runner's chunks)
            "int8 tput req/4": dict(batch_size=max(1, b // 4)),
            "int8 tput req/16": dict(batch_size=max(1, b // 16)),
        }
        for name, kw in variants.items():
            run = timed(name, lambda kw=kw: quantization.load_openvino_int8_runner(folder, **kw))
            compiled[name] = run
            runners[name] = preprocessed(run)

    features, first_pass, rates, ratios, n_full = time_interleaved(
        runners, images, b, args.rounds, "tf fp32"
    )
    for name, seconds in first_pass.items():
        setup[name] += seconds

    ref = features["tf fp32"]
    centre = ref.mean(axis=0)
    isa_env = {k: v for k, v in os.environ.items() if k in ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA")}
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; flags: {isa_flags()}")
    print(f"ISA restriction: {isa_env or 'none'}")
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, OpenVINO "
        f"{openvino.__version__.split('-')[0]}, NNCF {__import__('nncf').__version__}"
    )
    print(
        f"ResNet50 to avg_pool, {args.size} px, batch {b}, {n_full} real images, int8 calibrated "
        f"on {args.calibration} other images; medians of {args.rounds} interleaved rounds"
    )
    print()
    print(f"{'runner':>22} {'images/s':>9} {'vs TF fp32':>10} {'per round':>17} {'cos min':>8} "
          f"{'ccos min':>8} {'ccos mean':>9} {'setup s':>8}  streams  conv kernels")  # fmt: skip
    for name in runners:
        cos = cosine_rows(features[name], ref)
        ccos = cosine_rows(features[name] - centre, ref - centre)
        per_round = "/".join(f"{r:.2f}" for r in ratios[name])
        run = compiled.get(name)
        kernels = conv_kernels(run) if run is not None else "TensorFlow (oneDNN)"
        streams = str(run.streams) if run is not None else "-"
        print(
            f"{name:>22} {np.median(rates[name]):9.1f} {np.median(ratios[name]):9.2f}x "
            f"{per_round:>17} {cos.min():8.4f} {ccos.min():8.4f} {ccos.mean():9.4f} "
            f"{setup[name]:8.1f}  {streams:>7}  {kernels}"
        )
    print()
    print("vs TF fp32: median over rounds of (TF fp32 time / this runner's time) in the round;")
    print("cos: cosine of each image's features to its TF fp32 features; ccos: the same after")
    print("subtracting the mean TF fp32 feature. setup s: building the runner (for int8: the")
    print("quantization, or loading it from the cache) plus the first pass.")
    print(f"quantized model: {folder}")
    print(load(), "(end)")


if __name__ == "__main__":
    main()
