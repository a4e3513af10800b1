"""Tests for keras_vrnn.GradientNormCallback: TensorBoard event files (read
back with TensorBoard's own reader and served by a real `tensorboard`
process), the NPZ and CSV files, step counting, non-finite gradients and
argument validation, on the Keras backend the tests run on; and the event
files written where TensorFlow cannot be imported."""

import csv
import importlib.util
import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_vrnn  # noqa: E402
from keras_vrnn import callbacks as callbacks_lib  # noqa: E402

T, F = 6, 3
KEYS = ["rnn", "bi/forward", "bi/backward"]
PREFIXES = {"rnn": "rnn", "bi/forward": "bi.forward", "bi/backward": "bi.backward"}
SCALARS = [
    "grad_norm_first", "grad_norm_middle", "grad_norm_last",
    "grad_norm_first_last_ratio", "grad_norm_decay_factor", "grad_norm_horizon",
    "last_step_grad_norm_decay_factor", "last_step_grad_norm_horizon",
    "lyapunov_max", "spectral_radius", "nonfinite",
]
HISTOGRAMS = ["log10_grad_norm", "lyapunov_spectrum"]
IMAGE = "last_step_grad_norm_heatmap"
# Keras' own TensorBoard callback, next to ours, needs TensorFlow.
HAVE_TF = importlib.util.find_spec("tensorflow") is not None


def expected_tags(prefixes=PREFIXES.values()):
    tags = {"custom_scalars__config__"}
    for p in prefixes:
        tags |= {f"{p}/{s}" for s in SCALARS}
        tags |= {f"{p}/{h}" for h in HISTOGRAMS} | {f"{p}/{IMAGE}"}
    return tags


def make_model(seed=0, **compile_kwargs):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((T, F))
    h = keras_vrnn.VanillaRNN(4, return_sequences=True, name="rnn")(inputs)
    h = keras.layers.Bidirectional(
        keras.layers.RNN(keras_vrnn.VanillaRNNCell(3)), name="bi"
    )(h)
    outputs = keras.layers.Dense(1)(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", **compile_kwargs)
    return model


def make_data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, F)).astype("float32")
    y = rng.standard_normal((n, 1)).astype("float32")
    return x, y


