import os
import time
import warnings

import numpy as np
import pytest

from tripletsk.errors import TripletDataError, TripletFileError, UserError
from tripletsk.triplets.files import (
    read_triplets,
    read_triplets_with_lines,
    write_triplets,
)
from tripletsk.triplets.folders import (
    count_folder_triplets,
    labels_from_folders,
    list_image_keys,
    make_triplets_from_folders,
)


def _write_bytes(tmp_path, data: bytes, name="train.txt"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _write(tmp_path, text: str, name="train.txt"):
    return _write_bytes(tmp_path, text.encode("utf-8"), name)


# ---- sample_label_triplets and pk_batches (existing behaviour) ------------------------------


# ---- reading --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a b c\n", [["a", "b", "c"]]),
        ("  a   b  c", [["a", "b", "c"]]),  # no final newline, runs of spaces
        ("\ufeffa b c\r\n\r\nd e f\r\n", [["a", "b", "c"], ["d", "e", "f"]]),
        ("# header\n  # indented comment\n\na b c  # trailing\n", [["a", "b", "c"]]),
        ("a#1.jpg b c\n", [["a#1.jpg", "b", "c"]]),  # '#' inside a name is not a comment
        ("my cat.jpg\tb c.jpg\tc.jpg\n", [["my cat.jpg", "b c.jpg", "c.jpg"]]),
        ("my cat.jpg \t b.jpg\tc.jpg\t\n", [["my cat.jpg", "b.jpg", "c.jpg"]]),
        ('"my cat.jpg" b.jpg c.jpg\n', [["my cat.jpg", "b.jpg", "c.jpg"]]),
        ('"a # b.jpg" "#c" d # note\n', [["a # b.jpg", "#c", "d"]]),
        ('"say \\"hi\\".jpg" x y\n', [['say "hi".jpg', "x", "y"]]),
        ("don't.jpg b c\n", [["don't.jpg", "b", "c"]]),  # apostrophes are not quotes
        ('"it\'s.jpg" b c\n', [["it's.jpg", "b", "c"]]),
        ("chat/été.jpg 猫/1.jpg a\u00a0b.jpg\n", [["chat/été.jpg", "猫/1.jpg", "a\u00a0b.jpg"]]),
    ],
)
def test_read_triplets_formats(tmp_path, text, expected):
    t = read_triplets(_write(tmp_path, text))
    assert t.dtype == object
    assert t.tolist() == expected


def test_read_triplets_with_lines_keeps_line_numbers(tmp_path):
    tf = read_triplets_with_lines(_write(tmp_path, "# c\na b c\n\nd e f\n"))
    assert tf.line_numbers.tolist() == [2, 4]
    assert len(tf) == 2
    assert tf.where(1).endswith("train.txt, line 4")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a b c\na b c\n# x\nonly two\n", r"train\.txt, line 4: expected 3 names .*found 2"),
        ("a b c d\n", r"line 1: expected 3 names \(anchor positive negative\), found 4"),
        ('"a b c\n', r"line 1: a double quote .* is not closed"),
        ("a\t\tb\tc\n", r"line 1: empty name in tab-separated column 2"),
        ("a b\tc\n", r"line 1: expected 3 names .*found 2"),  # a tab: split on tabs only
        ("", r"train\.txt: no triplets found"),
        ("# only\n\n   \n", r"no triplets found"),
    ],
)
def test_read_triplets_errors(tmp_path, text, match):
    with pytest.raises(TripletFileError, match=match):
        read_triplets(_write(tmp_path, text))


def test_read_triplets_not_utf8_names_line(tmp_path):
    path = _write_bytes(tmp_path, b"a b c\nd \xe9t\xe9 f\n")
    with pytest.raises(TripletFileError, match=r"train\.txt, line 2: not valid UTF-8"):
        read_triplets(path)


def test_read_triplets_missing_file(tmp_path):
    with pytest.raises(TripletFileError, match=r"nope\.txt: triplet file not found"):
        read_triplets(tmp_path / "nope.txt")


def test_read_triplets_directory(tmp_path):
    with pytest.raises(TripletFileError, match="is a directory"):
        read_triplets(tmp_path)


def test_triplet_file_error_is_user_and_value_error():
    assert issubclass(TripletFileError, UserError)
    assert issubclass(TripletFileError, ValueError)


def test_unknown_names_listed_with_line_and_suggestion(tmp_path):
    path = _write(tmp_path, "cat/1.jpg cat/2.jpg dog/1.jpg\ncat/1.jpg cat/22.jpg dog/1.jgp\n")
    known = {"cat/1.jpg", "cat/2.jpg", "dog/1.jpg"}
    with pytest.raises(TripletFileError) as info:
        read_triplets(path, known_keys=known)
    message = str(info.value)
    assert "2 image name(s) not among the 3 known" in message
    assert "line 2: 'cat/22.jpg' (did you mean 'cat/2.jpg'" in message
    assert "'dog/1.jgp' (did you mean 'dog/1.jpg'" in message


