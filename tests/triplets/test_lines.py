"""Triplet files read in blocks (tripletsk.triplets.lines): the same names, lines and errors as
line by line, wherever a block ends; and ``predict`` on a large file in bounded memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import tripletsk.triplets.key_table as key_table
import tripletsk.triplets.lines as lines_module
from tripletsk.errors import ConvergenceWarning, TripletFileError
from tripletsk.triplets.files import read_triplet_indices, read_triplets_with_lines

REPO = Path(__file__).resolve().parents[2]

# Every rule of docs/formats.md, and plain lines around them (which take the fast path).
FORMATS = [
    "a b c\n",
    "  a   b  c",  # no final newline, runs of spaces
    "\ufeffa b c\r\n\r\nd e f\r\n",  # BOM, CRLF
    "a b c\r\r\n",  # a second CR is part of the name
    "a\x0bb c d\n",  # a vertical tab is part of a name
    "# header\n  # indented comment\n\na b c  # trailing\n",
    "a#1.jpg b c\n",
    "my cat.jpg\tb c.jpg\tc.jpg\n",
    '"my cat.jpg" b.jpg c.jpg\n',
    '"a # b.jpg" "#c" d # note\n',
    '"say \\"hi\\".jpg" x y\n',
    "don't.jpg b c\n",
    "chat/été.jpg 猫/1.jpg a\u00a0b.jpg\n",
    "a b\u2028c d\n",  # U+2028 is part of a name, not a line break
]
PLAIN = "p/1.png p/2.png q/3.png\n"


@pytest.fixture(params=[None, 1, 7, 64], ids=["4MiB", "1B", "7B", "64B"])
def block_bytes(request, monkeypatch):
    """Blocks of the default size, and tiny ones that end in every possible place."""
    if request.param is not None:
        monkeypatch.setattr(lines_module, "BLOCK_BYTES", request.param)
    return request.param


def _reference(text: str) -> tuple[list[list[str]], list[int]]:
    """Names and line numbers by the line-by-line rules alone."""
    text = text.removeprefix("\ufeff")
    rows, numbers = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        names = lines_module.parse_line(line.removesuffix("\r"))
        if names:
            rows.append(names)
            numbers.append(number)
    return rows, numbers


@pytest.mark.parametrize("text", FORMATS)
def test_blocks_read_every_format_as_lines_do(tmp_path, block_bytes, text):
    text = PLAIN * 3 + text + ("\n" if not text.endswith("\n") else "") + PLAIN * 2
    if text.startswith(PLAIN) and "\ufeff" in text:
        text = "\ufeff" + text.replace("\ufeff", "")
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    rows, numbers = _reference(text)
    result = read_triplets_with_lines(path, on_self="ignore")
    assert result.triplets.tolist() == rows and result.line_numbers.tolist() == numbers
    keys = sorted({name for row in rows for name in row})
    indices = read_triplet_indices(path, keys, on_self="ignore")
    assert [[keys[i] for i in row] for row in indices.indices.tolist()] == rows
    assert indices.line_numbers.tolist() == numbers


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("a b\n", r"line 42: expected 3 names \(anchor positive negative\), found 2\."),
        ("a b c d\n", r"line 42: expected 3 names .* found 4\."),
        ('"a b c\n', r'line 42: a double quote \("\) is not closed\.'),
        ("a\t\tb\tc\n", r"line 42: empty name in tab-separated column 2"),
        (b"a \xe9 c\n", r"line 42: not valid UTF-8 \(byte 0xe9 at column 3\)"),
    ],
)
def test_errors_name_the_line_wherever_the_block_ends(tmp_path, block_bytes, bad, match):
    bad = bad if isinstance(bad, bytes) else bad.encode("utf-8")
    path = tmp_path / "t.txt"
    path.write_bytes(PLAIN.encode() * 41 + bad + PLAIN.encode() * 20)
    keys = ["p/1.png", "p/2.png", "q/3.png", "a", "c"]
    for read in (lambda: read_triplets_with_lines(path), lambda: read_triplet_indices(path, keys)):
        with pytest.raises(TripletFileError, match=rf"^{re.escape(str(path))}, {match}"):
            read()


def test_unknown_names_are_counted_over_the_whole_file(tmp_path, block_bytes):
    path = tmp_path / "t.txt"
    path.write_text(PLAIN * 5 + "p/1.png p/2.png q/30.png\n" + PLAIN * 5 + "x y q/30.png\n")
    with pytest.raises(TripletFileError) as err:
        read_triplet_indices(path, ["p/1.png", "p/2.png", "q/3.png"])
    message = str(err.value)
    assert message.startswith(f"{path}: 3 image name(s) not among the 3 known images, used 4")
    assert "line 6: 'q/30.png' (did you mean 'q/3.png'?); line 12: 'x'" in message


def test_repeated_images_warn_once_with_their_lines(tmp_path, block_bytes):
    path = tmp_path / "t.txt"
    path.write_text(PLAIN * 3 + "p/1.png p/1.png q/3.png\n" + PLAIN + "q/3.png p/2.png q/3.png\n")
    with pytest.warns(UserWarning, match=r"2 triplet\(s\) repeat an image .* at line\(s\) 4, 6;"):
        indices = read_triplet_indices(path, ["p/1.png", "p/2.png", "q/3.png"])
    assert indices.indices.dtype == np.int32 and len(indices) == 6
    with pytest.raises(TripletFileError, match="repeat an image"):
        read_triplet_indices(path, ["p/1.png", "p/2.png", "q/3.png"], on_self="error")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n  \n"])
def test_a_file_without_triplets_is_an_error(tmp_path, block_bytes, text):
    path = tmp_path / "t.txt"
    path.write_text(text)
    with pytest.raises(TripletFileError, match="no triplets found"):
        read_triplet_indices(path, ["a"])


KEYS = ["cat/0001.jpg", "cat/0002.jpg", "cat/0001.jpgx", "été/猫.png", "a", "a\x00",
        "dog/" + "long" * 20 + ".png", "cats/0001.jpg"]  # fmt: skip
NAMES = [*KEYS, "cat/0001.jp", "cat/0001.jpgxy", "cat/0003.jpg", "cats/0001.jpg2", "b", "a\x00\x00",
         "dog/" + "long" * 20 + ".pn", "x" * 300, "été/猫.pn"]  # fmt: skip


def _spans(names: list[bytes]):
    data = np.frombuffer(b" ".join(names), dtype=np.uint8)
    stops = np.cumsum([len(n) + 1 for n in names]) - 1
    return data, stops - np.array([len(n) for n in names]), stops


@pytest.mark.parametrize("hash_kind", ["default", "first 8 bytes only"])
def test_the_key_table_matches_names_exactly(monkeypatch, hash_kind):
    """The table's hash only picks a candidate: a name matches a key only if every byte and
    the length agree, even when the hash cannot tell them apart (here: names that share
    their first 8 bytes with a key)."""
    if hash_kind != "default":
        monkeypatch.setattr(
            key_table, "_hash", lambda words, lengths: words[:, 0] ^ lengths.astype(np.uint64)
        )
    table = key_table.KeyTable(KEYS)
    assert table.vectorized
    names = [name.encode("utf-8") for name in NAMES] * 3
    expected = [KEYS.index(n) if n in KEYS else -1 for n in NAMES] * 3
    assert table.rows_of_spans(*_spans(names)).tolist() == expected
    assert table.rows(names).tolist() == expected


def test_keys_the_table_cannot_hold_are_looked_up_one_by_one():
    assert not key_table.KeyTable(["a", "b" * 300]).vectorized  # wider than 256 bytes
    path_keys = ["p/1.png", "p/2.png", "q/3.png"]
    assert key_table.KeyTable(path_keys).vectorized


# ------------------------------------------------------------- a large file, real process


# ``python -m tripletsk`` that writes its peak resident memory (VmHWM) to a file as it exits:
# a child's ru_maxrss would count the memory of this test process it was forked from.
_REPORT_PEAK = (
    "import atexit, runpy, sys\n"
    "out = sys.argv.pop(1)\n"
    "def report():\n"
    "    with open('/proc/self/status') as f, open(out, 'w') as o:\n"
    "        o.write(next(line for line in f if line.startswith('VmHWM:')).split()[1])\n"
    "atexit.register(report)\n"
    "runpy.run_module('tripletsk', run_name='__main__', alter_sys=True)\n"
)


def _peak_mib(argv: list[str], cwd: Path) -> float:
    """Peak resident memory of ``python -m tripletsk argv``, in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", _REPORT_PEAK, "peak.txt", *argv], cwd=cwd,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    return int((cwd / "peak.txt").read_text()) / 1024