def _accumulator(path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    guidance = {
        k: 0
        for k in (ea.COMPRESSED_HISTOGRAMS, ea.IMAGES, ea.AUDIO, ea.SCALARS,
                  ea.HISTOGRAMS, ea.TENSORS)
    }
    acc = ea.EventAccumulator(str(path), size_guidance=guidance)
    acc.Reload()
    return acc


def _our_event_file(train_dir):
    """The event file this callback wrote (Keras' TensorBoard writes others)."""
    ours = []
    for path in sorted(Path(train_dir).glob("events.out.tfevents.*")):
        if "custom_scalars__config__" in _accumulator(path).Tags()["tensors"]:
            ours.append(path)
    assert len(ours) == 1, ours
    return ours[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One small fit shared by the tests below: 2 epochs of 4 batches, a log
    every 4 batches (steps 0, 4, 8), next to Keras' own TensorBoard callback
    in the same log_dir (where TensorFlow is installed)."""
    log_dir = tmp_path_factory.mktemp("logs") / "run1"
    x, y = make_data()
    model = make_model()
    cb = keras_vrnn.GradientNormCallback(log_dir, (x[:8], y[:8]), every_n_batches=4)
    callbacks = [cb]
    if HAVE_TF:
        callbacks.insert(0, keras.callbacks.TensorBoard(log_dir, update_freq="batch"))
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=callbacks)
    return {"log_dir": log_dir, "model": model, "x": x, "y": y, "callback": cb}


def test_event_file_has_exactly_the_expected_tags(run):
    acc = _accumulator(_our_event_file(run["log_dir"] / "train"))
    tags = acc.Tags()
    assert set(tags["tensors"]) == expected_tags()
    assert not tags["scalars"] and not tags["images"] and not tags["histograms"]
    plugin = lambda tag: acc.SummaryMetadata(tag).plugin_data.plugin_name  # noqa: E731
    for p in PREFIXES.values():
        for s in SCALARS:
            assert plugin(f"{p}/{s}") == "scalars"
            assert [e.step for e in acc.Tensors(f"{p}/{s}")] == [0, 4, 8]
        for h in HISTOGRAMS:
            assert plugin(f"{p}/{h}") == "histograms"
        assert plugin(f"{p}/{IMAGE}") == "images"
        images = acc.Tensors(f"{p}/{IMAGE}")
        assert [e.step for e in images] == [0, 4, 8]
        from tensorboard.util import tensor_util

        width, height, png = tensor_util.make_ndarray(images[-1].tensor_proto)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert int(width) > 100 and int(height) > 100
    assert plugin("custom_scalars__config__") == "custom_scalars"

    # Keras' TensorBoard logs land in the same run directory: one dashboard.
    shared = _accumulator(run["log_dir"] / "train").Tags()["tensors"]
    assert ("epoch_loss" in shared) == HAVE_TF and expected_tags() <= set(shared)


def test_custom_scalars_layout(run):
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.util import tensor_util

    acc = _accumulator(_our_event_file(run["log_dir"] / "train"))
    (event,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensor_util.make_ndarray(event.tensor_proto).item())
    assert [c.title for c in layout.category] == [
        f"BPTT gradient norms: {key}" for key in KEYS
    ]
    scalar_tags = {t for t in expected_tags() if t.rsplit("/", 1)[-1] in SCALARS}
    for category, key in zip(layout.category, KEYS):
        matched = set()
        for chart in category.chart:
            for regex in chart.multiline.tag:
                hits = {t for t in scalar_tags if re.match(regex, t)}
                assert hits, regex
                matched |= hits
        # Each category holds exactly its own layer's scalars.
        assert matched == {f"{PREFIXES[key]}/{s}" for s in SCALARS}


def test_npz_csv_and_events_agree(run):
    from tensorboard.util import tensor_util

    log_dir = run["log_dir"]
    data = np.load(log_dir / "gradient_norms.npz")
    assert list(data["keys"]) == KEYS
    np.testing.assert_array_equal(data["steps"], [0, 4, 8])
    assert data["steps"].dtype == np.int64
    assert data.files == ["steps", "keys", "direct", "horizon_threshold"] + [
        f"{key}/{f}" for key in KEYS for f in callbacks_lib.FIELDS
    ]
    units = {"rnn": 4, "bi/forward": 3, "bi/backward": 3}
    for key in KEYS:
        assert data[f"{key}/mean_norms"].shape == (3, T)
        assert data[f"{key}/last_step_mean_norms"].shape == (3, T)
        assert data[f"{key}/lyapunov"].shape == (3, units[key])
        for field in ("spectral_radius", "factor", "horizon", "first_last_ratio",
                      "nonfinite", "max_singular_value", "last_step_factor",
                      "last_step_horizon"):
            assert data[f"{key}/{field}"].shape == (3,)
        np.testing.assert_array_equal(data[f"{key}/nonfinite"], 0.0)
        for view in ("", "last_step_"):
            m = data[f"{key}/{view}mean_norms"]
            assert np.all(np.isfinite(m)) and np.all(m > 0)
            # The derived numbers are functions of the stored mean norms.
            for i in range(3):
                assert data[f"{key}/{view}factor"][i] == keras_vrnn.fit_decay_factor(
                    m[i])
                assert data[f"{key}/{view}horizon"][i] == keras_vrnn.effective_horizon(
                    m[i])
        m = data[f"{key}/mean_norms"]
        np.testing.assert_allclose(data[f"{key}/first_last_ratio"], m[:, 0] / m[:, -1])
        assert np.all(np.diff(data[f"{key}/lyapunov"], axis=1) <= 0)

    # The last log (step 8) is the model after training: recompute it.
    model, x, y = run["model"], run["x"], run["y"]
    norms = keras_vrnn.timestep_gradient_norms(model, x[:8], y[:8])
    last = keras_vrnn.timestep_gradient_norms(model, x[:8], y[:8], last_step_only=True)
    for key in KEYS:
        np.testing.assert_allclose(
            data[f"{key}/mean_norms"][-1], norms[key].mean(0), rtol=1e-6
        )
        np.testing.assert_allclose(
            data[f"{key}/last_step_mean_norms"][-1], last[key].mean(0), rtol=1e-6
        )
        exponents = keras_vrnn.lyapunov_exponents(model, x[:4], layer=key)
        np.testing.assert_allclose(data[f"{key}/lyapunov"][-1], exponents, rtol=1e-9)
    layer = model.get_layer("bi").backward_layer
    np.testing.assert_allclose(
        data["bi/backward/spectral_radius"][-1],
        keras_vrnn.recurrent_kernel_stats(layer)["spectral_radius"],
    )

    # TensorBoard scalars == NPZ (float32 in the event file).
    acc = _accumulator(_our_event_file(log_dir / "train"))
    value = lambda tag: np.array(  # noqa: E731
        [tensor_util.make_ndarray(e.tensor_proto).item() for e in acc.Tensors(tag)]
    )
    for key in KEYS:
        p, m = PREFIXES[key], data[f"{key}/mean_norms"]
        pairs = [
            ("grad_norm_first", m[:, 0]),
            ("grad_norm_middle", m[:, T // 2]),
            ("grad_norm_last", m[:, -1]),
            ("grad_norm_decay_factor", data[f"{key}/factor"]),
            ("grad_norm_horizon", data[f"{key}/horizon"]),
            ("last_step_grad_norm_decay_factor", data[f"{key}/last_step_factor"]),
            ("last_step_grad_norm_horizon", data[f"{key}/last_step_horizon"]),
            ("lyapunov_max", data[f"{key}/lyapunov"][:, 0]),
            ("spectral_radius", data[f"{key}/spectral_radius"]),
            ("grad_norm_first_last_ratio", data[f"{key}/first_last_ratio"]),
            ("nonfinite", data[f"{key}/nonfinite"]),
        ]
        for tag, expected in pairs:
            np.testing.assert_allclose(value(f"{p}/{tag}"), expected, rtol=1e-6)

    # CSV: long format, the same numbers.
    with open(log_dir / "gradient_norms.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "layer", "timestep", "mean_norm"]
    rows = rows[1:]
    assert len(rows) == 3 * len(KEYS) * T
    for step, layer, t, value_ in rows:
        i = [0, 4, 8].index(int(step))
        assert float(value_) == data[f"{layer}/mean_norms"][i, int(t)]


def test_tensorboard_server_serves_the_tags(run, tmp_path):
    """A real `tensorboard` process serves our scalars, images and histograms
    next to Keras' own logs, in the one run 'train'."""
    binary = Path(sys.executable).parent / "tensorboard"
    assert binary.exists(), binary
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    log = open(tmp_path / "tensorboard.log", "wb")
    proc = subprocess.Popen(
        [str(binary), "--logdir", str(run["log_dir"]), "--port", str(port),
         "--host", "127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    scalars = {f"{p}/{s}" for p in PREFIXES.values() for s in SCALARS}
    images = {f"{p}/{IMAGE}" for p in PREFIXES.values()}
    histograms = {f"{p}/log10_grad_norm" for p in PREFIXES.values()}

    def get(route):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=5) as r:
            return json.loads(r.read().decode())

    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "tensorboard.log").read_text()
            try:
                s_tags = get("/data/plugin/scalars/tags").get("train", {})
                i_tags = get("/data/plugin/images/tags").get("train", {})
                if scalars <= set(s_tags) and images <= set(i_tags):
                    break
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline, "tensorboard did not serve the tags"
            time.sleep(0.5)
        assert ("epoch_loss" in s_tags) == HAVE_TF  # Keras' TensorBoard, same run
        assert histograms <= set(get("/data/plugin/histograms/tags").get("train", {}))
        points = get("/data/plugin/scalars/scalars?run=train&tag=rnn%2Fgrad_norm_last")
        assert [p[1] for p in points] == [0, 4, 8]
        layout = get("/data/plugin/custom_scalars/layout")
        assert [c["title"] for c in layout["category"]] == [
            f"BPTT gradient norms: {key}" for key in KEYS
        ]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_plots_from_callback_npz(run, tmp_path):
    from matplotlib import image as mpimg

    npz = run["log_dir"] / "gradient_norms.npz"
    for key in KEYS:
        path = tmp_path / f"h_{key.replace('/', '_')}.png"
        png = keras_vrnn.plots.plot_gradient_heatmap(npz, path, layer=key)
        assert mpimg.imread(png).ndim == 3
    png = keras_vrnn.plots.plot_norms_vs_steps_back(npz, tmp_path / "s.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_steps_continue_across_fits_and_steps_per_execution(tmp_path):
    # torch runs one batch per execution only.
    pairs = keras.backend.backend() != "torch"
    x, y = make_data()
    model = make_model(seed=1, steps_per_execution=2 if pairs else 1)
    cb = keras_vrnn.GradientNormCallback(
        tmp_path, (x[:4], y[:4]), every_n_batches=3, layers=["rnn"]
    )
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[cb])
    # Batches end in pairs (2, 4, 6, 8): multiples of 3 are crossed at 4 and 6.
    steps = np.load(tmp_path / "gradient_norms.npz")["steps"]
    np.testing.assert_array_equal(steps, [0, 4, 6] if pairs else [0, 3, 6])
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[cb])  # batches 9..12
    data = np.load(tmp_path / "gradient_norms.npz")
    expected = [0, 4, 6, 8, 10, 12] if pairs else [0, 3, 6, 8, 9, 12]
    np.testing.assert_array_equal(data["steps"], expected)  # 8: train begin
    assert list(data["keys"]) == ["rnn"]  # `layers` selects
    assert data["rnn/mean_norms"].shape == (6, T)
    files = list((tmp_path / "train").glob("events.out.tfevents.*"))
    tags = set()
    for path in files:
        tags |= set(_accumulator(path).Tags()["tensors"])
    assert tags == expected_tags(["rnn"])


def test_layers_selects_bidirectional_by_name(tmp_path):
    x, y = make_data(n=4)
    model = make_model(seed=2)
    cb = keras_vrnn.GradientNormCallback(
        tmp_path, (x, y), every_n_batches=100, layers="bi"
    )
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[cb])
    data = np.load(tmp_path / "gradient_norms.npz")
    assert list(data["keys"]) == ["bi/forward", "bi/backward"]
    np.testing.assert_array_equal(data["steps"], [0])

    bad = keras_vrnn.GradientNormCallback(tmp_path / "b", (x, y), layers=["nope"])
    match = r"no vanilla RNN layer 'nope'.*Received: layers=\['nope'\]"
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[bad])


