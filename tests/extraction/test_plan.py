"""Incremental planning (tripletsk.extraction.plan): pure functions, no model and no files."""

from __future__ import annotations

import numpy as np
import pytest

from tripletsk.cache.format import FINGERPRINT_DTYPE
from tripletsk.cache.journal import PartInfo
from tripletsk.extraction.discovery import ImageFile
from tripletsk.extraction.plan import (
    RACY_NS,
    apply_checks,
    assemble,
    latest_entries,
    plan_run,
    record_extracted,
)

MTIME = 1_700_000_000_000_000_000
LATER = MTIME + 10 * RACY_NS  # hashed long after the last change: the stat can be trusted


def fps(*entries) -> np.ndarray:
    """Fingerprints from (size, mtime_ns, digest, hashed_ns) tuples."""
    return np.array([(s, m, d.encode(), h) for s, m, d, h in entries], FINGERPRINT_DTYPE)


def image(key: str, size: int = 100, mtime: int = MTIME) -> ImageFile:
    return ImageFile(key, f"/images/{key}", size, mtime)


def part(keys, entries, failed=()) -> PartInfo:
    return PartInfo("unused.npz", list(keys), fps(*entries), list(failed))


NO_CACHE = ([], fps())


def test_new_files_are_extracted_and_listing_failures_kept():
    plan = plan_run([image("b"), image("a")], [("c", "not a regular file")], *NO_CACHE, [])
    assert [f.key for f in plan.pending] == ["b", "a"]
    assert plan.failed == {"c": "not a regular file"}
    assert not plan.keep_old and not plan.use_part and not plan.to_check


@pytest.mark.parametrize(
    ("file", "verify", "kept"),
    [
        (image("a"), False, True),  # same size and mtime, hashed long after: trusted
        (image("a"), True, False),  # verify: every cached file is hashed
        (image("a", size=101), False, False),  # size changed
        (image("a", mtime=MTIME + 1), False, False),  # mtime changed
    ],
)
def test_cached_files_are_kept_only_when_their_stat_can_be_trusted(file, verify, kept):
    old = fps((100, MTIME, "aa", LATER))
    plan = plan_run([file], [], ["a"], old, [], verify=verify)
    assert ("a" in plan.keep_old) is kept
    assert [f.key for f in plan.to_check] == ([] if kept else ["a"])
    assert not plan.pending


