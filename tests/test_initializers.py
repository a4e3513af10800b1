"""Tests for keras_vrnn.initializers: exact spectra, seeds, serialization."""

import keras
import numpy as np
import pytest

import keras_vrnn  # noqa: F401  (registers the initializers by name)
from keras_vrnn.initializers import ScaledIdentity
from keras_vrnn.initializers import ScaledOrthogonal
from keras_vrnn.initializers import SpectralRadiusNormal
from keras_vrnn.initializers import largest_singular_value
from keras_vrnn.initializers import spectral_radius

to_np = keras.ops.convert_to_numpy


@pytest.mark.parametrize("gain", [0.5, 1.0, 1.7])
@pytest.mark.parametrize("units", [1, 4, 16])
def test_scaled_orthogonal(gain, units):
    w = to_np(ScaledOrthogonal(gain=gain, seed=0)((units, units)))
    w = w.astype(np.float64)
    assert w.shape == (units, units)
    np.testing.assert_allclose(w.T @ w, gain**2 * np.eye(units), atol=1e-5)
    np.testing.assert_allclose(w @ w.T, gain**2 * np.eye(units), atol=1e-5)
    np.testing.assert_allclose(
        np.linalg.svd(w, compute_uv=False), gain, rtol=1e-5
    )
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(w)), gain, rtol=1e-5)
    assert spectral_radius(w) == pytest.approx(gain, rel=1e-5)
    assert largest_singular_value(w) == pytest.approx(gain, rel=1e-5)


@pytest.mark.parametrize("gain", [0.25, 1.0, 3.0])
def test_scaled_identity(gain):
    w = to_np(ScaledIdentity(gain=gain)((5, 5)))
    np.testing.assert_array_equal(w, np.float32(gain) * np.eye(5, dtype="float32"))


@pytest.mark.parametrize("rho", [0.5, 0.9, 1.0, 1.3])
@pytest.mark.parametrize("units", [2, 8, 32])
def test_spectral_radius_normal(rho, units):
    w = to_np(SpectralRadiusNormal(spectral_radius=rho, seed=1)((units, units)))
    eig = np.abs(np.linalg.eigvals(w.astype(np.float64)))
    assert abs(eig.max() - rho) <= 1e-5 * rho
    assert spectral_radius(w) == pytest.approx(rho, rel=1e-5)
    if units > 2:  # non-normal: ||W||_2 exceeds the spectral radius
        assert largest_singular_value(w) > rho * (1 + 1e-3)
        assert not np.allclose(w, w.T)


