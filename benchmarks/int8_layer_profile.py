"""Where an int8 backbone spends its time: OpenVINO's per-layer counters, by layer type, and
against the same backbone in float32.

Loads a quantized model folder made by ``extract-features --precision int8`` (the
``.tripletsk-models/openvino-int8-*`` folder beside a cache), runs one request of 16 images on
one core with ``PERF_COUNT`` (after two warm-up requests), and prints the share of each
(layer type, kernel) and the slowest layers. With ``--float FOLDER`` (an
``openvino-float-*`` folder, made by ``--backend openvino``), the float32 model is profiled the
same way and each convolution's int8 time is compared with its float32 time, by kind (1x1 or
3x3 and larger, by stage): where int8 gains little, the kernel is not the arithmetic's limit.
Cap the instruction set in the environment to see another CPU class (a cap is not that CPU)::

    python benchmarks/int8_layer_profile.py FOLDER [--float FLOAT_FOLDER]
    ONEDNN_MAX_CPU_ISA=AVX2 OV_CPU_MAX_ISA=AVX2 python benchmarks/int8_layer_profile.py FOLDER
"""

from __future__ import annotations

import argparse
import collections
import re
import time
from pathlib import Path

import numpy as np


def profile(folder: str, images: int, hint: str | None = None):
    """``(seconds of the timed request, {layer name: (us, type, kernel)})``."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(Path(folder) / "model.xml")
    size = model.input(0).get_partial_shape()[1].get_length()
    model.reshape([images, size, size, 3])
    config = {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1}
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    request = core.compile_model(model, "CPU", config).create_infer_request()
    x = np.random.default_rng(0).uniform(-100, 150, (images, size, size, 3)).astype(np.float32)
    for _ in range(2):
        request.infer([x])
    start = time.perf_counter()
    request.infer([x])
    seconds = time.perf_counter() - start
    layers = {}
    for p in request.get_profiling_info():
        layers[p.node_name] = (p.real_time.total_seconds() * 1e6, p.node_type, p.exec_type)
    return seconds, layers


def conv_kind(name: str) -> str | None:
    """ResNet50 convolutions by stage and kernel size, from Keras' layer names."""
    m = re.search(r"conv(\d)_block\d+_(\d)_conv", name)
    if not m:
        return "stem 7x7" if re.search(r"conv1_conv", name) else None
    stage, which = m.groups()
    return f"stage {stage} {'3x3' if which == '2' else '1x1'}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="a quantized model folder (model.xml, model.bin)")
    parser.add_argument("--float", dest="float_folder", help="the float model folder")
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args(argv)

    seconds, layers = profile(args.folder, args.images)
    print(f"int8: one request of {args.images} on 1 core: {seconds:.3f} s")
    by_kind = collections.Counter()
    for us, kind, kernel in layers.values():
        by_kind[(kind, kernel)] += us
    total = sum(by_kind.values())
    for (kind, kernel), us in by_kind.most_common(12):
        print(f"{us / total * 100:5.1f}%  {kind} ({kernel})")
    print("slowest layers:")
    ranked = sorted(((us, n, k, e) for n, (us, k, e) in layers.items()), reverse=True)
    for us, name, kind, kernel in ranked[:8]:
        print(f"{us / 1e3:7.1f} ms  {name[:60]}  {kind} ({kernel})")
    if not args.float_folder:
        return
    f_seconds, f_layers = profile(args.float_folder, args.images, "f32")
    print(f"\nfloat32: one request of {args.images} on 1 core: {f_seconds:.3f} s; "
          f"int8 / float32 time: {seconds / f_seconds:.2f}")  # fmt: skip
    # Match each float convolution to the int8 layers whose name it begins (int8 graphs add
    # FakeQuantize nodes and may rename the fused layer).
    f_convs = {n: v for n, v in f_layers.items() if v[1] == "Convolution"}
    i_convs = {n: v for n, v in layers.items() if v[1] == "Convolution"}
    sums = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for fname, (fus, _, _) in f_convs.items():
        kind = conv_kind(fname)
        match = [v for n, v in i_convs.items() if conv_kind(n) and n.split("/")[0] in fname]
        if kind is None or len(match) != 1:
            continue
        sums[kind][0] += fus
        sums[kind][1] += match[0][0]
        sums[kind][2] += 1
    print(f"{'convolutions':>16} {'n':>3} {'float32 ms':>10} {'int8 ms':>8} {'float/int8':>10}")
    for kind in sorted(sums):
        f_us, i_us, n = sums[kind]
        print(f"{kind:>16} {n:3d} {f_us / 1e3:10.1f} {i_us / 1e3:8.1f} {f_us / i_us:9.2f}x")
    kernels = collections.Counter(v[2] for v in f_convs.values())
    print(f"float32 kernels: {', '.join(f'{k} x{c}' for k, c in kernels.most_common(3))}")


if __name__ == "__main__":
    main()