def test_a_racy_hash_is_checked_again():
    """Hashed within the timestamp granularity of its mtime: a later change could hide."""
    old = fps((100, MTIME, "aa", MTIME + RACY_NS // 2))
    plan = plan_run([image("a")], [], ["a"], old, [])
    assert [f.key for f in plan.to_check] == ["a"] and not plan.keep_old


def test_content_check_keeps_same_content_and_extracts_the_rest():
    old = fps(*[(100, MTIME, d, LATER) for d in ("aa", "bb", "cc")])
    files = [image(k, mtime=MTIME + 5) for k in "abc"]
    plan = plan_run(files, [], list("abc"), old, [])
    assert [f.key for f in plan.to_check] == ["a", "b", "c"]
    now = LATER + 1
    checked = [
        (files[0], (100, MTIME + 5, "aa", now)),  # touched, same content
        (files[1], (100, MTIME + 5, "xx", now)),  # content changed
        (files[2], None),  # unreadable now
    ]
    apply_checks(plan, checked, list("abc"), old, [])
    assert list(plan.keep_old) == ["a"]
    assert int(plan.keep_old["a"]["mtime_ns"]) == MTIME + 5  # refreshed fingerprint
    assert [f.key for f in plan.pending] == ["b", "c"] and plan.to_check == []


def test_parts_of_an_interrupted_run_are_reused_or_their_failures_kept():
    parts = [
        part(["a"], [(100, MTIME, "aa", LATER)], [("b", "empty file (0 bytes)", 0, MTIME)]),
        part([], [], [("c", "corrupt image", 50, MTIME)]),
    ]
    files = [image("a"), image("b", size=0), image("c", size=51)]
    plan = plan_run(files, [], *NO_CACHE, parts)
    assert plan.use_part == {"a": (0, 0)}
    assert plan.failed == {"b": "empty file (0 bytes)"}
    assert [f.key for f in plan.pending] == ["c"]  # changed since it failed: tried again


def test_later_parts_override_earlier_ones():
    parts = [
        part(["a"], [(100, MTIME, "aa", LATER)]),
        part([], [], [("a", "truncated", 100, MTIME)]),
        part(["b"], [(1, MTIME, "bb", LATER)]),
    ]
    latest = latest_entries(parts)
    assert latest == {"a": (None, ("truncated", 100, MTIME)), "b": (2, 0)}
    assert latest_entries(parts, {"b"}) == {"b": (2, 0)}


def test_parts_already_merged_into_the_cache_are_not_used_twice():
    """Killed between writing the cache and deleting the parts: the cache entry is used."""
    entry = (100, MTIME, "aa", LATER)
    plan = plan_run([image("a")], [], ["a"], fps(entry), [part(["a"], [entry])])
    assert plan.use_part == {} and "a" in plan.keep_old


def test_a_changed_part_entry_is_checked_and_its_fingerprint_refreshed():
    parts = [part(["a"], [(100, MTIME, "aa", LATER)])]
    f = image("a", mtime=MTIME + 7)
    plan = plan_run([f], [], *NO_CACHE, parts)
    assert plan.to_check == [f]
    apply_checks(plan, [(f, (100, MTIME + 7, "aa", LATER + 9))], *NO_CACHE, parts)
    assert plan.use_part == {"a": (0, 0)}
    rows = assemble(plan, {"a"}, *NO_CACHE, parts)
    assert rows.keys == ["a"] and int(rows.fingerprints()["mtime_ns"][0]) == MTIME + 7
    assert int(parts[0].fingerprints["mtime_ns"][0]) == MTIME  # the input is not changed


@pytest.mark.parametrize(("prune", "missing", "pruned"), [(False, 1, 0), (True, 0, 1)])
def test_assemble_keeps_or_prunes_images_whose_file_is_gone(prune, missing, pruned):
    old_keys = ["gone", "kept", "now-bad", "changed"]
    old = fps(*[(100, MTIME, k, LATER) for k in old_keys])
    files = [image("kept"), image("changed", size=5), image("new")]
    plan = plan_run(files, [("now-bad", "not a regular file")], old_keys, old, [])
    assert [f.key for f in plan.to_check] == ["changed"]
    apply_checks(plan, [(files[1], (5, MTIME, "other", LATER))], old_keys, old, [])
    assert [f.key for f in plan.pending] == ["changed", "new"]
    # the extraction of the pending files wrote one part
    parts = [part(["changed", "new"], [(5, MTIME, "other", LATER), (1, MTIME, "n", LATER)])]
    record_extracted(plan, parts, {"changed", "new"})
    rows = assemble(plan, {f.key for f in files}, old_keys, old, parts, prune=prune)
    assert (rows.missing, rows.pruned) == (missing, pruned)
    kept_old = ["gone", "kept"] if not prune else ["kept"]
    assert rows.keys == [*kept_old, "changed", "new"]  # old rows first, in cache order
    assert rows.old_rows == [old_keys.index(k) for k in kept_old]
    assert rows.new_sel == [(0, [0, 1])]
    assert plan.failed == {"now-bad": "not a regular file"}


def test_record_extracted_takes_rows_and_failures():
    plan = plan_run([image("a"), image("b")], [], *NO_CACHE, [])
    parts = [part(["a"], [(100, MTIME, "aa", LATER)], [("b", "corrupt image", 100, MTIME)])]
    record_extracted(plan, parts, {"a", "b"})
    assert plan.use_part == {"a": (0, 0)} and plan.failed == {"b": "corrupt image"}


def test_damaged_cached_rows_are_extracted_again_or_dropped():
    old = fps(*[(100, MTIME, d, LATER) for d in ("aa", "bb", "cc")])
    files = [image("a"), image("b")]  # c's file is gone
    plan = plan_run(files, [], ["a", "b", "c"], old, [], corrupt=frozenset({"b", "c"}))
    assert list(plan.keep_old) == ["a"] and [f.key for f in plan.pending] == ["b"]
    rows = assemble(plan, {"a", "b"}, ["a", "b", "c"], old, [])
    assert rows.old_keys == ["a"] and (rows.lost, rows.missing) == (1, 0)
