"""Recurrent-kernel initializers that pick the regime of BPTT's per-step Jacobian
`diag(act'(z_t)) @ W_hh^T` through `W_hh`'s singular values (`ScaledOrthogonal`), its
identity start (`ScaledIdentity`, IRNN) or its spectral radius (`SpectralRadiusNormal`).
Serializable; `keras.initializers.get` finds them by class name once `keras_vrnn` is imported.
"""

import random as python_random

import numpy as np
import keras
from keras import ops


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"Received: {name}={value!r}. Expected a positive number, e.g. 1.0.")
    return float(value)


def _check_square(shape, cls_name):
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{cls_name} is meant for the square recurrent kernel (units, units). "
                         f"Received: shape={tuple(shape)}. Use it as `recurrent_initializer`.")


def _tensor(value, dtype):
    return ops.convert_to_tensor(value, dtype=dtype or "float32")


class _SeededInitializer(keras.initializers.Initializer):
    """Draws with NumPy: exact and backend independent (eigen-decompositions). Without a
    seed it draws one from Python's `random` when created, as Keras' unseeded initializers
    do (`keras.utils.set_random_seed` makes it reproducible); the drawn seed is not in the
    config, so a deserialized copy draws its own."""

    def __init__(self, seed=None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Received: seed={seed!r}. Expected an integer or None.")
        self.seed, self._calls = seed, 0
        self._base_seed = python_random.randint(1, int(1e9)) if seed is None else seed

    def _rng(self):
        # Distinct, reproducible draws for the weights one instance serves (as Keras does).
        self._calls += 1
        return np.random.default_rng(self._base_seed + self._calls - 1)


@keras.saving.register_keras_serializable(package="keras_vrnn")
class ScaledOrthogonal(_SeededInitializer):
    """Orthogonal matrix times `gain`: every singular value equals `gain`.

    Regime: `gain < 1` contracting (gradients decay by about `gain` per step), `gain = 1`
    norm preserving (the default `"orthogonal"`), `gain > 1` expanding.

    Args:
        gain: Positive float, the common singular value (and |eigenvalue|).
        seed: Optional integer. `None` (default) follows `keras.utils.set_random_seed`.

    Example:

    ```python
    init = keras_vrnn.initializers.ScaledOrthogonal(gain=0.9, seed=0)
    w = init((64, 64))  # w.T @ w == 0.81 * I
    ```
    """

    def __init__(self, gain=1.0, seed=None):
        super().__init__(seed)
        self.gain = _check_positive("gain", gain)

    def __call__(self, shape, dtype=None):
        _check_square(shape, type(self).__name__)
        q, r = np.linalg.qr(self._rng().standard_normal(shape))
        return _tensor(self.gain * q * np.sign(np.diag(r)), dtype)  # Haar-uniform

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_vrnn")
class ScaledIdentity(keras.initializers.Initializer):
    """`gain * I`: the IRNN initialisation (Le, Jaitly & Hinton, 2015).

    Regime: with ReLU and `gain = 1` the untrained network copies its state forward (no
    vanishing or explosion while units stay active); `gain < 1` leaky, `gain > 1` expanding.

    Args:
        gain: Positive float on the diagonal.
    """

    def __init__(self, gain=1.0):
        self.gain = _check_positive("gain", gain)

    def __call__(self, shape, dtype=None):
        _check_square(shape, type(self).__name__)
        return _tensor(self.gain * np.eye(shape[0]), dtype)

    def get_config(self):
        return {"gain": self.gain}


@keras.saving.register_keras_serializable(package="keras_vrnn")
class SpectralRadiusNormal(_SeededInitializer):
    """Gaussian matrix rescaled to an exact spectral radius `rho`.

    Regime: `< 1` contracting in the long run, `> 1` expanding. Not normal: its largest
    singular value exceeds `rho`, so transient growth can occur even when `rho < 1`.

    Args:
        spectral_radius: Positive float, the largest |eigenvalue| of the result.
        seed: Optional integer. `None` (default) follows `keras.utils.set_random_seed`.
    """

    def __init__(self, spectral_radius=1.0, seed=None):
        super().__init__(seed)
        self.spectral_radius = _check_positive("spectral_radius", spectral_radius)

    def __call__(self, shape, dtype=None):
        _check_square(shape, type(self).__name__)
        a = self._rng().standard_normal(shape) / np.sqrt(shape[0])
        return _tensor(a * (self.spectral_radius / np.max(np.abs(np.linalg.eigvals(a)))), dtype)

    def get_config(self):
        return {"spectral_radius": self.spectral_radius, "seed": self.seed}


# Registered as "keras_vrnn>ClassName"; the plain names too, for keras.initializers.get.
keras.saving.get_custom_objects().update(
    {c.__name__: c for c in (ScaledOrthogonal, ScaledIdentity, SpectralRadiusNormal)})


def spectral_radius(matrix):
    """Largest absolute eigenvalue of a square matrix (NumPy, float64)."""
    return float(np.max(np.abs(np.linalg.eigvals(np.asarray(ops.convert_to_numpy(matrix),
                                                             np.float64)))))


def largest_singular_value(matrix):
    """Spectral norm ||W||_2 of a matrix (NumPy, float64)."""
    return float(np.linalg.norm(np.asarray(ops.convert_to_numpy(matrix), np.float64), ord=2))
