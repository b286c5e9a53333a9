"""A user's files are never mixed, corrupted silently, or allowed to run code: extraction's side.

Real image files, real HDF5 caches, a real ResNet50 (random weights, 32x32) and real processes
(the file-size limit, peak memory, the command line).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import resource
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import tripletsk.extraction.run as extraction_run
from tests.helpers import noise_images
from tripletsk.cache.failures import read_failed_list, write_failed_list
from tripletsk.cache.store import FeatureStore
from tripletsk.cache.write_errors import CacheWriteError
from tripletsk.cli import cli
from tripletsk.errors import CacheMismatchError
from tripletsk.extraction import extract_features
from tripletsk.extraction.budget import ByteBudget
from tripletsk.extraction.decode import decode_bytes_estimate, process_file
from tripletsk.extraction.discovery import ImageFile

REPO = Path(__file__).resolve().parents[2]
RUN = {"weights": "none", "image_size": 32, "batch_size": 4, "progress": False}


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.fspath(REPO), TF_CPP_MIN_LOG_LEVEL="3")


def _cli(*argv, cwd=None, limit: int | None = None) -> subprocess.CompletedProcess:
    """``tripletsk argv`` in a new process, with a file-size limit (bytes) if given."""

    def set_limit():  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "tripletsk", *map(str, argv)],
        capture_output=True, text=True, env=_env(), cwd=cwd, timeout=600,
        preexec_fn=set_limit if limit is not None else None,
    )  # fmt: skip


def _own_lines(stderr: str) -> list:
    """The lines of ``stderr`` except TensorFlow's start-up log (its C++ logging)."""
    tf_log = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")
    return [line for line in stderr.strip().splitlines() if not tf_log.match(line)]


def _snapshot(cache: Path) -> dict:
    """Every byte of a cache that says what it holds: datasets, attributes, the file itself."""
    with h5py.File(cache, "r") as f:
        snap = {name: f[name][()].tobytes() for name in ("features", "fingerprints")}
        snap["keys"] = [bytes(k) for k in f["keys"][()]]
        snap["attrs"] = sorted((k, str(v)) for k, v in f.attrs.items())
    snap["file"] = hashlib.sha256(cache.read_bytes()).hexdigest()
    return snap


# --------------------------------------------------------------------------------------------
# 1. One cache, one images folder
# --------------------------------------------------------------------------------------------


def test_second_folder_into_a_cache_is_refused_and_the_cache_kept(tmp_path):
    a, b = (
        noise_images(tmp_path / "a", 5, shape=(40, 48), seed=1),
        noise_images(tmp_path / "b", 5, shape=(40, 48), seed=2),
    )
    cache = tmp_path / "features.h5"
    extract_features(a, cache, **RUN)
    before = _snapshot(cache)
    with pytest.raises(CacheMismatchError, match="holds the features of the images in") as err:
        extract_features(b, cache, **RUN)
    msg = str(err.value)
    assert str(a) in msg and str(b) in msg and "replace=True" in msg and "\n" not in msg
    assert "--" not in msg  # the library speaks of parameters, the command line of flags
    assert _snapshot(cache) == before
    assert not (tmp_path / "features.h5.parts").exists()


def test_replace_starts_a_new_cache_of_the_other_folder(tmp_path):
    a, b = (
        noise_images(tmp_path / "a", 5, shape=(40, 48), seed=1),
        noise_images(tmp_path / "b", 3, shape=(40, 48), seed=2),
    )
    cache = tmp_path / "features.h5"
    extract_features(a, cache, **RUN)
    s = extract_features(b, cache, replace=True, **RUN)
    assert (s.extracted, s.cached, s.n_images) == (3, 0, 3)
    with FeatureStore(cache) as store:
        assert store.keys == ["0.png", "1.png", "2.png"]
        assert store.attrs["image_root"] == str(b)
    fresh = tmp_path / "fresh.h5"
    extract_features(b, fresh, **RUN)
    with FeatureStore(cache) as s1, FeatureStore(fresh) as s2:
        np.testing.assert_array_equal(s1.to_array(), s2.to_array())


