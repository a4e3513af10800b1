"""Tests for experiments/data.py: loaders, vocab, windowing, baselines."""

import json
import re

import numpy as np
import pytest

from experiments import data
from experiments.data import DataError


def _assert_data_error(excinfo, *fragments):
    """A DataError whose one-line message names what was received."""
    assert excinfo.type is DataError
    message = str(excinfo.value)
    assert "\n" not in message
    assert "Received" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# ---------------------------------------------------------------------------
# load_text
# ---------------------------------------------------------------------------


def test_load_text_reads_utf8(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Héllo, wörld!\nSecond line.\n", encoding="utf-8")
    assert data.load_text(path) == "Héllo, wörld!\nSecond line.\n"
    assert data.load_text(str(path)) == "Héllo, wörld!\nSecond line.\n"


def test_load_text_normalises_crlf(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"one\r\ntwo\r\nthree")
    assert data.load_text(path) == "one\ntwo\nthree"
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo\r")  # BOM and a lone old-Mac CR
    assert data.load_text(path) == "one\ntwo\n"


@pytest.mark.parametrize(
    "content, fragment",
    [(b"", "0 bytes"), (b"  \n\t\r\n  ", "whitespace only")],
    ids=["empty", "whitespace"],
)
def test_load_text_rejects_empty(tmp_path, content, fragment):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        data.load_text(path)
    _assert_data_error(excinfo, str(path), fragment)


def test_load_text_rejects_binary_with_nul(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc\x00\x01\x02def")
    with pytest.raises(DataError) as excinfo:
        data.load_text(path)
    _assert_data_error(excinfo, str(path), "NUL byte at offset 3")


def test_load_text_rejects_mostly_non_printable(tmp_path):
    path = tmp_path / "ctrl.bin"
    path.write_bytes(bytes(range(1, 9)) * 50)  # valid UTF-8, no NUL
    with pytest.raises(DataError) as excinfo:
        data.load_text(path)
    _assert_data_error(excinfo, str(path), "non-printable")


def test_load_text_rejects_invalid_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(DataError) as excinfo:
        data.load_text(path)
    # "caf" is 3 bytes, so the latin-1 "é" (0xe9) sits at offset 3.
    _assert_data_error(excinfo, str(path), "byte offset 3", "0xe9", "iconv", "-t utf-8")


def test_load_text_rejects_missing_path(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(DataError) as excinfo:
        data.load_text(path)
    _assert_data_error(excinfo, str(path), "no such file")


def test_load_text_rejects_directory(tmp_path):
    with pytest.raises(DataError) as excinfo:
        data.load_text(tmp_path)
    _assert_data_error(excinfo, str(tmp_path), "directory")


# ---------------------------------------------------------------------------
# Shakespeare corpus and vocabulary
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shakespeare():
    return data.shakespeare_text()


def test_shakespeare_text_is_plain_speeches(shakespeare):
    assert len(shakespeare) > 1_000_000
    assert re.search(r"(?m)^HAMLET:$", shakespeare)
    assert "\nHAMLET:\nTo be, or not to be: that is the question:\n" in shakespeare
    assert not re.search(r"(?m)^#", shakespeare)
    assert "**" not in shakespeare and "\\" not in shakespeare
    assert not re.search(r"(?m)^_|_$", shakespeare)  # no stage directions
    assert "\n\n\n" not in shakespeare
    assert shakespeare.endswith("\n") and not shakespeare.endswith("\n\n")
    # Every speech opens with an upper-case "SPEAKER:" line.
    for speech in shakespeare[:200_000].split("\n\n"):
        header, *lines = speech.split("\n")
        assert header.endswith(":") and header == header.upper(), header
        assert lines and all(lines), speech


def test_shakespeare_text_is_cached_and_deterministic(shakespeare):
    assert data.shakespeare_text() is shakespeare


def test_vocab_round_trip(shakespeare):
    vocab = data.CharVocab.from_text(shakespeare)
    assert vocab.chars == sorted(set(shakespeare))
    assert 40 < vocab.size < 120
    sample = shakespeare[:5000]
    ids = vocab.encode(sample)
    assert ids.dtype == np.int32 and ids.shape == (len(sample),)
    assert vocab.decode(ids) == sample
    restored = data.CharVocab.from_json(vocab.to_json())
    assert restored == vocab
    assert json.loads(vocab.to_json()) == vocab.chars


def test_vocab_ids_are_sorted_positions():
    vocab = data.CharVocab.from_text("hello world")
    assert vocab.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert vocab.encode("hold").tolist() == [3, 5, 4, 1]
    assert vocab.decode([3, 5, 4, 1]) == "hold"
    assert vocab.encode("").shape == (0,)


def test_vocab_unknown_char_raises():
    vocab = data.CharVocab.from_text("abc")
    with pytest.raises(DataError) as excinfo:
        vocab.encode("abz")
    _assert_data_error(excinfo, "'z'", "index 2")


def test_vocab_bad_id_and_bad_json_raise():
    vocab = data.CharVocab.from_text("abc")
    with pytest.raises(DataError) as excinfo:
        vocab.decode([0, 3])
    _assert_data_error(excinfo, "id=3")
    with pytest.raises(DataError):
        data.CharVocab.from_json('{"a": 1}')
    with pytest.raises(DataError):
        data.CharVocab.from_json('["ab"]')


# ---------------------------------------------------------------------------
# Text windows, split, entropy
# ---------------------------------------------------------------------------


def test_char_windows_shift_by_one():
    ids = np.arange(23)
    x, y = data.char_windows(ids, seq_len=5)
    # Non-overlapping starts 0, 5, 10, 15; start 20 would need y up to index 25.
    assert x.shape == y.shape == (4, 5)
    assert x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(x[:, 0], [0, 5, 10, 15])
    np.testing.assert_array_equal(y, x + 1)
    x2, y2 = data.char_windows(ids, seq_len=5, stride=1)
    assert x2.shape == (18, 5)
    np.testing.assert_array_equal(y2[:, :-1], x2[:, 1:])


def test_char_windows_exact_fit_and_too_short():
    x, y = data.char_windows(np.arange(6), seq_len=5)
    assert x.shape == (1, 5)
    with pytest.raises(DataError) as excinfo:
        data.char_windows(np.arange(5), seq_len=5)
    _assert_data_error(
        excinfo, "5 characters", "seq_len=5", "shorter than one sequence"
    )


def test_unigram_entropy_bits():
    assert data.unigram_entropy_bits([0, 1, 2, 3], 4) == pytest.approx(2.0)
    assert data.unigram_entropy_bits([1, 1, 1], 5) == pytest.approx(0.0)
    assert data.unigram_entropy_bits([0, 0, 1, 1], 10) == pytest.approx(1.0)
    with pytest.raises(DataError):
        data.unigram_entropy_bits([0, 5], 5)


# ---------------------------------------------------------------------------
# load_series: CSV files
# ---------------------------------------------------------------------------


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_series_csv_single_numeric_column(tmp_path):
    path = _write(
        tmp_path, "s.csv", "date,value\n2020-01,1.5\n2020-02,2.5\n2020-03,4\n"
    )
    values, meta = data.load_series(path)
    assert values.dtype == np.float64 and values.ndim == 1
    np.testing.assert_array_equal(values, [1.5, 2.5, 4.0])
    assert meta["column"] == "value" and meta["n"] == 3
    assert meta["name"] == "s" and meta["period"] is None
    assert meta["n_missing_filled"] == 0
    assert meta["source"].endswith("s.csv")
    assert data.load_series(path, period=12)[1]["period"] == 12


def test_load_series_csv_multiple_columns(tmp_path):
    path = _write(tmp_path, "m.csv", "a,b,label\n1,10,x\n2,20,y\n3,30,z\n")
    with pytest.raises(DataError) as excinfo:
        data.load_series(path)
    _assert_data_error(excinfo, "column=None", "'a'", "'b'")
    values, meta = data.load_series(path, column="b")
    np.testing.assert_array_equal(values, [10.0, 20.0, 30.0])
    assert meta["column"] == "b"


def test_load_series_csv_unknown_column(tmp_path):
    path = _write(tmp_path, "m.csv", "a,b\n1,10\n2,20\n")
    with pytest.raises(DataError) as excinfo:
        data.load_series(path, column="c")
    _assert_data_error(excinfo, "column='c'", "['a', 'b']")


def test_load_series_csv_non_numeric_column(tmp_path):
    path = _write(tmp_path, "m.csv", "a,name\n1,foo\n2,bar\n")
    with pytest.raises(DataError) as excinfo:
        data.load_series(path, column="name")
    _assert_data_error(excinfo, "column='name'", "non-numeric", "'foo' in data row 1")


def test_load_series_csv_all_nan_column(tmp_path):
    path = _write(tmp_path, "m.csv", "a,b\n1,\n2,NA\n3,\n")
    with pytest.raises(DataError) as excinfo:
        data.load_series(path, column="b")
    _assert_data_error(excinfo, "column='b'", "missing")


def test_load_series_csv_interpolates_interior_nans(tmp_path):
    # In a one-column CSV a blank line is a missing value, like "NA".
    path = _write(tmp_path, "gaps.csv", "v\n\n1\n2\n\nNA\n5\n6\nNA\n")
    values, meta = data.load_series(path)
    # Leading/trailing NaNs are dropped; the two interior ones interpolated.
    np.testing.assert_allclose(values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert meta["n_missing_filled"] == 2
    assert meta["n_missing_dropped"] == 2
    assert meta["n"] == 6
    path = _write(tmp_path, "gaps2.csv", "t,v\n0,1\n1,\n2,\n3,7\n")
    values, meta = data.load_series(path, column="v")
    np.testing.assert_allclose(values, [1.0, 3.0, 5.0, 7.0])
    assert meta["n_missing_filled"] == 2 and meta["n_missing_dropped"] == 0


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank"])
def test_load_series_csv_empty_file(tmp_path, content):
    path = _write(tmp_path, "e.csv", content)
    with pytest.raises(DataError) as excinfo:
        data.load_series(path)
    _assert_data_error(excinfo, str(path), "empty")


def test_load_series_csv_header_only_and_unparseable(tmp_path):
    path = _write(tmp_path, "h.csv", "a,b\n")
    with pytest.raises(DataError) as excinfo:
        data.load_series(path)
    _assert_data_error(excinfo, str(path), "no data rows")
    path = _write(tmp_path, "bad.csv", 'a,b\n1,2\n3,4,5,6\n"x,7\n')
    with pytest.raises(DataError) as excinfo:
        data.load_series(path)
    _assert_data_error(excinfo, str(path), "not parseable")


def test_load_series_missing_file_and_unknown_name(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError) as excinfo:
        data.load_series(path)
    _assert_data_error(excinfo, str(path), "no such file")
    with pytest.raises(DataError) as excinfo:
        data.load_series("sunspot")
    _assert_data_error(excinfo, "'sunspot'", "'co2'", "'sunspots'")


# ---------------------------------------------------------------------------
# load_series: built-ins
# ---------------------------------------------------------------------------


def test_load_series_sunspots():
    values, meta = data.load_series("sunspots")
    assert values.shape == (309,) and values.dtype == np.float64
    assert np.isfinite(values).all()
    assert meta["name"] == "sunspots" and meta["column"] == "SUNACTIVITY"
    assert meta["n"] == 309 and meta["period"] == 11
    assert meta["n_missing_filled"] == 0
    assert values[0] == 5.0  # 1700


def test_load_series_co2_fills_missing():
    values, meta = data.load_series("co2")
    assert values.shape == (2284,)
    assert not np.isnan(values).any()
    assert meta["n"] == 2284 and meta["period"] == 52 and meta["column"] == "co2"
    assert meta["n_missing_filled"] > 0
    assert 300 < values.min() and values.max() < 400


# ---------------------------------------------------------------------------
# Series windows and splits
# ---------------------------------------------------------------------------


def test_split_by_time():
    train, val, test = data.split_by_time(100)
    assert (train, val, test) == (slice(0, 70), slice(70, 85), slice(85, 100))
    with pytest.raises(ValueError):
        data.split_by_time(100, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(DataError):
        data.split_by_time(3, fractions=(0.8, 0.1, 0.1))


def test_series_splits_no_leakage():
    values = np.arange(100, dtype=np.float64)
    window, horizon = 5, 2
    splits = data.series_splits(values, window, horizon)
    bounds = dict(zip(data.SPLIT_NAMES, data.split_by_time(100)))
    for name, (x, y, index) in splits.items():
        part = bounds[name]
        # Targets lie inside their own split, all of it for val/test.
        assert index.min() >= part.start and index.max() < part.stop
        np.testing.assert_array_equal(y, values[index])
        if name != "train":
            assert index[0, 0] == part.start and index[-1, -1] == part.stop - 1
        # Inputs are the `window` values right before the first target.
        np.testing.assert_array_equal(x[:, -1, 0], values[index[:, 0] - 1])
        assert x.shape[1:] == (window, 1) and y.shape[1:] == (horizon,)
    # Validation context comes from the end of train, test from validation.
    x_val = splits["validation"][0]
    np.testing.assert_array_equal(x_val[0, :, 0], [65, 66, 67, 68, 69])
    assert set(data.series_splits(values, 5)) == {"train", "validation", "test"}
    assert len(data.series_splits(values, 5)["test"]) == 3  # x, y, index


def test_series_splits_too_short_split():
    with pytest.raises(DataError) as excinfo:
        data.series_splits(np.arange(20.0), window=13)  # train has 14 values
    _assert_data_error(excinfo, "train split of 14 values", "window=13")
    with pytest.raises(DataError) as excinfo:
        data.series_splits(np.arange(20.0), window=2, horizon=3)  # test: 3 values
    _assert_data_error(excinfo, "validation split of 3 values + 2 of context")


# ---------------------------------------------------------------------------
# Standardizer and baselines
# ---------------------------------------------------------------------------


def test_standardizer_round_trip():
    train = np.array([1.0, 2.0, 3.0, 4.0])
    scaler = data.Standardizer().fit(train)
    assert scaler.mean == 2.5 and scaler.std == pytest.approx(np.sqrt(1.25))
    z = scaler.transform(train)
    assert z.mean() == pytest.approx(0.0) and z.std() == pytest.approx(1.0)
    np.testing.assert_allclose(scaler.inverse_transform(z), train)
    x32 = np.ones((2, 3, 1), dtype=np.float32)
    assert scaler.transform(x32).dtype == np.float32
    restored = data.Standardizer.from_json(scaler.to_json())
    assert (restored.mean, restored.std) == (scaler.mean, scaler.std)


def test_standardizer_errors():
    with pytest.raises(DataError) as excinfo:
        data.Standardizer().fit([3.0, 3.0, 3.0])
    _assert_data_error(excinfo, "3.0", "std 0")
    with pytest.raises(ValueError, match="not fitted"):
        data.Standardizer().transform([1.0])


def test_seasonal_naive_forecast():
    # Period-4 pattern plus a trend of 10 per season.
    values = np.array([1, 2, 3, 4, 11, 12, 13, 14, 21, 22, 23, 24], dtype=float)
    pred = data.seasonal_naive_forecast(values, np.array([8, 9, 11]), period=4)
    np.testing.assert_array_equal(pred, [11.0, 12.0, 14.0])
    # Multi-step from origin 5: steps 1..6 at 6..11. Steps 5 and 6 would look
    # back into the forecast window, so they use two seasons back instead.
    index = np.arange(6, 12)[None, :]
    pred = data.seasonal_naive_forecast(values, index, period=4)
    np.testing.assert_array_equal(pred, [[3.0, 4.0, 11.0, 12.0, 3.0, 4.0]])
    with pytest.raises(DataError) as excinfo:
        data.seasonal_naive_forecast(values, np.array([3]), period=4)
    _assert_data_error(excinfo, "target index 3", "period=4")


def test_baselines_with_series_splits():
    t = np.arange(60, dtype=float)
    values = np.sin(2 * np.pi * t / 6)  # exactly periodic: seasonal naive is perfect
    x, y, index = data.series_splits(values, window=8)["test"]
    pred = data.seasonal_naive_forecast(values, index, period=6)
    assert data.mse(pred, y) < 1e-12
    assert data.mae(x[:, -1, :], y) > 0.1  # persistence is not


def test_metrics():
    assert data.mse([1.0, 2.0], [1.0, 4.0]) == 2.0
    assert data.mae([1.0, 2.0], [1.0, 4.0]) == 1.0


def test_data_modules_do_not_import_tensorflow():
    # The data layer must stay usable (and fast to import) without a backend.
    import pathlib
    import subprocess
    import sys

    code = (
        "import sys, experiments.data, experiments.tasks; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'jax', 'torch')]; "
        "assert not bad, bad"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
