"""Extraction and grid searches on a Dask cluster (``dask.distributed``, extra ``tripletsk[dask]``).

:func:`extract_with_dask` splits the images into shards (see :mod:`tripletsk.cache.shards`),
extracts each shard on a worker into its own file next to the output, then merges the shards on the
client into one cache, the same as a single-process run. A shard lost with a dying worker is redone
by another worker (Dask reschedules it) and continues from the batches the dead one had finished.
Workers must see the images folder and the output folder at the same paths as the client (one
machine, or a shared file system).

:func:`configure_workers` limits TensorFlow's threads on every worker (current and future ones),
so that workers sharing a machine do not oversubscribe its cores, e.g. for a grid search through
joblib's Dask backend (see ``docs/scaling.md``).

Importing this module does not import TensorFlow; it imports ``distributed`` if installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from tripletsk.cache.format import check_provenance, read_header
from tripletsk.cache.lock import CacheLock
from tripletsk.cache.store import DEFAULT_CACHE
from tripletsk.errors import UserError
from tripletsk.extraction.summary import ExtractionSummary

__all__ = [
    "DaskExtractionSummary",
    "TFThreads",
    "configure_workers",
    "extract_with_dask",
    "gpu_worker_env",
    "local_cluster",
    "visible_gpus",
]

SHARDS_PER_WORKER = 4

try:  # the plugin must be a WorkerPlugin for Client.register_plugin to send it to workers
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:  # without Dask, the module still imports (its functions then say what to do)
    _WorkerPlugin = object


def _distributed():
    try:
        import distributed
    except ImportError:
        raise UserError(
            "running on a Dask cluster needs dask.distributed: pip install 'tripletsk[dask]'"
        ) from None
    return distributed


# --------------------------------------------------------------------------------------------
# Workers: threads and GPUs
# --------------------------------------------------------------------------------------------


def set_tf_threads(n: int) -> None:
    """Limit this process's TensorFlow to ``n`` intra-op threads (and at most 2 inter-op ones).

    Effective when called before TensorFlow runs its first operation (TensorFlow reads the
    environment then); afterwards the running process keeps its thread pools.
    """
    n = max(1, int(n))
    for var, value in (
        ("TF_NUM_INTRAOP_THREADS", n),
        ("TF_NUM_INTEROP_THREADS", min(2, n)),
        ("OMP_NUM_THREADS", n),
    ):
        os.environ[var] = str(value)
    if "tensorflow" in sys.modules:  # already imported: ask it too (refused once initialised)
        tf = sys.modules["tensorflow"]
        with contextlib.suppress(Exception):
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, n))


class TFThreads(_WorkerPlugin):
    """A Dask worker plugin that calls :func:`set_tf_threads` on every worker, also on workers
    started (or restarted) later."""

    name = "tripletsk-tf-threads"

    def __init__(self, n: int):
        self.n = int(n)

    def setup(self, worker) -> None:
        set_tf_threads(self.n)


def _wait_for_workers(client, n: int = 1, timeout: float = 120) -> dict:
    try:
        client.wait_for_workers(n, timeout=timeout)
    except Exception as e:
        raise UserError(
            f"no Dask worker connected to {client.scheduler.address} within {timeout:.0f} s "
            f"({type(e).__name__}); start workers with `dask worker ADDRESS`"
        ) from None
    return client.scheduler_info(n_workers=-1)["workers"]


def configure_workers(client, tf_threads: int | None = None) -> int:
    """Limit TensorFlow's threads on every worker of ``client``'s cluster; return the limit.

    By default each task thread gets an equal share of its machine's cores (cores of the host /
    task threads of all workers on that host), the smallest share over the hosts.
    """
    if tf_threads is None:
        workers = _wait_for_workers(client)
        cores = client.run(os.cpu_count)
        per_host: dict[str, int] = {}
        for w in workers.values():
            per_host[w["host"]] = per_host.get(w["host"], 0) + int(w["nthreads"])
        tf_threads = min(
            max(1, int(cores.get(a) or 1) // per_host[w["host"]]) for a, w in workers.items()
        )
    client.register_plugin(TFThreads(tf_threads), name=TFThreads.name)
    return int(tf_threads)


def visible_gpus() -> list[str]:
    """The GPUs this machine shows to CUDA: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi``.

    Does not import TensorFlow; ``[]`` on a machine without GPUs.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [g.strip() for g in env.split(",") if g.strip()]
        # CUDA stops at the first invalid id, e.g. "-1" hides every GPU
        return ids[: next((i for i, g in enumerate(ids) if g.startswith("-")), len(ids))]
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def gpu_worker_env(gpus: str | Sequence[str] | None) -> list[dict[str, str]]:
    """One environment per worker process, each worker seeing one GPU.

    ``gpus`` is ``"auto"`` (all visible GPUs), a comma-separated string (``"0,1"``), a sequence of
    GPU ids, or None/empty (no GPU: ``[]``).
    """
    if gpus is None:
        return []
    if isinstance(gpus, str):
        ids = visible_gpus() if gpus.strip().lower() == "auto" else gpus.split(",")
    else:
        ids = [str(g) for g in gpus]
    ids = [g.strip() for g in ids if g.strip()]
    if len(set(ids)) != len(ids):
        raise UserError(f"gpus lists a GPU twice: {','.join(ids)}")
    return [{"CUDA_VISIBLE_DEVICES": g} for g in ids]


