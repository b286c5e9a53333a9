"""The header of a NumPy ``.npy`` array, read without reading (or trusting) its data.

A model file's members and an index's segments are ``.npy`` arrays whose shape and type are
checked before any data is read.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

__all__ = ["read_npy_header"]


def read_npy_header(fh: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` array that starts at ``fh``.

    ``fh`` is left at the first byte of the data. Raises ``ValueError`` if ``fh`` does not
    start with a ``.npy`` header.

    Examples
    --------
    >>> import io
    >>> import numpy as np
    >>> from tripletsk._npy import read_npy_header
    >>> fh = io.BytesIO()
    >>> np.save(fh, np.zeros((2, 3), dtype=np.float32))
    >>> _ = fh.seek(0)
    >>> shape, fortran, dtype = read_npy_header(fh)
    >>> shape, fortran, dtype.str, fh.tell() == len(fh.getvalue()) - 24
    ((2, 3), False, '<f4', True)
    """
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)
