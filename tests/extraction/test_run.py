"""Feature extraction on real image files, a real ResNet50 (random weights, 32x32) and real HDF5.

Every bad-input case of the issue is a real file written here. Processes are really killed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import tripletsk.extraction.run as extraction_run
from tripletsk.cache.lock import CacheLock
from tripletsk.cache.store import FeatureStore
from tripletsk.cli import cli
from tripletsk.cli.extract import add_extract_arguments, run_extract
from tripletsk.errors import (
    CacheLockedError,
    CacheMismatchError,
    ImageDecodeError,
    UserError,
    WeightsUnavailableError,
)
from tripletsk.extraction import (
    IMAGE_EXTENSIONS,
    ExtractionSummary,
    build_backbone,
    discover_images,
    extract_features,
    features_for_files,
    load_image,
    resolve_weights,
)
from tripletsk.extraction.backbone import cached_backbone
from tripletsk.extraction.decode import process_file

REPO = Path(__file__).resolve().parents[2]
SIZE, BATCH = 32, 4
RUN = {"weights": "none", "image_size": SIZE, "batch_size": BATCH, "progress": False}


def photo(seed: int, w: int = 64, h: int = 48) -> Image.Image:
    """A small photo-like RGB image: smooth gradients plus a little noise, unique per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack(
        [
            (x * rng.uniform(1, 4) + y * rng.uniform(0, 2)) % 256,
            (y * rng.uniform(1, 4) + rng.uniform(0, 255)) % 256,
            ((x + y) * rng.uniform(0.5, 2)) % 256,
        ],
        axis=-1,
    )
    return Image.fromarray(np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8))


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def write_png_bomb(path: Path, w: int = 30000, h: int = 30000) -> None:
    """A valid 1-bit PNG of w x h pixels that compresses to ~100 KB: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    co = zlib.compressobj(9)
    row = b"\0" * (1 + (w + 7) // 8)
    idat = b"".join(co.compress(row) for _ in range(h)) + co.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def backbone():
    """The backbone the extraction runs use (built once per session, cached in-process)."""
    return cached_backbone(resolve_weights("none", 0), SIZE, BATCH)


def feats_of(backbone, path) -> np.ndarray:
    return backbone(load_image(path, SIZE)[None])[0]


def read_store(path) -> dict:
    store = FeatureStore(path)
    return dict(zip(store.keys, store.lookup(store.keys), strict=True))


# --------------------------------------------------------------------------------------------
# Decoding (no model)
# --------------------------------------------------------------------------------------------


def test_load_image_shape_and_bilinear_resize(tmp_path):
    p = save(photo(1, 80, 40), tmp_path / "a.jpg", quality=95)
    arr = load_image(p, SIZE)
    assert arr.shape == (SIZE, SIZE, 3) and arr.dtype == np.uint8
    ref = np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    assert np.abs(arr.astype(int) - ref).mean() < 3  # JPEG draft decoding is close to full


def test_grayscale_and_bilevel_become_rgb(tmp_path):
    g = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1)), "L")
    arr = load_image(save(g, tmp_path / "g.png"), SIZE)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    assert arr[:, 0].mean() < 20 and arr[:, -1].mean() > 230
    b = Image.new("1", (40, 40), 1)
    assert load_image(save(b, tmp_path / "b.bmp"), SIZE).min() == 255


def test_palette_with_transparency_composited_on_white(tmp_path):
    im = Image.new("P", (40, 40), 0)
    im.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    im.paste(1, (20, 0, 40, 40))  # right half red, left half index 0 = transparent black
    p = save(im, tmp_path / "pal.png", transparency=0)
    arr = load_image(p, SIZE)
    assert (arr[:, :12] == 255).all()  # transparent -> white, not black
    assert (arr[:, 20:, 0] > 180).all() and (arr[:, 20:, 1] < 40).all()


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((40, 40, 4), np.uint8)
    a[:, :20] = (0, 0, 0, 0)  # fully transparent
    a[:, 20:] = (0, 0, 255, 255)  # opaque blue
    arr = load_image(save(Image.fromarray(a, "RGBA"), tmp_path / "rgba.png"), SIZE)
    assert (arr[:, :12] == 255).all()
    assert (arr[:, 20:] == (0, 0, 255)).all()


def test_cmyk_jpeg_colours(tmp_path):
    p = save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(p).mode == "CMYK"
    arr = load_image(p, SIZE).reshape(-1, 3).mean(axis=0)
    assert arr[0] > 220 and arr[1] < 40 and arr[2] < 40  # red


def test_16bit_png_scaled_not_white(tmp_path):
    grad = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    p = save(Image.fromarray(grad), tmp_path / "g16.png")
    assert Image.open(p).mode.startswith("I")
    arr = load_image(p, SIZE)[..., 0].astype(int)
    assert arr[:, 0].max() < 10 and arr[:, -1].min() > 245
    assert np.all(np.diff(arr[0]) >= 0)  # still a gradient
    dark = np.full((64, 64), 2570, np.uint16)  # 10/255 of full scale
    arr = load_image(save(Image.fromarray(dark), tmp_path / "d16.png"), SIZE)
    assert (arr == 10).all()


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(p).n_frames == 3
    arr = load_image(p, SIZE).reshape(-1, 3).mean(axis=0)
    assert arr[0] > 240 and arr[1] < 15 and arr[2] < 15


def _rotated_with_exif(upright: Image.Image) -> tuple[Image.Image, Image.Exif]:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    return upright.transpose(Image.Transpose.ROTATE_90), exif


def test_exif_rotation_png_is_exact(tmp_path):
    up = photo(3, 64, 40)
    stored, exif = _rotated_with_exif(up)
    up_p = save(up, tmp_path / "up.png")
    rot_p = save(stored, tmp_path / "rot.png", exif=exif)
    assert Image.open(rot_p).size == (40, 64)
    np.testing.assert_array_equal(load_image(rot_p, SIZE), load_image(up_p, SIZE))


def test_exif_rotation_jpeg_matches_upright(tmp_path, backbone):
    up = photo(4, 64, 48)
    stored, exif = _rotated_with_exif(up)
    up_p = save(up, tmp_path / "up.jpg", quality=98)
    rot_p = save(stored, tmp_path / "rot.jpg", quality=98, exif=exif)
    raw_p = save(stored, tmp_path / "raw.jpg", quality=98)  # same pixels, no orientation tag
    a_up, a_rot, a_raw = (load_image(p, SIZE).astype(int) for p in (up_p, rot_p, raw_p))
    assert np.abs(a_rot - a_up).mean() < 3
    assert np.abs(a_raw - a_up).mean() > 10 * np.abs(a_rot - a_up).mean()
    f_up, f_rot, f_raw = (feats_of(backbone, p) for p in (up_p, rot_p, raw_p))
    assert np.linalg.norm(f_rot - f_up) < 0.2 * np.linalg.norm(f_raw - f_up)


def test_decompression_bomb_refused(tmp_path):
    p = tmp_path / "bomb.png"
    write_png_bomb(p)
    assert p.stat().st_size < 1_000_000
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_image(p, SIZE)
    small = save(photo(5, 200, 200), tmp_path / "big.png")
    with pytest.raises(ImageDecodeError, match=r"decompression bomb: 200x200 = 40000 pixels"):
        load_image(small, SIZE, max_pixels=10_000)
    assert load_image(small, SIZE).shape == (SIZE, SIZE, 3)


def test_bad_files_have_reasons(tmp_path):
    good = save(photo(6, 64, 64), tmp_path / "good.jpg", quality=90).read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("just some words, not an image\n")
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(tmp_path / "trunc.jpg", SIZE)
    with pytest.raises(ImageDecodeError, match="empty file"):
        load_image(tmp_path / "zero.jpg", SIZE)
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(tmp_path / "text.jpg", SIZE)
    with pytest.raises(ImageDecodeError, match=r"broken symbolic link|not readable|cannot read"):
        load_image(tmp_path / "missing.jpg", SIZE)


def test_png_bytes_named_jpg_decodes(tmp_path):
    src = save(photo(7), tmp_path / "real.png")
    (tmp_path / "fake.jpg").write_bytes(src.read_bytes())
    np.testing.assert_array_equal(load_image(tmp_path / "fake.jpg", SIZE), load_image(src, SIZE))


@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0, reason="needs root to drop")
def test_permission_denied_reason_for_unprivileged_user(tmp_path):
    """As root every file is readable, so check the reason in a child that drops privileges."""
    p = save(photo(8), tmp_path / "locked.png")
    os.chmod(p, 0)
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path.parent, 0o755)
    f = discover_images(tmp_path).files[0]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no TensorFlow, just the file reader
        try:
            os.setgid(65534)
            os.setuid(65534)
            res = process_file(f, SIZE, None)
            os.write(w, str(res.reason).encode())
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 30
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("child did not finish")
        time.sleep(0.01)
    reason = os.read(r, 1000).decode()
    os.close(r)
    assert reason == "permission denied (file not readable)"


# --------------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------------


def test_discovery_names_case_links_and_order(tmp_path):
    root = tmp_path / "imgs"
    names = ("b/x.jpg", "a/x.jpg", "été photo 1.jpg", "日本 写真.png", "A.PNG", "a.png", "a.PNG")
    for name in names:
        save(photo(len(name)), root / name)
    save(photo(1), root / "c" / "deep" / "y.JPEG")
    (root / "notes.txt").write_text("not an image")
    (root / "README").write_text("x")
    save(photo(2), root / ".hidden.jpg")
    save(photo(3), root / ".thumbs" / "t.jpg")
    os.symlink("..", root / "c" / "loop")  # directory symlink loop
    os.symlink("self.jpg", root / "self.jpg")  # file symlink loop
    os.symlink("nowhere.jpg", root / "broken.jpg")
    os.symlink(root / "a" / "x.jpg", root / "link.jpg")  # a symlink to a file is followed
    os.mkfifo(root / "pipe.jpg")
    found = discover_images(root)
    keys = [f.key for f in found.files]
    assert keys == sorted(keys)
    assert set(keys) == {
        "A.PNG",
        "a.PNG",
        "a.png",
        "a/x.jpg",
        "b/x.jpg",
        "c/deep/y.JPEG",
        "link.jpg",
        "été photo 1.jpg",
        "日本 写真.png",
    }
    failed = dict(found.failed)
    assert failed["self.jpg"] == "symbolic link loop"
    assert failed["broken.jpg"].startswith("broken symbolic link")
    assert failed["pipe.jpg"] == "not a regular file"
    assert found.ignored == 2
    assert ("c/loop/", "directory already visited (symbolic link loop)") in found.skipped_dirs
    flat = discover_images(root, recursive=False)
    assert "a/x.jpg" not in [f.key for f in flat.files] and "A.PNG" in [f.key for f in flat.files]
    assert {e.lower() for e in IMAGE_EXTENSIONS} >= {".jpg", ".png", ".gif", ".webp", ".tiff"}


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"no images found in .*empty"):
        extract_features(tmp_path / "empty", tmp_path / "f.h5", **RUN)
    with pytest.raises(UserError, match=r"images folder does not exist: .*nope"):
        extract_features(tmp_path / "nope", tmp_path / "f.h5", **RUN)
    with pytest.raises(UserError, match="not a folder"):
        extract_features(tmp_path / "empty" / "notes.txt", tmp_path / "f.h5", **RUN)
    assert not (tmp_path / "f.h5").exists()


def test_bad_arguments(tmp_path):
    save(photo(1), tmp_path / "i" / "a.png")
    for kw, msg in (
        ({"image_size": 16}, "at least 32"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"dtype": "int8"}, "float32 or float16"),
        ({"weights": tmp_path / "no.h5"}, "weights file not found"),
    ):
        with pytest.raises(UserError, match=msg):
            extract_features(tmp_path / "i", tmp_path / "f.h5", **{**RUN, **kw})


# --------------------------------------------------------------------------------------------
# Extraction runs
# --------------------------------------------------------------------------------------------


def make_bad_folder(root: Path) -> dict:
    """Every bad-input case of the issue, next to good images. Returns expected failures."""
    save(photo(10), root / "good1.jpg", quality=90)
    save(photo(11), root / "sub a" / "same.png")
    save(photo(12), root / "sub b" / "same.png")
    save(photo(13), root / "Upper.PNG")
    save(photo(14), root / "lower.png")
    save(photo(15), root / "été 写真.jpg")
    good = save(photo(16, 64, 64), root / "tmp_src.jpg", quality=90).read_bytes()
    (root / "tmp_src.jpg").unlink()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("hello, I am text\n")
    save(photo(17), root / "png_inside.jpg", format="PNG")
    save(photo(18).convert("L"), root / "gray.jpg")
    pal = photo(19).convert("P")
    save(pal, root / "palette.png", transparency=0)
    save(photo(20).convert("RGBA"), root / "rgba.png")
    save(photo(21).convert("CMYK"), root / "cmyk.jpg")
    g16 = np.tile(np.arange(0, 65536, 1024, dtype=np.uint16), (64, 1))
    save(Image.fromarray(g16), root / "g16.png")
    frames = [photo(22), photo(23)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    stored, exif = _rotated_with_exif(photo(24))
    save(stored, root / "rotated.jpg", exif=exif, quality=95)
    write_png_bomb(root / "bomb.png")
    os.symlink("..", root / "sub a" / "loop")
    expected_failed = {
        "truncated.jpg": "truncated",
        "zero.jpg": "empty file",
        "text.jpg": "not an image",
        "bomb.png": "decompression bomb",
        "unreadable.jpg": "not readable|cannot read file",
    }
    unreadable = root / "unreadable.jpg"
    if os.geteuid() == 0:  # root reads anything: use a file whose read fails with EIO
        os.symlink("/proc/self/mem", unreadable)
    else:
        save(photo(25), unreadable)
        os.chmod(unreadable, 0)
    return expected_failed


def test_bad_input_is_skipped_and_rows_stay_aligned(tmp_path, backbone):
    root = tmp_path / "imgs"
    expected_failed = make_bad_folder(root)
    out = tmp_path / "cache" / "features.h5"
    s = extract_features(root, out, **RUN)
    assert isinstance(s, ExtractionSummary)
    failed = dict(s.failed)
    assert set(failed) == set(expected_failed)
    for key, pattern in expected_failed.items():
        assert re.search(pattern, failed[key]), (key, failed[key])
    store = FeatureStore(out)
    assert dict(store.failed) == failed
    good = {
        "good1.jpg", "sub a/same.png", "sub b/same.png", "Upper.PNG", "lower.png",
        "été 写真.jpg", "png_inside.jpg", "gray.jpg", "palette.png", "rgba.png", "cmyk.jpg",
        "g16.png", "anim.gif", "rotated.jpg",
    }  # fmt: skip
    assert set(store.keys) == good and s.extracted == len(good) == s.n_images
    # every row holds the features of its own file
    for key in store.keys:
        np.testing.assert_array_equal(store.lookup([key])[0], feats_of(backbone, root / key))
    assert not np.array_equal(store.lookup(["sub a/same.png"]), store.lookup(["sub b/same.png"]))
    assert np.isfinite(store.lookup(store.keys)).all()
    tsv = Path(s.failed_list).read_text(encoding="utf-8")
    assert "bomb.png\tdecompression bomb" in tsv
    text = s.format()
    assert "failed: 5" in text and str(s.failed_list) in text
    assert "skipped folder sub a/loop/" in text
    # the failures are retried on the next run and reported again; the good images are cached
    s2 = extract_features(root, out, **RUN)
    assert s2.cached == len(good) and s2.extracted == 0 and set(dict(s2.failed)) == set(failed)


def test_incremental_changes_and_prune(tmp_path, backbone):
    root = tmp_path / "imgs"
    old = 1_600_000_000_000_000_000  # files written "long ago": their stat can be trusted
    for i in range(6):
        p = save(photo(i), root / f"{i}.bmp")  # BMP: the size depends only on the dimensions
        os.utime(p, ns=(old, old))
    out = tmp_path / "f.h5"
    s = extract_features(root, out, **RUN)
    assert (s.extracted, s.cached, s.changed) == (6, 0, 0)
    mtime_before = out.stat().st_mtime_ns
    s = extract_features(root, out, **RUN)
    assert (s.extracted, s.cached, s.changed, s.written) == (0, 6, 0, False)
    assert out.stat().st_mtime_ns == mtime_before  # nothing to do: cache untouched

    # a new file; a same-size content change; a touch without change
    save(photo(100), root / "new.bmp")
    p1 = root / "1.bmp"
    size1 = p1.stat().st_size
    save(photo(101), p1)
    assert p1.stat().st_size == size1
    os.utime(root / "2.bmp")
    s = extract_features(root, out, **RUN)
    assert (s.extracted, s.changed, s.cached) == (1, 1, 5)
    store = FeatureStore(out)
    assert len(store) == 7
    np.testing.assert_array_equal(store.lookup(["1.bmp"])[0], feats_of(backbone, p1))

    # same size and same mtime, other content: found by verify=True (hashes every file)
    p3 = root / "3.bmp"
    st = p3.stat()
    save(photo(103), p3)
    os.utime(p3, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (p3.stat().st_size, p3.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    s = extract_features(root, out, **RUN, verify=True)
    assert s.changed == 1 and s.cached == 6
    np.testing.assert_array_equal(FeatureStore(out).lookup(["3.bmp"])[0], feats_of(backbone, p3))

    # a file disappears: kept by default, dropped with prune
    (root / "0.bmp").unlink()
    s = extract_features(root, out, **RUN)
    assert s.missing == 1 and "0.bmp" in FeatureStore(out) and "--prune" in s.format()
    s = extract_features(root, out, **RUN, prune=True)
    assert s.pruned == 1 and "0.bmp" not in FeatureStore(out) and len(FeatureStore(out)) == 6

    # a cached file that becomes unreadable is reported and its stale row removed
    (root / "4.bmp").write_bytes(b"garbage now")
    s = extract_features(root, out, **RUN)
    assert dict(s.failed) == {"4.bmp": "not an image: cannot identify the image format"}
    assert "4.bmp" not in FeatureStore(out) and len(FeatureStore(out)) == 5


def test_same_size_change_detected_by_default(tmp_path, backbone):
    """Rewriting a file with other content of the same size is noticed without verify."""
    root = tmp_path / "imgs"
    p = save(photo(1), root / "a.bmp")  # BMP: size depends only on the dimensions
    save(photo(2), root / "b.bmp")
    out = tmp_path / "f.h5"
    extract_features(root, out, **RUN)
    before = FeatureStore(out).lookup(["a.bmp"])
    size = p.stat().st_size
    save(photo(3), p)
    assert p.stat().st_size == size
    s = extract_features(root, out, **RUN)
    assert s.changed == 1 and s.cached == 1
    after = FeatureStore(out).lookup(["a.bmp"])
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after[0], feats_of(backbone, p))


def test_settings_mismatch_refused(tmp_path):
    root = tmp_path / "imgs"
    save(photo(1), root / "a.png")
    out = tmp_path / "f.h5"
    extract_features(root, out, **RUN)
    with pytest.raises(CacheMismatchError, match="image_size: cache has 32, requested 64"):
        extract_features(root, out, **{**RUN, "image_size": 64})
    with pytest.raises(CacheMismatchError, match="weights: cache has 'none:seed=0"):
        extract_features(root, out, **RUN, seed=1)
    with pytest.raises(CacheMismatchError, match="stores float32 features"):
        extract_features(root, out, **RUN, dtype="float16")
    with pytest.raises(CacheMismatchError, match=r"weights: cache has 'none.*requested 'imagenet'"):
        extract_features(root, out, **{**RUN, "weights": "imagenet"})
    assert len(FeatureStore(out)) == 1


def test_float16_cache(tmp_path):
    root = tmp_path / "imgs"
    for i in range(3):
        save(photo(i), root / f"{i}.png")
    s32 = read_store(extract_features(root, tmp_path / "a.h5", **RUN).output)
    extract_features(root, tmp_path / "b.h5", **RUN, dtype="float16")
    store = FeatureStore(tmp_path / "b.h5")
    assert store.dtype == np.float16
    for k, v in s32.items():
        got = store.lookup([k])[0]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, v, rtol=2e-3, atol=2e-3)
    # later runs keep the cache's own dtype when none is given
    save(photo(9), root / "9.png")
    extract_features(root, tmp_path / "b.h5", **RUN)
    assert FeatureStore(tmp_path / "b.h5").dtype == np.float16


def test_weights_from_local_file(tmp_path):
    # A small application: a weights file is loaded alike into any keras.applications network
    # (ResNet50's 100 MB, saved and built twice more, cost this quick test 15 s of CPU).
    from tripletsk.extraction import resolve_network

    small = "MobileNet(alpha=0.25)"
    backbone = cached_backbone(resolve_network("none", 0, small), SIZE, BATCH)
    root = tmp_path / "imgs"
    save(photo(1), root / "a.png")
    wpath = tmp_path / "mobilenet.weights.h5"
    backbone.model.save_weights(wpath)
    s = extract_features(root, tmp_path / "f.h5", **{**RUN, "weights": wpath, "backbone": small})
    store = FeatureStore(s.output)
    assert store.provenance["weights"].startswith("file:blake2b=")
    assert store.provenance["weights_source"] == os.fspath(wpath.resolve())
    np.testing.assert_array_equal(store.lookup(["a.png"])[0], feats_of(backbone, root / "a.png"))
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["x"] = [1]
    with pytest.raises(UserError, match=r"could not load MobileNet\(alpha=0\.25\) weights from"):
        build_backbone(resolve_network(bad, 0, small), SIZE)


def test_features_for_files_matches_cache(tmp_path, backbone):
    root = tmp_path / "imgs"
    for i in range(3):
        save(photo(i), root / f"{i}.png")
    out = extract_features(root, tmp_path / "f.h5", **RUN).output
    store = FeatureStore(out)
    q = save(photo(1), tmp_path / "query.png")  # same pixels as 1.png, outside the cache
    got = features_for_files([q, root / "2.png"], like=store)
    # Not bit-equal everywhere: oneDNN picks its convolution kernels by batch size on some
    # CPUs (a batch of 2 vs the cache's 3 differed by up to 7e-6 on an AVX2 Zen 3).
    close = {"rtol": 1e-4, "atol": 1e-5}
    np.testing.assert_allclose(got, store.lookup(["1.png", "2.png"]), **close)
    np.testing.assert_allclose(features_for_files([q], like=out), got[:1], **close)
    (tmp_path / "bad.jpg").write_text("nope")
    with pytest.raises(UserError, match=r"cannot read .*bad.jpg as an image: not an image"):
        features_for_files([tmp_path / "bad.jpg"], like=store)


def test_lock_blocks_second_extractor(tmp_path):
    root = tmp_path / "imgs"
    save(photo(1), root / "a.png")
    out = tmp_path / "f.h5"
    with CacheLock(out):
        with pytest.raises(CacheLockedError, match="another extraction is writing"):
            extract_features(root, out, **RUN)
    assert not out.exists()
    extract_features(root, out, **RUN)
    assert len(FeatureStore(out)) == 1


def test_stale_files_from_a_crash_are_ignored(tmp_path):
    root = tmp_path / "imgs"
    for i in range(3):
        save(photo(i), root / f"{i}.png")
    out = tmp_path / "f.h5"
    extract_features(root, out, **RUN)
    before = read_store(out)
    # a consolidation killed half-way, and a part killed while being written
    (tmp_path / "f.h5.tmp-999-deadbeef").write_bytes(b"\x89HDF half written")
    (tmp_path / "f.h5.parts").mkdir()
    (tmp_path / "f.h5.parts" / "part-00000000.npz.tmp").write_bytes(b"PK half")
    save(photo(5), root / "5.png")
    s = extract_features(root, out, **RUN)
    assert s.extracted == 1 and s.cached == 3
    assert sorted(os.listdir(tmp_path)) == ["f.h5", "f.h5.lock", "imgs"]
    after = read_store(out)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)


def test_progress_bar_and_quiet(tmp_path, capsys):
    root = tmp_path / "imgs"
    for i in range(5):
        save(photo(i), root / f"{i}.png")
    extract_features(root, tmp_path / "a.h5", **{**RUN, "progress": True})
    err = capsys.readouterr().err
    assert "extracting" in err and "img/s" in err and "5/5" in err
    extract_features(root, tmp_path / "b.h5", **{**RUN, "progress": None})  # not a TTY
    assert "extracting" not in capsys.readouterr().err


def test_cli_arguments_and_run(tmp_path, capsys):
    root = tmp_path / "imgs"
    for i in range(3):
        save(photo(i), root / f"{i}.png")
    (root / "bad.png").write_bytes(b"")
    parser = add_extract_arguments(argparse.ArgumentParser(prog="tripletsk extract-features"))
    out = tmp_path / "c" / "f.h5"
    args = parser.parse_args(
        [os.fspath(root), "-o", os.fspath(out), "--weights", "none", "--image-size", "32",
         "--batch-size", "4", "--no-recursive"]
    )  # fmt: skip
    assert args.dtype is None and args.recursive is False and args.prune is False
    assert run_extract(args) == 0
    text = capsys.readouterr().out
    assert "extracted: 3" in text and "failed: 1" in text and "bad.png: empty file" in text
    quiet = [os.fspath(root), "-o", os.fspath(out), "--weights", "none", "--image-size", "32"]
    assert run_extract(parser.parse_args([*quiet, "--batch-size", "4", "-q"])) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "1 file(s) could not be read" in captured.err
    defaults = parser.parse_args(["imgs"])
    assert defaults.output == os.path.join("cache", "features.h5")
    assert (defaults.weights, defaults.image_size, defaults.batch_size) == ("imagenet", 224, 32)
    with pytest.raises(UserError, match="does not exist"):
        run_extract(parser.parse_args([os.fspath(tmp_path / "nope"), "--weights", "none"]))


def test_default_output_is_cache_features_h5(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    save(photo(1), root / "a.png")
    monkeypatch.chdir(tmp_path)
    s = extract_features("imgs", **RUN)
    assert s.output == os.path.join("cache", "features.h5")
    assert len(FeatureStore()) == 1


# --------------------------------------------------------------------------------------------
# Other processes: reproducible random weights, offline ImageNet, kill and resume
# --------------------------------------------------------------------------------------------


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.fspath(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    env.update(extra)
    return env


def _weights_digest(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_random_weights_identical_in_a_new_process(backbone):
    code = textwrap.dedent(
        """
        import hashlib, numpy as np
        from tripletsk.extraction import build_backbone
        m = build_backbone("none", 32, seed=0).model
        h = hashlib.sha256()
        for w in m.get_weights():
            h.update(np.ascontiguousarray(w).tobytes())
        print(h.hexdigest())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == _weights_digest(backbone.model)
    other = build_backbone("none", SIZE, seed=1).model
    assert _weights_digest(other) != _weights_digest(backbone.model)


