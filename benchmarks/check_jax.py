"""VanillaRNN on the JAX backend, on the device JAX picks (a GPU where there is one).

Checks that the fused path (`lax.scan` with a custom VJP) and the generic loop
give the numbers of a float64 NumPy reference, and of `keras.layers.SimpleRNN`
on the same device: outputs and the gradients of `L = sum(c * y)` with
respect to x, h0 and every weight, for every activation the fused path
covers, forwards and backwards, sequences and last output. It needs no
TensorFlow, so it runs where only JAX is installed (an accelerator machine).

Prints a table of the largest relative errors and exits with status 1 when
one is over the tolerances (forward 1e-5, gradients 1e-4 relative, as in the tests).
Matrix products run at full float32 precision (`--precision highest`, the
default); with `--precision default` an accelerator may use reduced-precision
products (TF32 on NVIDIA), and the table shows what that costs, unchecked.

Usage: KERAS_BACKEND=jax python benchmarks/check_jax.py [--precision default]
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

# (activation, go_backwards, return_sequences): each activation, both
# directions, both output kinds.
CONFIGS = [
    ("tanh", False, True),
    ("tanh", True, False),
    ("relu", False, False),
    ("relu", True, True),
    ("sigmoid", False, True),
    ("linear", True, False),
]
SHAPE = (5, 13, 3, 7)  # batch, timesteps, features, units
FORWARD_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-4

_ACTIVATIONS = {
    "tanh": (np.tanh, lambda a: 1.0 - a * a),
    "relu": (lambda z: np.maximum(z, 0.0), lambda a: (a > 0).astype(np.float64)),
    "sigmoid": (lambda z: 1.0 / (1.0 + np.exp(-z)), lambda a: a * (1.0 - a)),
    "linear": (lambda z: z, lambda a: np.ones_like(a)),
}


def reference(p, activation, go_backwards, return_sequences):
    """Float64 forward and BPTT from the equations: y and the gradients of sum(c * y)."""
    act, derivative = _ACTIVATIONS[activation]
    x, W, U, b, h0 = (p[k].astype(np.float64) for k in ("x", "W", "U", "b", "h0"))
    xs = x[:, ::-1] if go_backwards else x
    steps = xs.shape[1]
    hs = []
    h = h0
    for t in range(steps):
        h = act(xs[:, t] @ W + h @ U + b)
        hs.append(h)
    hs = np.stack(hs, axis=1)
    c = p["c"] if return_sequences else p["c_last"]
    upstream = np.zeros_like(hs)
    if return_sequences:
        upstream[:] = c
    else:
        upstream[:, -1] = c
    dW, dU, db = np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)
    dxs = np.zeros_like(xs)
    carry = np.zeros_like(h0)
    for t in reversed(range(steps)):
        dz = (upstream[:, t] + carry) * derivative(hs[:, t])
        h_prev = hs[:, t - 1] if t > 0 else h0
        dW += xs[:, t].T @ dz
        dU += h_prev.T @ dz
        db += dz.sum(axis=0)
        dxs[:, t] = dz @ W.T
        carry = dz @ U.T
    dx = dxs[:, ::-1] if go_backwards else dxs
    y = hs if return_sequences else hs[:, -1]
    return dict(y=y, dx=dx, dh0=carry, dW=dW, dU=dU, db=db)


def layer_results(kind, p, activation, go_backwards, return_sequences):
    """y and the gradients of sum(c * y) from a Keras layer on the JAX backend."""
    import jax
    import jax.numpy as jnp
    import keras

    from keras_vrnn import VanillaRNN

    options = dict(
        activation=activation, go_backwards=go_backwards, return_sequences=return_sequences
    )
    if kind == "SimpleRNN":
        layer = keras.layers.SimpleRNN(p["U"].shape[0], **options)
    else:
        layer = VanillaRNN(p["U"].shape[0], use_fused=(kind == "fused"), **options)
    layer.build(p["x"].shape)
    layer.set_weights([p["W"], p["U"], p["b"]])
    c = jnp.asarray(p["c"] if return_sequences else p["c_last"])
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss(trainable, x, h0):
        y, _ = layer.stateless_call(trainable, non_trainable, x, initial_state=h0)
        return jnp.sum(c * y), y

    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, y), (d_weights, dx, dh0) = grad_fn(trainable, jnp.asarray(p["x"]), jnp.asarray(p["h0"]))
    dW, dU, db = d_weights
    return {k: np.asarray(v, np.float64) for k, v in
            dict(y=y, dx=dx, dh0=dh0, dW=dW, dU=dU, db=db).items()}


def relative_error(got, want):
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def problem(seed=0):
    batch, steps, features, units = SHAPE
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype("float32")

    return dict(
        x=normal(batch, steps, features),
        W=normal(features, units, scale=0.5),
        U=normal(units, units, scale=0.9 / np.sqrt(units)),
        b=normal(units, scale=0.1),
        h0=normal(batch, units, scale=0.5),
        c=normal(batch, steps, units),
        c_last=normal(batch, units),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--precision", choices=("highest", "default"), default="highest",
        help="JAX matmul precision (default: highest, full float32)",
    )
    args = parser.parse_args(argv)
    import jax
    import keras

    if keras.backend.backend() != "jax":
        parser.error(
            f"this check runs on the JAX backend. Received: KERAS_BACKEND="
            f"{keras.backend.backend()!r}; run it with KERAS_BACKEND=jax."
        )
    jax.config.update("jax_default_matmul_precision", args.precision)
    device = jax.devices()[0]
    print(
        f"# JAX {jax.__version__} on {device.platform.upper()} ({device.device_kind}), "
        f"Keras {keras.__version__}, float32, matmul precision {args.precision}, "
        f"(B, T, D, H) = {SHAPE}"
    )
    print("| layer | activation | go_backwards | return_sequences | forward | gradients (worst) |")
    print("|---|---|---|---|---|---|")
    p = problem()
    failures = []
    for activation, go_backwards, return_sequences in CONFIGS:
        want = reference(p, activation, go_backwards, return_sequences)
        for kind in ("fused", "generic", "SimpleRNN"):
            got = layer_results(kind, p, activation, go_backwards, return_sequences)
            forward = relative_error(got["y"], want["y"])
            grads = {k: relative_error(got[k], want[k]) for k in want if k != "y"}
            worst = max(grads, key=grads.get)
            name = "VanillaRNN " + kind if kind != "SimpleRNN" else "SimpleRNN"
            print(
                f"| {name} | {activation} | {go_backwards} | {return_sequences} | "
                f"{forward:.1e} | {grads[worst]:.1e} ({worst}) |"
            )
            if kind != "SimpleRNN" and (
                forward > FORWARD_TOLERANCE or grads[worst] > GRADIENT_TOLERANCE
            ):
                failures.append((kind, activation, go_backwards, return_sequences))
    if args.precision == "highest":
        if failures:
            print(f"FAILED: over the tolerances in {failures}")
            return 1
        print(
            f"OK: VanillaRNN within {FORWARD_TOLERANCE:g} (forward) and "
            f"{GRADIENT_TOLERANCE:g} (gradients) of the float64 reference"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
