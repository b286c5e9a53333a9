"""Writing an output (a model, predictions, a triplet file, a plot, an export) without ever
replacing a file the command did not mean to replace.

A command decides what it may replace when it starts: :func:`plan_output` records whether the
output exists and, if it does, which file it is (device, inode, size, modification time). The
output is then written whole under a temporary name in the same folder and moved into place
by :func:`publish`, which checks that decision again at the last moment:

* an output that did not exist is created exclusively: a hard link (``os.link`` fails if the
  name exists, atomically), or for a folder ``os.mkdir`` of the name followed by a rename onto
  that empty folder (which fails once anything is put in it). A file or folder that appeared
  meanwhile, e.g. a user's file saved during a 2-minute export, is never replaced;
* an output that existed (and that the command may replace: ``fit -o`` rewrites a model,
  ``export --force``) is replaced only if it is still the same file, unchanged.

When the check refuses, the finished work is kept under its temporary name, and the error
(:class:`OutputChangedError`, a :class:`~tripletsk.errors.UserError`) says where it is. An
output that is a stream (``-o /dev/stdout``, a named pipe) is written into directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from tripletsk.errors import UserError

__all__ = [
    "Output",
    "OutputChangedError",
    "check_planned",
    "plan_output",
    "publish",
    "temporary_path",
    "writing",
]


class OutputChangedError(UserError, FileExistsError):
    """An output appeared or changed while it was being made; it was not replaced."""


def _identity(path: str) -> tuple | None:
    """What tells two files apart, or None if ``path`` does not exist (symlinks not followed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, stat.S_IFMT(st.st_mode)


@dataclass(frozen=True)
class Output(os.PathLike):
    """An output path and what was there when the command started (None: nothing).

    It is a path-like, so every function that writes a file takes it in place of the path.
    """

    path: str
    found: tuple | None

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def plan_output(path: str | os.PathLike) -> Output:
    """``path`` and what is there now; an :class:`Output` is returned as it is.

    Examples
    --------
    >>> import os, tempfile
    >>> out = plan_output(os.path.join(tempfile.mkdtemp(), "model.npz"))
    >>> out.found is None, os.fspath(out).endswith("model.npz")
    (True, True)
    """
    if isinstance(path, Output):
        return path
    path = os.fspath(path)
    return Output(path, _identity(path))


def temporary_path(path: str | os.PathLike, suffix: str | None = None) -> str:
    """A hidden name next to ``path`` for writing it: ``.<name>.tmp<pid><suffix>``.

    ``suffix`` defaults to ``path``'s own (Keras and matplotlib choose the format from it).
    """
    head, tail = os.path.split(os.fspath(path).rstrip("/" + os.sep))
    if suffix is None:
        suffix = os.path.splitext(tail)[1]
    return os.path.join(head, f".{tail}.tmp{os.getpid()}{suffix}")


def publish(tmp: str, output: Output | str | os.PathLike, what: str = "output") -> None:
    """Move the finished ``tmp`` (a file or folder) to ``output``, as planned.

    Raises
    ------
    OutputChangedError
        If something appeared at a path that was free when planned, or the file found then
        was changed or replaced; ``tmp`` is then kept and named in the message.
    """
    output = plan_output(output)
    path = output.path
    check_planned(output, tmp, what)
    if output.found is None:
        _create(tmp, output, what)
    elif os.path.isdir(tmp) and stat.S_ISDIR(output.found[4]):
        _replace_folder(tmp, output, what)
    else:
        os.replace(tmp, path)  # the file found at planning time, checked just now


def check_planned(output: Output, tmp: str, what: str = "output") -> None:
    """Raise :class:`OutputChangedError` (naming ``tmp``, the finished work) unless
    ``output`` is still as planned: absent, or the very file found then."""
    if _identity(output.path) != output.found:
        raise _changed(output, tmp, what)


def _changed(output: Output, tmp: str, what: str) -> OutputChangedError:
    how = (
        "appeared (it did not exist when the command started)"
        if output.found is None
        else "was changed or replaced by another program"
    )
    return OutputChangedError(
        f"{output.path} {how} while the {what} was being made; it was not replaced. The new "
        f"{what} is kept as {tmp}: move it where you want it"
    )


def _create(tmp: str, output: Output, what: str) -> None:
    path = output.path
    if os.path.isdir(tmp):
        try:
            os.mkdir(path)  # claim the name: fails if anything has it
        except FileExistsError:
            raise _changed(output, tmp, what) from None
        try:
            os.rename(tmp, path)  # onto our empty folder; fails once something is put in it
        except OSError:
            raise _changed(output, tmp, what) from None
        return
    try:
        os.link(tmp, path)  # atomic, and never replaces an existing name
    except FileExistsError:
        raise _changed(output, tmp, what) from None
    except OSError:  # a file system without hard links: claim the name, then replace it
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise _changed(output, tmp, what) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _replace_folder(tmp: str, output: Output, what: str) -> None:
    """The folder found at planning time goes aside, the new one in, then the old is removed."""
    old = temporary_path(output.path, ".old")
    os.rename(output.path, old)
    try:
        _create(tmp, Output(output.path, None), what)
    except OutputChangedError:
        raise OutputChangedError(
            f"{output.path} appeared again while the {what} was being moved in; not replaced. "
            f"The new {what} is kept as {tmp}, the old one as {old}"
        ) from None
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def writing(
    path: str | os.PathLike, what: str = "output", suffix: str | None = None
) -> Iterator[str]:
    """The temporary name to write ``path`` under, published when the block ends.

    ``path`` may be an :class:`Output` planned earlier (when the command started), else it is
    planned now. On an error inside the block the temporary file is removed; if publishing is
    refused it is kept (the error names it).

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "predictions.txt")
    >>> with writing(path, "predictions") as tmp:
    ...     _ = open(tmp, "w").write("1\\n0\\n")
    >>> open(path).read()
    '1\\n0\\n'
    """
    output = plan_output(path)
    if _is_stream(output.path):  # e.g. -o /dev/stdout, a named pipe: written in place
        yield output.path
        return
    tmp = temporary_path(output.path, suffix)
    try:
        yield tmp
        publish(tmp, output, what)
    except OutputChangedError:
        raise
    except BaseException:
        _remove(tmp)
        raise


def _is_stream(path: str) -> bool:
    """Whether ``path`` is an existing character device, named pipe or socket (symlinks
    followed): such an output is a stream to write into, not a file to replace."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