def test_known_names_pass(tmp_path):
    path = _write(tmp_path, "a b c\n")
    assert read_triplets(path, known_keys=["a", "b", "c", "d"]).shape == (1, 3)


def test_unknown_names_fast_for_many_keys(tmp_path):
    known = [f"class{i % 100}/img{i}.jpg" for i in range(100_000)]
    rows = [f"{known[i]} {known[i + 1]} {known[i + 2]}" for i in range(0, 30_000, 3)]
    rows += [f"class{i}/missing{i}.jpg {known[0]} {known[1]}" for i in range(50)]
    path = _write(tmp_path, "\n".join(rows))
    start = time.perf_counter()
    with pytest.raises(TripletFileError, match="50 image name"):
        read_triplets(path, known_keys=known)
    # Generous bound: only catches accidental per-unknown scans of all keys.
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("row", ["a a b", "a b a", "a b b"])
def test_repeated_image_warns_with_line(tmp_path, row):
    path = _write(tmp_path, f"x y z\n{row}\n")
    match = r"train\.txt: 1 triplet\(s\) repeat an image.*line\(s\) 2"
    with pytest.warns(UserWarning, match=match):
        t = read_triplets(path)
    assert len(t) == 2


def test_repeated_image_on_self_modes(tmp_path):
    path = _write(tmp_path, "a a b\n")
    with pytest.raises(TripletFileError, match="repeat an image"):
        read_triplets(path, on_self="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_triplets(path, on_self="ignore").shape == (1, 3)
    with pytest.raises(ValueError, match="on_self must be"):
        read_triplets(path, on_self="skip")


# ---- writing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "names",
    [
        ["a.jpg", "b.jpg", "c.jpg"],
        ["my cat.jpg", "b.jpg", "c.jpg"],
        ["tab\there.jpg", "x", "y"],
        ["#first.jpg", "a # b.jpg", "a#b.jpg"],
        ['say "hi".jpg', "back\\slash.jpg", "end\\"],
        ["chat/été.jpg", "猫/1.jpg", "a\u00a0b.jpg"],
        ["don't.jpg", "it's here.jpg", "c"],
    ],
)
def test_write_read_round_trip(tmp_path, names):
    triplets = np.array([names, ["p", "q", "r"]], dtype=object)
    path = tmp_path / "t.txt"
    write_triplets(path, triplets)
    assert read_triplets(path).tolist() == triplets.tolist()


def test_write_plain_names_space_separated(tmp_path):
    path = tmp_path / "t.txt"
    write_triplets(path, np.array([["a", "b", "c"]]))
    assert path.read_bytes() == b"a b c\n"


@pytest.mark.parametrize(
    ("triplets", "match"),
    [
        ([["a", "b"]], r"shape \(n_triplets, 3\)"),
        ([["a", "", "c"]], "empty or has a line break"),
        ([["a", "b\nc", "d"]], "empty or has a line break"),
    ],
)
def test_write_triplets_errors(tmp_path, triplets, match):
    with pytest.raises(ValueError, match=match):
        write_triplets(tmp_path / "t.txt", triplets)


# ---- class folders --------------------------------------------------------------------------


def test_labels_from_folders():
    labels = labels_from_folders(np.array(["cat/1.jpg", "dog/a/2.jpg", "cat/3.png"]))
    assert labels.tolist() == ["cat", "dog", "cat"]


@pytest.mark.parametrize("keys", [["cat/1.jpg", "loose.jpg"], ["cat/"], ["/abs.jpg"]])
def test_labels_from_folders_needs_a_folder(keys):
    with pytest.raises(TripletDataError, match="not inside a class folder"):
        labels_from_folders(keys)


def _image_tree(root):
    names = ["cat/1.jpg", "cat/2.JPEG", "cat/sub/3.png", "dog/1.webp", "dog/2.TIFF",
             "dog/notes.txt", ".hidden/1.jpg", "dog/.x.jpg"]  # fmt: skip
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return ["cat/1.jpg", "cat/2.JPEG", "cat/sub/3.png", "dog/1.webp", "dog/2.TIFF"]


def test_list_image_keys(tmp_path):
    expected = _image_tree(tmp_path)
    assert list_image_keys(tmp_path).tolist() == sorted(expected)


def test_make_triplets_from_folder_root(tmp_path):
    _image_tree(tmp_path)
    out = tmp_path / "made.txt"
    t = make_triplets_from_folders(tmp_path, 10, random_state=0, path=out)
    labels = labels_from_folders(t.ravel()).reshape(t.shape)
    assert t.shape == (10, 3)
    assert np.all(labels[:, 0] == labels[:, 1]) and np.all(labels[:, 0] != labels[:, 2])
    assert np.all(t[:, 0] != t[:, 1])
    assert read_triplets(out).tolist() == t.tolist()


def test_make_triplets_random_is_reproducible():
    keys = [f"{c}/{i}.jpg" for c in "abc" for i in range(4)]
    t1 = make_triplets_from_folders(keys, 10, random_state=3)
    t2 = make_triplets_from_folders(keys, 10, random_state=3)
    assert t1.tolist() == t2.tolist()