def local_cluster(
    n_workers: int | None = None, *, gpus: str | Sequence[str] | None = None, **kwargs
):
    """A Dask cluster of worker processes on this machine (one task thread each).

    With ``gpus``, one worker per GPU, each seeing only its own GPU (``CUDA_VISIBLE_DEVICES``);
    ``n_workers`` then defaults to the number of GPUs and must not exceed it. Without, the
    default is one worker per 2 cores (TensorFlow uses the cores of its worker).
    """
    distributed = _distributed()
    envs = gpu_worker_env(gpus)
    if gpus is not None and not envs:
        raise UserError(
            f"gpus={gpus!r}: no GPU is visible on this machine (CUDA_VISIBLE_DEVICES / "
            "nvidia-smi); leave gpus unset to run on the CPU"
        )
    kwargs.setdefault("dashboard_address", ":0")
    kwargs.setdefault("silence_logs", logging.ERROR)  # e.g. the nannies' shutdown warnings
    if not envs:
        n = n_workers or max(1, (os.cpu_count() or 1) // 2)
        return distributed.LocalCluster(n_workers=n, processes=True, threads_per_worker=1, **kwargs)
    if n_workers is not None and n_workers > len(envs):
        raise UserError(f"{n_workers} workers with only {len(envs)} GPU(s) in gpus")
    envs = envs[: n_workers or len(envs)]
    silence = kwargs.pop("silence_logs")
    scheduler = {
        "cls": distributed.Scheduler,
        "options": {"dashboard_address": kwargs.pop("dashboard_address")},
    }
    workers = {
        f"gpu-{env['CUDA_VISIBLE_DEVICES']}": {
            "cls": distributed.Nanny,
            "options": {"nthreads": 1, "env": env, **kwargs},
        }
        for env in envs
    }
    return distributed.SpecCluster(workers=workers, scheduler=scheduler, silence_logs=silence)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


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
    from tripletsk.extraction import check_backend, provenance_for

    old = read_header(output)
    if "shard" in old.attrs:
        raise UserError(
            f"{output} is shard {old.attrs['shard']}; write the cluster's result to another "
            "output file"
        )
    spec = _network(kwargs)
    backend = check_backend(kwargs.get("backend", _default_backend()), kwargs.get("precision"))
    if backend[0] == "auto":  # auto keeps the cache's runner (at the precision asked, if any)
        backend = (old.provenance.get("backend"), backend[1] or old.provenance["compute_dtype"])
    # An int8 cache's own model is the one the shards use (see _int8_model).
    int8 = {k: v for k, v in old.provenance.items() if k.startswith("int8_")}
    expected = provenance_for(spec, kwargs.get("image_size", 224), *backend, int8=int8 or None)
    check_provenance(old.provenance, expected, output)
    root = old.attrs.get("image_root")
    if root and not same_folder(root, images_dir):
        err = ImageFolderMismatchError(output, root, images_dir)  # (Dask runs take no replace)
        err.args = (err.message("write to another output file", f"delete {output}"),)
        raise err


def _network(kwargs: dict):
    """The backbone network the extraction arguments ``kwargs`` ask for."""
    from tripletsk.extraction.backbone import resolve_network

    names = ("weights", "seed", "backbone", "layer", "preprocessing")
    return resolve_network(**{k: kwargs[k] for k in names if k in kwargs})


def _default_backend() -> str:
    from tripletsk.extraction.backbone import DEFAULT_BACKEND

    return DEFAULT_BACKEND


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
    size = int(kwargs.get("image_size", 224))
    files = discover_images(root, recursive=kwargs.get("recursive", True)).files
    options = {"max_pixels": kwargs.get("max_pixels"), "workers": kwargs.get("workers") or 1,
               "quiet": quiet}  # fmt: skip
    if os.path.exists(output):
        return int8_model_of_cache(read_header(output).attrs, spec, size, files, output, **options)
    return quantize_for(spec, size, files, output, **options)


def extract_with_dask(
    images_dir: str | os.PathLike,
    output: str | os.PathLike = DEFAULT_CACHE,
    *,
    client=None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    n_shards: int | None = None,
    gpus: str | Sequence[str] | None = None,
    tf_threads: int | None = None,
    retries: int = 2,
    keep_shards: bool = False,
    progress: bool | None = None,
    quiet: bool = False,
    **extract_kwargs,
) -> DaskExtractionSummary:
    """Extract the features of ``images_dir`` on a Dask cluster into one cache at ``output``.

    Each shard (:mod:`tripletsk.cache.shards`) is extracted on a worker into
    ``<output>.shard-I-of-N.h5``; the client merges the shards into ``output`` and deletes them.
    The result is the same cache as ``extract_features(images_dir, output, ...)``. Runs are
    incremental like single-process ones: each shard starts from the existing ``output``.

    Parameters
    ----------
    images_dir, output : path
        As for :func:`~tripletsk.extraction.extract_features`. Workers must see both at the same
        (absolute) paths as the client.
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
    progress, quiet : bool
        A progress bar over finished shards on stderr (default: when stderr is a terminal).
    **extract_kwargs
        ``weights``, ``image_size``, ``batch_size``, ``dtype``, ``recursive``, ``prune``,
        ``seed``, ``verify``, ``workers``, ``max_pixels``, ``backend``, ``precision``,
        ``backbone``, ``layer``, ``preprocessing``, passed to ``extract_features``. A backbone
        model file must be at the same path on every worker.

    Returns
    -------
    DaskExtractionSummary
    """
    distributed = _distributed()
    from tripletsk.cache.merge import merge_shards_locked, remove_shard_files
    from tripletsk.cache.shards import shard_path

    t0 = time.perf_counter()
    root, output = os.path.abspath(images_dir), os.path.abspath(output)
    bad = set(extract_kwargs) - {
        "weights", "image_size", "batch_size", "dtype", "recursive", "prune", "seed", "verify",
        "workers", "max_pixels", "backend", "precision", "backbone", "layer", "preprocessing",
    }  # fmt: skip
    if bad:
        raise TypeError(f"extract_with_dask() got unexpected arguments {sorted(bad)}")
    if os.path.isdir(output):
        raise UserError(f"the output must be a file path, not a folder: {output}")
    if client is not None and (scheduler or n_workers or gpus):
        raise UserError("pass either client= or scheduler=/n_workers=/gpus=, not both")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    show = (not quiet and sys.stderr.isatty()) if progress is None else bool(progress)
    with contextlib.ExitStack() as stack:
        stack.enter_context(CacheLock(output))  # no other extraction writes output meanwhile
        _check_output(output, os.fspath(images_dir), extract_kwargs)
        if client is None:
            if scheduler:
                client = stack.enter_context(distributed.Client(scheduler, set_as_default=False))
            else:
                cluster = stack.enter_context(local_cluster(n_workers, gpus=gpus))
                client = stack.enter_context(distributed.Client(cluster, set_as_default=False))
        workers = _wait_for_workers(client, n_workers or 1)
        configure_workers(client, tf_threads)
        n = int(n_shards or SHARDS_PER_WORKER * len(workers))
        if n < 1:
            raise UserError(f"n_shards must be at least 1, got {n}")
        paths = [shard_path(output, i, n) for i in range(1, n + 1)]
        run_id = uuid.uuid4().hex[:8]
        shard_kwargs = extract_kwargs
        if extract_kwargs.get("backend", _default_backend()) == "auto":
            shard_kwargs = _resolve_auto(client, root, output, extract_kwargs)
        if str(shard_kwargs.get("precision", "")).lower() in ("int8", "i8"):
            shard_kwargs = {
                **shard_kwargs,
                "int8_model": _int8_model(root, output, shard_kwargs, quiet),
            }
        futures = [
            client.submit(
                _extract_shard,
                root,
                output,
                p,
                i,
                n,
                shard_kwargs,
                key=f"tripletsk-shard-{i}-of-{n}-{run_id}",
                pure=False,
                retries=retries,
            )
            for i, p in enumerate(paths, start=1)
        ]
        summary = DaskExtractionSummary(output=output, n_shards=n, n_workers=len(workers))
        _collect(client, futures, summary, show)
        merged = merge_shards_locked(paths, output)
    if not keep_shards:
        remove_shard_files(paths)
    summary.n_images, summary.failed = merged.n_images, merged.failed
    summary.failed_list = merged.failed_list
    summary.seconds = time.perf_counter() - t0
    return summary


def _collect(client, futures: list, summary: DaskExtractionSummary, show: bool) -> None:
    """Add up the shards' results as they finish; cancel the rest on the first error."""
    from tqdm import tqdm

    distributed = _distributed()
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