def test_nonfinite_gradients_are_logged_and_fit_completes(tmp_path, caplog):
    """relu with W_hh = 1e30 * I: the state overflows after a few steps, the
    loss and the gradients are inf / NaN. The callback flags it, keeps NaN in
    the NPZ and the fit runs to the end."""
    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal((8, 12, 2))).astype("float32")
    y = rng.standard_normal((8, 1)).astype("float32")
    model = keras.Sequential([
        keras.Input((12, 2)),
        keras_vrnn.VanillaRNN(
            3, activation="relu", name="rnn",
            kernel_initializer="ones",
            recurrent_initializer=keras_vrnn.initializers.ScaledIdentity(gain=1e30),
        ),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer="sgd", loss="mse")
    cb = keras_vrnn.GradientNormCallback(tmp_path, (x, y), every_n_batches=1)
    with caplog.at_level(logging.WARNING, logger="keras_vrnn"):
        history = model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[cb])
    assert len(history.history["loss"]) == 1  # the fit completed
    data = np.load(tmp_path / "gradient_norms.npz")
    np.testing.assert_array_equal(data["steps"], [0, 1, 2])
    np.testing.assert_array_equal(data["rnn/nonfinite"], [1.0, 1.0, 1.0])
    assert not np.all(np.isfinite(data["rnn/mean_norms"]))
    assert "non-finite BPTT gradient norms at step 0" in caplog.text
    from tensorboard.util import tensor_util

    acc = _accumulator(_our_event_file(tmp_path / "train"))
    assert set(acc.Tags()["tensors"]) == expected_tags(["rnn"])
    flags = [
        tensor_util.make_ndarray(e.tensor_proto).item()
        for e in acc.Tensors("rnn/nonfinite")
    ]
    assert flags == [1.0, 1.0, 1.0]
    rows = (tmp_path / "gradient_norms.csv").read_text().splitlines()
    assert any(r.endswith(",nan") or r.endswith(",inf") for r in rows[1:])


