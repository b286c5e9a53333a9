"""Extraction and grid search on a real ``distributed.LocalCluster`` of 2 worker processes, with
real images, a real ResNet50 (random weights, 32x32) and real HDF5 files; a worker is really
killed mid-shard. The results are compared with single-process runs."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed", reason="needs dask.distributed (tripletsk[dask])")

from tests.helpers import make_images  # noqa: E402
from tripletsk.cache.shards import shard_path  # noqa: E402
from tripletsk.cache.store import FeatureStore  # noqa: E402
from tripletsk.cli import cli  # noqa: E402
from tripletsk.errors import UserError  # noqa: E402
from tripletsk.extraction import extract_features  # noqa: E402
from tripletsk.extraction.dask_cluster import (  # noqa: E402
    gpu_worker_env,
    local_cluster,
    visible_gpus,
)
from tripletsk.extraction.distributed import extract_with_dask  # noqa: E402

pytestmark = pytest.mark.slow  # a Dask cluster per module

RUN = {"weights": "none", "image_size": 32, "batch_size": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 images in two folders plus an unreadable file, and their single-process cache."""
    d = tmp_path_factory.mktemp("dask")
    images = make_images(d / "images", 40, broken="b/broken.png")
    single = d / "single.h5"
    extract_features(images, single, progress=False, **RUN)
    return {"images": images, "single": str(single)}