def test_imagenet_offline_error_says_what_to_do(tmp_path, monkeypatch, capsys):
    from keras.src.backend import config as keras_config

    # In this process, as offline: an empty Keras folder (no weights downloaded before; Keras
    # reads KERAS_HOME only when imported) and a proxy where nothing listens, so that the
    # download fails fast.
    monkeypatch.setattr(keras_config, "_KERAS_DIR", os.fspath(tmp_path / "keras"))
    dead = "http://127.0.0.1:9"
    monkeypatch.setenv("HTTPS_PROXY", dead)
    monkeypatch.setenv("https_proxy", dead)
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone("imagenet", 32)
    line = str(err.value)
    assert "weights='path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5'" in line
    assert "weights='none'" in line and "--weights" not in line  # library: no flags
    save(photo(0), tmp_path / "imgs" / "a.png")
    capsys.readouterr()
    status = cli(["extract-features", os.fspath(tmp_path / "imgs"), "-o",
                  os.fspath(tmp_path / "f.h5"), "--image-size", "32"])  # fmt: skip
    err = capsys.readouterr().err
    cli_line = [ln for ln in err.splitlines() if ln.startswith("tripletsk: error:")]
    assert status == 1 and len(cli_line) == 1, err  # the command line's one-line error
    cli_line = cli_line[0]
    assert "cannot get the ImageNet weights" in cli_line
    assert "On the command line: --weights PATH, or --weights none." in cli_line
    assert issubclass(WeightsUnavailableError, RuntimeError)


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    root = tmp_path / "imgs"
    for i in range(10):
        save(photo(i), root / f"{i:03d}.png")
    out = tmp_path / "f.h5"
    extract_features(root, out, **RUN)  # an existing cache, which the killed run extends
    before = read_store(out)
    for i in range(10, 170):
        save(photo(i), root / f"{i:03d}.png")
    code = textwrap.dedent(
        f"""
        from tripletsk.extraction import extract_features
        extract_features({os.fspath(root)!r}, {os.fspath(out)!r}, weights="none",
                         image_size={SIZE}, batch_size={BATCH}, progress=False)
        print("finished")
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    parts = tmp_path / "f.h5.parts"
    lock = tmp_path / "f.h5.lock"
    try:
        deadline = time.monotonic() + 240
        while not lock.exists() or not lock.read_text():  # the other process holds the lock
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(CacheLockedError, match=r"another extraction .*pid"):
            extract_features(root, out, **RUN)
        while not parts.exists() or len([p for p in os.listdir(parts) if p.endswith(".npz")]) < 3:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = len([p for p in os.listdir(parts) if p.endswith(".npz")])
    assert 3 <= done < 40
    # the cache is still the old, complete, readable file
    assert read_store(out).keys() == before.keys()
    s = extract_features(root, out, **RUN)
    assert s.resumed >= 3 * BATCH and s.extracted == 160 and s.cached == 10
    assert not parts.exists()
    resumed = read_store(out)
    fresh = read_store(extract_features(root, tmp_path / "fresh.h5", **RUN).output)
    assert resumed.keys() == fresh.keys() and len(fresh) == 170
    for k in fresh:
        np.testing.assert_array_equal(resumed[k], fresh[k], err_msg=k)
    assert FeatureStore(out).keys[:10] == sorted(before)


def test_interrupt_saves_finished_batches(tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) during extraction keeps the finished batches in the cache."""
    root = tmp_path / "imgs"
    for i in range(12):
        save(photo(i), root / f"{i:02d}.png")
    import tripletsk.extraction as ex

    calls = {"n": 0}
    real = ex.Backbone.__call__

    def interrupting(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(ex.Backbone, "__call__", interrupting)
    with pytest.raises(KeyboardInterrupt):
        extract_features(root, tmp_path / "f.h5", **RUN)
    assert FeatureStore(tmp_path / "f.h5").keys == [f"{i:02d}.png" for i in range(8)]
    monkeypatch.setattr(ex.Backbone, "__call__", real)
    s = extract_features(root, tmp_path / "f.h5", **RUN)
    assert s.extracted == 4 and s.cached == 8


def test_parts_left_after_the_cache_was_written_are_not_double_counted(tmp_path):
    """Killed between writing the cache and deleting the parts: the next run changes nothing."""
    from tripletsk.cache.journal import PartsJournal

    root = tmp_path / "imgs"
    for i in range(3):
        save(photo(i), root / f"{i}.png")
    out = tmp_path / "f.h5"
    extract_features(root, out, **RUN)
    store = FeatureStore(out)
    before = read_store(out)
    meta = {"provenance": store.provenance, "dim": store.dim}
    journal = PartsJournal(os.fspath(out), meta)
    journal.open()
    journal.write(store.keys[:2], store.lookup(store.keys[:2]), store.fingerprints[:2], [])
    s = extract_features(root, out, **RUN)
    assert (s.extracted, s.changed, s.cached, s.resumed) == (0, 0, 3, 0)
    assert not (tmp_path / "f.h5.parts").exists()
    after = read_store(out)
    assert list(after) == list(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_empty_parts_of_a_failed_run_with_other_settings_do_not_block(tmp_path):
    """A run that failed before its first batch (e.g. ImageNet offline) is not in the way."""
    from tripletsk.cache.journal import PartsJournal

    root = tmp_path / "imgs"
    save(photo(1), root / "a.png")
    out = tmp_path / "f.h5"
    other = {"provenance": {"weights": "imagenet", "image_size": 224}, "dim": 2048}
    PartsJournal(os.fspath(out), other).open()
    assert (tmp_path / "f.h5.parts" / "meta.json").exists()
    s = extract_features(root, out, **RUN)
    assert s.extracted == 1


def test_unwritable_output_is_a_user_error(tmp_path):
    save(photo(1), tmp_path / "imgs" / "a.png")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write the cache"):
        extract_features(tmp_path / "imgs", tmp_path / "file" / "f.h5", **RUN)
    with pytest.raises(UserError, match="not a folder"):
        extract_features(tmp_path / "imgs", tmp_path / "imgs", **RUN)


def test_run_with_nothing_to_do_does_not_load_tensorflow(tmp_path):
    root = tmp_path / "imgs"
    p = save(photo(1), root / "a.png")
    old = 1_600_000_000_000_000_000
    os.utime(p, ns=(old, old))
    out = tmp_path / "f.h5"
    extract_features(root, out, **RUN)
    code = textwrap.dedent(
        f"""
        import sys
        from tripletsk.extraction import extract_features
        s = extract_features({os.fspath(root)!r}, {os.fspath(out)!r}, weights="none",
                             image_size={SIZE}, batch_size={BATCH}, progress=False)
        print(s.cached, s.extracted, "tensorflow" in sys.modules)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["1", "0", "False"]


def test_files_dated_in_the_future_are_trusted_once_hashed(tmp_path):
    root = tmp_path / "imgs"
    p = save(photo(1), root / "a.png")
    future = 4_100_000_000_000_000_000  # year 2099: a camera with a wrong clock
    os.utime(p, ns=(future, future))
    out = tmp_path / "f.h5"
    extract_features(root, out, **RUN)
    s = extract_features(root, out, **RUN)
    assert (s.cached, s.written) == (1, False)  # not re-hashed, cache not rewritten


@pytest.mark.slow
def test_kill_while_writing_the_cache_leaves_the_old_file(tmp_path, monkeypatch):
    """SIGKILL during the final cache write: the cache is still the old complete file."""
    from tripletsk.cache.format import FINGERPRINT_DTYPE, FORMAT_NAME, FORMAT_VERSION
    from tripletsk.cache.writer import write_cache
    from tripletsk.extraction import provenance_for

    root = tmp_path / "imgs"
    for i in range(8):
        save(photo(i), root / f"{i}.png")
    out = tmp_path / "f.h5"
    # an existing cache with many rows whose files are gone (kept): the new cache must copy them,
    # which takes long enough to kill the process in the middle of it
    n, dim = 15_000, 2048
    keys = [f"gone/{i:06d}.jpg" for i in range(n)]
    attrs = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **provenance_for(resolve_weights("none", 0), SIZE),
    }
    block = np.ones((1000, dim), np.float32)
    write_cache(
        out, keys=keys, fingerprints=np.zeros(n, FINGERPRINT_DTYPE),
        feature_blocks=(block * i for i in range(n // 1000)), dim=dim, dtype="float32",
        failed=[], attrs=attrs,
    )  # fmt: skip
    size_before = out.stat().st_size
    # The images extracted in this process by a run interrupted before its cache write: the
    # killed process below resumes them from the parts (it imports no TensorFlow) and is
    # killed while it writes the new cache.
    with monkeypatch.context() as m:
        m.setattr(extraction_run, "_write", _interrupted)
        with pytest.raises(KeyboardInterrupt):
            extract_features(root, out, **RUN)
    assert len(list((tmp_path / "f.h5.parts").glob("part-*.npz"))) == 2
    code = textwrap.dedent(
        f"""
        from tripletsk.extraction import extract_features
        extract_features({os.fspath(root)!r}, {os.fspath(out)!r}, weights="none",
                         image_size={SIZE}, batch_size={BATCH}, progress=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), stderr=subprocess.PIPE)
    killed_during_write = False
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if any(p.startswith("f.h5.tmp-") for p in os.listdir(tmp_path)):
                proc.send_signal(signal.SIGKILL)
                killed_during_write = True
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not killed_during_write or proc.returncode != -signal.SIGKILL:
        pytest.skip("the cache write finished before it could be killed")
    store = FeatureStore(out)  # the old file, complete and readable
    assert len(store) == n and out.stat().st_size == size_before
    np.testing.assert_array_equal(store.lookup(["gone/014999.jpg"])[0], np.full(dim, 14.0))
    s = extract_features(root, out, **RUN)  # finishes the job from the parts
    assert s.resumed == 8 and s.extracted == 8 and s.missing == n
    assert not any(p.startswith("f.h5.tmp-") for p in os.listdir(tmp_path))
    assert len(FeatureStore(out)) == n + 8


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


# ------------------------------------------------------------------ backends and precision


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Eight real, photo-like PNGs (crops of scikit-learn's sample photos)."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("photos")
    for i, image in enumerate(load_sample_images().images):
        for j in range(4):
            crop = image[j * 60 : j * 60 + 200, j * 80 : j * 80 + 200]
            Image.fromarray(crop).save(root / f"{i}-{j}.png")
    return root


def _cosines(a, b):
    a = a - a.mean(0)  # random-weight features share a large common part: compare what differs
    b = b - b.mean(0)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_bfloat16_extraction_is_recorded_close_to_float32_and_never_mixed(photo_folder, tmp_path):
    from tripletsk.errors import CacheMismatchError
    from tripletsk.extraction import features_for_files

    # A small network: bfloat16 (emulated on most CPUs) is applied to any network alike, and
    # builds and runs ResNet50 in several times MobileNet's time.
    run = dict(backbone="MobileNet(alpha=0.25)", weights="none", image_size=64, batch_size=4,
               quiet=True)  # fmt: skip
    fp32, bf16 = tmp_path / "fp32.h5", tmp_path / "bf16.h5"
    extract_features(photo_folder, fp32, **run)
    extract_features(photo_folder, bf16, precision="bfloat16", **run)
    a, b = FeatureStore(fp32), FeatureStore(bf16)
    assert (
        b.provenance["compute_dtype"] == "bfloat16" and a.provenance["compute_dtype"] == "float32"
    )
    assert a.keys == b.keys
    assert _cosines(a.to_array(), b.to_array()).min() >= 0.99
    with pytest.raises(CacheMismatchError, match="compute_dtype"):  # float32 into a bfloat16 cache
        extract_features(photo_folder, bf16, precision="float32", **run)
    again = features_for_files([photo_folder / b.keys[0]], like=b)  # rebuilt in bfloat16
    np.testing.assert_allclose(again[0], b.lookup([b.keys[0]])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_openvino_backend_matches_tensorflow(photo_folder, tmp_path):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    run = dict(weights="none", image_size=64, batch_size=4, quiet=True)
    extract_features(photo_folder, tmp_path / "tf.h5", **run)
    extract_features(photo_folder, tmp_path / "ov.h5", backend="openvino", **run)
    tf_store, ov_store = FeatureStore(tmp_path / "tf.h5"), FeatureStore(tmp_path / "ov.h5")
    assert ov_store.provenance["backend"] == "openvino"
    np.testing.assert_allclose(ov_store.to_array(), tf_store.to_array(), rtol=1e-3, atol=1e-3)


def test_openvino_bfloat16_is_refused_where_it_would_compute_float32(photo_folder, tmp_path):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from tripletsk.errors import UserError
    from tripletsk.extraction.runners import cpu_supports_bfloat16

    if cpu_supports_bfloat16():
        pytest.skip("this CPU runs OpenVINO bfloat16 natively")
    out = tmp_path / "ov.h5"
    with pytest.raises(UserError, match="OpenVINO computes in float32 on this CPU"):
        extract_features(photo_folder, out, weights="none", image_size=64, quiet=True,
                         backend="openvino", precision="bfloat16")  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.parametrize(
    ("backend", "precision", "match"),
    [
        ("onnx", "float32", "^backend must be one of"),
        ("tensorflow", "int4", "^precision must be"),
        ("tensorflow", "int8", "int8 needs --backend openvino"),
    ],
)
def test_unknown_backend_or_precision(photo_folder, tmp_path, backend, precision, match):
    from tripletsk.errors import UserError

    with pytest.raises(UserError, match=match):
        extract_features(photo_folder, tmp_path / "x.h5", weights="none", image_size=64,
                         backend=backend, precision=precision)  # fmt: skip