_NO_TF_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError
    import numpy as np
    import keras
    import keras_vrnn
    sys.path.insert(0, sys.argv[2])
    from test_callback import make_data, make_model

    x, y = make_data()
    model = make_model()
    cb = keras_vrnn.GradientNormCallback(sys.argv[1], (x[:8], y[:8]), every_n_batches=4)
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[cb])
    assert sys.modules["tensorflow"] is None, "tensorflow was imported"
    print(keras.backend.backend())
    """
)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_event_files_without_tensorflow(tmp_path, backend):
    """With `import tensorflow` failing, a fit on JAX or torch writes the
    same event file: every tag, plugin and step, read back here."""
    pytest.importorskip(backend)
    env = dict(os.environ, KERAS_BACKEND=backend)
    done = subprocess.run(
        [sys.executable, "-c", _NO_TF_SCRIPT, str(tmp_path), str(Path(__file__).parent)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == backend
    acc = _accumulator(_our_event_file(tmp_path / "train"))
    assert set(acc.Tags()["tensors"]) == expected_tags()
    plugin = lambda tag: acc.SummaryMetadata(tag).plugin_data.plugin_name  # noqa: E731
    for p in PREFIXES.values():
        assert {plugin(f"{p}/{s}") for s in SCALARS} == {"scalars"}
        assert {plugin(f"{p}/{h}") for h in HISTOGRAMS} == {"histograms"}
        assert plugin(f"{p}/{IMAGE}") == "images"
        assert [e.step for e in acc.Tensors(f"{p}/grad_norm_last")] == [0, 4, 8]
    assert plugin("custom_scalars__config__") == "custom_scalars"
    with np.load(tmp_path / "gradient_norms.npz") as data:
        assert data["steps"].tolist() == [0, 4, 8] and list(data["keys"]) == KEYS


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(log_dir=None), "Received: log_dir=None"),
        (dict(log_dir=""), "Received: log_dir=''"),
        (dict(data=np.zeros((4, T, F))), "Received: data of type ndarray"),
        (dict(data=(1, 2, 3, 4)), "Received: data of type tuple of length 4"),
        (
            dict(data=(np.zeros((4, T, F)), np.zeros((3, 1)))),
            "Received: x batch size 4, y batch size 3",
        ),
        (
            dict(data=(np.zeros((4, T, F)), np.zeros((4, 1)), np.ones(2))),
            "sample_weight batch size 2",
        ),
        (dict(every_n_batches=0), "Received: every_n_batches=0"),
        (dict(every_n_batches=2.5), "Received: every_n_batches=2.5"),
        (dict(every_n_batches=True), "Received: every_n_batches=True"),
        (dict(layers=[]), r"Received: layers=\[\]"),
        (dict(layers=[3]), r"Received: layers=\[3\]"),
        (dict(direct="yes"), "Received: direct='yes'"),
    ],
)
def test_argument_validation(tmp_path, kwargs, match):
    args = dict(log_dir=tmp_path, data=(np.zeros((4, T, F)), np.zeros((4, 1))))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        keras_vrnn.GradientNormCallback(**args)


def test_log_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="not a directory. Received: log_dir="):
        keras_vrnn.GradientNormCallback(path, (np.zeros((2, T, F)), np.zeros((2, 1))))


def test_tag_prefix():
    assert callbacks_lib.tag_prefix("vanilla_rnn") == "vanilla_rnn"
    assert callbacks_lib.tag_prefix("bi/forward") == "bi.forward"
    assert callbacks_lib.tag_prefix("a b/c:d") == "a_b.c_d"


# ---------------------------------------------------------------------------
# Append-only storage: the NPZ file grows in place; a log's cost is constant
# ---------------------------------------------------------------------------


def test_growing_npz_reads_back_with_np_load_and_zipfile(tmp_path):
    import zipfile
    import zlib

    a, b = os.urandom(1000), os.urandom(77)
    combined = callbacks_lib._multmodp(callbacks_lib._shift(len(b)), zlib.crc32(a))
    assert combined ^ zlib.crc32(b) == zlib.crc32(a + b)
    path = tmp_path / "g.npz"
    arrays = {
        "steps": np.array([0], np.int64), "keys": np.array(["a", "b/c"]),
        "direct": np.asarray(False), "a/m": np.ones((1, 5)), "a/s": np.array([2.0]),
    }
    store = callbacks_lib._GrowingNpz(path, arrays, ["steps", "a/m", "a/s"], 4)
    for i in range(1, 11):  # room for 4, 8, 16 rows: two rewrites
        store.append({"steps": i, "a/m": np.arange(5.0) * i, "a/s": 3.0 * i})
        with np.load(path) as data:
            assert data.files == ["steps", "keys", "direct", "a/m", "a/s"]
            np.testing.assert_array_equal(data["steps"], np.arange(i + 1))
            assert data["steps"].dtype == np.int64
            np.testing.assert_array_equal(data["a/m"][1:], np.outer(
                np.arange(1, i + 1), np.arange(5.0)))
            np.testing.assert_array_equal(data["a/s"][1:], 3.0 * np.arange(1, i + 1))
            assert list(data["keys"]) == ["a", "b/c"] and not data["direct"]
        with zipfile.ZipFile(path) as z:
            assert z.testzip() is None  # every CRC-32 and size is right
    loaded = keras_vrnn.plots.load_gradient_norms(path)
    assert loaded["keys"] == ["a", "b/c"] and loaded["layers"]["a"]["m"].shape == (11, 5)


def _synthetic(current):
    """A copy of one log's measurements, as `_record` takes them."""
    keep = ("values", "mean_norms", "last_step_mean_norms", "spectral_radius",
            "max_singular_value", "nonfinite", "lyapunov")
    return {key: {f: c[f] for f in keep} for key, c in current.items()}


