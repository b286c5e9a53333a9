"""Decoding and hashing: one image file -> pixels the model takes, and the file's fingerprint.

Decoding (Pillow): EXIF orientation applied, any mode converted to RGB (alpha composited on
white, 16-bit scaled to 8-bit, CMYK converted, first frame of animations), resized to
``image_size`` x ``image_size`` with bilinear filtering (aspect ratio not kept). A fingerprint is
``(size, mtime_ns, blake2b hex, hashed_ns)``: the file's content hash and when it was taken.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import time
import warnings
from dataclasses import dataclass

import numpy as np

from tripletsk.errors import ImageDecodeError
from tripletsk.extraction.architecture import RESNET50
from tripletsk.extraction.budget import ByteBudget
from tripletsk.extraction.discovery import ImageFile, reason_from_oserror

__all__ = [
    "PREPROCESSING",
    "DecodedFile",
    "decode",
    "decode_bytes_estimate",
    "fingerprint_file",
    "load_image",
    "process_file",
    "safe_fingerprint",
]

#: The decoding + preprocessing of the default backbone (ResNet50); see
#: :mod:`tripletsk.extraction.architecture` for the others.
PREPROCESSING = RESNET50.preprocessing
_BIG_FILE = 256 * 1024 * 1024  # files larger than this are hashed by streaming, then decoded


def _to_rgb(im):
    """Convert a Pillow image of any mode to 8-bit RGB (alpha composited onto white)."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = np.nan_to_num(a.astype(np.float64))
            scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
            a8 = np.clip(a * scale, 0, 255).round().astype(np.uint8)
        else:  # 16-bit samples (also "I", how Pillow opens some 16-bit files): 0..65535 -> 0..255
            a8 = ((np.clip(a.astype(np.int64), 0, 65535) + 128) // 257).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    if mode == "P":
        if "transparency" in im.info:
            im = im.convert("RGBA")
            mode = "RGBA"
        else:
            return im.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX, ...


#: Peak bytes per pixel of decoding and converting to RGB, by mode, with some margin (measured
#: as peak RSS on flat 3000x3000 images: RGB 4.4, L/P 5.5, RGBA/LA 20.2, I;16 20.2, CMYK 8.7;
#: an EXIF rotation adds a copy of the image).
_BYTES_PER_PIXEL = {"1": 6, "L": 6, "P": 6, "RGB": 8, "I": 40, "F": 40}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def decode_bytes_estimate(im) -> int:
    """Bytes that decoding the opened (not yet loaded) Pillow image ``im`` holds at its peak."""
    mode = im.mode
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        per_pixel = 24
    elif mode.startswith("I;16"):
        per_pixel = 24
    else:
        per_pixel = _BYTES_PER_PIXEL.get(mode, 12)  # CMYK, YCbCr, LAB, ...
    return im.width * im.height * per_pixel


def _oriented(im):
    """``im`` turned upright by its EXIF orientation (the same image, not a copy, if upright)."""
    from PIL import ImageOps

    try:
        if im.getexif().get(0x0112, 1) in (None, 1):
            return im
        return ImageOps.exif_transpose(im)
    except Exception:  # broken EXIF: use the pixels as stored
        return im


#: Where an image's (left, top, right, bottom) margins go when it is turned upright, by EXIF
#: orientation: the new margin ``k`` is the stored margin ``_MARGINS_TURNED[o][k]``.
_MARGINS_TURNED = {2: (2, 1, 0, 3), 3: (2, 3, 0, 1), 4: (0, 3, 2, 1), 5: (1, 0, 3, 2),
                   6: (3, 0, 1, 2), 7: (3, 2, 1, 0), 8: (1, 2, 3, 0)}  # fmt: skip


def _extent_box(stored, oriented, extent: tuple | None) -> tuple | None:
    """The box of ``oriented`` (``stored`` turned upright, or itself) that shows the image's
    ``extent`` (width, height in ``stored``'s pixels from its top left corner; a DCT-scaled
    JPEG's last row and column are partial blocks), or None if the whole image shows it."""
    if extent is None or extent == stored.size:
        return None
    w, h = stored.size
    margins = (0.0, 0.0, w - extent[0], h - extent[1])
    if oriented is not stored:  # turned: its margins moved with it
        order = _MARGINS_TURNED.get(stored.getexif().get(0x0112, 1), (0, 1, 2, 3))
        margins = tuple(margins[k] for k in order)
    ow, oh = oriented.size
    return (margins[0], margins[1], ow - margins[2], oh - margins[3])


def decode(
    data: bytes | str,
    image_size: int,
    max_pixels: int | None,
    budget: ByteBudget | None = None,
    *,
    resample: str = "bilinear",
    draft_size: int | None = None,
) -> np.ndarray:
    """Decode bytes (or a path) to a (size, size, 3) uint8 array; ImageDecodeError with a reason.

    With a ``budget``, the decoded pixels' bytes (estimated from the header, after the JPEG draft
    reduction) are held from it while they exist. ``resample`` names Pillow's filter of the
    resize (``"bilinear"``, the backbones' preprocessing; ``"lanczos"`` for thumbnails).
    ``draft_size``: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both
    sides >= this many pixels, 0 decodes it in full. Given, the resize also takes exactly the
    image's extent from a DCT-scaled image (whose last row and column stand for a partial block
    when a side is not a multiple of the scale), as Pillow's ``Image.thumbnail`` does; None (the
    backbones' decoding, unchanged) drafts to ``image_size`` and resizes the whole decoded
    image. Thumbnails keep a margin above their size (:mod:`tripletsk.index.thumbnails`).
    """
    from PIL import Image, UnidentifiedImageError

    if max_pixels is None:
        max_pixels = Image.MAX_IMAGE_PIXELS
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with Image.open(src) as im:
            n_pixels = im.width * im.height
            if max_pixels and n_pixels > max_pixels:
                raise ImageDecodeError(
                    f"decompression bomb: {im.width}x{im.height} = {n_pixels} pixels exceeds "
                    f"the limit of {max_pixels}"
                )
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animations: first frame
            draft = image_size if draft_size is None else int(draft_size)
            extent = None  # the stored image's extent in decoded pixels, if DCT-scaled
            if im.format == "JPEG" and draft > 0:
                drafted = im.draft(None, (draft, draft))  # DCT downscaling, keeps >= draft
                if drafted is not None and draft_size is not None:
                    extent = drafted[1][2:]
            held = decode_bytes_estimate(im) + (len(data) if isinstance(data, bytes) else 0)
            with budget.hold(held) if budget is not None else contextlib.nullcontext():
                im.load()
                oriented = _oriented(im)
                box = _extent_box(im, oriented, extent)
                rgb = _to_rgb(oriented)
                if rgb.size != (image_size, image_size) or box is not None:
                    filter_ = Image.Resampling[resample.upper()]
                    rgb = rgb.resize((image_size, image_size), filter_, box=box)
                arr = np.asarray(rgb, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image: cannot identify the image format") from None
    except MemoryError:
        raise ImageDecodeError("image too large to decode (out of memory)") from None
    except OSError as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg:
            raise ImageDecodeError(f"truncated or corrupt image ({msg})") from None
        raise ImageDecodeError(f"corrupt image ({msg})") from None
    except Exception as e:
        raise ImageDecodeError(f"cannot decode image ({type(e).__name__}: {e})") from None
    if arr.shape != (image_size, image_size, 3):
        raise ImageDecodeError(f"unexpected decoded shape {arr.shape}")
    return arr


def load_image(
    path: str | os.PathLike | bytes, image_size: int = 224, *, max_pixels: int | None = None
) -> np.ndarray:
    """Read one image as the extractor does: a (image_size, image_size, 3) uint8 RGB array.

    EXIF orientation is applied; any mode is converted to RGB (transparency composited on white,
    16-bit samples scaled to 8 bits, CMYK converted, first frame of animations); the image is
    resized to a square with bilinear filtering (aspect ratio not kept). ``max_pixels`` (default
    ``PIL.Image.MAX_IMAGE_PIXELS``) guards against decompression bombs.

    Raises
    ------
    ImageDecodeError
        With the reason, if the file is not a readable image.
    """
    if isinstance(path, bytes):
        data = path
    else:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as e:
            raise ImageDecodeError(reason_from_oserror(e)) from None
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    with warnings.catch_warnings():
        from PIL import Image

        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return decode(data, int(image_size), max_pixels)


@dataclass
class DecodedFile:
    """One file read by :func:`process_file`: its pixels, or the reason it has none."""

    file: ImageFile
    array: np.ndarray | None
    fingerprint: tuple  # (size, mtime_ns, blake2b hex, hashed_ns)
    reason: str | None


def _open_regular(path: str):
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ImageDecodeError("not a regular file")
    return os.fdopen(fd, "rb"), st


def _hash_stream(fh) -> str:
    h = hashlib.blake2b(digest_size=16)
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def fingerprint_file(f: ImageFile) -> tuple:
    """(size, mtime_ns, blake2b, hashed_ns) of a file, by content (OSError if unreadable)."""
    t = time.time_ns()
    fh, st = _open_regular(f.path)
    with fh:
        digest = _hash_stream(fh)
    return (st.st_size, st.st_mtime_ns, digest, t)


def process_file(
    f: ImageFile, image_size: int, max_pixels: int | None, budget: ByteBudget | None = None
) -> DecodedFile:
    """Read, hash and decode one file (runs in a worker thread; decoded pixels held from the
    shared ``budget``)."""
    t = time.time_ns()
    fp = (f.size, f.mtime_ns, "", t)
    try:
        fh, st = _open_regular(f.path)
        with fh:
            fp = (st.st_size, st.st_mtime_ns, "", t)
            if st.st_size > _BIG_FILE:
                digest, data = _hash_stream(fh), f.path
            else:
                data = fh.read()
                digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        fp = (st.st_size, st.st_mtime_ns, digest, t)
        if st.st_size == 0:
            raise ImageDecodeError("empty file (0 bytes)")
        arr = decode(data, image_size, max_pixels, budget)
        return DecodedFile(f, arr, fp, None)
    except ImageDecodeError as e:
        return DecodedFile(f, None, fp, str(e))
    except OSError as e:
        return DecodedFile(f, None, fp, reason_from_oserror(e))
    except Exception as e:  # never let one file stop the run
        return DecodedFile(f, None, fp, f"cannot decode image ({type(e).__name__}: {e})")


def safe_fingerprint(f: ImageFile) -> tuple | None:
    """:func:`fingerprint_file`, or None if the file cannot be read now."""
    try:
        return fingerprint_file(f)
    except (OSError, ImageDecodeError):
        return None
