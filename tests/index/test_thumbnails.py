"""Thumbnails (``tripletsk.index.thumbnails``) and thumbnail indexes, on real image files and a
real cache of them (random features: thumbnails read the images, not the network)."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from tests.helpers import (
    as_written_before_the_jpeg_fix,
    image_folder_cache,
    look_alike_image,
    noise_images,
)
from tripletsk.errors import StaleIndexError, UserError
from tripletsk.index.build import (
    build_index_from_features,
    build_index_from_thumbnails,
    check_index_current,
)
from tripletsk.index.embedding_index import EmbeddingIndex
from tripletsk.index.thumbnails import ThumbnailEmbedding, thumbnail


def _png(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


@pytest.fixture
def images(tmp_path):
    """12 distinct noise images in two folders, and a folder to build caches and indexes in."""
    root = tmp_path / "images"
    noise_images(root, [f"{'ab'[i % 2]}/{i}.png" for i in range(12)])
    return root


def test_a_thumbnail_is_a_centred_unit_vector_of_3_x_size_squared():
    gradient = Image.linear_gradient("L").resize((40, 30))
    t = thumbnail(_png(gradient), size=6)
    assert t.shape == (108,) and t.dtype == np.float32
    assert abs(float(t.sum())) < 1e-4 and np.linalg.norm(t) == pytest.approx(1.0, abs=1e-6)
    assert not thumbnail(_png(Image.new("RGB", (20, 20), (90, 90, 90)))).any()  # flat: zeros


@pytest.mark.parametrize(
    "change, within",
    [
        (lambda im: im.resize((80, 80), Image.BILINEAR), 0.1),  # upscaled
        (lambda im: im.resize((24, 24), Image.BILINEAR), 0.1),  # downscaled
        (lambda im: ImageEnhance.Contrast(im).enhance(0.7), 0.1),
        (lambda im: im.convert("RGBA"), 1e-6),  # another mode, the same pixels
    ],
)
def test_copies_stay_close_and_distinct_images_far(images, change, within):
    original = Image.open(images / "a" / "0.png").convert("RGB")
    others = [thumbnail(p) for p in sorted(images.rglob("*.png"))[1:]]
    mine = thumbnail(images / "a" / "0.png")
    copy = thumbnail(_png(change(original)))
    assert np.linalg.norm(copy - mine) < within
    assert min(np.linalg.norm(o - copy) for o in others) > 1.0


def test_an_exif_rotated_jpeg_has_the_thumbnail_of_the_upright_image(tmp_path):
    upright = Image.linear_gradient("L").resize((32, 48)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: a viewer rotates it 90 degrees clockwise
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, format="JPEG", exif=exif, quality=95)
    turned = thumbnail(buf.getvalue())
    assert np.linalg.norm(turned - thumbnail(_png(upright))) < 0.05
    assert (
        np.linalg.norm(thumbnail(_png(upright.transpose(Image.Transpose.ROTATE_90))) - turned) > 0.5
    )


def _garment(side: int) -> Image.Image:
    """A smoothly shaded light shape on black, like a Fashion-MNIST item (grey)."""
    y, x = np.mgrid[0:side, 0:side] / side
    shade = 60 + 150 * x + 30 * np.sin(9 * y)
    inside = (np.abs(x - 0.5) < 0.3 + 0.1 * y) & (y > 0.1) & (y < 0.9)
    return Image.fromarray(np.where(inside, shade, 0).astype(np.uint8), "L")


@pytest.mark.parametrize("side", [28, 40])
def test_a_jpeg_resave_of_a_small_png_has_nearly_its_thumbnail(side):
    # Measured on this image at quality 85: 0.013 (28 px) and 0.011 (40 px) apart, as decoded in
    # full; drafting the JPEG to the thumbnail's own 8 px (14 or 20 px decoded, then shrunk)
    # put them 0.053 and 0.084 apart, beyond Fashion-MNIST's index threshold of 0.0455.
    original = _garment(side)
    resaved = thumbnail(_png(original, "JPEG", quality=85))
    assert np.linalg.norm(resaved - thumbnail(_png(original))) < 0.02


def _big_jpeg(width: int, height: int, **options) -> tuple[Image.Image, bytes]:
    """A big grey photo-like image (the garment upscaled, with grain) and its JPEG."""
    scene = np.asarray(_garment(200).resize((width, height), Image.BICUBIC), np.float64)
    grain = np.random.default_rng(3).normal(0, 6, (height, width))  # averaged by DCT scaling
    image = Image.fromarray(np.clip(scene + grain, 0, 255).astype(np.uint8))
    return image, _png(image, "JPEG", **options)


def _decoded_in_full(data: bytes, size: int) -> np.ndarray:
    from tripletsk.extraction.decode import decode
    from tripletsk.index.thumbnails import _unit

    return _unit(decode(data, size, None, resample="lanczos", draft_size=0))


@pytest.mark.parametrize("width, height", [(2000, 1500), (2001, 1499)])
def test_a_big_jpeg_thumbnails_as_if_decoded_in_full(width, height):
    from tripletsk.index.thumbnails import jpeg_draft_size

    _, jpeg = _big_jpeg(width, height)
    for size in (8, 64):  # the index's and the largest verify size
        assert jpeg_draft_size(size) * 2 <= height  # so the file is drafted (1/8 at 8, 1/2 at 64)
        # Measured: at most 0.0068 (8 px) and 0.0036 (64 px) from decoding in full; drafted to
        # the thumbnail's size with the whole drafted image resized: 0.015-0.026 and 0.039-0.069.
        assert np.linalg.norm(thumbnail(jpeg, size) - _decoded_in_full(jpeg, size)) < 0.01


@pytest.mark.parametrize(
    "orientation, stored",
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
     (7, Image.Transpose.TRANSVERSE), (8, Image.Transpose.ROTATE_270)],
)  # fmt: skip
def test_a_big_exif_turned_jpeg_is_drafted_to_its_own_extent(orientation, stored):
    # 2001 x 1499 px drafted to 1/8: the last row and column are partial blocks; turned upright,
    # they move. Measured 0.0055-0.0074 from decoding in full; resized with the partial blocks
    # on the wrong sides, 0.023-0.039.
    image, _ = _big_jpeg(2001, 1499)
    exif = Image.Exif()
    exif[0x0112] = orientation
    jpeg = _png(image.transpose(stored), "JPEG", exif=exif)
    assert np.linalg.norm(thumbnail(jpeg) - _decoded_in_full(jpeg, 8)) < 0.01


def test_the_index_holds_the_thumbnails_and_finds_planted_copies(images, tmp_path):
    original = Image.open(images / "b" / "3.png")
    shutil.copy(images / "b" / "3.png", images / "b" / "3 copy.png")
    original.resize((90, 90), Image.BILINEAR).save(images / "b" / "3 big.png")
    original.resize((20, 20), Image.BILINEAR).save(images / "a" / "3 small.png")
    keys = image_folder_cache(images, tmp_path / "cache.h5")
    index, report = build_index_from_thumbnails(tmp_path / "thumbs", tmp_path / "cache.h5")
    assert report.created and report.n_embedded == 15 and index.kind == "thumbnails"
    assert not index.has_model and not index.features_only and index.dim == 192
    expected = np.stack([thumbnail(images / k) for k in keys])
    np.testing.assert_allclose(index.embeddings(index.rows_of(keys)), expected, atol=1e-6)
    groups = index.duplicates(0.3)
    assert groups == [sorted(["a/3 small.png", "b/3 big.png", "b/3 copy.png", "b/3.png"])]


def test_a_grown_cache_embeds_only_the_new_images_and_a_stale_index_is_refused(images, tmp_path):
    cache = tmp_path / "cache.h5"
    image_folder_cache(images, cache)
    build_index_from_thumbnails(tmp_path / "thumbs", cache)
    noise_images(images / "c", 2, seed=7)
    image_folder_cache(images, cache)
    from tripletsk.cache.store import FeatureStore

    with pytest.raises(StaleIndexError, match=r"tripletsk index --thumbnails --features"):
        check_index_current(EmbeddingIndex(tmp_path / "thumbs"), store=FeatureStore(cache))
    index, report = build_index_from_thumbnails(tmp_path / "thumbs", cache)
    assert (report.created, report.n_embedded, report.n_kept, report.n_rows) == (False, 2, 12, 14)
    np.testing.assert_allclose(
        index.embeddings(index.rows_of(["c/1.png"])), [thumbnail(images / "c" / "1.png")]
    )


def test_an_image_changed_since_it_was_cached_is_refused_and_nothing_written(images, tmp_path):
    cache = tmp_path / "cache.h5"
    image_folder_cache(images, cache)
    noise_images(images / "a", ["0.png"], seed=5)  # rewritten after caching
    with pytest.raises(UserError, match=r"0\.png changed since it was cached .* extract-features"):
        build_index_from_thumbnails(tmp_path / "thumbs", cache)
    assert not (tmp_path / "thumbs").exists()
    os.remove(images / "a" / "0.png")
    with pytest.raises(UserError, match=r"the image of the cached key 'a/0\.png' cannot be read"):
        build_index_from_thumbnails(tmp_path / "thumbs", cache)


def test_a_key_outside_the_image_folder_is_refused(images, tmp_path):
    from tripletsk.cache.store import FeatureStore

    image_folder_cache(images, tmp_path / "cache.h5")
    store = FeatureStore(tmp_path / "cache.h5")
    with pytest.raises(UserError, match=r"the key '\.\./secret\.png' points outside"):
        ThumbnailEmbedding()._of_cached((store.path, str(images), "../secret.png", "0" * 32))


def test_a_thumbnail_index_is_never_taken_for_another_kind_or_size(images, tmp_path):
    cache = tmp_path / "cache.h5"
    image_folder_cache(images, cache)
    build_index_from_thumbnails(tmp_path / "thumbs", cache, size=4)
    manifest = (tmp_path / "thumbs" / "index.json").read_bytes()
    with pytest.raises(StaleIndexError, match=r"holds 4 px image thumbnails .*, not 8 px"):
        build_index_from_thumbnails(tmp_path / "thumbs", cache, size=8)
    with pytest.raises(StaleIndexError, match=r"holds 4 px image thumbnails .*, not backbone"):
        build_index_from_features(tmp_path / "thumbs", cache)
    assert (tmp_path / "thumbs" / "index.json").read_bytes() == manifest
    index, report = build_index_from_thumbnails(tmp_path / "thumbs", cache)  # keeps its size
    assert index.dim == 48 and report.n_embedded == 0
    with pytest.raises(UserError, match="the thumbnail size must be 1 to 64 pixels, not 0"):
        build_index_from_thumbnails(tmp_path / "other", cache, size=0)


def test_a_thumbnail_index_of_the_older_jpeg_decoding_is_refused_as_stale(images, tmp_path):
    from tripletsk.cache.store import FeatureStore

    cache = tmp_path / "cache.h5"
    image_folder_cache(images, cache)
    build_index_from_thumbnails(tmp_path / "thumbs", cache)
    as_written_before_the_jpeg_fix(tmp_path / "thumbs")
    rebuild = (
        rf"made by another version of tripletsk .* rebuild it with `tripletsk index --thumbnails "
        rf"--features {cache} -o {tmp_path / 'thumbs'} --replace`"
    )
    old = EmbeddingIndex(tmp_path / "thumbs")
    with pytest.raises(StaleIndexError, match=rebuild):
        check_index_current(old)
    with pytest.raises(StaleIndexError, match=rebuild):
        check_index_current(old, store=FeatureStore(cache))
    with pytest.raises(StaleIndexError, match=rebuild):
        old.duplicates(0.3, verify=0.5)  # verification would mix in new thumbnails
    manifest = (tmp_path / "thumbs" / "index.json").read_bytes()
    with pytest.raises(StaleIndexError, match=rebuild):  # no new rows added to old ones
        build_index_from_thumbnails(tmp_path / "thumbs", cache)
    assert (tmp_path / "thumbs" / "index.json").read_bytes() == manifest
    index, report = build_index_from_thumbnails(tmp_path / "thumbs", cache, replace=True)
    assert report.created and report.n_embedded == 12
    check_index_current(index, store=FeatureStore(cache))


def test_a_cache_without_an_image_folder_is_refused(tmp_path):
    from tests.helpers import random_cache

    random_cache(tmp_path / "cache.h5", ["a.png", "b.png"])
    with pytest.raises(UserError, match="records no image folder"):
        build_index_from_thumbnails(tmp_path / "thumbs", tmp_path / "cache.h5")


@pytest.fixture
def look_alikes(tmp_path):
    """orig.png, its copies upscaled (big.png, 96 px) and downscaled (small.png, 24 px), a
    distinct image with the same ramp (other.png), their cache and thumbnail index."""
    root = tmp_path / "images"
    root.mkdir()
    original = look_alike_image(1)
    original.save(root / "orig.png")
    original.resize((96, 96), Image.BILINEAR).save(root / "big.png")
    original.resize((24, 24), Image.BILINEAR).save(root / "small.png")
    look_alike_image(2).save(root / "other.png")
    image_folder_cache(root, tmp_path / "cache.h5")
    index, _ = build_index_from_thumbnails(tmp_path / "thumbs", tmp_path / "cache.h5")
    return root, index


def test_verification_keeps_resized_copies_and_drops_a_thumbnail_look_alike(look_alikes):
    from tripletsk.index.thumbnails import image_pair_distances

    root, index = look_alikes
    everything = ["big.png", "orig.png", "other.png", "small.png"]
    assert index.duplicates(0.3) == [everything]  # the 8 px thumbnails cannot tell
    rows = index.rows_of(["orig.png", "orig.png", "orig.png", "small.png"])
    others = index.rows_of(["big.png", "small.png", "other.png", "big.png"])
    d = image_pair_distances(index, rows, others)
    assert d[2] > 0.45 and max(d[0], d[1], d[3]) < 0.1  # the look-alike differs in detail
    # The 24 px copy is compared with the original shrunk to 24 px (by Lanczos), not 8.
    expected = np.linalg.norm(thumbnail(root / "orig.png", 24) - thumbnail(root / "small.png", 24))
    assert d[1] == pytest.approx(expected, abs=1e-6)
    assert index.duplicates(0.3, verify=0.2) == [["big.png", "orig.png", "small.png"]]
    i, j, dist = index.duplicate_pairs(0.3, verify=0.2)
    assert len(i) == 3 and "other.png" not in {index.keys[r] for r in [*i, *j]}
    assert (dist <= 0.2).all()
    assert len(index.duplicate_pairs(0.3, verify=2.0)[0]) == 6  # 2 keeps and measures all


def test_verification_caps_the_compared_size(look_alikes):
    from tripletsk.index.thumbnails import image_pair_distances

    root, index = look_alikes
    rows, others = index.rows_of(["orig.png"]), index.rows_of(["big.png"])
    d = image_pair_distances(index, rows, others, max_size=16)
    expected = np.linalg.norm(thumbnail(root / "orig.png", 16) - thumbnail(root / "big.png", 16))
    assert d[0] == pytest.approx(expected, abs=1e-6)
    assert image_pair_distances(index, [], []).shape == (0,)
    with pytest.raises(ValueError, match="max_size must be at least 1 pixel; got 0"):
        image_pair_distances(index, rows, others, max_size=0)


def test_verification_refuses_a_changed_or_missing_image(look_alikes):
    root, index = look_alikes
    look_alike_image(3).save(root / "small.png")  # rewritten after caching and indexing
    with pytest.raises(UserError, match=r"small\.png changed since it was cached .* extract-feat"):
        index.duplicates(0.3, verify=0.2)
    os.remove(root / "small.png")
    with pytest.raises(UserError, match=r"the image of the cached key 'small\.png' cannot be read"):
        index.duplicate_pairs(0.3, verify=0.2)
    assert len(index.duplicate_pairs(0.3)[0]) == 6  # without verification: the index alone


def test_verification_is_refused_on_an_index_of_another_kind(images, tmp_path):
    image_folder_cache(images, tmp_path / "cache.h5")
    index, _ = build_index_from_features(tmp_path / "features", tmp_path / "cache.h5")
    with pytest.raises(UserError, match=r"is not a thumbnail index \(its rows are 'features'\)"):
        index.duplicates(0.1, verify=0.2)
    thumbs, _ = build_index_from_thumbnails(tmp_path / "thumbs", tmp_path / "cache.h5")
    with pytest.raises(ValueError, match="verify must be a finite distance >= 0; got -1"):
        thumbs.duplicates(0.1, verify=-1)


@pytest.fixture
def same_size(tmp_path):
    """A grey orig.png (48 px), its exact copy, its JPEG re-save (quality 85), its 24 px copy,
    and near.png: the same size with one 4 px block brighter (a distinct image 0.12 away at 48
    px, where the re-save is 0.05), their cache and thumbnail index."""
    root = tmp_path / "images"
    root.mkdir()
    original = look_alike_image(1).convert("L")
    original.save(root / "orig.png")
    original.save(root / "copy.png")
    original.save(root / "resaved.jpg", quality=85)
    original.resize((24, 24), Image.BILINEAR).save(root / "small.png")
    pixels = np.asarray(original).astype(np.int16)
    pixels[20:24, 20:24] += 60
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / "near.png")
    image_folder_cache(root, tmp_path / "cache.h5")
    index, _ = build_index_from_thumbnails(tmp_path / "thumbs", tmp_path / "cache.h5")
    return index


def _pair_set(index, i, j) -> set:
    return {frozenset((index.keys[a], index.keys[b])) for a, b in zip(i, j, strict=True)}


def _pair(a: str, b: str) -> frozenset:
    return frozenset((a, b))


def test_compare_image_pairs_tells_same_size_pairs(same_size):
    from tripletsk.index.thumbnails import compare_image_pairs, image_pair_distances

    index = same_size
    i, j, _ = index.duplicate_pairs(0.1)
    assert len(i) == 10  # every pair of the 5 images is a candidate at 8 px
    d, same = compare_image_pairs(index, i, j)
    assert d.dtype == np.float64 and same.dtype == bool
    np.testing.assert_array_equal(d, image_pair_distances(index, i, j))
    small = ["small.png" in (index.keys[a], index.keys[b]) for a, b in zip(i, j, strict=True)]
    np.testing.assert_array_equal(same, ~np.array(small))  # only small.png was resized
    distance = {_pair(index.keys[a], index.keys[b]): x for a, b, x in zip(i, j, d, strict=True)}
    assert distance[_pair("orig.png", "copy.png")] == 0
    assert 0.02 < distance[_pair("orig.png", "resaved.jpg")] < 0.07
    assert 0.1 < distance[_pair("orig.png", "near.png")] < 0.15
    assert compare_image_pairs(index, [], []).same_size.shape == (0,)


def test_a_same_size_threshold_drops_a_same_size_look_alike_and_keeps_resized_copies(same_size):
    index = same_size
    loose = _pair_set(index, *index.duplicate_pairs(0.1, verify=0.2)[:2])
    assert _pair("orig.png", "near.png") in loose and len(loose) == 10
    i, j, d = index.duplicate_pairs(0.1, verify=0.2, verify_same_size=0.08)
    tight = _pair_set(index, i, j)
    for look_alike in ("orig.png", "copy.png", "resaved.jpg"):
        assert _pair(look_alike, "near.png") not in tight  # same size, 0.12 apart
    assert _pair("orig.png", "resaved.jpg") in tight  # the JPEG re-save: 0.05
    assert _pair("orig.png", "copy.png") in tight
    assert {_pair(k, "small.png") for k in ("orig.png", "copy.png", "resaved.jpg")} <= tight
    assert (d <= 0.2).all()
    # Groups are connected: near.png still joins through small.png, a resized pair held to V.
    assert _pair("near.png", "small.png") in tight
    assert index.duplicates(0.1, verify=0.2, verify_same_size=0.08) == [sorted(index.keys)]
    # At 0 only exact copies pass among same-size pairs; resized ones are held to verify.
    exact = _pair_set(index, *index.duplicate_pairs(0.1, verify=0.2, verify_same_size=0)[:2])
    assert _pair("orig.png", "copy.png") in exact and _pair("orig.png", "resaved.jpg") not in exact
    assert {p for p in exact if "small.png" not in p} == {_pair("orig.png", "copy.png")}
    assert {p for p in exact if "small.png" in p} == {p for p in tight if "small.png" in p}
    # A same-size threshold equal to verify is the behaviour without one.
    assert index.duplicates(0.1, verify=0.2, verify_same_size=0.2) == index.duplicates(
        0.1, verify=0.2
    )


def test_same_size_means_as_shown_after_the_exif_orientation(tmp_path):
    from tripletsk.index.thumbnails import compare_image_pairs

    root = tmp_path / "images"
    root.mkdir()
    wide = look_alike_image(1).resize((48, 32))
    wide.save(root / "wide.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 32 x 48, shown 48 x 32
    wide.transpose(Image.Transpose.ROTATE_90).save(root / "turned.jpg", exif=exif, quality=95)
    wide.resize((32, 48)).save(root / "tall.png")  # 32 x 48 as shown: resized
    image_folder_cache(root, tmp_path / "cache.h5")
    index, _ = build_index_from_thumbnails(tmp_path / "thumbs", tmp_path / "cache.h5")
    rows = index.rows_of(["wide.png", "wide.png", "turned.jpg"])
    others = index.rows_of(["turned.jpg", "tall.png", "tall.png"])
    assert compare_image_pairs(index, rows, others).same_size.tolist() == [True, False, False]


@pytest.mark.parametrize(
    "verify, tight, match",
    [
        (None, 0.05, r"verify_same_size tightens verify .* without verify"),
        (
            0.1,
            0.2,
            r"verify_same_size must be at most verify .* verify_same_size=0\.2 > verify=0\.1",
        ),
        (0.1, -0.01, "verify_same_size must be a finite distance >= 0; got -0.01"),
        (0.1, float("nan"), "verify_same_size must be a finite distance >= 0; got nan"),
    ],
)
def test_bad_same_size_thresholds_are_refused(same_size, verify, tight, match):
    with pytest.raises(ValueError, match=match):
        same_size.duplicate_pairs(0.1, verify=verify, verify_same_size=tight)
    with pytest.raises(ValueError, match=match):
        same_size.duplicates(0.1, verify=verify, verify_same_size=tight)
