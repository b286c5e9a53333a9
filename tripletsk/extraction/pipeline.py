"""The extraction pipeline: decoding threads feed the model, a writer thread saves each batch.

Batches are decoded ahead of the model (Pillow releases the GIL), the model runs one batch at a
time, and each finished batch is written as one journal part while the next batch runs, so an
interruption loses at most the batches in flight.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tripletsk.cache.format import FINGERPRINT_DTYPE
from tripletsk.cache.journal import PartsJournal
from tripletsk.cache.write_errors import writing_cache
from tripletsk.extraction.backbone import cached_backbone
from tripletsk.extraction.budget import ByteBudget
from tripletsk.extraction.decode import process_file
from tripletsk.extraction.discovery import ImageFile
from tripletsk.extraction.model_folders import models_dir
from tripletsk.extraction.options import ExtractOptions

__all__ = ["DECODE_NICE", "extract_pending", "progress_bar"]

#: Added to the niceness of each decoding thread (Linux: per thread). The model's threads
#: synchronise at every layer, so a decoding thread that preempts one holds all of them up; at a
#: lower priority decoding fills the model's idle moments instead (benchmarks/extraction.py).
DECODE_NICE = 10


def progress_bar(total: int, desc: str, show: bool):
    """A tqdm bar on stderr (disabled unless ``show``)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        file=sys.stderr,
        disable=not show,
        dynamic_ncols=True,
        smoothing=0.05,
        leave=True,
    )


def _background_thread() -> None:
    """Lower this decoding thread's priority by :data:`DECODE_NICE`."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + DECODE_NICE)


def _journal_batch(results: list, backbone) -> tuple[list, np.ndarray, np.ndarray, list]:
    """(keys, features, fingerprints, failures) of one decoded batch, for a journal part."""
    ok = [r for r in results if r.array is not None]
    if ok:
        feats = backbone(np.stack([r.array for r in ok]))
    else:
        feats = np.zeros((0, backbone.dim), np.float32)
    fps = np.array(
        [(s, m, d.encode(), h) for s, m, d, h in (r.fingerprint for r in ok)],
        dtype=FINGERPRINT_DTYPE,
    ).reshape(-1)
    failed = [
        (r.file.key, r.reason, int(r.fingerprint[0]), int(r.fingerprint[1]))
        for r in results
        if r.array is None
    ]
    return [r.file.key for r in ok], feats, fps, failed


def _write_part(journal: PartsJournal, part: tuple) -> None:
    with writing_cache(journal.cache_path, journal.dir):
        journal.write(*part)


class _LazyBackbone:
    """The backbone, built on its first call (a run of only unreadable files needs none)."""

    def __init__(self, opts: ExtractOptions):
        self.opts, self.model, self.ready_at = opts, None, None

    @property
    def dim(self) -> int:
        return self.opts.dim

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.model is None:  # the decoding of the next batches runs meanwhile
            o = self.opts
            self.model = cached_backbone(
                o.spec, o.image_size, o.batch_size, o.backend, o.precision, o.int8_folder,
                models_dir(o.output),
            )  # fmt: skip
            self.ready_at = time.perf_counter()
        return self.model(images)


def extract_pending(
    pending: Sequence[ImageFile], journal: PartsJournal, opts: ExtractOptions
) -> tuple[bool, float | None]:
    """Decode (threads) and run the model batch by batch, writing one journal part per batch.

    Returns whether the run was interrupted (KeyboardInterrupt) and the ``time.perf_counter()``
    at which the model was ready (None if no image could be decoded, so none was built).
    """
    b = opts.batch_size
    batches = iter([pending[i : i + b] for i in range(0, len(pending), b)])
    pool = ThreadPoolExecutor(
        opts.workers, thread_name_prefix="tripletsk-decode", initializer=_background_thread
    )
    writer = ThreadPoolExecutor(1, thread_name_prefix="tripletsk-write")
    inflight: deque = deque()
    backbone = _LazyBackbone(opts)
    budget = ByteBudget(opts.decode_memory)

    def submit_next() -> None:
        batch = next(batches, None)
        if batch is not None:
            args = (opts.image_size, opts.max_pixels, budget)
            inflight.append([pool.submit(process_file, f, *args) for f in batch])

    write_future = bar = None
    interrupted = False
    try:
        for _ in range(max(3, opts.workers)):  # batches decoded ahead of the model
            submit_next()
        bar = progress_bar(len(pending), "extracting", opts.show)
        while inflight:
            futures = inflight.popleft()
            submit_next()
            results = [fu.result() for fu in futures]
            part = _journal_batch(results, backbone)
            if write_future is not None:
                write_future.result()
            write_future = writer.submit(_write_part, journal, part)
            bar.update(len(results))
        if write_future is not None:
            write_future.result()
    except KeyboardInterrupt:
        interrupted = True
        if write_future is not None:
            with contextlib.suppress(Exception):
                write_future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
        if bar is not None:
            bar.close()
    return interrupted, backbone.ready_at