def test_a_log_costs_the_same_at_step_1000_as_at_step_10(tmp_path):
    """Many synthetic logs (the measured numbers of one real log, recorded
    again): a log at about the 1,000th costs what one at about the 10th does,
    in time and in bytes: the NPZ file keeps its size (no rewrite while the
    room lasts) and the CSV file grows by the same rows. Two callbacks, one
    ~10 logs in and one ~1,000, log in turns, so a change of the machine's
    load hits both; medians of 21 logs each."""
    x, y = make_data(n=4)
    model = make_model(seed=4)
    early, late = (
        keras_vrnn.GradientNormCallback(tmp_path / name, (x, y), every_n_batches=1)
        for name in ("early", "late")
    )
    for cb in (early, late):
        cb.set_model(model)
    recorded = []
    early._record = lambda step, current: recorded.append(_synthetic(current))
    early._log(0)
    del early._record
    current = recorded[0]
    late._start(list(current))
    storage = []  # seconds spent writing the NPZ and CSV files, this log

    def timed(write):
        def run(*args, **kwargs):
            start = time.perf_counter()
            write(*args, **kwargs)
            storage[-1] += time.perf_counter() - start
        return run

    late._write_summaries = lambda step, current: None  # only to get far fast
    for step in range(1, 1000):
        late._record(step, _synthetic(current))
    del late._write_summaries
    for step in range(1, 10):
        early._record(step, _synthetic(current))
    cost, bytes_ = {early: [], late: []}, {early: [], late: []}
    for cb in (early, late):
        cb._write_csv, cb._npz.append = timed(cb._write_csv), timed(cb._npz.append)
    for i in range(21):
        for cb in (early, late) if i % 2 else (late, early):
            step = cb._last_logged + 1
            npz, csv_path = Path(cb.npz_path), Path(cb.csv_path)
            sizes = npz.stat().st_size, csv_path.stat().st_size
            storage.append(0.0)
            start = time.perf_counter()
            cb._record(step, _synthetic(current))
            cost[cb].append((time.perf_counter() - start, storage[-1]))
            # One CSV row per key and timestep, each starting with the step.
            digits = len(str(step)) * len(KEYS) * T
            bytes_[cb].append((npz.stat().st_size - sizes[0],
                               csv_path.stat().st_size - sizes[1] - digits))
    (e_all, e_files), (l_all, l_files) = (np.median(cost[cb], 0) for cb in cost)
    print(f"median seconds per log (all; NPZ and CSV only): step ~10 {e_all:.4f}; "
          f"{e_files:.5f}, step ~1000 {l_all:.4f}; {l_files:.5f}")
    assert l_all <= 1.5 * e_all, (e_all, l_all)
    # The files alone take ~1 ms: 0.5 ms of slack for a loaded machine's timer.
    assert l_files <= 1.5 * e_files + 5e-4, (e_files, l_files)
    assert set(bytes_[early]) == set(bytes_[late]) == {bytes_[early][0]}
    assert bytes_[early][0][0] == 0  # the NPZ file is written in place
    with np.load(late.npz_path) as data:
        assert data["steps"].tolist() == list(range(1, 1021))
        assert data["rnn/last_step_mean_norms"].shape == (1020, T)
    assert [step for step, _ in late._heatmap] == list(range(1021 - 64, 1021))


def test_recompiled_model_is_measured_with_its_new_loss(tmp_path):
    x, y = make_data(n=8)
    model = make_model(seed=5)
    cb = keras_vrnn.GradientNormCallback(tmp_path, (x, y), every_n_batches=100)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mae")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    fresh = make_model(seed=5)
    fresh.set_weights(model.get_weights())
    fresh.compile(optimizer="sgd", loss="mae")
    with np.load(tmp_path / "gradient_norms.npz") as data:
        assert data["steps"].tolist() == [0, 1]
        for view, last_step_only in (("", False), ("last_step_", True)):
            expected = keras_vrnn.timestep_gradient_norms(
                fresh, x, y, last_step_only=last_step_only)
            for key in KEYS:
                np.testing.assert_allclose(
                    data[f"{key}/{view}mean_norms"][-1], expected[key].mean(0),
                    rtol=1e-6)
