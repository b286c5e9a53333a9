"""Sharded extraction and merging, on real image files, a real network (random weights, 32x32)
and real HDF5 files; the merged cache is compared with a single-process run.

The network is the small MobileNet(alpha=0.25): what is tested is how shards split, record and
merge a run, whichever the network (its build and trace cost a third of ResNet50's)."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest
from PIL import Image

from tests.helpers import assert_same_cache, make_images
from tripletsk.cache.merge import merge_shards, split_cache
from tripletsk.cache.shards import SHARD_ATTRS, parse_shard, shard_of, shard_path
from tripletsk.cache.store import FeatureStore
from tripletsk.cli import cli
from tripletsk.errors import CacheMismatchError, ShardError
from tripletsk.extraction import extract_features

BACKBONE = "MobileNet(alpha=0.25)"
RUN = {
    "backbone": BACKBONE,
    "weights": "none",
    "image_size": 32,
    "batch_size": 4,
    "progress": False,
}
N = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same folder extracted once in one process and once as N shards."""
    d = tmp_path_factory.mktemp("shards")
    images = make_images(d / "images")
    single = d / "single.h5"
    extract_features(images, single, **RUN)
    shards = [str(d / f"features-{i}-of-{N}.h5") for i in range(1, N + 1)]
    for i, p in enumerate(shards, start=1):
        extract_features(images, p, shard=f"{i}/{N}", **RUN)
    return {"dir": d, "images": images, "single": str(single), "shards": shards}


@pytest.mark.parametrize(
    ("value", "expected"), [("1/4", (1, 4)), ("4/4", (4, 4)), (" 2 / 3 ", (2, 3)), ((1, 1), (1, 1))]
)
def test_parse_shard_is_one_based(value, expected):
    assert parse_shard(value) == expected


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("0/4", r"numbered from 1 to 4 \(1-based"),
        ("5/4", r"numbered from 1 to 4"),
        ("1/0", r"N >= 1"),
        ("2", r"must be I/N, e.g. 1/4"),
        ("a/b", r"must be I/N"),
        ((1, 2, 3), r"pair \(I, N\)"),
    ],
)
def test_parse_shard_rejects(value, match):
    with pytest.raises(ShardError, match=match):
        parse_shard(value)


def test_shard_assignment_is_stable_and_balanced():
    keys = [f"class{i % 7}/img{i:05d}.jpg" for i in range(20000)]
    counts = Counter(shard_of(k, 4) for k in keys)
    assert set(counts) == {1, 2, 3, 4}
    assert max(counts.values()) / min(counts.values()) < 1.06
    # The shard of a key depends on the key alone (not on the listing), and is part of the
    # on-disk contract (recorded shards are merged by it): pin one value.
    assert [shard_of(k, 4) for k in reversed(keys)] == [shard_of(k, 4) for k in keys][::-1]
    assert shard_of("a/x.jpg", 4) == 3
    assert all(shard_of(k, 1) == 1 for k in keys[:100])


def test_merged_shards_equal_a_single_process_run(runs, tmp_path):
    out = tmp_path / "merged.h5"
    summary = merge_shards(reversed(runs["shards"]), out)
    assert_same_cache(runs["single"], str(out))
    assert summary.n_shards == N and summary.n_images == 24
    assert summary.failed == [("a/broken.jpg", "not an image: cannot identify the image format")]
    attrs = FeatureStore(out).attrs
    assert not set(SHARD_ATTRS) & set(attrs)
    assert attrs["merged_from"] == f"{N} shards"
    assert (tmp_path / "merged.h5.failed.tsv").read_text().count("\n") == 2


def test_each_shard_holds_only_its_keys(runs):
    seen = []
    for i, p in enumerate(runs["shards"], start=1):
        store = FeatureStore(p)
        assert store.attrs["shard"] == f"{i}/{N}" and store.attrs["shard_listed"] == 25
        keys = store.keys + [k for k, _ in store.failed]
        assert all(shard_of(k, N) == i for k in keys)
        seen += keys
    assert sorted(seen) == sorted([*FeatureStore(runs["single"]).keys, "a/broken.jpg"])


