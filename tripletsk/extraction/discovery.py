"""Finding images: walk a folder, keep files with an image extension, key them by relative path.

Keys are paths relative to the root with ``/`` separators; a name that is not valid UTF-8, or
that holds a control character (a newline, a tab...), cannot be a key (keys are lines of triplet
files and columns of tables) and is reported as a failure instead.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from tripletsk.cache.failures import escape_field, is_control
from tripletsk.errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "Discovery",
    "ImageFile",
    "discover_images",
    "is_listed_name",
    "listed_images",
    "reason_from_oserror",
]

#: File extensions searched for (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageFile:
    key: str  # path relative to the root, '/' separators
    path: str  # path to open
    size: int
    mtime_ns: int


@dataclass
class Discovery:
    files: list  # [ImageFile], sorted by key
    failed: list  # [(key, reason)] files found but unusable (broken link, not a regular file...)
    ignored: int  # files without an image extension
    skipped_dirs: list  # [(relative dir, reason)]


def reason_from_oserror(e: OSError) -> str:
    """A short reason, for the failure list, why a file or folder could not be read."""
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    if e.errno == errno.ENOENT:
        return "broken symbolic link or file vanished"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (file not readable)"
    return f"cannot read file: {e.strerror or e}"


def _key_problem(key: str) -> tuple[str, str | None]:
    """The key to report for a relative path, and why it cannot be a key (None if it can)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        key = key.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return key, "file name is not valid UTF-8; rename the file"
    bad = next((c for c in key if is_control(c)), None)
    if bad is not None:
        return key, f"file name holds a control character ({escape_field(bad)}); rename the file"
    return key, None


def is_listed_name(key: str, recursive: bool = True) -> bool:
    """Whether :func:`discover_images` would list a file with this key (if it exists): a relative
    ``/``-separated path with an image extension and no hidden (``.``) or empty part."""
    parts = key.split("/")
    return (
        key.lower().endswith(IMAGE_EXTENSIONS)
        and (recursive or len(parts) == 1)
        and all(p and not p.startswith(".") for p in parts)  # (also refuses ".." and "/x")
    )


def _file_entry(key: str, full: str, files: list, failed: list) -> None:
    """Add the file ``full`` under ``key`` to ``files``, or to ``failed`` with the reason."""
    key, problem = _key_problem(key)
    if problem is not None:
        failed.append((key, problem))
        return
    try:
        st = os.stat(full)
    except OSError as e:
        failed.append((key, reason_from_oserror(e)))
        return
    if not stat.S_ISREG(st.st_mode):
        failed.append((key, "not a regular file"))
        return
    files.append(ImageFile(key, full, st.st_size, st.st_mtime_ns))


def listed_images(images_dir: str | os.PathLike, keys, recursive: bool = True) -> Discovery:
    """The entries :func:`discover_images` would give for ``keys`` only, without walking the
    folder (a run on a few images of a huge folder). Keys it would never list are refused."""
    root = os.fspath(images_dir)
    bad = [k for k in keys if not is_listed_name(k, recursive)]
    if bad:
        raise UserError(
            f"not image keys of {root}: {', '.join(map(repr, bad[:5]))} (keys are paths "
            f"relative to the folder, '/' separators, with an image extension)"
        )
    files, failed = [], []
    for key in sorted(set(keys)):
        full = os.path.join(root, *key.split("/"))
        if os.path.lexists(full):  # (an absent file is not listed; a broken link fails)
            _file_entry(key, full, files, failed)
    return Discovery(files, sorted(failed), 0, [])


def discover_images(images_dir: str | os.PathLike, recursive: bool = True) -> Discovery:
    """List image files under ``images_dir`` by extension (case-insensitive), sorted by key.

    Symbolic links to files are followed; symbolic links to directories are followed too, but each
    real directory is visited once, so link loops end. Names starting with ``.`` (hidden files and
    folders, e.g. macOS ``._x.jpg`` resource files) are skipped.
    """
    root = os.fspath(images_dir)
    files, failed, skipped_dirs = [], [], []
    ignored = 0
    seen_dirs = set()
    try:
        st = os.stat(root)
        seen_dirs.add((st.st_dev, st.st_ino))
    except OSError:
        pass

    def onerror(e: OSError) -> None:
        rel = os.path.relpath(e.filename, root).replace(os.sep, "/") if e.filename else "?"
        skipped_dirs.append((rel + "/", reason_from_oserror(e)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            full = os.path.join(dirpath, d)
            try:
                dst = os.stat(full)
            except OSError as e:
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                skipped_dirs.append((rel + "/", reason_from_oserror(e)))
                continue
            ident = (dst.st_dev, dst.st_ino)
            if ident in seen_dirs:  # a link loop, or a second link to a folder already seen
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                skipped_dirs.append((rel + "/", "directory already visited (symbolic link loop)"))
                continue
            seen_dirs.add(ident)
            keep.append(d)
        dirnames[:] = keep if recursive else []
        for name in filenames:
            if name.startswith("."):
                continue
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                ignored += 1
                continue
            full = os.path.join(dirpath, name)
            key = os.path.relpath(full, root).replace(os.sep, "/")
            _file_entry(key, full, files, failed)
    files.sort(key=lambda f: f.key)
    failed.sort()
    return Discovery(files, failed, ignored, skipped_dirs)
