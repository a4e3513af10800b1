"""keras_vrnn: a fast, exact vanilla RNN for Keras 3, and the tools to watch
its gradients vanish or explode through time."""

from keras_vrnn import initializers
from keras_vrnn.cell import VanillaRNNCell
from keras_vrnn.layer import VanillaRNN

__version__ = "0.1.0"

__all__ = ["VanillaRNN", "VanillaRNNCell", "initializers"]
