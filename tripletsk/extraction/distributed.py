"""Extraction on a Dask cluster (``dask.distributed``, extra ``tripletsk[dask]``).

:func:`extract_with_dask` splits the images into shards (see :mod:`tripletsk.cache.shards`),
extracts each shard on a worker into its own file next to the output, then merges the shards on the
client into one cache, the same as a single-process run. A shard lost with a dying worker is redone
by another worker (Dask reschedules it) and continues from the batches the dead one had finished.
Workers must see the images folder and the output folder at the same paths as the client (one
machine, or a shared file system). The cluster itself (local clusters, GPUs, TensorFlow threads,
also for grid searches): :mod:`tripletsk.extraction.dask_cluster`.

Importing this module does not import TensorFlow; it imports ``distributed`` if installed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from tripletsk.cache.format import check_provenance, read_header
from tripletsk.cache.lock import CacheLock
from tripletsk.errors import UserError
from tripletsk.extraction.dask_cluster import (
    configure_workers,
    import_distributed,
    local_cluster,
    wait_for_workers,
)
from tripletsk.extraction.parameters import (
    AUTO,
    DEFAULTS,
    SHARD_PARAMETERS,
    document_parameters,
)
from tripletsk.extraction.summary import ExtractionSummary

__all__ = ["DaskExtractionSummary", "extract_with_dask"]

SHARDS_PER_WORKER = 4


@dataclass
class DaskExtractionSummary(ExtractionSummary):
    """What :func:`extract_with_dask` did (totals over the shards)."""

    n_shards: int = 0
    n_workers: int = 0
    workers: dict = field(default_factory=dict)  # worker address -> shards extracted there

    resumed_note: ClassVar[str] = "resumed from interrupted shards"

    def describe_output(self) -> str:
        return f"{self.n_images} images, {self.n_shards} shards on {self.n_workers} Dask workers"


def _extract_shard(images_dir: str, output: str, path: str, i: int, n: int, kwargs: dict):
    """Run on a worker: extract shard ``i`` of ``n`` to ``path``. User errors are returned, not
    raised, so that Dask does not retry them."""
    from tripletsk.cache.merge import split_cache
    from tripletsk.extraction import extract_features

    t = time.perf_counter()
    try:
        if not os.path.exists(path) and os.path.exists(output):
            split_cache(output, path, (i, n))  # start from the previous merged cache
        s = extract_features(images_dir, path, shard=(i, n), quiet=True, progress=False, **kwargs)
    except UserError as e:
        return {"error": e}
    return {
        "shard": i,
        "worker": _worker_address(),
        "extracted": s.extracted,
        "cached": s.cached,
        "changed": s.changed,
        "resumed": s.resumed,
        "n_images": s.n_images,
        "seconds": time.perf_counter() - t,
    }


def _worker_address() -> str:
    with contextlib.suppress(Exception):
        from distributed import get_worker

        return get_worker().address
    return f"pid {os.getpid()}"


def _check_output(output: str, images_dir: str, kwargs: dict) -> None:
    """Fail early, on the client, if ``output`` exists with other settings, holds another
    images folder, or is a shard."""
    if not os.path.exists(output):
        return
    from tripletsk.cache.roots import ImageFolderMismatchError, same_folder
    from tripletsk.extraction.backbone import provenance_for
    from tripletsk.extraction.parameters import check_backend

    old = read_header(output)
    if "shard" in old.attrs:
        raise UserError(
            f"{output} is shard {old.attrs['shard']}; write the cluster's result to another "
            "output file"
        )
    spec = _network(kwargs)
    backend = check_backend(kwargs["backend"], kwargs["precision"])
    if backend[0] == "auto":  # auto keeps the cache's runner (at the precision asked, if any)
        backend = (old.provenance.get("backend"), backend[1] or old.provenance["compute_dtype"])
    # An int8 cache's own model is the one the shards use (see _int8_model).
    int8 = {k: v for k, v in old.provenance.items() if k.startswith("int8_")}
    expected = provenance_for(spec, kwargs["image_size"], *backend, int8=int8 or None)
    check_provenance(old.provenance, expected, output)
    root = old.attrs.get("image_root")
    if root and not same_folder(root, images_dir):
        err = ImageFolderMismatchError(output, root, images_dir)  # (Dask runs take no replace)
        err.args = (err.message("write to another output file", f"delete {output}"),)
        raise err


def _network(kwargs: dict):
    """The backbone network the extraction arguments ``kwargs`` ask for."""
    from tripletsk.extraction.backbone import resolve_network

    return resolve_network(*(kwargs[k] for k in ("weights", "seed", "backbone", "layer",
                                                  "preprocessing")))  # fmt: skip


def _resolve_auto(client, root: str, output: str, kwargs: dict) -> dict:
    """``kwargs`` with the runner ``backend="auto"`` stands for, the same for every shard: the
    one ``output`` recorded, else chosen once, on a worker (the cluster's CPU), over the whole
    collection (:func:`tripletsk.extraction.auto.choose`)."""
    from tripletsk.extraction.auto import choose_for_folder, recorded

    kept = recorded(read_header(output).provenance) if os.path.exists(output) else None
    if kept is not None:
        backend, precision, reason = kept.backend, kept.precision, kept.reason
    else:
        future = client.submit(choose_for_folder, root, output, kwargs, pure=False)
        backend, precision, reason = future.result()
    return {**kwargs, "backend": backend, "precision": precision, "backend_choice": reason}


def _int8_model(root: str, output: str, kwargs: dict, quiet: bool):
    """int8: quantize the backbone once, on the client, before the shards start (or find the
    model ``output`` recorded); the workers load it from ``.tripletsk-models/`` next to the
    output, which they must see at the same path (a shared file system)."""
    from tripletsk.extraction import discover_images
    from tripletsk.extraction.int8 import int8_model_of_cache, quantize_for

    spec = _network(kwargs)
    size = int(kwargs["image_size"])
    files = discover_images(root, recursive=kwargs["recursive"]).files
    options = {"max_pixels": kwargs["max_pixels"], "workers": kwargs["workers"] or 1,
               "quiet": quiet}  # fmt: skip
    if os.path.exists(output):
        return int8_model_of_cache(read_header(output).attrs, spec, size, files, output, **options)
    return quantize_for(spec, size, files, output, **options)


def _shard_settings(client, root: str, output: str, settings: dict, quiet: bool) -> dict:
    """The ``extract_features`` arguments of every shard: ``settings`` with the runner
    ``backend="auto"`` stands for, and with an int8 model quantized once for all."""
    if settings["backend"] == AUTO:
        settings = _resolve_auto(client, root, output, settings)
    if str(settings["precision"]).lower() in ("int8", "i8"):
        settings = {**settings, "int8_model": _int8_model(root, output, settings, quiet)}
    return settings


def _check_arguments(extract_kwargs: dict, output: str, client, cluster) -> None:
    bad = set(extract_kwargs) - set(SHARD_PARAMETERS)
    if bad:
        raise TypeError(f"extract_with_dask() got unexpected arguments {sorted(bad)}")
    if os.path.isdir(output):
        raise UserError(f"the output must be a file path, not a folder: {output}")
    if client is not None and cluster:
        raise UserError("pass either client= or scheduler=/n_workers=/gpus=, not both")


def _connect(stack: contextlib.ExitStack, client, scheduler, n_workers, gpus):
    """``client``, else a client of ``scheduler``, else of a new local cluster (closed with
    ``stack``)."""
    if client is not None:
        return client
    distributed = import_distributed()
    if scheduler:
        return stack.enter_context(distributed.Client(scheduler, set_as_default=False))
    cluster = stack.enter_context(local_cluster(n_workers, gpus=gpus))
    return stack.enter_context(distributed.Client(cluster, set_as_default=False))


@document_parameters
def extract_with_dask(
    images_dir: str | os.PathLike,
    output: str | os.PathLike = DEFAULTS["output"],
    *,
    client=None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    n_shards: int | None = None,
    gpus: str | Sequence[str] | None = None,
    tf_threads: int | None = None,
    retries: int = 2,
    keep_shards: bool = False,
    progress: bool | None = DEFAULTS["progress"],
    quiet: bool = DEFAULTS["quiet"],
    **extract_kwargs,
) -> DaskExtractionSummary:
    """Extract the features of ``images_dir`` on a Dask cluster into one cache at ``output``.

    Each shard (:mod:`tripletsk.cache.shards`) is extracted on a worker into
    ``<output>.shard-I-of-N.h5``; the client merges the shards into ``output`` and deletes them.
    The result is the same cache as ``extract_features(images_dir, output, ...)``. Runs are
    incremental like single-process ones: each shard starts from the existing ``output``.
    Workers must see ``images_dir`` and ``output`` at the same (absolute) paths as the client.

    Parameters
    ----------
    {parameters}
    client : distributed.Client or None
        The cluster to use. None: connect to ``scheduler``, or start a local cluster of
        ``n_workers`` processes (closed at the end).
    scheduler : str or None
        Address of a running scheduler, e.g. ``"tcp://host:8786"``.
    n_workers : int or None
        Workers of the local cluster (default: one per 2 cores, or one per GPU with ``gpus``).
    n_shards : int or None
        Number of shards (default: 4 per worker: a lost worker costs little, shards balance
        across unequal workers, and progress moves in small steps).
    gpus : "auto", "0,1", sequence or None
        Local cluster only: one worker per GPU, each seeing only its GPU.
    tf_threads : int or None
        TensorFlow threads per worker (default: the worker's share of its machine's cores).
    retries : int, default 2
        Extra attempts of a shard whose task raised an unexpected error (a shard whose worker
        died is rescheduled by Dask anyway, up to ``distributed.scheduler.allowed-failures``).
    keep_shards : bool, default False
        Keep the shard files after the merge.
    **extract_kwargs
        Passed to every shard's ``extract_features``: {shard_parameters}.
        A backbone model file must be at the same path on every worker.

    Returns
    -------
    DaskExtractionSummary
    """
    from tripletsk.cache.merge import merge_shards_locked, remove_shard_files

    import_distributed()  # (says how to install it)
    t0 = time.perf_counter()
    root, output = os.path.abspath(images_dir), os.path.abspath(output)
    _check_arguments(extract_kwargs, output, client, scheduler or n_workers or gpus)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    settings = {k: extract_kwargs.get(k, DEFAULTS[k]) for k in SHARD_PARAMETERS}
    with contextlib.ExitStack() as stack:
        stack.enter_context(CacheLock(output))  # no other extraction writes output meanwhile
        _check_output(output, os.fspath(images_dir), settings)
        client = _connect(stack, client, scheduler, n_workers, gpus)
        workers = wait_for_workers(client, n_workers or 1)
        configure_workers(client, tf_threads)
        n = _shard_count(n_shards, len(workers))
        settings = _shard_settings(client, root, output, settings, quiet)
        summary = DaskExtractionSummary(output=output, n_shards=n, n_workers=len(workers))
        paths, futures = _submit(client, root, output, n, settings, retries)
        _collect(client, futures, summary, progress, quiet)
        merged = merge_shards_locked(paths, output)
    if not keep_shards:
        remove_shard_files(paths)
    summary.n_images, summary.failed, summary.failed_list = (
        merged.n_images, merged.failed, merged.failed_list)  # fmt: skip
    summary.seconds = time.perf_counter() - t0
    return summary


def _shard_count(n_shards: int | None, n_workers: int) -> int:
    n = int(n_shards or SHARDS_PER_WORKER * n_workers)
    if n < 1:
        raise UserError(f"n_shards must be at least 1, got {n}")
    return n


def _submit(client, root: str, output: str, n: int, settings: dict, retries: int):
    """Submit the extraction of each of the ``n`` shards: ``(paths, futures)``."""
    from tripletsk.cache.shards import shard_path

    paths, run_id = [shard_path(output, i, n) for i in range(1, n + 1)], uuid.uuid4().hex[:8]
    return paths, [
        client.submit(_extract_shard, root, output, p, i, n, settings, pure=False,
                      key=f"tripletsk-shard-{i}-of-{n}-{run_id}", retries=retries)
        for i, p in enumerate(paths, start=1)
    ]  # fmt: skip


def _collect(client, futures: list, summary: DaskExtractionSummary, progress, quiet) -> None:
    """Add up the shards' results as they finish (a progress bar as ``progress`` and ``quiet``
    say); cancel the rest on the first error."""
    from tqdm import tqdm

    show = (not quiet and sys.stderr.isatty()) if progress is None else bool(progress)
    distributed = import_distributed()
    bar = tqdm(total=len(futures), desc="shards", unit="shard", file=sys.stderr, disable=not show)
    try:
        for fut in distributed.as_completed(futures, loop=client.loop):
            res = fut.result()
            if "error" in res:
                raise res["error"]
            for k in ("extracted", "cached", "changed", "resumed"):
                setattr(summary, k, getattr(summary, k) + res[k])
            summary.workers.setdefault(res["worker"], []).append(res["shard"])
            bar.update(1)
            bar.set_postfix(images=summary.extracted + summary.changed, refresh=False)
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        bar.close()
