"""Pictures of vanishing and exploding gradients (matplotlib, Agg), from
the `gradient_norms.npz` file of `keras_vrnn.GradientNormCallback`:

- `plot_gradient_heatmap`: log10 of the mean `||dL/dh_t||`, x = timestep,
  y = training step (vanishing: a dark left side; exploding: a bright one);
- `plot_norms_vs_steps_back`: one semilog-y curve per logged step against
  the steps back from the last; a straight line is geometric decay.

Figures use the Agg canvas directly (no pyplot, no global state): safe in
scripts, threads and headless machines.
"""

import io
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["load_gradient_norms", "plot_gradient_heatmap", "plot_norms_vs_steps_back"]


def load_gradient_norms(npz_path):
    """Reads a `gradient_norms.npz` file into a dict.

    Args:
        npz_path: Path of the file written by `GradientNormCallback`.

    Returns:
        `{"steps": (n_logs,) array, "keys": [layer keys], "layers": {key:
        {"mean_norms": (n_logs, T), "spectral_radius": ..., "factor": ...,
        "horizon": ..., ...}}}`.
    """
    path = os.fspath(npz_path)
    if not os.path.isfile(path):
        raise ValueError(
            f"No gradient-norm file at this path. Received: npz_path={path!r}."
        )
    with np.load(path, allow_pickle=False) as data:
        if "steps" not in data.files or "keys" not in data.files:
            raise ValueError(
                "Not a gradient_norms.npz file (it needs 'steps' and 'keys' "
                f"arrays). Received: npz_path={path!r} with arrays {data.files}."
            )
        keys = [str(k) for k in data["keys"]]
        layers = {key: {} for key in keys}
        for name in data.files:
            for key in keys:
                prefix = key + "/"
                field = name[len(prefix):] if name.startswith(prefix) else None
                if field and "/" not in field:
                    layers[key][field] = np.asarray(data[name])
        return {"steps": np.asarray(data["steps"]), "keys": keys, "layers": layers}


def _select(data, layer, npz_path):
    if not data["keys"]:
        raise ValueError(f"The file holds no layer. Received: npz_path={npz_path!r}.")
    if layer is None:
        return data["keys"][0]
    if layer not in data["keys"]:
        raise ValueError(
            f"No such layer in the file (available: {data['keys']}). "
            f"Received: layer={layer!r}."
        )
    return layer


def _log10(values):
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(values)
    return np.ma.masked_invalid(out)


def _save(fig, png_path):
    """Writes `fig` as PNG to `png_path` (parent folders created), or into
    a binary file object."""
    FigureCanvasAgg(fig)
    if isinstance(png_path, (str, os.PathLike)):
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(png_path))), exist_ok=True)
    fig.savefig(png_path, format="png")
    return png_path


def _axes(dpi):
    fig = Figure(figsize=(7.0, 4.2), dpi=dpi)
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.13, top=0.9)
    return fig, fig.add_subplot()


def heatmap_figure(mean_norms, steps, title, dpi=100, ylabel="training step"):
    """A `Figure` with the log10 heatmap of `mean_norms` (n_logs, T).

    Rows are logging steps (labelled with `steps`; `ylabel` names them),
    columns timesteps. Zero (masked) and non-finite values are left blank.
    """
    values = _log10(np.atleast_2d(mean_norms))
    steps = np.asarray(steps).reshape(-1)
    n_logs, timesteps = values.shape
    fig, ax = _axes(dpi)
    ax.set_facecolor("0.85")
    finite = values.compressed()
    vmin, vmax = (0.0, 1.0)
    if finite.size:
        vmin, vmax = float(finite.min()), float(finite.max())
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(
        values,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        cmap="viridis",
        vmin=vmin,
        vmax=vmax,
        extent=(-0.5, timesteps - 0.5, -0.5, n_logs - 0.5),
    )
    ticks = np.unique(np.linspace(0, n_logs - 1, min(n_logs, 8)).round().astype(int))
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(int(steps[i])) if i < steps.size else "" for i in ticks])
    ax.set_xlabel("timestep t")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="log10 mean ||dL/dh_t||")
    return fig


def heatmap_png(mean_norms, steps, title, dpi=80):
    """The heatmap of `heatmap_figure` as PNG bytes (for TensorBoard)."""
    return _save(heatmap_figure(mean_norms, steps, title, dpi=dpi), io.BytesIO()).getvalue()


def _mean_norms(npz_path, layer):
    """(layer key, its mean_norms (n_logs, T), steps) from a gradient_norms.npz."""
    data = load_gradient_norms(npz_path)
    key = _select(data, layer, npz_path)
    mean_norms = data["layers"][key].get("mean_norms")
    if mean_norms is None:
        raise ValueError(
            f"The file has no '{key}/mean_norms' array. "
            f"Received: npz_path={npz_path!r}."
        )
    return key, mean_norms, data["steps"]


def plot_gradient_heatmap(npz_path, png_path, layer=None):
    """Heatmap of log10 mean `||dL/dh_t||`: x = timestep, y = training step.

    Reads `npz_path` (a `gradient_norms.npz` of `GradientNormCallback`),
    writes the PNG to `png_path` (parent folders created) and returns it.
    `layer`: a layer key (e.g. `"vanilla_rnn"`, `"bidirectional/forward"`);
    default the first layer in the file.
    """
    key, mean_norms, steps = _mean_norms(npz_path, layer)
    return _save(heatmap_figure(mean_norms, steps, f"BPTT gradient norms: {key}"), png_path)


def plot_norms_vs_steps_back(npz_path, png_path, layer=None):
    """Mean `||dL/dh_t||` against steps back from the last step, semilog-y.

    One curve per logged training step, coloured by step (colorbar). Zero
    and non-finite values are not drawn. Arguments and result as
    `plot_gradient_heatmap`'s.
    """
    key, mean_norms, steps = _mean_norms(npz_path, layer)
    title = f"Gradient norm vs steps back: {key}"
    return _save(steps_back_figure(mean_norms, steps, title), png_path)


def steps_back_figure(mean_norms, steps, title, label="training step"):
    """A `Figure` with one semilog-y curve per row of `mean_norms` (n, T)
    against steps back, coloured by `steps` (colorbar named `label`)."""
    from matplotlib import cm
    from matplotlib import colormaps
    from matplotlib import colors

    mean_norms = np.atleast_2d(np.asarray(mean_norms, np.float64))
    steps = np.asarray(steps).reshape(-1)
    n_logs, timesteps = mean_norms.shape
    steps_back = np.arange(timesteps - 1, -1, -1)
    fig, ax = _axes(100)
    lo = float(steps.min()) if steps.size else 0.0
    hi = float(steps.max()) if steps.size else 1.0
    norm = colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    cmap = colormaps["viridis"]
    drawn = False
    for i in range(n_logs):
        row = mean_norms[i]
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(row) & (row > 0)
        if not ok.any():
            continue
        step = steps[i] if i < steps.size else i
        ax.plot(steps_back[ok], row[ok], color=cmap(norm(step)), lw=1.2)
        drawn = True
    if drawn:
        ax.set_yscale("log")
    ax.set_xlabel("steps back from the last step (T - 1 - t)")
    ax.set_ylabel("mean ||dL/dh_t||")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label)
    return fig
