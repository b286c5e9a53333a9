"""One extraction run: find the images, plan what to do, extract, write the cache.

Runs are incremental (only new or changed images are extracted), resumable after any
interruption (SIGKILL included: finished batches are journal parts next to the cache), and
unreadable files are skipped and reported with a reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tripletsk.cache.failures import write_failed_list
from tripletsk.cache.format import (
    FINGERPRINT_DTYPE,
    FORMAT_NAME,
    FORMAT_VERSION,
    CacheHeader,
    check_provenance,
    read_header,
)
from tripletsk.cache.journal import PartsJournal, load_part_features, remove_stale_temp_files
from tripletsk.cache.lock import CacheLock
from tripletsk.cache.repair import corrupt_rows, read_intact_rows
from tripletsk.cache.roots import ImageFolderMismatchError, journal_meta, same_folder
from tripletsk.cache.write_errors import check_room, writing_cache
from tripletsk.cache.writer import library_versions, now_iso, write_cache
from tripletsk.errors import CacheMismatchError, UserError
from tripletsk.extraction.decode import safe_fingerprint
from tripletsk.extraction.discovery import (
    IMAGE_EXTENSIONS,
    Discovery,
    discover_images,
    listed_images,
)
from tripletsk.extraction.options import ExtractOptions
from tripletsk.extraction.parameters import AUTO, DEFAULTS, document_parameters
from tripletsk.extraction.pipeline import extract_pending, progress_bar
from tripletsk.extraction.plan import (
    Assembly,
    Plan,
    apply_checks,
    assemble,
    plan_run,
    record_extracted,
)
from tripletsk.extraction.summary import ExtractionSummary

__all__ = ["extract_features"]


@dataclass
class _Run:
    """The state of a run once the cache is locked."""

    opts: ExtractOptions
    found: Discovery
    shard_attrs: dict | None  # attributes recorded in a shard cache
    old: CacheHeader | None  # the existing cache's header
    store_dtype: str
    journal: PartsJournal
    summary: ExtractionSummary
    t0: float
    image_root: str  # recorded in the cache: the old cache's spelling of the same folder
    corrupt: np.ndarray  # rows of the old cache whose features fail their checksum (verify)

    @property
    def dim(self) -> int:
        return self.journal.meta["dim"]

    @property
    def old_keys(self) -> list:
        return self.old.keys if self.old is not None else []

    @property
    def old_fps(self) -> np.ndarray:
        return self.old.fingerprints if self.old is not None else np.zeros(0, FINGERPRINT_DTYPE)


@document_parameters
def extract_features(
    images_dir: str | os.PathLike,
    output: str | os.PathLike = DEFAULTS["output"],
    weights=DEFAULTS["weights"],
    image_size: int = DEFAULTS["image_size"],
    batch_size: int = DEFAULTS["batch_size"],
    dtype: str | None = DEFAULTS["dtype"],
    recursive: bool = DEFAULTS["recursive"],
    prune: bool = DEFAULTS["prune"],
    seed: int = DEFAULTS["seed"],
    progress: bool | None = DEFAULTS["progress"],
    quiet: bool = DEFAULTS["quiet"],
    *,
    verify: bool = DEFAULTS["verify"],
    workers: int | None = DEFAULTS["workers"],
    max_pixels: int | None = DEFAULTS["max_pixels"],
    shard: str | tuple[int, int] | None = DEFAULTS["shard"],
    backend: str = DEFAULTS["backend"],
    precision: str | None = DEFAULTS["precision"],
    replace: bool = DEFAULTS["replace"],
    decode_memory: int | None = DEFAULTS["decode_memory"],
    int8_model=DEFAULTS["int8_model"],
    backbone=DEFAULTS["backbone"],
    layer: str | None = DEFAULTS["layer"],
    preprocessing: str | None = DEFAULTS["preprocessing"],
    only=DEFAULTS["only"],
    backend_choice: str | None = DEFAULTS["backend_choice"],
) -> ExtractionSummary:
    """Extract backbone features (ResNet50 ``avg_pool`` by default) of every image under
    ``images_dir`` into a cache.

    Parameters
    ----------
    {parameters}

    Returns
    -------
    ExtractionSummary

    Raises
    ------
    UserError
        The folder does not exist or holds no images, bad arguments, or (subclasses)
        :class:`CacheMismatchError` for a cache made with other settings or of another images
        folder (:class:`~tripletsk.cache.roots.ImageFolderMismatchError`),
        :class:`~tripletsk.cache.write_errors.CacheWriteError` when the cache cannot be
        written (disk full, file-size limit...; finished batches are kept),
        :class:`CacheLockedError` when another extraction writes the same cache,
        :class:`WeightsUnavailableError` when ImageNet weights cannot be downloaded.
    """
    t0 = time.perf_counter()
    opts = ExtractOptions.from_arguments(
        images_dir, output, weights=weights, seed=seed, image_size=image_size,
        batch_size=batch_size, dtype=dtype, backend=backend, precision=precision,
        progress=progress, quiet=quiet, workers=workers, recursive=recursive, prune=prune,
        verify=verify, max_pixels=max_pixels, shard=shard, replace=replace,
        decode_memory=decode_memory, backbone=backbone, layer=layer, preprocessing=preprocessing,
        only=only, backend_choice=backend_choice,
    )  # fmt: skip
    found, shard_attrs, listing = _discover(opts)
    _make_output_folder(opts.output)
    summary = ExtractionSummary(
        output=opts.output, ignored=found.ignored, skipped_dirs=list(found.skipped_dirs)
    )
    from PIL import Image

    with CacheLock(opts.output), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        run = _open_run(opts, found, shard_attrs, summary, t0, listing, int8_model)
        _execute(run)
    summary.seconds = time.perf_counter() - t0
    if summary.interrupted:
        raise KeyboardInterrupt
    return summary


def _discover(opts: ExtractOptions) -> tuple[Discovery, dict | None, list]:
    """The images to consider (this shard's only, with ``shard``), the shard's attributes, and
    the complete listing's files (int8 calibration is chosen from all of them)."""
    if opts.only is not None:
        if opts.prune or opts.shard is not None:
            raise UserError("only= cannot be combined with prune or shard")
        found = listed_images(opts.root, opts.only, recursive=opts.recursive)
        return found, None, found.files
    found = discover_images(opts.root, recursive=opts.recursive)
    if not found.files and not found.failed:
        how = "recursively " if opts.recursive else ""
        raise UserError(
            f"no images found in {opts.root} (searched {how}for {' '.join(IMAGE_EXTENSIONS)}, "
            "any case)"
        )
    if opts.shard is None:
        return found, None, found.files
    from tripletsk.cache.shards import select_shard

    return (*select_shard(found, opts.shard), found.files)


def _make_output_folder(output: str) -> None:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        os.close(os.open(output + ".lock", os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as err:
        raise UserError(f"cannot write the cache {output}: {err.strerror or err}") from None


def _open_run(opts, found, shard_attrs, summary, t0, listing, int8_model) -> _Run:
    """Under the cache's lock: check the existing cache fits, open the parts journal."""
    remove_stale_temp_files(opts.output)
    old = read_header(opts.output) if os.path.exists(opts.output) and not opts.replace else None
    if opts.backend == AUTO:
        from tripletsk.extraction.auto import resolve

        journal = journal_meta(opts.output + ".parts")
        opts, chosen = resolve(opts, old, journal, found.files, listing)
        int8_model = chosen or int8_model
    elif old is not None and opts.choice is None:  # the same runner keeps its recorded choice
        same = (old.provenance.get("backend"), old.provenance.get("compute_dtype"))
        if same == (opts.backend, opts.precision):
            opts = dataclasses.replace(opts, choice=old.provenance.get("backend_choice"))
    if opts.precision == "int8":
        from tripletsk.extraction.int8 import with_int8_model

        opts = with_int8_model(opts, old, listing, int8_model)
    output, prov = opts.output, opts.provenance
    image_root = os.path.abspath(opts.root)
    if old is not None and old.attrs.get("image_root"):
        if not same_folder(old.attrs["image_root"], opts.root):
            raise ImageFolderMismatchError(output, old.attrs["image_root"], opts.root)
        image_root = old.attrs["image_root"]
    if old is not None:
        check_provenance(old.provenance, prov, output)
        if shard_attrs is not None or "shard" in old.attrs:
            from tripletsk.cache.shards import check_shard_output

            check_shard_output(old.attrs, shard_attrs, output)
        if opts.dtype is not None and opts.dtype != old.dtype:
            raise CacheMismatchError(
                f"{output} stores {old.dtype} features; extract with dtype {old.dtype} (or "
                "leave the dtype unset), or write to another output file"
            )
    store_dtype = opts.dtype or (old.dtype if old is not None else "float32")
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "provenance": prov,
        "dim": old.dim if old is not None else opts.dim,
        "image_root": image_root,
    }
    journal = PartsJournal(output, meta)
    _check_journal(journal, opts)
    with writing_cache(output, journal.dir):
        journal.open()
    corrupt = np.zeros(0, np.int64)
    if old is not None and opts.verify:  # (only: the rows of the images considered)
        corrupt = corrupt_rows(output, opts.only)
    return _Run(
        opts, found, shard_attrs, old, store_dtype, journal, summary, t0, image_root, corrupt
    )


def _check_journal(journal: PartsJournal, opts: ExtractOptions) -> None:
    """Unfinished work of an interrupted run on another folder is refused (``replace``: dropped,
    as is work made with other settings)."""
    old = journal_meta(journal.dir)
    if old is None:
        return
    if opts.replace:
        if old != json.loads(json.dumps(journal.meta)):  # compared as stored: JSON types
            journal.remove()
    elif old.get("image_root") and not same_folder(old["image_root"], opts.root):
        raise ImageFolderMismatchError(journal.dir, old["image_root"], opts.root)


def _execute(run: _Run) -> None:
    """Plan, check changed files by content, extract the rest, write the cache."""
    opts, parts, summary = run.opts, run.journal.parts, run.summary
    corrupt = frozenset(run.old_keys[i] for i in run.corrupt)
    plan = plan_run(
        run.found.files, run.found.failed, run.old_keys, run.old_fps, parts, verify=opts.verify,
        corrupt=corrupt,
    )  # fmt: skip
    if plan.to_check:
        _check_contents(plan, run)
    summary.resumed = len(plan.use_part)
    if plan.pending:
        summary.interrupted, ready_at = extract_pending(plan.pending, run.journal, opts)
        if ready_at is not None:
            summary.setup_seconds = ready_at - run.t0
        record_extracted(plan, run.journal.parts, {f.key for f in plan.pending})
    rows = assemble(
        plan, {f.key for f in run.found.files}, run.old_keys, run.old_fps, run.journal.parts,
        prune=opts.prune,
    )  # fmt: skip
    failed = sorted({**_failures_not_listed(run), **plan.failed}.items())
    summary.cached = len(plan.keep_old)
    cached_keys = set(run.old_keys)
    summary.changed = sum(1 for k in rows.new_keys if k in cached_keys)
    summary.repaired = sum(1 for k in rows.new_keys if k in corrupt)
    summary.lost = rows.lost
    summary.extracted = len(rows.new_keys) - summary.changed
    summary.pruned, summary.missing = rows.pruned, rows.missing if opts.only is None else 0
    summary.failed, summary.n_images = failed, len(rows.keys)
    if run.shard_attrs is not None:  # a shard records whether it holds its whole share
        run.shard_attrs = {**run.shard_attrs, "shard_complete": int(not summary.interrupted)}
    with writing_cache(opts.output, run.journal.dir):
        if _needs_write(run, rows, failed):
            itemsize = np.dtype(run.store_dtype).itemsize
            needed = len(rows.keys) * (run.dim * itemsize + FINGERPRINT_DTYPE.itemsize)
            check_room(opts.output, run.journal.dir, needed)
            _write(run, rows, failed)
            summary.written = True
        _finish_journal(run)
        summary.failed_list = write_failed_list(opts.output, failed)


def _finish_journal(run: _Run) -> None:
    """Delete the parts journal, now in the cache. With ``only``, delete only the parts that
    hold nothing but images this run considered: an interrupted run's finished batches of
    other images stay, for that run to resume (a kept part's entries of this run's images are
    checked against the cache then, as any part's)."""
    if run.opts.only is None:
        run.journal.remove()
        return
    considered = {f.key for f in run.found.files} | {k for k, _ in run.found.failed}

    def done(part) -> bool:
        return considered.issuperset([*part.keys, *(k for k, *_ in part.failed)])

    run.journal.remove_parts(done)


def _failures_not_listed(run: _Run) -> dict:
    """With ``only``: the cache's failures of images the run did not consider, kept."""
    if run.opts.only is None or run.old is None:
        return {}
    listed = {f.key for f in run.found.files} | {k for k, _ in run.found.failed}
    return {k: reason for k, reason in run.old.failed if k not in listed}


def _check_contents(plan: Plan, run: _Run) -> None:
    """Hash the files whose size/mtime changed (or all, with verify): same content -> kept."""
    files = plan.to_check
    with (
        ThreadPoolExecutor(run.opts.workers) as ex,
        progress_bar(len(files), "checking", run.opts.show and len(files) > 200) as bar,
    ):
        checked = []
        for f, res in zip(files, ex.map(safe_fingerprint, files), strict=True):
            bar.update(1)
            checked.append((f, res))
    apply_checks(plan, checked, run.old_keys, run.old_fps, run.journal.parts)


def _needs_write(run: _Run, rows: Assembly, failed: list) -> bool:
    """Whether the cache on disk differs from the one the run would write."""
    old = run.old
    if old is None or rows.new_keys or len(rows.old_rows) != len(old.keys):
        return True
    pairs = zip(rows.old_rows, rows.old_fps, strict=True)
    return (
        any(not np.array_equal(old.fingerprints[i], fp) for i, fp in pairs)
        or failed != sorted(old.failed)
        or run.image_root != old.attrs.get("image_root")
        or any(old.attrs.get(k) != v for k, v in (run.shard_attrs or {}).items())
    )


def _write(run: _Run, rows: Assembly, failed: list) -> None:
    """Write the new cache: kept cache rows, then rows of the journal's parts."""
    now = now_iso()
    attrs = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **run.opts.provenance,
        "dim": run.dim,
        "dtype": run.store_dtype,
        "versions": json.dumps(library_versions(), sort_keys=True),
        "created": run.old.attrs.get("created", now) if run.old is not None else now,
        "updated": now,
        "image_root": run.image_root,
        "generation": os.urandom(8).hex(),
        **(run.shard_attrs or {}),
    }

    def blocks():
        if rows.old_rows:
            yield from read_intact_rows(run.opts.output, np.asarray(rows.old_rows), run.corrupt)
        for pi, sel in rows.new_sel:
            yield load_part_features(run.journal.parts[pi].path)[sel]

    write_cache(
        run.opts.output,
        keys=rows.keys,
        fingerprints=rows.fingerprints(),
        feature_blocks=blocks(),
        dim=run.dim,
        dtype=run.store_dtype,
        failed=failed,
        attrs=attrs,
    )
