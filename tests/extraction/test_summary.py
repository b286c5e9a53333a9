"""The summary of an extraction run, one format for a single process and for a Dask cluster."""

from __future__ import annotations

from tripletsk.extraction import ExtractionSummary
from tripletsk.extraction.distributed import DaskExtractionSummary

FAILED = [(f"bad{i:02d}.jpg", "not an image: cannot identify the image format") for i in range(12)]


def test_single_process_summary():
    s = ExtractionSummary(
        "f.h5", extracted=30, cached=5, changed=2, failed=FAILED, missing=1, resumed=4,
        ignored=3, skipped_dirs=[("x/", "permission denied")], n_images=38,
        failed_list="f.h5.failed.tsv", seconds=12.0, setup_seconds=4.0,
    )  # fmt: skip
    lines = s.format().splitlines()
    assert lines[0] == "features: f.h5 (38 images)"
    assert lines[1] == "  extracted: 30 (4 finished by an interrupted run and resumed)"
    assert "full list in f.h5.failed.tsv" in lines[4]
    assert "    ... and 2 more" in lines
    assert "  skipped folder x/: permission denied" in lines
    assert lines[-1] == "  time: 12.0 s, 3.5 images/s after setup"  # (30 + 2 - 4) / (12 - 4)


def test_dask_summary_shares_the_format():
    s = DaskExtractionSummary(
        "f.h5", extracted=30, resumed=4, failed=FAILED[:1], n_images=31, n_shards=8,
        n_workers=2, failed_list="f.h5.failed.tsv", seconds=9.0,
    )  # fmt: skip
    lines = s.format().splitlines()
    assert lines[0] == "features: f.h5 (31 images, 8 shards on 2 Dask workers)"
    assert lines[1] == "  extracted: 30 (4 resumed from interrupted shards)"
    assert lines[-1] == "  time: 9.0 s"  # no setup time of its own: no rate
    single = ExtractionSummary(
        "f.h5", extracted=30, failed=FAILED[:1], n_images=31, failed_list="f.h5.failed.tsv",
        seconds=9.0,
    )  # fmt: skip
    assert lines[2:] == single.format().splitlines()[2:]
