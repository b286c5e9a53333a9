"""Which images folder a cache holds: one cache never mixes the images of two folders.

Keys are paths relative to the folder, so two folders share keys (``cat/1.jpg``); extracting a
second folder into the cache of the first would overwrite the first one's features. Folders are
compared by real path: the same folder reached through a symbolic link or a relative path is the
same folder.
"""

from __future__ import annotations

import json
import os

from tripletsk.errors import CacheMismatchError

__all__ = ["ImageFolderMismatchError", "journal_meta", "same_folder"]


def same_folder(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether the paths ``a`` and ``b`` name the same folder (symbolic links resolved)."""
    return os.path.realpath(a) == os.path.realpath(b)


def journal_meta(journal_dir: str) -> dict | None:
    """The settings recorded by the parts journal ``journal_dir`` (None if there is none)."""
    try:
        with open(os.path.join(journal_dir, "meta.json"), encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


class ImageFolderMismatchError(CacheMismatchError):
    """``holder`` (a cache, or the unfinished work of an interrupted run) holds the features of
    the images in ``old_root``, and a run on ``new_root`` asked to add to it."""

    def __init__(self, holder: str, old_root: str, new_root: str):
        self.holder, self.old_root, self.new_root = holder, old_root, os.path.abspath(new_root)
        super().__init__(self.message("write to another output file", "pass replace=True"))

    def message(self, elsewhere: str, replace: str) -> str:
        """The error's text, with the ways out worded by the caller (parameters or flags)."""
        return (
            f"{self.holder} holds the features of the images in {self.old_root}, not "
            f"{self.new_root}: same-named images of the two folders would be mixed. For "
            f"{self.new_root}, {elsewhere}, or {replace} to discard it and start anew "
            f"(also if {self.old_root} was moved to {self.new_root}: every image is then "
            "extracted again)."
        )
