"""`python -m keras_vrnn.inspect`: the printed numbers are those of the
library's functions called directly, the plots are written, and bad input
gives one `error:` line, exit status 2 and no file."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_vrnn
from keras_vrnn import inspect as inspect_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, F, UNITS = 6, 3, 5


def _model(layer_cls, compile=True):
    model = keras.Sequential([
        keras.Input((T, F)),
        layer_cls(UNITS, return_sequences=True, name="rnn"),
        keras.layers.Dense(1, name="out"),
    ])
    if compile:
        model.compile("sgd", "mse")
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, T, F)).astype("float32")
    y = rng.standard_normal((4, T, 1)).astype("float32")
    np.savez(d / "data.npz", x=x, y=y, wide=np.zeros((4, T, F + 1), "float32"))
    keras.utils.set_random_seed(0)
    _model(keras_vrnn.VanillaRNN).save(d / "vanilla.keras")
    _model(keras.layers.SimpleRNN).save(d / "simple.keras")
    _model(keras.layers.SimpleRNN, compile=False).save(d / "uncompiled.keras")
    dense = keras.Sequential([keras.Input((T, F)), keras.layers.Dense(1)])
    dense.compile("sgd", "mse")
    dense.save(d / "dense.keras")
    (d / "corrupt.keras").write_bytes(b"not a zip file")
    return d, x, y


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    return subprocess.run(
        [sys.executable, "-m", "keras_vrnn.inspect", *map(str, args)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def _printed(stdout, key):
    line = next(l for l in stdout.splitlines() if l.startswith(key + ": "))
    pairs = (item.split("=") for item in line[len(key) + 2:].split(", "))
    return {name: float(value) for name, value in pairs}


def _expected(vanilla_model, x, y, kernel):
    """The numbers, from the library functions on a VanillaRNN model."""
    norms = keras_vrnn.timestep_gradient_norms(vanilla_model, x, y)["rnn"]
    last = keras_vrnn.timestep_gradient_norms(
        vanilla_model, x, y, last_step_only=True
    )["rnn"]
    return {
        "spectral_radius": keras_vrnn.initializers.spectral_radius(kernel),
        "max_singular_value": keras_vrnn.initializers.largest_singular_value(kernel),
        "factor": keras_vrnn.fit_decay_factor(norms),
        "horizon": keras_vrnn.effective_horizon(norms),
        "last_step_factor": keras_vrnn.fit_decay_factor(last),
        "last_step_horizon": keras_vrnn.effective_horizon(last),
        "lyapunov_max": keras_vrnn.lyapunov_exponents(vanilla_model, x, layer="rnn")[0],
    }


def _check(result, expected, out):
    assert result.returncode == 0, result.stderr
    printed = _printed(result.stdout, "rnn")
    assert set(printed) == set(expected)
    for name, value in expected.items():  # printed with 6 significant digits
        assert printed[name] == pytest.approx(float(value), rel=1e-5, abs=1e-12), name
    for png in ("rnn_heatmap.png", "rnn_steps_back.png"):
        with open(out / png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_vanilla_rnn_model_default_out_dir(files):
    d, x, y = files
    result = _run(d / "vanilla.keras", d / "data.npz")
    model = keras.models.load_model(d / "vanilla.keras")
    kernel = model.get_layer("rnn").cell.recurrent_kernel.numpy()
    stats = keras_vrnn.recurrent_kernel_stats(model.get_layer("rnn"))
    assert keras_vrnn.initializers.spectral_radius(kernel) == stats["spectral_radius"]
    _check(result, _expected(model, x, y, kernel), d / "vanilla_inspect")
    assert "SimpleRNN" not in result.stdout


def test_simple_rnn_model_is_measured_as_vanilla_rnn(files, tmp_path):
    d, x, y = files
    out = tmp_path / "plots"
    result = _run(d / "simple.keras", d / "data.npz", "--out", out, "--layer", "rnn")
    simple = keras.models.load_model(d / "simple.keras")
    # An independent VanillaRNN twin: same weights, same outputs.
    twin = _model(keras_vrnn.VanillaRNN)
    twin.set_weights(simple.get_weights())
    np.testing.assert_allclose(twin.predict(x, verbose=0), simple.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    kernel = simple.get_layer("rnn").cell.recurrent_kernel.numpy()
    _check(result, _expected(twin, x, y, kernel), out)
    assert "SimpleRNN ['rnn'] measured as VanillaRNN" in result.stdout


def test_as_vanilla_keeps_models_without_simple_rnn(files):
    d, _, _ = files
    model = keras.models.load_model(d / "vanilla.keras")
    assert inspect_lib.as_vanilla(model) == (model, [])


BAD = {
    "missing model": (["nope.keras", "data.npz"], "Cannot load the model"),
    "corrupt model": (["corrupt.keras", "data.npz"], "Cannot load the model"),
    "no rnn layer": (["dense.keras", "data.npz"], "No RNN layer"),
    "not compiled": (["uncompiled.keras", "data.npz"], "saved without a loss"),
    "missing key": (["vanilla.keras", "data.npz", "--y", "target"], "No array 'target'"),
    "missing data": (["vanilla.keras", "nope.npz"], "nope.npz"),
    "wrong shape": (["vanilla.keras", "data.npz", "--x", "wide"], "Received: x with shape (4, 6, 4)"),
    "unknown layer": (["vanilla.keras", "data.npz", "--layer", "rnn2"], "Received: --layer 'rnn2'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_error_line_exit_2_nothing_written(files, tmp_path, capsys, case):
    d, _, _ = files
    args, message = BAD[case]
    before = sorted(os.listdir(d))
    out = tmp_path / "out"
    code = inspect_lib.main([str(d / a) if "." in a else a for a in args] + ["--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert sorted(os.listdir(d)) == before and not out.exists()


def test_a_non_empty_out_dir_is_refused(files, tmp_path):
    d, _, _ = files
    (tmp_path / "mine.png").write_bytes(b"user's file")
    result = _run(d / "vanilla.keras", d / "data.npz", "--out", tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "output folder is not empty" in errors[0]
    assert os.listdir(tmp_path) == ["mine.png"]
    assert (tmp_path / "mine.png").read_bytes() == b"user's file"
