"""Dask clusters for tripletsk: local clusters (one worker per GPU if asked), TensorFlow threads.

:func:`local_cluster` starts worker processes on this machine (with ``gpus``, one per GPU, each
seeing only its own); :func:`configure_workers` limits TensorFlow's threads on every worker
(current and future ones), so that workers sharing a machine do not oversubscribe its cores, e.g.
for a grid search through joblib's Dask backend (see ``docs/scaling.md``).
:func:`~tripletsk.extraction.distributed.extract_with_dask` uses both.

Importing this module does not import TensorFlow; it imports ``distributed`` if installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from tripletsk.errors import UserError

__all__ = [
    "TFThreads",
    "configure_workers",
    "gpu_worker_env",
    "import_distributed",
    "local_cluster",
    "set_tf_threads",
    "visible_gpus",
    "wait_for_workers",
]

try:  # the plugin must be a WorkerPlugin for Client.register_plugin to send it to workers
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:  # without Dask, the module still imports (its functions then say what to do)
    _WorkerPlugin = object


def import_distributed():
    """``distributed``, or a UserError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise UserError(
            "running on a Dask cluster needs dask.distributed: pip install 'tripletsk[dask]'"
        ) from None
    return distributed


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


def wait_for_workers(client, n: int = 1, timeout: float = 120) -> dict:
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
        workers = wait_for_workers(client)
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
    distributed = import_distributed()
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
