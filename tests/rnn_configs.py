"""Test parametrisations shared by test_cell.py, test_layer.py, test_fused.py
and conftest.py.

They are needed when a module is imported (in `pytest.mark.parametrize`),
before any fixture exists, so the test modules import them by name: pytest
puts tests/ on `sys.path` (its default "prepend" import mode).
"""

import itertools

import pytest

ACTIVATIONS = ("tanh", "relu", "sigmoid", "linear")


def covering_configs():
    """(activation, use_bias, go_backwards, return_sequences, initial_state):
    every activation x go_backwards x return_sequences, each with one of the
    four (use_bias, initial_state) pairs, rotated so that every pair of values
    of any two options occurs (16 configurations instead of 64)."""
    pairs = [(True, True), (True, False), (False, True), (False, False)]
    configs = []
    for i, activation in enumerate(ACTIVATIONS):
        for go_backwards, return_sequences in itertools.product(
            (False, True), repeat=2
        ):
            use_bias, initial_state = pairs[
                (2 * go_backwards + return_sequences + i) % 4
            ]
            configs.append(
                pytest.param(
                    activation, use_bias, go_backwards, return_sequences,
                    initial_state,
                    id=f"{activation}-bias{int(use_bias)}-back{int(go_backwards)}"
                    f"-seq{int(return_sequences)}-h0{int(initial_state)}",
                )
            )
    return configs


def constant_initializers():
    """The constant initialisers of Keras' own simple_rnn_test.py."""
    from keras import initializers

    return dict(
        kernel_initializer=initializers.Constant(0.01),
        recurrent_initializer=initializers.Constant(0.02),
        bias_initializer=initializers.Constant(0.03),
    )