def test_shard_rerun_is_incremental(runs):
    s = extract_features(runs["images"], runs["shards"][0], shard=(1, N), **RUN)
    assert s.extracted == 0 and s.cached == len(FeatureStore(runs["shards"][0]))
    assert not s.written


def test_empty_shards_merge(tmp_path):
    images = tmp_path / "one"
    make_images(images, n=1)
    (images / "a" / "broken.jpg").unlink()
    paths = [shard_path(tmp_path / "f.h5", i, 4) for i in range(1, 5)]
    for i, p in enumerate(paths, start=1):
        extract_features(images, p, shard=(i, 4), **RUN)
    assert sorted(len(FeatureStore(p)) for p in paths) == [0, 0, 0, 1]
    merge_shards(paths, tmp_path / "f.h5", remove=True)
    assert FeatureStore(tmp_path / "f.h5").keys == ["a/00.png"]
    assert not any(os.path.exists(p) for p in paths)


def test_split_cache_seeds_an_incremental_shard(runs, tmp_path):
    p = str(tmp_path / "seeded.h5")
    n_rows = split_cache(runs["single"], p, (2, N))
    assert n_rows == len(FeatureStore(runs["shards"][1]))
    with pytest.raises(ShardError, match="incomplete"):
        merge_shards([runs["shards"][0], p, runs["shards"][2]], tmp_path / "m.h5")
    s = extract_features(runs["images"], p, shard=(2, N), **RUN)
    assert s.extracted == 0 and s.cached == n_rows and s.written  # now marked complete
    merge_shards([runs["shards"][0], p, runs["shards"][2]], tmp_path / "m.h5")
    assert_same_cache(runs["single"], str(tmp_path / "m.h5"))


@pytest.mark.parametrize(
    ("shard", "existing", "match"),
    [
        (None, 0, r"is shard 1/3 of a sharded extraction; extract shard 1/3 to update it"),
        ((2, N), 0, r"holds shard 1/3, not 2/3"),
        ((1, N), None, r"is a whole \(unsharded\) cache; write shard 1/3 to its own file"),
    ],
)
def test_a_cache_is_updated_only_as_what_it_is(runs, tmp_path, shard, existing, match):
    target = tmp_path / "c.h5"
    shutil.copy(runs["shards"][existing] if existing is not None else runs["single"], target)
    with pytest.raises(ShardError, match=match):
        extract_features(runs["images"], target, shard=shard, **RUN)


# ---------------------------------------------------------------------------- command line


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    ("value", "match"),
    [("0/2", "numbered from 1 to 2"), ("3", "must be I/N"), ("2/1", "numbered from 1 to 1")],
)
def test_cli_bad_shard_is_a_usage_error(capsys, tmp_path, value, match):
    status, _, err = run(capsys, "extract-features", str(tmp_path), "--shard", value)
    assert status == 2
    assert "usage: tripletsk extract-features" in err and match in err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--shard", "1/2", "--dask-workers", "2"], "not allowed with argument"),
        (["--shards", "4"], "--shards needs --scheduler or --dask-workers"),
        (["--gpus", "auto"], "--gpus needs --dask-workers"),
        (["--dask-workers", "0"], "--dask-workers must be at least 1"),
    ],
)
def test_cli_scaling_option_errors(capsys, tmp_path, argv, match):
    status, _, err = run(capsys, "extract-features", str(tmp_path), *argv)
    assert status == 2 and match in err


def test_cli_shard_and_merge(capsys, runs, tmp_path):
    out = tmp_path / "features-1-of-3.h5"
    status, _, err = run(
        capsys, "extract-features", str(runs["images"]), "--shard", "1/3", "-o", str(out),
        "--backbone", BACKBONE, "--weights", "none", "--image-size", "32", "--batch-size", "4",
        "-q",
    )  # fmt: skip
    assert status == 0, err
    assert_same_cache(runs["shards"][0], str(out))
    merged = tmp_path / "features.h5"
    status, stdout, err = run(
        capsys, "merge-features", str(out), *runs["shards"][1:], "-o", str(merged)
    )
    assert status == 0, err
    assert f"merged 3 shard(s) into {merged}: 24 images, 1 failed" in stdout
    assert_same_cache(runs["single"], str(merged))


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tripletsk: error: ")
    return lines[0]


