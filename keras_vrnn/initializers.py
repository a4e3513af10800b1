"""Recurrent-kernel initializers for studying gradient dynamics.

Back-propagation through time multiplies, once per step, the Jacobian
`diag(act'(z_t)) @ W_hh^T`. How large that product gets over many steps is set
mostly by the recurrent kernel `W_hh`: its spectral radius `rho` (largest
absolute eigenvalue) and, for non-normal matrices, its singular values. These
initializers let you pick that regime exactly:

- `ScaledOrthogonal(gain=g)`: all singular values and all |eigenvalues| equal
  `g`. `g < 1` contracts (gradients vanish geometrically, about `g` per step
  before the activation's own shrinkage), `g > 1` expands.
- `ScaledIdentity(gain=g)`: `g * I`, the IRNN initialisation of Le et al.
  (2015) for ReLU networks; with `g = 1` a ReLU RNN starts as a perfect
  integrator that neither forgets nor amplifies.
- `SpectralRadiusNormal(spectral_radius=rho)`: a Gaussian matrix rescaled so
  its spectral radius is exactly `rho` (the echo-state-network recipe).
  Non-normal: transient growth is possible even with `rho < 1`.

All are serializable Keras initializers (`keras.initializers.get` finds them by
class name once `keras_vrnn` is imported).
"""

import random as python_random

import numpy as np
import keras
from keras import ops


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(
            f"Received: {name}={value!r}. Expected a positive number "
            f"(e.g. {name}=1.0)."
        )
    return float(value)


def _check_square(shape, cls_name):
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(
            f"{cls_name} is meant for the square recurrent kernel (units, units). "
            f"Received: shape={tuple(shape)}. Use it as `recurrent_initializer`."
        )


def _numpy_rng(seed):
    """A NumPy generator seeded from the initializer's seed."""
    return np.random.default_rng(seed)


class _SeededInitializer(keras.initializers.Initializer):
    """Base for initializers that draw with NumPy so results are exact and
    backend independent (eigen-decompositions are not available in every
    backend's `ops`).

    Without a seed, the instance draws one from Python's `random` when it is
    created, as Keras' own unseeded initializers (`"orthogonal"`,
    `"glorot_uniform"`) do: `keras.utils.set_random_seed` seeds that generator,
    so it makes the weights reproducible, and without it they are fresh. The
    drawn seed is not part of the config, so a deserialized copy draws its own.
    """

    def __init__(self, seed=None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(
                f"Received: seed={seed!r}. Expected an integer or None."
            )
        self.seed = seed
        self._base_seed = (
            python_random.randint(1, int(1e9)) if seed is None else seed
        )
        self._calls = 0

    def _rng(self):
        # Distinct but reproducible draws when one initializer instance serves
        # several weights (as Keras' own seeded initializers do).
        seed = self._base_seed + self._calls
        self._calls += 1
        return _numpy_rng(seed)


@keras.saving.register_keras_serializable(package="keras_vrnn")
class ScaledOrthogonal(_SeededInitializer):
    """Orthogonal matrix times `gain`: every singular value equals `gain`.

    Regime: `gain < 1` contracting (gradients and memories decay by about
    `gain` per step), `gain = 1` norm preserving (the default `"orthogonal"`),
    `gain > 1` expanding (gradients explode unless the activation saturates).

    Args:
        gain: Positive float, the common singular value (and |eigenvalue|).
        seed: Optional integer for reproducibility. `None` (default) follows
            the global seed set by `keras.utils.set_random_seed`.

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
        a = self._rng().standard_normal(shape)
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))  # Haar-uniform orthogonal matrix
        return ops.convert_to_tensor(self.gain * q, dtype=dtype or "float32")

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_vrnn")
class ScaledIdentity(keras.initializers.Initializer):
    """`gain * I`: the IRNN initialisation (Le, Jaitly & Hinton, 2015).

    Regime: with ReLU and `gain = 1` the untrained network copies its state
    forward unchanged (gradients neither vanish nor explode while units stay
    active); `gain < 1` is a leaky integrator (contracting), `gain > 1`
    expanding.

    Args:
        gain: Positive float on the diagonal.
    """

    def __init__(self, gain=1.0):
        self.gain = _check_positive("gain", gain)

    def __call__(self, shape, dtype=None):
        _check_square(shape, type(self).__name__)
        return ops.convert_to_tensor(
            self.gain * np.eye(shape[0]), dtype=dtype or "float32"
        )

    def get_config(self):
        return {"gain": self.gain}


@keras.saving.register_keras_serializable(package="keras_vrnn")
class SpectralRadiusNormal(_SeededInitializer):
    """Gaussian matrix rescaled to an exact spectral radius `rho`.

    Regime: `spectral_radius < 1` contracting in the long run (the linear
    recurrence forgets), `> 1` expanding. The matrix is not normal, so its
    largest singular value exceeds `rho` and short-term transient growth can
    occur even when `rho < 1`.

    Args:
        spectral_radius: Positive float, the largest |eigenvalue| of the result.
        seed: Optional integer for reproducibility. `None` (default) follows
            the global seed set by `keras.utils.set_random_seed`.
    """

    def __init__(self, spectral_radius=1.0, seed=None):
        super().__init__(seed)
        self.spectral_radius = _check_positive("spectral_radius", spectral_radius)

    def __call__(self, shape, dtype=None):
        _check_square(shape, type(self).__name__)
        a = self._rng().standard_normal(shape) / np.sqrt(shape[0])
        rho = np.max(np.abs(np.linalg.eigvals(a)))
        return ops.convert_to_tensor(
            a * (self.spectral_radius / rho), dtype=dtype or "float32"
        )

    def get_config(self):
        return {"spectral_radius": self.spectral_radius, "seed": self.seed}


# `register_keras_serializable` files them as "keras_vrnn>ClassName" only;
# `keras.initializers.get("ScaledOrthogonal")` looks plain names up in the
# global custom objects, so register the plain class names there too.
keras.saving.get_custom_objects().update(
    {
        cls.__name__: cls
        for cls in (ScaledOrthogonal, ScaledIdentity, SpectralRadiusNormal)
    }
)


def spectral_radius(matrix):
    """Largest absolute eigenvalue of a square matrix (NumPy, float64)."""
    m = np.asarray(ops.convert_to_numpy(matrix), dtype=np.float64)
    return float(np.max(np.abs(np.linalg.eigvals(m))))


def largest_singular_value(matrix):
    """Spectral norm ||W||_2 of a matrix (NumPy, float64)."""
    m = np.asarray(ops.convert_to_numpy(matrix), dtype=np.float64)
    return float(np.linalg.norm(m, ord=2))