@pytest.mark.slow
def test_predict_on_a_million_triplets_stays_in_bounded_memory(tmp_path, write_feature_cache):
    """``predict`` held every name as a Python string and three (n, n_components) copies of
    the embeddings: 3.6 GB for 5,000,000 lines. Read in blocks as row numbers and compared a
    chunk at a time, 1,000,000 lines stay far below what those copies alone took (768 MB)."""
    from tripletsk.cache.store import FeatureStore
    from tripletsk.estimator import TripletEncoder
    from tripletsk.modelfile import cache_record, save_model

    keys = [f"{c}/{i:03d}.png" for c in range(10) for i in range(100)]
    rng = np.random.RandomState(0)
    cache = write_feature_cache(tmp_path / "c.h5", keys, rng.normal(size=(1000, 32)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = TripletEncoder(features=str(cache), hidden_units=16, n_components=64,
                               max_epochs=1, random_state=0)  # fmt: skip
        model.fit(np.array(keys)[rng.randint(0, 1000, (50, 3))])
    save_model(tmp_path / "m.npz", model, cache_record(FeatureStore(cache)))
    names = np.array(keys, dtype=object)[rng.randint(0, 1000, (1_000_000, 3))]
    with open(tmp_path / "t.txt", "w") as f:
        f.write("".join(f"{a} {p} {n}\n" for a, p, n in names.tolist()))
    del names
    argv = ["predict", "--model", "m.npz", "--triplets", "t.txt", "-o", "p.txt"]
    peak = _peak_mib(argv, tmp_path)
    predictions = np.fromfile(tmp_path / "p.txt", dtype=np.uint8)
    assert len(predictions) == 2_000_000 and set(np.unique(predictions[0::2])) <= {48, 49}
    assert peak < 600, f"predict peaked at {peak:.0f} MiB"