@pytest.mark.parametrize(
    "make",
    [
        lambda s: ScaledOrthogonal(gain=0.9, seed=s),
        lambda s: SpectralRadiusNormal(spectral_radius=0.9, seed=s),
    ],
    ids=["ScaledOrthogonal", "SpectralRadiusNormal"],
)
def test_seeds_are_reproducible(make):
    a = to_np(make(7)((6, 6)))
    b = to_np(make(7)((6, 6)))
    c = to_np(make(8)((6, 6)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # One instance serving two weights draws two different, reproducible
    # matrices (as Keras' seeded initializers do).
    init = make(7)
    first, second = to_np(init((6, 6))), to_np(init((6, 6)))
    np.testing.assert_array_equal(first, a)
    assert not np.allclose(first, second)
    again = make(7)
    again((6, 6))
    np.testing.assert_array_equal(to_np(again((6, 6))), second)
    # Unseeded: fresh draws.
    unseeded = make(None)
    assert not np.allclose(to_np(unseeded((6, 6))), to_np(unseeded((6, 6))))


@pytest.mark.parametrize(
    "cls", [ScaledOrthogonal, SpectralRadiusNormal], ids=lambda c: c.__name__
)
def test_unseeded_follows_set_random_seed(cls):
    # Like Keras' own unseeded initializers ("orthogonal", "glorot_uniform"):
    # keras.utils.set_random_seed makes them reproducible, and a model built
    # twice after the same global seed gets the same weights.
    def draw(global_seed):
        keras.utils.set_random_seed(global_seed)
        init = cls(0.9)
        return to_np(init((6, 6))), to_np(init((6, 6)))

    first, second = draw(1)
    again_first, again_second = draw(1)
    np.testing.assert_array_equal(first, again_first)
    np.testing.assert_array_equal(second, again_second)
    assert not np.allclose(first, second)  # one instance, two weights
    other, _ = draw(2)
    assert not np.allclose(first, other)
    # Through layers, as `recurrent_initializer` (by instance and by name).
    for identifier in (cls(0.9), cls.__name__):
        kernels = []
        for _ in range(2):
            keras.utils.set_random_seed(3)
            layer = keras_vrnn.VanillaRNN(
                5,
                recurrent_initializer=(
                    cls(0.9) if not isinstance(identifier, str) else identifier
                ),
            )
            layer.build((2, 3, 4))
            kernels.append(to_np(layer.cell.recurrent_kernel))
        np.testing.assert_array_equal(kernels[0], kernels[1])
    # An explicit seed is its own: the global seed does not change it.
    keras.utils.set_random_seed(1)
    seeded = to_np(cls(0.9, seed=7)((6, 6)))
    keras.utils.set_random_seed(2)
    np.testing.assert_array_equal(to_np(cls(0.9, seed=7)((6, 6))), seeded)
    assert not np.allclose(seeded, first)
    # Unseeded configs stay unseeded: a clone draws from the global seed too.
    keras.utils.set_random_seed(1)
    config = cls(0.9).get_config()
    assert config["seed"] is None
    clone = cls.from_config(config)
    assert clone.get_config() == config
    keras.utils.set_random_seed(1)
    np.testing.assert_array_equal(to_np(cls.from_config(config)((6, 6))), first)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_dtype(dtype):
    for init in (
        ScaledOrthogonal(seed=0), ScaledIdentity(), SpectralRadiusNormal(seed=0)
    ):
        w = init((3, 3), dtype=dtype)
        assert keras.backend.standardize_dtype(w.dtype) == dtype


@pytest.mark.parametrize(
    "init",
    [
        ScaledOrthogonal(gain=0.8, seed=3),
        ScaledIdentity(gain=1.5),
        SpectralRadiusNormal(spectral_radius=1.1, seed=4),
    ],
    ids=lambda i: type(i).__name__,
)
def test_config_round_trip_and_get_by_name(init):
    config = init.get_config()
    clone = type(init).from_config(config)
    assert clone.get_config() == config
    # The clone draws the same matrix as a fresh copy of the original.
    fresh = type(init)(**config)
    np.testing.assert_array_equal(to_np(clone((4, 4))), to_np(fresh((4, 4))))
    # keras.initializers.get finds them by class name after `import keras_vrnn`,
    # and through the serialized form.
    by_name = keras.initializers.get(type(init).__name__)
    assert type(by_name) is type(init)
    serialized = keras.initializers.serialize(init)
    restored = keras.initializers.get(serialized)
    assert type(restored) is type(init)
    assert restored.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(init)
    )
    assert restored.get_config() == config


def test_used_as_recurrent_initializer():
    layer = keras_vrnn.VanillaRNN(
        6, recurrent_initializer=ScaledOrthogonal(0.5, seed=0)
    )
    layer.build((2, 3, 4))
    U = layer.cell.recurrent_kernel.numpy().astype(np.float64)
    np.testing.assert_allclose(U.T @ U, 0.25 * np.eye(6), atol=1e-5)
    layer = keras_vrnn.VanillaRNN(6, recurrent_initializer="ScaledIdentity")
    layer.build((2, 3, 4))
    np.testing.assert_array_equal(layer.cell.recurrent_kernel.numpy(), np.eye(6))
    layer = keras_vrnn.VanillaRNN(
        6, recurrent_initializer=SpectralRadiusNormal(0.7, seed=2)
    )
    layer.build((2, 3, 4))
    rho = spectral_radius(layer.cell.recurrent_kernel.numpy())
    assert rho == pytest.approx(0.7, rel=1e-5)


@pytest.mark.parametrize("cls", [ScaledOrthogonal, ScaledIdentity])
@pytest.mark.parametrize("gain", [0, -1.0, "1", None, True, float("nan")])
def test_bad_gain(cls, gain):
    with pytest.raises(ValueError) as excinfo:
        cls(gain=gain)
    message = str(excinfo.value)
    assert "Received" in message and "gain" in message, message


@pytest.mark.parametrize("rho", [0, -0.5, "1", None])
def test_bad_spectral_radius(rho):
    with pytest.raises(ValueError) as excinfo:
        SpectralRadiusNormal(spectral_radius=rho)
    message = str(excinfo.value)
    assert "Received" in message and "spectral_radius" in message, message


@pytest.mark.parametrize("cls", [ScaledOrthogonal, SpectralRadiusNormal])
@pytest.mark.parametrize("seed", ["1", 1.5, True])
def test_bad_seed(cls, seed):
    with pytest.raises(ValueError) as excinfo:
        cls(seed=seed)
    assert "Received" in str(excinfo.value) and "seed" in str(excinfo.value)


@pytest.mark.parametrize(
    "cls", [ScaledOrthogonal, ScaledIdentity, SpectralRadiusNormal]
)
@pytest.mark.parametrize("shape", [(3, 4), (4,), (2, 2, 2)])
def test_non_square_shape_rejected(cls, shape):
    with pytest.raises(ValueError) as excinfo:
        cls()(shape)
    message = str(excinfo.value)
    assert "Received" in message and str(shape) in message, message
