"""keras_vrnn: a fast, exact vanilla RNN for Keras 3, and the tools to watch
its gradients vanish or explode through time."""

from keras_vrnn import initializers
from keras_vrnn.cell import VanillaRNNCell
from keras_vrnn.layer import VanillaRNN

__version__ = "0.1.0"

__all__ = ["VanillaRNN", "VanillaRNNCell", "initializers"]

# Gradient diagnostics (issue #4). `keras_vrnn.plots` is imported lazily
# (it needs matplotlib): `import keras_vrnn` does not load it.
from keras_vrnn.callbacks import GradientNormCallback  # noqa: E402
from keras_vrnn.diagnostics import effective_horizon  # noqa: E402
from keras_vrnn.diagnostics import fit_decay_factor  # noqa: E402
from keras_vrnn.diagnostics import recurrent_kernel_stats  # noqa: E402
from keras_vrnn.diagnostics import state_jacobian_norms  # noqa: E402
from keras_vrnn.diagnostics import timestep_gradient_norms  # noqa: E402

__all__ += [
    "GradientNormCallback",
    "effective_horizon",
    "fit_decay_factor",
    "recurrent_kernel_stats",
    "state_jacobian_norms",
    "timestep_gradient_norms",
]


def __getattr__(name):
    if name == "plots":
        import importlib

        return importlib.import_module("keras_vrnn.plots")
    raise AttributeError(f"module 'keras_vrnn' has no attribute {name!r}")
