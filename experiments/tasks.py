"""Classic synthetic long-range-dependency tasks for recurrent networks.

Pure NumPy, seeded with `np.random.default_rng(seed)` so a seed gives the
same data on every platform and backend.

- `adding_problem`: Le, Jaitly & Hinton (2015), "A Simple Way to Initialize
  Recurrent Networks of Rectified Linear Units" (after Hochreiter &
  Schmidhuber, 1997). Regression; chance level `ADDING_BASELINE_MSE`.
- `copy_memory`: Arjovsky, Shah & Bengio (2016), "Unitary Evolution Recurrent
  Neural Networks". Per-step classification; chance level
  `copy_memory_baseline(T)`.

Both need the network to carry information across `T` steps, so the
sequence length `T` directly sets how far gradients must travel.
"""

import math

import numpy as np

from experiments.common import check_int

ADDING_BASELINE_MSE = 1.0 / 6.0
"""MSE of the best input-independent prediction for the adding problem.

The target is the sum of two independent U[0, 1] values, so its mean is 1
and its variance is 2 * (1/12) = 1/6. Always predicting the mean, 1, gives
the smallest constant-prediction MSE, which is that variance: 1/6 ~ 0.1667.
A model has learned the task only when its MSE is well below this.
"""

COPY_MEMORY_BLANK = 0
"""Id of the blank symbol in the copy-memory task."""

COPY_MEMORY_N_SYMBOLS = 8
"""Default number of data symbols (ids 1..8)."""

COPY_MEMORY_DELIMITER = COPY_MEMORY_N_SYMBOLS + 1
"""Id of the delimiter ("go") marker for the default alphabet: 9.

In general it is `n_symbols + 1`."""

COPY_MEMORY_VOCAB_SIZE = COPY_MEMORY_N_SYMBOLS + 2
"""Vocabulary size for the default alphabet: blank, 8 symbols, delimiter = 10.

In general it is `n_symbols + 2`."""


def _check_seed(seed):
    return None if seed is None else check_int("seed", seed, minimum=0)


def adding_problem(n, T, seed=None):
    """Generates the adding problem (Le et al., 2015 form).

    Each sequence has `T` steps of two channels. Channel 0 holds values drawn
    from U[0, 1]. Channel 1 is a marker: exactly one 1 at a uniformly random
    step of the first half `[0, T // 2)` and one in the second half
    `[T // 2, T)`, 0 elsewhere. The target is the sum of the two marked
    values, so the network must remember the first one for up to `T` steps.
    Predicting 1 regardless of the input scores `ADDING_BASELINE_MSE` = 1/6.

    Args:
        n: Number of sequences, >= 1.
        T: Sequence length, >= 2 (each half needs a step).
        seed: Seed for `np.random.default_rng` (None: not reproducible).

    Returns:
        `(x, y)`: float32 arrays of shapes `(n, T, 2)` and `(n, 1)`. `y` is
        computed in float32 from the stored values, so it equals
        `(x[..., 0] * x[..., 1]).sum(axis=1, keepdims=True)` exactly.
    """
    n = check_int("n", n)
    T = check_int("T", T, minimum=2)
    rng = np.random.default_rng(_check_seed(seed))
    values = rng.uniform(0.0, 1.0, size=(n, T)).astype(np.float32)
    half = T // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    markers = np.zeros((n, T), dtype=np.float32)
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1)
    y = (values[rows, first] + values[rows, second]).astype(np.float32)[:, None]
    return x, y


def _check_copy_args(T, n_symbols, copy_len):
    # T: the delay; with one symbol there would be nothing to copy.
    return check_int("T", T), check_int("n_symbols", n_symbols, minimum=2), check_int(
        "copy_len", copy_len)


def copy_memory(n, T, seed=None, n_symbols=8, copy_len=10):
    """Generates the copy-memory task (Arjovsky et al., 2016).

    Alphabet: 0 = blank, 1..n_symbols = data symbols, n_symbols + 1 =
    delimiter ("go" marker); `n_symbols + 2` ids in all. With `L = T +
    2 * copy_len` steps per sequence:

    - input: `copy_len` random data symbols, then `T - 1` blanks, then the
      delimiter (at step `T + copy_len - 1`), then `copy_len` blanks;
    - target: blank everywhere except the last `copy_len` steps, which hold
      the `copy_len` data symbols in their original order.

    So the symbols must be remembered across `T` steps. A model that ignores
    the data (blank first, uniform guess at the end) scores
    `copy_memory_baseline(T, n_symbols, copy_len)` nats of cross-entropy.

    Args:
        n: Number of sequences, >= 1.
        T: Delay, >= 1 (number of steps from the last data symbol to the
            delimiter, inclusive).
        seed: Seed for `np.random.default_rng` (None: not reproducible).
        n_symbols: Number of data symbols, >= 2.
        copy_len: Number of symbols to copy, >= 1.

    Returns:
        `(x, y)`: int32 arrays of shape `(n, T + 2 * copy_len)`.
    """
    n = check_int("n", n)
    T, n_symbols, copy_len = _check_copy_args(T, n_symbols, copy_len)
    rng = np.random.default_rng(_check_seed(seed))
    length = T + 2 * copy_len
    data = rng.integers(1, n_symbols + 1, size=(n, copy_len), dtype=np.int32)
    x = np.full((n, length), COPY_MEMORY_BLANK, dtype=np.int32)
    x[:, :copy_len] = data
    x[:, T + copy_len - 1] = n_symbols + 1
    y = np.full((n, length), COPY_MEMORY_BLANK, dtype=np.int32)
    y[:, -copy_len:] = data
    return x, y


def copy_memory_baseline(T, n_symbols=8, copy_len=10):
    """Cross-entropy (nats per step) of the best memoryless copy-memory model.

    Without memory the best prediction is blank with probability 1 for the
    first `T + copy_len` steps (cost 0) and uniform over the `n_symbols` data
    symbols for the last `copy_len` steps (cost `ln n_symbols` each).
    Averaged over the `T + 2 * copy_len` steps:
    `copy_len * ln(n_symbols) / (T + 2 * copy_len)`; for the defaults,
    `10 ln 8 / (T + 20)`.

    Args:
        T: Delay, >= 1.
        n_symbols: Number of data symbols, >= 2.
        copy_len: Number of symbols to copy, >= 1.

    Returns:
        Python `float`, in nats.
    """
    T, n_symbols, copy_len = _check_copy_args(T, n_symbols, copy_len)
    return copy_len * math.log(n_symbols) / (T + 2 * copy_len)
