"""FeatureRows: items as rows of a feature source, read a chunk at a time; block windows."""

import numpy as np
import pytest

import tripletsk.training.rows as rows_module
from tripletsk.training.head import forward, init_head_weights
from tripletsk.training.rows import FeatureRows, array_take, block_windows, embed


@pytest.fixture
def source():
    return np.random.RandomState(0).normal(2.0, 3.0, size=(500, 6)).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_take_gives_items_in_order_as_new_arrays_or_into_a_buffer(source, dtype):
    items = FeatureRows(array_take(source.astype(dtype)), np.array([40, 3, 499, 3, 10]), 6)
    expected = source[[40, 3, 499, 3, 10]]
    np.testing.assert_array_equal(items.take(), expected)
    np.testing.assert_array_equal(items.take([2, 0]), source[[499, 40]])
    buffer = np.full((8, 6), -1.0, dtype=np.float32)
    filled = items.take(out=buffer)
    assert np.shares_memory(filled, buffer) and filled.shape == (5, 6)
    np.testing.assert_array_equal(buffer[:5], expected)
    assert (buffer[5:] == -1).all()  # only the rows needed are written


def test_standardised_rows_leave_a_read_only_source_untouched(source):
    frozen = source.copy()
    frozen.flags.writeable = False
    mean, scale = frozen.mean(axis=0), np.float32(3.0)
    items = FeatureRows.from_array(frozen).standardized(mean, np.full(6, scale))
    np.testing.assert_allclose(items.take([5, 7]), (source[[5, 7]] - mean) / scale, rtol=1e-6)
    np.testing.assert_array_equal(frozen, source)


@pytest.mark.parametrize("chunk_bytes", [4 * 6 * 7, rows_module.CHUNK_BYTES])
def test_mean_and_variance_over_chunks_match_numpy(source, monkeypatch, chunk_bytes):
    monkeypatch.setattr(rows_module, "CHUNK_BYTES", chunk_bytes)  # 256-row chunks at least
    items = FeatureRows.from_array(source).select(np.arange(0, 500, 2))
    mean, variance = items.checked_mean_and_variance()
    np.testing.assert_allclose(mean, source[::2].mean(axis=0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(variance, source[::2].var(axis=0, dtype=np.float64), rtol=1e-5)


def test_mean_and_variance_reject_non_finite_rows(source):
    bad = source.copy()
    bad[300, 2] = np.nan
    with pytest.raises(ValueError, match="features contains NaN"):
        FeatureRows.from_array(bad).checked_mean_and_variance()
    # Only the rows used are checked: items that avoid row 300 are fine.
    FeatureRows.from_array(bad).select(np.arange(300)).checked_mean_and_variance()


def test_embed_in_chunks_equals_one_forward_pass(source, monkeypatch):
    monkeypatch.setattr(rows_module, "CHUNK_BYTES", 1)  # 256 rows per chunk
    weights = init_head_weights(6, (8,), 3, np.random.RandomState(0))
    items = FeatureRows.from_array(source)
    np.testing.assert_allclose(embed(items, weights), forward(source, weights), rtol=1e-6)
    idx = np.array([499, 0, 250])
    np.testing.assert_allclose(embed(items, weights, idx), forward(source[idx], weights))


def test_embed_reads_in_storage_order_and_answers_in_the_order_asked(source, monkeypatch):
    monkeypatch.setattr(rows_module, "CHUNK_BYTES", 1)  # 256 rows per chunk
    weights = init_head_weights(6, (8,), 3, np.random.RandomState(0))
    reads = []

    def recording_take(rows, out=None):
        reads.extend(rows)
        return array_take(source)(rows, out)

    items = FeatureRows(recording_take, np.random.RandomState(1).permutation(500), 6)
    idx = np.random.RandomState(2).permutation(500)[:400]  # e.g. a shuffled validation split
    got = embed(items, weights, idx)
    np.testing.assert_allclose(got, forward(source[items.rows[idx]], weights), rtol=1e-6)
    assert sorted(reads) == reads  # one forward sweep over the source, chunk after chunk
    assert len(reads) == 400


def test_block_rows_are_whole_storage_chunks():
    assert FeatureRows(None, [], 2048).block_rows == 256  # 2 MiB of float32 rows
    assert FeatureRows(None, [], 2048, chunk_rows=100).block_rows == 200
    assert FeatureRows(None, [], 2048, chunk_rows=1000).block_rows == 1000


def test_block_windows_visit_whole_blocks_once_in_random_order():
    rng = np.random.RandomState(0)
    rows = rng.permutation(1000)[:900]  # positions -> row numbers, some rows unused
    windows = block_windows(rows, block_rows=50, window_size=120, rng=rng)
    everything = np.concatenate(windows)
    np.testing.assert_array_equal(np.sort(everything), np.arange(900))  # each position once
    blocks = [set(rows[w] // 50) for w in windows]
    for i, b in enumerate(blocks):  # a block lies in exactly one window
        assert not any(b & other for other in blocks[i + 1 :])
    assert all(len(w) < 120 + 50 for w in windows)  # a window closes once it reaches 120
    first_blocks = [rows[w[0]] // 50 for w in windows]
    assert first_blocks != sorted(first_blocks)  # blocks are not visited in file order
    again = block_windows(rows, 50, 120, np.random.RandomState(1))
    assert not all(np.array_equal(a, b) for a, b in zip(windows, again, strict=False))