def _slow_hard_candidates(features, labels, anchor, n_candidates):
    d = np.linalg.norm(features - features[anchor], axis=1)
    same = np.flatnonzero((labels == labels[anchor]) & (np.arange(len(labels)) != anchor))
    other = np.flatnonzero(labels != labels[anchor])
    far = same[np.argsort(-d[same], kind="stable")]
    near = other[np.argsort(d[other], kind="stable")]
    # Allow ties at the boundary: any candidate as far/near as the n-th one qualifies.
    far_ok = set(same[d[same] >= d[far[min(n_candidates, len(far)) - 1]]])
    near_ok = set(other[d[other] <= d[near[min(n_candidates, len(near)) - 1]]])
    return far_ok, near_ok


@pytest.mark.parametrize("n_candidates", [1, 3, 50])
def test_make_triplets_hard_matches_slow_search(n_candidates):
    rng = np.random.RandomState(0)
    keys = np.array([f"{c}/{i}.jpg" for c in "abcd" for i in range(6)], dtype=object)
    labels = labels_from_folders(keys)
    features = rng.randint(0, 4, size=(len(keys), 2)).astype(float)  # many ties, duplicates
    t = make_triplets_from_folders(
        keys, 20, strategy="hard", features=features, n_candidates=n_candidates, random_state=1
    )
    index = {k: i for i, k in enumerate(keys)}
    for a, p, n in t.tolist():
        far_ok, near_ok = _slow_hard_candidates(features, labels, index[a], n_candidates)
        assert index[p] in far_ok
        assert index[n] in near_ok


def test_make_triplets_hard_varies_with_candidates():
    keys = [f"{c}/{i}.jpg" for c in "ab" for i in range(10)]
    features = np.arange(20, dtype=float)[:, None]
    t = make_triplets_from_folders(keys, 200, strategy="hard", features=features, random_state=0)
    assert len({tuple(row) for row in t.tolist()}) > 20


def _every_slow(keys, strategy, features=None, n_candidates=10):
    """Every triplet a strategy can make, by brute force over all (a, p, n)."""
    labels = labels_from_folders(keys)
    out = set()
    for a in range(len(keys)):
        if strategy == "hard":
            far_ok, near_ok = _slow_hard_candidates(features, labels, a, n_candidates)
        for p in range(len(keys)):
            for n in range(len(keys)):
                if p == a or labels[p] != labels[a] or labels[n] == labels[a]:
                    continue
                if strategy == "random" or (p in far_ok and n in near_ok):
                    out.add((keys[a], keys[p], keys[n]))
    return out


@pytest.mark.parametrize("strategy", ["random", "hard"])
@pytest.mark.parametrize("n_triplets", [5, 20, 100, 1000])  # drawn, listed, too many
def test_make_triplets_are_distinct_or_all_there_are(strategy, n_triplets):
    # Classes of 2, 3 and 5 images; distinct features so hard candidates have no ties.
    keys = [f"{c}/{i}.jpg" for c, size in zip("abc", (2, 3, 5), strict=True) for i in range(size)]
    features = np.random.RandomState(0).normal(size=(len(keys), 3))
    every = _every_slow(keys, strategy, features, n_candidates=2)
    assert count_folder_triplets(labels_from_folders(keys), strategy, 2) == len(every)
    kwargs = {"strategy": strategy, "features": features, "n_candidates": 2, "random_state": 0}
    if n_triplets > len(every):
        with pytest.warns(UserWarning, match=f"Only {len(every)} distinct {strategy} triplets"):
            t = make_triplets_from_folders(keys, n_triplets, **kwargs)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            t = make_triplets_from_folders(keys, n_triplets, **kwargs)
    rows = [tuple(row) for row in t.tolist()]
    assert len(rows) == min(n_triplets, len(every)) == len(set(rows))  # no repeats
    assert set(rows) <= every  # each a valid triplet of the strategy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert make_triplets_from_folders(keys, n_triplets, **kwargs).tolist() == t.tolist()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"strategy": "hard"}, ValueError, "needs features"),
        ({"strategy": "hard", "features": np.zeros((3, 2))}, ValueError, "aligned row for row"),
        ({"strategy": "semi"}, ValueError, "strategy must be"),
        ({"n_triplets": 0}, ValueError, "at least 1"),
        ({"n_triplets": 2.5}, TypeError, "must be an int"),
    ],
)
def test_make_triplets_errors(kwargs, error, match):
    keys = ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg"]
    kwargs = {"n_triplets": 5, **kwargs}
    with pytest.raises(error, match=match):
        make_triplets_from_folders(keys, **kwargs)


def test_make_triplets_empty_root(tmp_path):
    with pytest.raises(TripletDataError, match="no image files found"):
        make_triplets_from_folders(tmp_path, 5)


def test_make_triplets_root_not_a_folder(tmp_path):
    with pytest.raises(TripletDataError, match="not a folder of images"):
        make_triplets_from_folders(os.fspath(tmp_path / "nope"), 5)
