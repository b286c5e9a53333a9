"""``backend="auto"``: the fastest runner on this CPU whose features agree with TensorFlow float32.

The candidates are the runners this machine has: TensorFlow float32 (always), OpenVINO float32
(``openvino`` installed), bfloat16 (TensorFlow, and OpenVINO if installed) only where the CPU
computes in bfloat16 natively (emulated bfloat16 is slower than float32: measured 0.76x on a
Zen 3), and OpenVINO int8 (``openvino`` and ``nncf`` installed). An explicit ``precision``
keeps only the runners of that precision.

**The trial.** The first batch of the images to extract is decoded, and every candidate runs it
once to warm up and then is timed on it (two interleaved rounds, the faster of each runner's
two times), against TensorFlow float32 as the reference: a candidate qualifies only if, for every
image of the batch, the cosine of its features to TensorFlow float32's is at least
:data:`MIN_COSINE`. The fastest qualifying runner is chosen, and the runner built for the trial
is the one the run then uses. int8 takes part only if this collection's quantized model exists
already (:mod:`tripletsk.extraction.int8`), or if the run has at least
:data:`INT8_MIN_IMAGES` images to extract: quantizing takes as long as extracting hundreds of
images, which a smaller run cannot win back.

**The record.** A trial is what costs (TensorFlow is imported and the model built to have the
reference), so its result is kept in ``.tripletsk-models/auto-<key>.json`` beside the cache,
``<key>`` a digest of this CPU (model, flags, cores), the library versions, the network, the
image size and the batch size. A later run with the same key reads its timings instead of
timing again; int8 agreement is recorded per quantized model, so another collection's int8 model
is tried again. The choice and its reason are recorded in the cache (``backend_choice``), and a
run on an existing cache, or resuming an interrupted run, keeps the runner recorded there:
features of two runners are never mixed in one cache by ``auto``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "AUTO",
    "INT8_MIN_IMAGES",
    "MIN_COSINE",
    "TRIAL_MIN_IMAGES",
    "Choice",
    "candidates",
    "choose",
    "choose_for_folder",
    "resolve",
]

AUTO = "auto"
#: The least cosine similarity, image by image, between a candidate's features and TensorFlow
#: float32's on the trial batch.
MIN_COSINE = 0.99
#: Runners are timed only for a run that extracts at least this many images (or where an earlier
#: run's trial is recorded): a smaller first run uses the reference, untimed, as a trial would
#: cost it more than it could save.
TRIAL_MIN_IMAGES = 256
#: int8 is quantized for a trial only when the run extracts at least this many images.
INT8_MIN_IMAGES = 1000
#: Bump when what a record holds or how it is measured changes: older records are unused.
RECORD_FORMAT = 1
REFERENCE = "tensorflow/float32"


@dataclass
class Choice:
    """The runner of a run, and why (recorded in the cache as ``backend_choice``)."""

    backend: str
    precision: str
    reason: str
    int8_model: object = None  # int8: the collection's Int8Model, found or made by the trial
    timings: dict = field(default_factory=dict)  # "backend/precision" -> seconds per image


def candidates(precision: str | None = None) -> list[str]:
    """``"backend/precision"`` of the runners this machine has (``precision``: only those);
    :func:`tripletsk.extraction.runners.available_runners`."""
    from tripletsk.extraction.runners import available_runners

    return available_runners(precision)


def recorded(provenance: dict) -> Choice | None:
    """The runner a cache (or an interrupted run's journal) recorded, kept by ``auto``."""
    backend, precision = provenance.get("backend"), provenance.get("compute_dtype")
    if not backend or not precision or backend == "none":
        return None
    reason = provenance.get("backend_choice") or f"auto: kept the cache's {backend}/{precision}"
    return Choice(str(backend), str(precision), str(reason))


def resolve(opts, old, journal: dict | None, files: Sequence, listing: Sequence):
    """``(opts, int8 model or None)``: ``opts`` with the runner ``backend="auto"`` stands for.
    The one the unfinished work of an interrupted run (its ``journal`` meta) or the existing
    cache (``old``, a header) recorded, so that a cache never mixes runners; else the fastest
    here (:func:`choose`, on ``files`` of the collection ``listing``)."""
    from dataclasses import replace

    from tripletsk.cache.roots import same_folder

    kept = None
    if journal and journal.get("provenance") and same_folder(journal.get("image_root") or "/",
                                                              opts.root):  # fmt: skip
        kept = recorded(journal["provenance"])
    if kept is None and old is not None:
        kept = recorded(old.provenance)
    if kept is not None and opts.precision in (None, kept.precision):
        return replace(opts, backend=kept.backend, precision=kept.precision,
                       choice=kept.reason), None  # fmt: skip
    if kept is not None or opts.shard is not None:
        # A cache of another precision (refused by the provenance check that follows), or one
        # shard of several, which may run on other machines and must compute the same features.
        backend, precision = candidates(opts.precision or "float32")[0].split("/")
        why = f"auto: {backend}/{precision}, the first runner of the precision (shards agree)"
        return replace(opts, backend=backend, precision=precision, choice=why), None
    choice = choose(opts, files, listing, precision=opts.precision)
    opts = replace(opts, backend=choice.backend, precision=choice.precision, choice=choice.reason)
    return opts, choice.int8_model


def choose_for_folder(root: str, output: str, kwargs: dict) -> tuple[str, str, str]:
    """``(backend, precision, reason)`` of :func:`choose` for extracting the whole folder
    ``root`` into a new cache ``output`` with the ``extract_features`` arguments ``kwargs``
    (how a Dask worker chooses once for all shards)."""
    from tripletsk.extraction import discover_images
    from tripletsk.extraction.options import ExtractOptions

    names = ("weights", "seed", "image_size", "batch_size", "dtype", "backend", "precision",
             "workers", "backbone", "layer", "preprocessing", "recursive",
             "max_pixels")  # fmt: skip
    opts = ExtractOptions.from_arguments(
        root, output, progress=False, quiet=True, **{k: v for k, v in kwargs.items() if k in names}
    )
    files = discover_images(root, recursive=opts.recursive).files
    choice = choose(opts, files, files, precision=opts.precision)
    return choice.backend, choice.precision, choice.reason


# -- the record --------------------------------------------------------------------------------
def cpu_identity() -> str:
    """This CPU as the record's key sees it: model name, family, model, flags, usable cores."""
    info = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f.read().split("\n\n")[0].splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # (not on Linux)
        cores = os.cpu_count() or 1
    flags = hashlib.blake2b(info.get("flags", "").encode(), digest_size=6).hexdigest()
    name = info.get("model name", "unknown CPU")
    return f"{name} (family {info.get('cpu family', '?')} model {info.get('model', '?')}), " \
           f"{cores} cores, flags {flags}"  # fmt: skip


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("tensorflow", "keras", "openvino", "nncf", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def record_path(models_dir: str, spec, image_size: int, batch_size: int) -> str:
    """Where the trial of this CPU, libraries, network and sizes is recorded."""
    ident = {"format": RECORD_FORMAT, "cpu": cpu_identity(), "versions": _versions(),
             "network": spec.arch.identity, "layer": spec.arch.layer, "weights": spec.identity,
             "image_size": int(image_size), "batch_size": int(batch_size)}  # fmt: skip
    key = hashlib.blake2b(json.dumps(ident, sort_keys=True).encode(), digest_size=12).hexdigest()
    return os.path.join(models_dir, f"auto-{key}.json")


def _read_record(path: str) -> dict:
    try:
        with open(path) as f:
            record = json.load(f)
        if isinstance(record.get("per_image"), dict) and isinstance(record.get("cosine"), dict):
            return record
    except (OSError, ValueError, AttributeError):
        pass
    return {"per_image": {}, "cosine": {}}


def _write_record(path: str, record: dict) -> None:
    """Atomically; a failure (read-only folder) only costs the next run a trial."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _cosine_key(name: str, int8_model) -> str | None:
    """The record's key of a runner's agreement: int8's is per quantized model, so None (never
    recorded) while this collection has none yet."""
    if name != "openvino/int8":
        return name
    return None if int8_model is None else f"{name}@{int8_model.digest}"


# -- the choice --------------------------------------------------------------------------------
def choose(
    opts,
    pending: Sequence,
    listing: Sequence,
    *,
    precision: str | None = None,
) -> Choice:
    """The runner for a run of ``opts`` (:class:`~tripletsk.extraction.options.ExtractOptions`)
    that extracts ``pending`` (sorted :class:`ImageFile`), of a collection ``listing``."""
    from tripletsk.extraction import int8
    from tripletsk.extraction.model_folders import models_dir

    names = candidates(precision)
    if not names:
        raise ValueError(f"no runner computes in {precision} here")
    folder = models_dir(opts.output)
    path = record_path(folder, opts.spec, opts.image_size, opts.batch_size)
    record = _read_record(path)
    notes, int8_model = [], None
    if "openvino/int8" in names:
        kwargs = {"max_pixels": opts.max_pixels, "workers": opts.workers, "quiet": opts.quiet}
        int8_model = int8.find_model(opts.spec, opts.image_size, listing, opts.output, **kwargs)
        if int8_model is None and len(pending) < INT8_MIN_IMAGES and precision is None:
            names.remove("openvino/int8")
            notes.append(f"int8 not tried: fewer than {INT8_MIN_IMAGES} images to extract and no "
                         "quantized model of this collection yet")  # fmt: skip
    if len(names) == 1:
        return Choice(*names[0].split("/"), _reason(names[0], {}, {}, 0, notes), int8_model)
    trial = None
    if int8_model is not None and _cosine_key("openvino/int8", int8_model) not in record["cosine"]:
        from tripletsk.extraction.quantization import (
            model_agreement,  # measured when it was quantized
        )

        agreement = model_agreement(int8_model.folder)
        if agreement is not None:
            record["cosine"][_cosine_key("openvino/int8", int8_model)] = agreement
    known = [n for n in names if n in record["per_image"]
             and (n == REFERENCE or _cosine_key(n, int8_model) in record["cosine"])]  # fmt: skip
    if len(known) < len(names) and len(pending) < TRIAL_MIN_IMAGES:
        untimed = [n for n in names if n not in known]
        notes.insert(0, f"not timed: {len(pending)} images to extract, fewer than "
                        f"{TRIAL_MIN_IMAGES}" + (f" ({', '.join(untimed)} left out)"
                                                 if known else ""))  # fmt: skip
        names = known or [REFERENCE if REFERENCE in names else names[0]]
    if set(known) >= set(names) and record["per_image"]:
        per_image = {n: record["per_image"][n] for n in names}
        cosine = {n: record["cosine"][_cosine_key(n, int8_model)] for n in names if n != REFERENCE}
        sample = int(record.get("sample", 0))
        notes.append(f"timed by an earlier run ({record.get('when', '?')})")
    elif len(names) == 1:
        return Choice(*names[0].split("/"), _reason(names[0], {}, {}, 0, notes))
    else:
        if "openvino/int8" in names and int8_model is None:
            int8_model = int8.quantize_for(opts.spec, opts.image_size, listing, opts.output,
                                           max_pixels=opts.max_pixels, workers=opts.workers,
                                           quiet=opts.quiet)  # fmt: skip
        trial = _Trial(opts, names, int8_model)
        per_image, cosine, sample = trial.run(pending)
        if sample:
            record["per_image"].update(per_image)
            record["cosine"].update({_cosine_key(n, int8_model): c for n, c in cosine.items()})
            record.update(sample=sample, when=time.strftime("%Y-%m-%d %H:%M"),
                          cpu=cpu_identity())  # fmt: skip
            _write_record(path, record)
    good = [n for n in names if n == REFERENCE or cosine.get(n, 0.0) >= MIN_COSINE]
    best = min(good, key=lambda n: per_image.get(n, np.inf)) if per_image else REFERENCE
    if trial is not None:
        trial.keep(best)
    backend, chosen_precision = best.split("/")
    reason = _reason(best, per_image, cosine, sample, notes)
    return Choice(backend, chosen_precision, reason,
                  int8_model if best == "openvino/int8" else None, per_image)  # fmt: skip


def _reason(best: str, per_image: dict, cosine: dict, sample: int, notes: list) -> str:
    if not per_image:
        text = f"auto: {best}" + ("" if notes and notes[0].startswith("not timed") else
                                  ", the only runner considered")  # fmt: skip
    else:
        times = ", ".join(f"{n} {s * 1e3:.1f}" for n, s in sorted(per_image.items()))
        agree = ", ".join(f"{n} {c:.4f}" for n, c in sorted(cosine.items()))
        text = (f"auto: {best}, the fastest agreeing runner: ms per image {times} (timed on "
                f"{sample} images); least cosine to {REFERENCE} {agree} (at least {MIN_COSINE} "
                "needed)")  # fmt: skip
    return "; ".join([text, *notes])


class _Trial:
    """Build each candidate, run the first batch through it, time it."""

    def __init__(self, opts, names: list, int8_model):
        self.opts, self.names, self.int8_model = opts, names, int8_model
        self.built: dict = {}

    def _sample(self, pending: Sequence) -> np.ndarray:
        from tripletsk.extraction.decode import process_file

        o, arrays = self.opts, []
        for f in pending[: 4 * o.batch_size]:  # the first readable images, one batch of them
            r = process_file(f, o.image_size, o.max_pixels)
            if r.array is not None:
                arrays.append(r.array)
            if len(arrays) == o.batch_size:
                break
        return np.stack(arrays) if arrays else np.zeros((0, o.image_size, o.image_size, 3))

    def _build(self, name: str):
        from tripletsk.extraction.backbone import build_backbone
        from tripletsk.extraction.model_folders import models_dir

        o = self.opts
        backend, precision = name.split("/")
        folder = self.int8_model.folder if precision == "int8" else None
        return build_backbone(o.spec, o.image_size, o.spec.seed, o.batch_size, backend, precision,
                              folder, models_dir(o.output))  # fmt: skip

    def run(self, pending: Sequence) -> tuple[dict, dict, int]:
        """``(seconds per image, least cosine to the reference, images timed)``; the chosen
        runner is then kept for the run (:func:`keep_backbone`)."""
        sample = self._sample(pending)
        if not len(sample):
            return {}, {}, 0
        if not self.opts.quiet:
            print(f"choosing the fastest runner ({', '.join(self.names)}) on {len(sample)} of "
                  "your images; later runs in this folder reuse the timing", file=sys.stderr,
                  flush=True)  # fmt: skip
        features = {}
        for name in [REFERENCE, *[n for n in self.names if n != REFERENCE]]:
            self.built[name] = self._build(name)
            features[name] = self.built[name](sample)  # warm-up (TensorFlow traces here)
        seconds = {n: [] for n in self.names}
        for _ in range(2):
            for name in self.names:
                t = time.perf_counter()
                self.built[name](sample)
                seconds[name].append(time.perf_counter() - t)
        per_image = {n: min(s) / self.opts.batch_size for n, s in seconds.items()}
        ref = features[REFERENCE]
        cosine = {n: _least_cosine(features[n], ref) for n in self.names if n != REFERENCE}
        return per_image, cosine, len(sample)

    def keep(self, name: str) -> None:
        """Make the trial's runner ``name`` the one the run uses (no second build)."""
        from tripletsk.extraction.backbone import keep_backbone
        from tripletsk.extraction.model_folders import models_dir

        bb = self.built.get(name)
        if bb is not None:
            folder = self.int8_model.folder if name == "openvino/int8" else None
            keep_backbone(bb, models_dir(self.opts.output), folder)


def _least_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), (num == 0).astype(float))
    return float(cos.min())
