"""Tests for experiments/tasks.py: adding problem and copy memory."""

import math

import numpy as np
import pytest

from experiments import tasks


def test_adding_problem_shapes_and_markers():
    n, T = 500, 31
    x, y = tasks.adding_problem(n, T, seed=0)
    assert x.shape == (n, T, 2) and y.shape == (n, 1)
    assert x.dtype == np.float32 and y.dtype == np.float32
    values, markers = x[..., 0], x[..., 1]
    assert values.min() >= 0.0 and values.max() < 1.0
    assert set(np.unique(markers)) == {0.0, 1.0}
    half = T // 2
    # Exactly one marker in each half.
    np.testing.assert_array_equal(markers[:, :half].sum(axis=1), 1.0)
    np.testing.assert_array_equal(markers[:, half:].sum(axis=1), 1.0)
    # The target is exactly the sum of the two marked values.
    first = values[np.arange(n), markers[:, :half].argmax(axis=1)]
    second = values[np.arange(n), half + markers[:, half:].argmax(axis=1)]
    np.testing.assert_array_equal(y[:, 0], first + second)
    np.testing.assert_array_equal(y, (values * markers).sum(axis=1, keepdims=True))


def test_adding_problem_is_seeded():
    a = tasks.adding_problem(4, 10, seed=3)
    b = tasks.adding_problem(4, 10, seed=3)
    c = tasks.adding_problem(4, 10, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_adding_problem_baseline_mse():
    _, y = tasks.adding_problem(20_000, 10, seed=1)
    assert tasks.ADDING_BASELINE_MSE == pytest.approx(1 / 6)
    mse_of_predicting_one = float(np.mean((y.astype(np.float64) - 1.0) ** 2))
    assert abs(mse_of_predicting_one - tasks.ADDING_BASELINE_MSE) < 0.01


def test_copy_memory_layout():
    n, T, copy_len = 50, 15, 10
    x, y = tasks.copy_memory(n, T, seed=0)
    length = T + 2 * copy_len
    assert x.shape == y.shape == (n, length)
    assert x.dtype == y.dtype == np.int32
    delimiter = T + copy_len - 1
    assert tasks.COPY_MEMORY_DELIMITER == 9 and tasks.COPY_MEMORY_VOCAB_SIZE == 10
    # Input: data symbols, T - 1 blanks, delimiter, copy_len blanks.
    data = x[:, :copy_len]
    assert data.min() >= 1 and data.max() <= 8
    assert (x[:, copy_len:delimiter] == 0).all()
    assert (x[:, delimiter] == 9).all()
    assert (x[:, delimiter + 1 :] == 0).all()
    assert (x == 9).sum() == n  # one delimiter per sequence
    # Target: blank until the last copy_len steps, which repeat the data.
    assert (y[:, : T + copy_len] == 0).all()
    np.testing.assert_array_equal(y[:, -copy_len:], data)
    assert x.max() < tasks.COPY_MEMORY_VOCAB_SIZE


def test_copy_memory_custom_alphabet():
    x, y = tasks.copy_memory(20, T=5, seed=1, n_symbols=3, copy_len=2)
    assert x.shape == (20, 9)
    assert (x[:, 6] == 4).all()  # delimiter n_symbols + 1 at T + copy_len - 1
    assert set(np.unique(x[:, :2])) <= {1, 2, 3}
    np.testing.assert_array_equal(y[:, -2:], x[:, :2])


@pytest.mark.parametrize("T", [1, 100, 500])
def test_copy_memory_baseline_matches_monte_carlo(T):
    n_symbols, copy_len = 8, 10
    _, y = tasks.copy_memory(2_000, T, seed=2)
    # Optimal memoryless predictor: blank with probability 1 for the first
    # T + copy_len steps, uniform over the 8 data symbols for the rest.
    length = T + 2 * copy_len
    probs = np.zeros((length, n_symbols + 2))
    probs[: T + copy_len, 0] = 1.0
    probs[T + copy_len :, 1 : n_symbols + 1] = 1.0 / n_symbols
    p_target = probs[np.arange(length)[None, :], y]
    cross_entropy = float(np.mean(-np.log(p_target)))
    baseline = tasks.copy_memory_baseline(T)
    assert abs(cross_entropy - baseline) < 1e-6
    assert baseline == pytest.approx(10 * math.log(8) / (T + 20))


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: tasks.adding_problem(0, 10, 0), "n=0"),
        (lambda: tasks.adding_problem(5, 1, 0), "T=1"),
        (lambda: tasks.adding_problem(5, 10.0, 0), "T=10.0"),
        (lambda: tasks.adding_problem(5, 10, seed=-1), "seed=-1"),
        (lambda: tasks.copy_memory(5, 0, 0), "T=0"),
        (lambda: tasks.copy_memory(5, 10, 0, n_symbols=1), "n_symbols=1"),
        (lambda: tasks.copy_memory(5, 10, 0, copy_len=0), "copy_len=0"),
        (lambda: tasks.copy_memory_baseline(True), "T=True"),
    ],
)
def test_bad_arguments_raise(call, fragment):
    with pytest.raises(ValueError) as excinfo:
        call()
    message = str(excinfo.value)
    assert message.startswith(f"Received: {fragment}.")
    assert "Expected" in message