def test_the_same_folder_by_another_path_is_the_same_cache(tmp_path, monkeypatch):
    a = noise_images(tmp_path / "a", 4, shape=(40, 48), seed=1)
    cache = tmp_path / "features.h5"
    extract_features(a, cache, **RUN)
    before = _snapshot(cache)
    (tmp_path / "link").symlink_to(a, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for path in ("a", "link", tmp_path / "link", "./a/../a"):
        s = extract_features(path, cache, **RUN)
        assert (s.cached, s.extracted, s.written) == (4, 0, False), path
    assert _snapshot(cache) == before  # the recorded folder is kept as first written


def test_unfinished_work_of_another_folder_is_refused_too(tmp_path, monkeypatch):
    a, b = (
        noise_images(tmp_path / "a", 12, shape=(40, 48), seed=1),
        noise_images(tmp_path / "b", 3, shape=(40, 48), seed=2),
    )
    cache = tmp_path / "features.h5"
    # A run on a/ that stops after its batches, before its cache (its write fails as one past a
    # file-size limit; test_file_size_limit_is_one_line_and_the_rerun_resumes sets a real limit
    # on a real process): parts left.
    with monkeypatch.context() as m:
        m.setattr(extraction_run, "_write", _write_past_the_size_limit)
        with pytest.raises(CacheWriteError, match="file too large"):
            extract_features(a, cache, **RUN)
    parts = tmp_path / "features.h5.parts"
    assert len(list(parts.glob("part-*.npz"))) == 3 and not cache.exists()
    with pytest.raises(CacheMismatchError, match=f"{parts} holds the features of the images in"):
        extract_features(b, cache, **RUN)
    assert len(list(parts.glob("part-*.npz"))) == 3
    s = extract_features(b, cache, replace=True, **RUN)
    assert (s.extracted, s.resumed, s.n_images) == (3, 0, 3)
    with FeatureStore(cache) as store:
        assert store.keys == ["0.png", "1.png", "2.png"]
        assert store.attrs["image_root"] == str(b)


def _write_past_the_size_limit(*args, **kwargs):
    """The cache write failing as a write past ``ulimit -f`` does (Python ignores SIGXFSZ)."""
    raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))


@pytest.mark.slow
def test_command_line_refuses_a_second_folder_in_the_default_cache(tmp_path, monkeypatch, capsys):
    a, b = (
        noise_images(tmp_path / "a", 4, shape=(40, 48), seed=1),
        noise_images(tmp_path / "b", 4, shape=(40, 48), seed=2),
    )
    common = ["--weights", "none", "--image-size", "32", "-q"]
    monkeypatch.chdir(tmp_path)
    assert cli(["extract-features", "a", *common]) == 0  # (the setup: in this process)
    cache = tmp_path / "cache" / "features.h5"
    before = _snapshot(cache)
    # The refusal in a real process: its whole stderr is the one line.
    out = _cli("extract-features", "b", *common, cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tripletsk: error:"), out.stderr
    assert str(a) in lines[0] and str(b) in lines[0]
    assert "-o FILE" in lines[0] and "--replace" in lines[0] and "replace=True" not in lines[0]
    assert _snapshot(cache) == before
    capsys.readouterr()
    assert cli(["extract-features", "b", "--replace", *common]) == 0, capsys.readouterr().err
    with FeatureStore(cache) as store:
        assert store.attrs["image_root"] == str(b) and len(store) == 4


# --------------------------------------------------------------------------------------------
# 2. File names that cannot be keys; the failure list, one record per line
# --------------------------------------------------------------------------------------------


def test_control_characters_in_file_names_are_skipped_with_a_reason(tmp_path):
    imgs = noise_images(tmp_path / "imgs", 2, shape=(40, 48), seed=3)
    bad = ["new\nline.png", "tab\there.png", "esc\x1b[31m.png", "sep\u2028.png"]
    for name in bad:
        (imgs / name).write_bytes((imgs / "0.png").read_bytes())
    cache = tmp_path / "features.h5"
    s = extract_features(imgs, cache, **RUN)
    assert sorted(k for k, _ in s.failed) == sorted(bad)
    assert all("control character" in r and "rename the file" in r for _, r in s.failed)
    with FeatureStore(cache) as store:
        assert store.keys == ["0.png", "1.png"]
        assert sorted(k for k, _ in store.failed) == sorted(bad)
    text = Path(s.failed_list).read_text(encoding="utf-8")
    assert len(text.split("\n")) == 1 + len(bad) + 1  # header, one line each, final newline
    assert all(line.count("\t") == 1 for line in text.splitlines())
    assert sorted(read_failed_list(s.failed_list)) == sorted(s.failed)
    assert all(len(line.splitlines()) == 1 for line in s.format().split("\n"))


@pytest.mark.parametrize(
    "key, reason",
    [
        ("a\nb.png", "x"),
        ("c\td.png", "reason\twith tab"),
        ("back\\slash\\n.png", "literal \\n, not a newline"),
        ("cr\r.png", "line1\nline2\r\n"),
        ("nel\x85ls\u2028ps\u2029.png", "\x00\x7f"),
        ("ünïcode/ok.png", "plain"),
    ],
)
def test_failed_list_holds_one_record_per_line(tmp_path, key, reason):
    failed = [("first.png", "ok"), (key, reason), ("last.png", "ok")]
    path = write_failed_list(str(tmp_path / "c.h5"), failed)
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and all(line.count("\t") == 1 for line in lines)
    assert read_failed_list(path) == failed


# --------------------------------------------------------------------------------------------
# 3. Decoding memory is bounded by a budget, not by workers x pixels
# --------------------------------------------------------------------------------------------


def _image_file(path: Path) -> ImageFile:
    st = path.stat()
    return ImageFile(path.name, str(path), st.st_size, st.st_mtime_ns)


def _decode_all(files: list, budget: ByteBudget, workers: int, image_size: int = 32) -> list:
    results = [None] * len(files)

    def work(i):
        results[i] = process_file(files[i], image_size, None, budget)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(files))]
    for batch in range(0, len(threads), workers):
        for t in threads[batch : batch + workers]:
            t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_decodes_hold_at_most_the_budget(tmp_path):
    sizes = [(300, 200), (800, 600), (1200, 1000), (640, 640), (1500, 400), (200, 1800)]
    files = []
    for i, (w, h) in enumerate(sizes * 2):
        mode = ("RGB", "L", "RGBA")[i % 3]
        path = tmp_path / f"{i}.png"
        Image.new(mode, (w, h), 100).save(path)
        files.append(_image_file(path))
    estimates = []
    for f in files:
        with Image.open(f.path) as im:
            estimates.append(decode_bytes_estimate(im) + f.size)
    limit = sorted(estimates)[-3] * 2  # room for two of the larger images at once, not all
    assert sum(estimates) > limit
    budget = ByteBudget(limit)
    results = _decode_all(files, budget, workers=12)
    assert all(r.reason is None and r.array.shape == (32, 32, 3) for r in results)
    assert 0 < budget.peak <= limit and budget.in_use == 0


