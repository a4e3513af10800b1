"""Tests for keras_vrnn.plots: PNG files from a gradient_norms.npz."""

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_npz(path, keys=("rnn", "bi/forward"), steps=(0, 50, 100), timesteps=12):
    """A file in the layout GradientNormCallback writes."""
    k = np.arange(timesteps - 1, -1, -1)
    arrays = {"steps": np.asarray(steps, np.int64), "keys": np.asarray(keys, dtype=str)}
    for i, key in enumerate(keys):
        rows = np.stack([(0.5 + 0.2 * j + 0.1 * i) ** k for j in range(len(steps))])
        arrays[f"{key}/mean_norms"] = rows
        for field in ("spectral_radius", "factor", "horizon"):
            arrays[f"{key}/{field}"] = np.ones(len(steps))
    np.savez(path, **arrays)
    return path


def assert_png(path):
    from matplotlib import image as mpimg

    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # not a blank canvas


def test_plot_gradient_heatmap(tmp_path):
    from keras_vrnn import plots

    npz = write_npz(tmp_path / "gradient_norms.npz")
    out = tmp_path / "sub" / "dir" / "heatmap.png"  # parents are created
    assert plots.plot_gradient_heatmap(npz, out) == out
    assert_png(out)
    out2 = str(tmp_path / "heatmap_bi.png")
    assert plots.plot_gradient_heatmap(str(npz), out2, layer="bi/forward") == out2
    assert_png(out2)


def test_plot_norms_vs_steps_back(tmp_path):
    from keras_vrnn import plots

    npz = write_npz(tmp_path / "g.npz")
    out = tmp_path / "curves.png"
    assert plots.plot_norms_vs_steps_back(npz, out) == out
    assert_png(out)
    assert plots.plot_norms_vs_steps_back(npz, tmp_path / "c2.png", layer="bi/forward")
    assert_png(tmp_path / "c2.png")


def test_zero_and_nonfinite_values(tmp_path):
    """Masked (zero), NaN and inf norms, even a whole NaN row, still plot."""
    from keras_vrnn import plots

    npz = tmp_path / "bad.npz"
    mean = np.array(
        [[np.nan] * 5, [1.0, 0.0, np.inf, 0.1, 1e-3], [1e30, 1e10, 1.0, np.nan, 2.0]]
    )
    keys = np.array(["rnn"])
    np.savez(npz, steps=np.array([0, 1, 2]), keys=keys, **{"rnn/mean_norms": mean})
    assert_png(plots.plot_gradient_heatmap(npz, tmp_path / "h.png"))
    assert_png(plots.plot_norms_vs_steps_back(npz, tmp_path / "s.png"))
    np.savez(npz, steps=np.array([0]), keys=np.array(["rnn"]),
             **{"rnn/mean_norms": np.full((1, 4), np.nan)})
    assert_png(plots.plot_gradient_heatmap(npz, tmp_path / "h2.png"))
    png = plots.plot_norms_vs_steps_back(npz, tmp_path / "s2.png")
    assert Path(png).read_bytes()[:8] == PNG_SIGNATURE


def test_titles_and_axes():
    from keras_vrnn import plots

    fig = plots.heatmap_figure(np.ones((3, 4)), [0, 10, 20], "BPTT gradient norms: rnn")
    ax = fig.axes[0]
    assert ax.get_title() == "BPTT gradient norms: rnn"
    assert ax.get_xlabel() == "timestep t" and ax.get_ylabel() == "training step"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "10", "20"]
    assert len(fig.axes) == 2  # the colorbar
    assert plots.heatmap_png(np.ones((1, 4)), [0], "x")[:8] == PNG_SIGNATURE


def test_load_and_errors(tmp_path):
    from keras_vrnn import plots

    npz = write_npz(tmp_path / "g.npz")
    data = plots.load_gradient_norms(npz)
    assert data["keys"] == ["rnn", "bi/forward"]
    np.testing.assert_array_equal(data["steps"], [0, 50, 100])
    fields = {"mean_norms", "spectral_radius", "factor", "horizon"}
    assert set(data["layers"]["bi/forward"]) == fields
    match = r"available: \['rnn', 'bi/forward'\].*Received: layer='nope'"
    with pytest.raises(ValueError, match=match):
        plots.plot_gradient_heatmap(npz, tmp_path / "x.png", layer="nope")
    with pytest.raises(ValueError, match="Received: npz_path="):
        plots.plot_norms_vs_steps_back(tmp_path / "missing.npz", tmp_path / "x.png")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="Not a gradient_norms.npz"):
        plots.plot_gradient_heatmap(tmp_path / "other.npz", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_import_keras_vrnn_does_not_import_plots():
    code = (
        "import sys, keras_vrnn\n"
        "assert 'keras_vrnn.plots' not in sys.modules\n"
        "assert callable(keras_vrnn.plots.plot_gradient_heatmap)\n"
        "assert 'keras_vrnn.plots' in sys.modules\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
