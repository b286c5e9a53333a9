"""Where an int8 backbone spends its time: OpenVINO's per-layer counters, by layer type, and
against the same backbone in float32.

Loads a quantized model folder made by ``extract-features --precision int8`` (the
``.tripletsk-models/openvino-int8-*`` folder beside a cache), runs requests of 16 images on one
core with ``PERF_COUNT`` (after two warm-up requests; per-layer times are medians over
``--rounds`` requests), and prints the share of each (layer type, kernel) and the slowest
layers. With ``--float FOLDER`` (an ``openvino-float-*`` folder, made by ``--backend
openvino``), the float32 model is profiled the same way, the rounds of the two interleaved, and
the convolutions' times are compared by group (1x1 or larger kernels, by output size): where
int8 gains least over float32, its kernels are furthest from the arithmetic's limit. Cap the
instruction set in the environment to see another CPU class (a cap is not that CPU)::

    python benchmarks/studies/precision/int8_layer_profile.py FOLDER [--float FLOAT_FOLDER]
    ONEDNN_MAX_CPU_ISA=AVX2 OV_CPU_MAX_ISA=AVX2 \\
        python benchmarks/studies/precision/int8_layer_profile.py FOLDER
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time
from pathlib import Path

import numpy as np


class Profiled:
    """One model compiled for one core with per-layer counters."""

    def __init__(self, folder: str, images: int, hint: str | None = None):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(Path(folder) / "model.xml")
        size = model.input(0).get_partial_shape()[1].get_length()
        model.reshape([images, size, size, 3])
        config = {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1}
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        compiled = core.compile_model(model, "CPU", config)
        self.request = compiled.create_infer_request()
        rng = np.random.default_rng(0)
        self.x = rng.uniform(-100, 150, (images, size, size, 3)).astype(np.float32)
        for _ in range(2):
            self.request.infer([self.x])
        self.seconds: list[float] = []
        self.times = collections.defaultdict(list)  # node name -> us per round
        self.info = {}  # node name -> (type, kernel)
        # Convolutions: kernel kind and output size, from the runtime (executed) graph.
        self.groups = {}
        for op in compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            if "layerType" in rt and rt["layerType"].astype(str) == "Convolution":
                kernel = rt["primitiveType"].astype(str)
                shape = op.get_output_partial_shape(0)
                side = shape[2].get_length() if shape.rank.get_length() == 4 else 0
                kind = "1x1" if "1x1" in kernel else "kxk"
                self.groups[op.get_friendly_name()] = f"{kind} -> {side}x{side}"

    def run(self) -> None:
        start = time.perf_counter()
        self.request.infer([self.x])
        self.seconds.append(time.perf_counter() - start)
        for p in self.request.get_profiling_info():
            self.times[p.node_name].append(p.real_time.total_seconds() * 1e6)
            self.info[p.node_name] = (p.node_type, p.exec_type)

    def median_us(self) -> dict:
        return {name: statistics.median(t) for name, t in self.times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="a quantized model folder (model.xml, model.bin)")
    parser.add_argument("--float", dest="float_folder", help="the float model folder")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))

    int8 = Profiled(args.folder, args.images)
    f32 = Profiled(args.float_folder, args.images, "f32") if args.float_folder else None
    for _ in range(args.rounds):
        int8.run()
        if f32 is not None:
            f32.run()
    us = int8.median_us()
    print(f"int8: one request of {args.images} on 1 core: median "
          f"{statistics.median(int8.seconds):.3f} s over {args.rounds}")  # fmt: skip
    by_kind = collections.Counter()
    for name, t in us.items():
        by_kind[int8.info[name]] += t
    total = sum(by_kind.values())
    for (kind, kernel), t in by_kind.most_common(12):
        print(f"{t / total * 100:5.1f}%  {kind} ({kernel})")
    print("slowest layers:")
    for name, t in sorted(us.items(), key=lambda kv: -kv[1])[:8]:
        kind, kernel = int8.info[name]
        print(f"{t / 1e3:7.1f} ms  {name[:60]}  {kind} ({kernel})")
    if f32 is None:
        print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        return
    ratios = [f / i for f, i in zip(f32.seconds, int8.seconds, strict=True)]
    print(f"\nfloat32: median {statistics.median(f32.seconds):.3f} s; float32 / int8 time per "
          f"round: {', '.join(f'{r:.2f}' for r in ratios)}")  # fmt: skip
    f_us = f32.median_us()
    sums = collections.defaultdict(lambda: [0.0, 0.0, 0, 0])
    for model, times, slot in ((f32, f_us, 0), (int8, us, 1)):
        for name, group in model.groups.items():
            if name in times:
                sums[group][slot] += times[name]
                sums[group][slot + 2] += 1
    print(f"{'convolutions':>14} {'n f32/int8':>10} {'float32 ms':>10} {'int8 ms':>8} "
          f"{'float32/int8':>12}")  # fmt: skip
    for group in sorted(sums, key=lambda g: (g.split()[0], -int(g.split("x")[-1]))):
        f, i, nf, ni = sums[group]
        ratio = f"{f / i:11.2f}x" if i else "-"
        print(f"{group:>14} {nf:4d}/{ni:<5d} {f / 1e3:10.1f} {i / 1e3:8.1f} {ratio:>12}")
    kernels = collections.Counter(f32.info[n][1] for n in f32.groups if n in f32.info)
    print(f"float32 kernels: {', '.join(f'{k} x{c}' for k, c in kernels.most_common(3))}")
    print("load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