def test_an_image_larger_than_the_whole_budget_decodes_alone(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(4)]
    for i, p in enumerate(paths):
        Image.new("RGB", (1000 + 100 * i, 900), (i, 2 * i, 3 * i)).save(p)
    budget = ByteBudget(1000)  # every image needs more than this
    results = _decode_all([_image_file(p) for p in paths], budget, workers=4)
    assert all(r.reason is None for r in results)
    assert budget.peak == 1000 and budget.in_use == 0  # one at a time


def test_jpeg_draft_holds_the_reduced_size_only(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 256, (1600, 2400, 3), dtype=np.uint8)).save(path)
    with Image.open(path) as im:
        full = decode_bytes_estimate(im)
        im.draft(None, (224, 224))
        assert im.size == (600, 400)  # 1/4: the largest power of 2 keeping >= 224 pixels
        drafted = decode_bytes_estimate(im)
    assert drafted == full // 16
    budget = ByteBudget(1 << 40)
    (r,) = _decode_all([_image_file(path)], budget, workers=1, image_size=224)
    assert r.reason is None and r.array.shape == (224, 224, 3)
    assert budget.peak == drafted + path.stat().st_size  # the file's bytes, the reduced pixels


#: Peak RSS added by extracting 6 flat 6000x6000 RGB PNGs with 8 decoding threads, in MiB.
#: Measured (2 vCPU Xeon): 1655 before the budget (8 x 288 MB decoded at once), 831 with the
#: default 1 GiB budget.
RSS_BOUND_MIB = 1200


