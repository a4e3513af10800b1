"""keras_vrnn: a fast, exact vanilla RNN for Keras 3, and the tools to watch
its gradients vanish or explode through time.

`keras_vrnn.plots` (it needs matplotlib) is imported on first use:
`import keras_vrnn` does not load it.
"""

from keras_vrnn import initializers
from keras_vrnn.callbacks import GradientNormCallback
from keras_vrnn.cell import VanillaRNNCell
from keras_vrnn.diagnostics import effective_horizon
from keras_vrnn.diagnostics import fit_decay_factor
from keras_vrnn.diagnostics import lyapunov_exponents
from keras_vrnn.diagnostics import recurrent_kernel_stats
from keras_vrnn.diagnostics import state_jacobian_norms
from keras_vrnn.diagnostics import timestep_gradient_norms
from keras_vrnn.interop import from_torch
from keras_vrnn.interop import to_torch
from keras_vrnn.layer import VanillaRNN
from keras_vrnn.regularizers import VanishingGradientRegularizer

__version__ = "0.1.0"

__all__ = [
    "GradientNormCallback",
    "VanillaRNN",
    "VanillaRNNCell",
    "VanishingGradientRegularizer",
    "effective_horizon",
    "fit_decay_factor",
    "from_torch",
    "initializers",
    "lyapunov_exponents",
    "recurrent_kernel_stats",
    "state_jacobian_norms",
    "timestep_gradient_norms",
    "to_torch",
]


def __getattr__(name):
    if name == "plots":
        import importlib

        return importlib.import_module("keras_vrnn.plots")
    raise AttributeError(f"module 'keras_vrnn' has no attribute {name!r}")