@pytest.fixture(scope="module")
def client():
    with (
        local_cluster(2) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def assert_same_cache(a, b) -> None:
    x, y = FeatureStore(a), FeatureStore(b)
    assert x.keys == y.keys
    # float tolerance: another batch size or thread count can pick other oneDNN kernels
    np.testing.assert_allclose(x.to_array(), y.to_array(), rtol=1e-4, atol=1e-4)
    for name in ("size", "mtime_ns", "blake2b"):
        assert np.array_equal(x.fingerprints[name], y.fingerprints[name])
    assert x.failed == y.failed and len(x.failed) == 1
    assert x.provenance == y.provenance


# First on the cluster: each worker keeps one Keras model, so MobileNet before the ResNet50 of
# all the other tests builds ResNet50 once per worker (after, it was built again for the last).
def test_dask_extraction_with_another_backbone(client, data, tmp_path):
    run = {**RUN, "backbone": "MobileNet(alpha=0.25)"}
    single, out = tmp_path / "single.h5", tmp_path / "dask.h5"
    extract_features(data["images"], single, progress=False, **run)
    extract_with_dask(data["images"], out, client=client, quiet=True, **run)
    assert FeatureStore(out).dim == 256
    assert_same_cache(single, out)


def test_dask_extraction_equals_single_process(client, data, tmp_path):
    out = tmp_path / "features.h5"
    s = extract_with_dask(data["images"], out, client=client, quiet=True, **RUN)
    assert_same_cache(data["single"], out)
    assert s.n_workers == 2 and s.n_shards == 8 and s.n_images == 40 and s.extracted == 40
    assert len(s.workers) == 2  # both workers extracted shards
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["features.h5", "features.h5.lock", "features.h5.failed.tsv"]
    )  # shard files removed after the merge
    # Workers limit TensorFlow to their share of the cores (2 processes on this machine).
    threads = client.run(os.getenv, "TF_NUM_INTRAOP_THREADS")
    assert set(threads.values()) == {str(max(1, (os.cpu_count() or 1) // 2))}
    # A second run is incremental, like a single-process one: it starts from the merged cache.
    again = extract_with_dask(data["images"], out, client=client, n_shards=3, quiet=True, **RUN)
    assert again.extracted == 0 and again.cached == 40
    assert_same_cache(data["single"], out)


def test_cli_on_a_running_scheduler(client, data, tmp_path, capsys):
    out = tmp_path / "f.h5"
    status = cli(
        [
            "extract-features", str(data["images"]), "-o", str(out), "--weights", "none",
            "--image-size", "32", "--scheduler", client.scheduler.address, "--shards", "3",
            "--batch-size", "4",  # RUN's: the workers' backbones serve it, traced already
        ]
    )  # fmt: skip
    stdout, err = capsys.readouterr()
    assert status == 0, err
    assert "(40 images, 3 shards on 2 Dask workers)" in stdout
    assert_same_cache(data["single"], out)


def test_user_errors_on_workers_reach_the_client(client, data, tmp_path):
    with pytest.raises(UserError, match="image_size must be at least 32"):
        extract_with_dask(
            data["images"], tmp_path / "f.h5", client=client, quiet=True, weights="none",
            image_size=16,
        )  # fmt: skip
    assert not (tmp_path / "f.h5").exists()


def test_an_existing_cache_with_other_settings_is_refused_before_any_work(client, data, tmp_path):
    with pytest.raises(UserError, match="image_size: cache has 32, requested 64"):
        extract_with_dask(
            data["images"], data["single"], client=client, weights="none", image_size=64
        )


def test_an_existing_cache_of_another_folder_is_refused(client, data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(data["images"], other)
    before = Path(data["single"]).read_bytes()
    with pytest.raises(UserError, match=r"holds the features of the images in .*, not .*other"):
        extract_with_dask(other, data["single"], client=client, weights="none", image_size=32)
    assert Path(data["single"]).read_bytes() == before


# Plain cv=2 on these triplets shares images between folds; this test compares the local and
# the remote search, not whether their scores are honest.
@pytest.mark.filterwarnings("ignore::tripletsk.errors.SharedImagesWarning")
def test_grid_search_on_the_dask_joblib_backend(client, data):
    from joblib import parallel_backend
    from sklearn.model_selection import GridSearchCV

    from tripletsk.estimator import TripletEncoder

    keys = FeatureStore(data["single"]).keys
    by_class = {c: [k for k in keys if k.startswith(c + "/")] for c in "ab"}
    rng = np.random.default_rng(0)
    T = []
    for _ in range(60):
        c, o = rng.permutation(["a", "b"])
        a, p = rng.choice(by_class[c], 2, replace=False)
        T.append([a, p, rng.choice(by_class[o])])
    T = np.array(T, dtype=object)
    est = TripletEncoder(
        features=data["single"], hidden_units=16, max_epochs=3, batch_size=16, random_state=0
    )
    # Each fit is sent the cache's path, not its features: workers open the file themselves.
    assert len(pickle.dumps(est)) < 10_000 < os.path.getsize(data["single"])
    grid = {"margin": [0.2, 1.0]}  # the margin is a variable: one graph per worker
    local = GridSearchCV(est, grid, cv=2, n_jobs=1).fit(T)
    with (
        distributed.get_task_stream(client) as stream,
        parallel_backend("dask", client=client),
    ):
        remote = GridSearchCV(est, grid, cv=2, n_jobs=-1).fit(T)
    assert len(stream.data) >= 4  # 2 candidates x 2 folds ran on the cluster
    assert remote.best_params_ == local.best_params_
    np.testing.assert_allclose(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"], atol=1e-6
    )


@pytest.mark.parametrize(
    ("gpus", "env", "expected"),
    [
        (None, None, []),
        ("0,1", None, ["0", "1"]),
        (["2", "3"], None, ["2", "3"]),
        ("auto", "1,3", ["1", "3"]),
        ("auto", "-1", []),
        ("auto", "", []),
    ],
)
def test_gpu_worker_env(monkeypatch, gpus, env, expected):
    if env is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert gpu_worker_env(gpus) == [{"CUDA_VISIBLE_DEVICES": g} for g in expected]


def test_gpu_arguments_are_checked(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    with pytest.raises(UserError, match="lists a GPU twice"):
        gpu_worker_env("0,0")
    with pytest.raises(UserError, match="no GPU is visible on this machine"):
        local_cluster(gpus="auto")
    with pytest.raises(UserError, match="3 workers with only 2 GPU"):
        local_cluster(3, gpus="0,1")


def test_one_worker_per_gpu_sees_only_its_gpu():
    # Starts real worker processes with their own CUDA_VISIBLE_DEVICES (no GPU is used here).
    with local_cluster(gpus="0,1") as cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=60)
        seen = c.run(os.getenv, "CUDA_VISIBLE_DEVICES")
    assert sorted(seen.values()) == ["0", "1"]


# Last of the tests on the module's cluster: the worker the nanny starts again imports
# TensorFlow and builds its backbone only if later tests send it work.
def test_a_killed_worker_has_its_shard_redone(client, data, tmp_path):
    out = tmp_path / "features.h5"
    worker_pids = set(client.run(os.getpid).values())
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = extract_with_dask(
                data["images"], out, client=client, n_shards=2, quiet=True,
                **{**RUN, "batch_size": 1},
            )  # fmt: skip
        except BaseException as e:
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 180
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        for i in (1, 2):  # kill the worker that holds a shard with finished batches
            shard = shard_path(out, i, 2)
            if os.path.exists(shard) or not any(Path(shard + ".parts").glob("part-*.npz")):
                continue
            try:
                pid = int(Path(shard + ".lock").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if pid in worker_pids:
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
        time.sleep(0.01)
    thread.join(300)
    assert killed is not None, "no worker was killed mid-shard"
    assert "error" not in result, result.get("error")
    s = result["summary"]
    assert s.resumed >= 1  # the redo continued from the dead worker's finished batches
    assert s.extracted == 40
    assert_same_cache(data["single"], out)
    client.wait_for_workers(2, timeout=120)  # the nanny restarted it
    assert killed not in set(client.run(os.getpid).values())
