"""Fletcher-32 as HDF5 computes it: against a literal port of H5_checksum_fletcher32 and HDF5."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tripletsk.cache.checksums import checksums_match, fletcher32


def fletcher32_reference(data: bytes) -> int:
    """H5_checksum_fletcher32 (HDF5's H5checksum.c), line for line."""
    words, sum1, sum2, i = len(data) // 2, 0, 0, 0
    while words:
        block = min(words, 360)
        words -= block
        for _ in range(block):
            sum1 += (data[i] << 8) | data[i + 1]
            i += 2
            sum2 += sum1
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    if len(data) % 2:
        sum1 += data[i] << 8
        sum2 += sum1
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
    sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    return (sum2 << 16) | sum1


RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "data",
    [
        *(RNG.integers(0, 256, n, dtype=np.uint8) for n in (1, 2, 3, 719, 720, 721, 4001)),
        np.zeros(10, np.uint8),  # all zero: both sums stay 0
        np.full(2, 0xFF, np.uint8),  # one word 0xffff: a sum that is a multiple of 65535
        np.full(1001, 0xFF, np.uint8),
        np.array([0xFF, 0xFF, 0, 0, 0, 0], np.uint8),
    ],
    ids=lambda d: f"{len(d)}bytes",
)
def test_fletcher32_is_hdf5s(data):
    got = fletcher32(data[None, :])
    assert got.dtype == np.uint32 and int(got[0]) == fletcher32_reference(data.tobytes())


def test_fletcher32_of_many_rows_at_once():
    rows = RNG.integers(0, 256, (5, 998), dtype=np.uint8)
    expected = [fletcher32_reference(r.tobytes()) for r in rows]
    np.testing.assert_array_equal(fletcher32(rows), expected)


def test_checksums_match_chunks_written_by_hdf5(tmp_path):
    p = tmp_path / "c.h5"
    x = RNG.normal(size=(100, 6)).astype(np.float32)
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=x, chunks=(7, 6), fletcher32=True)
    with h5py.File(p, "r") as f:
        ds = f["x"]
        infos = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    raw = p.read_bytes()
    chunks = np.array([np.frombuffer(raw, np.uint8, i.size, i.byte_offset) for i in infos])
    assert len(chunks) == 15 and checksums_match(chunks).all()
    damaged = chunks.copy()
    damaged[3, 10] ^= 0x01  # one bit of data
    damaged[9, -1] ^= 0x80  # one bit of the stored checksum
    np.testing.assert_array_equal(np.flatnonzero(~checksums_match(damaged)), [3, 9])
    # HDF5 also accepts the byte-swapped checksum written by HDF5 before 1.6.3
    swapped = chunks.copy()
    swapped[:, -4:] = swapped[:, -4:][:, [1, 0, 3, 2]]
    assert checksums_match(swapped).all()