def test_cli_merge_missing_shard(capsys, runs, tmp_path):
    status, _, err = run(capsys, "merge-features", *runs["shards"][:2], "-o", str(tmp_path / "m"))
    assert status == 1
    assert "missing shard(s) 3/3 of 3" in one_error_line(err)
    assert not (tmp_path / "m").exists()


def test_cli_merge_overlapping_shards(capsys, runs, tmp_path):
    dup = tmp_path / "dup.h5"
    shutil.copy(runs["shards"][1], dup)
    status, _, err = run(
        capsys, "merge-features", *runs["shards"], str(dup), "-o", str(tmp_path / "m")
    )
    assert status == 1
    assert "shard 2/3 given twice" in one_error_line(err)


@pytest.mark.slow
def test_cli_merge_provenance_mismatch(capsys, runs, tmp_path):
    other = tmp_path / "other-2-of-3.h5"
    extract_features(runs["images"], other, shard="2/3", **{**RUN, "seed": 1})
    shards = [runs["shards"][0], str(other), runs["shards"][2]]
    status, _, err = run(capsys, "merge-features", *shards, "-o", str(tmp_path / "m.h5"))
    assert status == 1
    line = one_error_line(err)
    assert "shards were extracted with different settings" in line
    assert "weights: cache has 'none:seed=1" in line
    with pytest.raises(CacheMismatchError, match="different settings"):
        merge_shards(shards, tmp_path / "m.h5")


@pytest.mark.slow
def test_cli_merge_different_listings(capsys, runs, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(runs["images"], images)
    Image.new("RGB", (40, 40), "red").save(images / "b" / "new.png")
    changed = tmp_path / "s-3-of-3.h5"
    extract_features(images, changed, shard="3/3", **RUN)
    status, _, err = run(
        capsys, "merge-features", *runs["shards"][:2], str(changed), "-o", str(tmp_path / "m")
    )
    assert status == 1
    assert "different listings of the images (25 and 26 files)" in one_error_line(err)


def test_cli_merge_refuses_a_whole_cache(capsys, runs, tmp_path):
    status, _, err = run(
        capsys, "merge-features", runs["single"], *runs["shards"], "-o", str(tmp_path / "m")
    )
    assert status == 1
    assert "is not a shard (it was extracted without a shard)" in one_error_line(err)


def test_cli_merge_refuses_to_overwrite_a_shard(capsys, runs):
    status, _, err = run(capsys, "merge-features", *runs["shards"], "-o", runs["shards"][0])
    assert status == 1 and "is one of the shard files" in one_error_line(err)


def test_merge_replaces_only_a_merge_of_the_same_extraction(runs, tmp_path):
    out = tmp_path / "merged.h5"
    merge_shards(runs["shards"], out)
    merge_shards(runs["shards"], out)  # merging again (e.g. after a shard was redone) is fine
    assert_same_cache(runs["single"], str(out))


def test_merge_leaves_a_cache_of_another_folder_alone(runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs["images"], other)
    out = tmp_path / "features.h5"
    extract_features(other, out, **RUN)
    before = out.read_bytes()
    with pytest.raises(CacheMismatchError, match=r"holds the features of the images in .*other"):
        merge_shards(runs["shards"], out)
    assert out.read_bytes() == before


def test_merge_leaves_a_file_that_is_not_a_cache_alone(runs, tmp_path):
    out = tmp_path / "notes.h5"
    out.write_text("my notes")
    with pytest.raises(ShardError, match="exists and is not a feature cache"):
        merge_shards(runs["shards"], out)
    assert out.read_text() == "my notes"
