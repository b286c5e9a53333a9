"""Where an int8 backbone spends its time: OpenVINO's per-layer counters, by layer type.

Loads a quantized model folder made by ``extract-features --precision int8`` (the
``.tripletsk-models/openvino-int8-*`` folder beside a cache), runs one request of 16 images on
one core with ``PERF_COUNT`` (after two warm-up requests), and prints the share of each
(layer type, kernel) and the slowest layers. Cap the instruction set in the environment to see
another CPU class::

    ONEDNN_MAX_CPU_ISA=AVX2 OV_CPU_MAX_ISA=AVX2 python benchmarks/int8_layer_profile.py FOLDER
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="a quantized model folder (model.xml, model.bin)")
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args(argv)

    import openvino as ov

    core = ov.Core()
    model = core.read_model(Path(args.folder) / "model.xml")
    size = model.input(0).get_partial_shape()[1].get_length()
    model.reshape([args.images, size, size, 3])
    config = {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    x = np.random.default_rng(0).uniform(-100, 150, (args.images, size, size, 3))
    x = x.astype(np.float32)
    for _ in range(2):
        request.infer([x])
    start = time.perf_counter()
    request.infer([x])
    print(f"one request of {args.images} on 1 core: {time.perf_counter() - start:.3f} s")
    by_kind, layers = collections.Counter(), []
    for p in request.get_profiling_info():
        us = p.real_time.total_seconds() * 1e6
        by_kind[(p.node_type, p.exec_type)] += us
        layers.append((us, p.node_name, p.node_type, p.exec_type))
    total = sum(by_kind.values())
    for (kind, kernel), us in by_kind.most_common(12):
        print(f"{us / total * 100:5.1f}%  {kind} ({kernel})")
    print("slowest layers:")
    for us, name, kind, kernel in sorted(layers, reverse=True)[:8]:
        print(f"{us / 1e3:7.1f} ms  {name[:60]}  {kind} ({kernel})")


if __name__ == "__main__":
    main()