@pytest.mark.slow
def test_peak_memory_of_large_images_is_bounded_in_a_real_process(tmp_path):
    big, small = tmp_path / "big", noise_images(tmp_path / "small", 4, shape=(40, 48), seed=0)
    big.mkdir()
    for i in range(6):  # flat colour: 108 MB of pixels each, ~0.5 MB files (fast zlib level)
        image = Image.new("RGB", (6000, 6000), (40 * i, 100, 200 - 30 * i))
        image.save(big / f"{i}.png", compress_level=1)
    code = textwrap.dedent(
        """
        import resource, sys
        from tripletsk.extraction import extract_features
        small, big, out = sys.argv[1:4]
        kw = dict(weights="none", image_size=32, batch_size=8, workers=8, progress=False)
        extract_features(small, out + "-small.h5", **kw)  # the model built: the baseline
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        s = extract_features(big, out, **kw)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(s.extracted, len(s.failed), (peak - base) // 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, small, big, tmp_path / "f.h5"],
        capture_output=True, text=True, env=_env(), timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    extracted, failed, added_mib = map(int, out.stdout.split()[-3:])
    assert (extracted, failed) == (6, 0)
    assert added_mib < RSS_BOUND_MIB, f"decoding added {added_mib} MiB of peak RSS"


# --------------------------------------------------------------------------------------------
# 4. The cache cannot be written: one line, nothing lost
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limit_kb, parts",
    [
        (64, 2),  # each part (4 rows, ~34 KB) fits, the new cache (12 rows, ~100 KB) does not
        (20, 0),  # the first part already does not fit
    ],
)
@pytest.mark.slow
def test_file_size_limit_is_one_line_and_the_rerun_resumes(tmp_path, capsys, limit_kb, parts):
    imgs = noise_images(tmp_path / "imgs", 4, shape=(40, 48), seed=5)
    cache = tmp_path / "out" / "features.h5"
    common = ["-o", cache, "--weights", "none", "--image-size", "32", "--batch-size", "4"]
    common = list(map(str, common))
    assert cli(["extract-features", str(imgs), *common, "-q"]) == 0  # (in this process)
    before = _snapshot(cache)
    noise_images(tmp_path / "more", 8, shape=(40, 48), seed=6)
    for f in sorted((tmp_path / "more").iterdir()):
        f.rename(imgs / f"new-{f.name}")
    # Only the run under the limit needs a process of its own: the limit is a process's.
    out = _cli("extract-features", imgs, *common, limit=limit_kb * 1024)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = _own_lines(out.stderr)
    assert len(lines) == 1 and lines[0].startswith("tripletsk: error:"), out.stderr
    line = lines[0]
    assert f"cannot write the cache {cache}: file too large" in line and "ulimit -f" in line
    assert f"{cache}.parts" in line and "run the same extraction again" in line
    assert "Errno" not in line and "Traceback" not in out.stderr
    assert _snapshot(cache) == before
    assert len(list((tmp_path / "out" / "features.h5.parts").glob("part-*.npz"))) == parts
    assert not list((tmp_path / "out").glob("features.h5.tmp-*"))
    capsys.readouterr()
    assert cli(["extract-features", str(imgs), *common]) == 0, capsys.readouterr().err
    resumed = f" ({4 * parts} finished by an interrupted run and resumed)" if parts else "\n"
    assert f"extracted: 8{resumed}" in capsys.readouterr().out
    with FeatureStore(cache) as store:
        assert len(store) == 12


# --------------------------------------------------------------------------------------------
# 5. verify repairs a damaged cache
# --------------------------------------------------------------------------------------------


def _damage_chunk(cache: Path, chunk: int) -> tuple[int, int]:
    """Flip bytes in the middle of the ``chunk``-th stored chunk of the features, on disk; the
    chunk's rows (start, stop)."""
    with h5py.File(cache, "r") as f:
        ds = f["features"]
        info = ds.id.get_chunk_info(chunk)
        rows = ds.chunks[0]
    with open(cache, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        data = bytearray(fh.read(16))
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(b ^ 0xFF for b in data))
    start = info.chunk_offset[0]
    return start, start + rows


def test_verify_re_extracts_exactly_the_damaged_rows(tmp_path):
    imgs = noise_images(
        tmp_path / "imgs", 24, shape=(40, 48), seed=7
    )  # 8 rows per 64 KB chunk: 3 chunks
    cache = tmp_path / "features.h5"
    extract_features(imgs, cache, **RUN)
    with FeatureStore(cache) as store:
        keys, clean = list(store.keys), store.to_array()
    start, stop = _damage_chunk(cache, 1)
    with FeatureStore(cache) as store:
        assert list(store.corrupt_rows()) == list(range(start, stop))
    gone = keys[start]
    (imgs / gone).unlink()  # a damaged row whose file is gone cannot be re-extracted: dropped

    s = extract_features(imgs, cache, verify=True, **RUN)
    assert (s.repaired, s.changed, s.lost) == (stop - start - 1, stop - start - 1, 1)
    assert s.cached == len(keys) - (stop - start) and s.extracted == 0
    assert "7 with damaged features in the cache" in s.format()
    with FeatureStore(cache) as store:
        assert len(store.corrupt_rows()) == 0
        assert sorted(store.keys) == sorted(k for k in keys if k != gone)
        got = store.lookup([k for k in keys if k != gone])
    want = clean[[i for i, k in enumerate(keys) if k != gone]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    s = extract_features(imgs, cache, verify=True, **RUN)  # now clean: nothing to re-extract
    assert (s.repaired, s.changed, s.extracted, s.lost) == (0, 0, 0, 0)
