"""VanillaRNN (fused path) vs keras.layers.SimpleRNN: train step and inference.

Round-robin in one process after warm-up, so both layers see the same machine
state: each round times one call of every (size, layer, mode) in turn, and
the speedup is the median of the per-round ratios.

Model: RNN(H, return_sequences=True) -> Dense(1), MSE, SGD,
`train_on_batch` (forward + backward + update) and `predict_on_batch`.

Also printed per size:
- GFLOP/s achieved (matmul FLOPs of the step / median time);
- the fraction of the "matmul limit": the time the bare matrix products of
  the step take when run alone (T sequential (B,H)x(H,H) products forward,
  T more backward, plus the one-shot GEMMs), measured in this same run;
- the cost of one `keras_vrnn.timestep_gradient_norms` measurement relative
  to one VanillaRNN train step (target <= 1.25);
- an estimated speedup ceiling: SimpleRNN's time over (the time of the same
  model with the recurrence taken out, `Dense(H, "tanh")` in place of the
  RNN, timed in the same rounds: input projection, activation, head, loss,
  update) + (the bare products only the recurrence needs: T sequential
  (B,H)x(H,H) products forward, T backward and the dW_hh GEMM, with this
  TensorFlow's kernels). An implementation using these kernels beats
  SimpleRNN by more than this only as far as it overlaps the two parts.

Backends: TensorFlow (the default; the native kernels on a CPU) and JAX
(`KERAS_BACKEND=jax`: the `lax.scan` fused path, on whatever device JAX
uses, a GPU included; no gradient-norm row there, the diagnostics run on
TensorFlow only).

Usage: python benchmarks/benchmark.py [--rounds 40] [--json out.json]  (about 75 s on 2 cores)
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

SIZES = [(32, 100, 32, 128), (64, 200, 64, 256), (128, 50, 16, 64), (16, 1000, 8, 64)]


def build_pair(B, T, D, H, seed=0):
    import keras
    import keras_vrnn

    models = {}
    for name, make_layer in (
        ("VanillaRNN", lambda: keras_vrnn.VanillaRNN(H, return_sequences=True)),
        ("SimpleRNN", lambda: keras.layers.SimpleRNN(H, return_sequences=True)),
        ("NoRecurrence", lambda: keras.layers.Dense(H, activation="tanh")),
    ):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [
                keras.Input((T, D), batch_size=B),
                make_layer(),
                keras.layers.Dense(1),
            ]
        )
        model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
        models[name] = model
    models["VanillaRNN"].set_weights(models["SimpleRNN"].get_weights())
    return models


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_limit(B, T, D, H, repeats=20):
    """Seconds of the bare matmuls of one train step and of one inference.

    Measured with the running backend's own kernels: TensorFlow (through its
    executor and XLA-compiled, the faster of the two) or JAX (jitted).
    """
    rng = np.random.default_rng(0)
    arrays = {
        "h": rng.standard_normal((B, H)),
        "u": rng.standard_normal((H, H)) / np.sqrt(H),
        "xs": rng.standard_normal((B * T, D)),
        "w": rng.standard_normal((D, H)),
        "z": rng.standard_normal((B * T, H)),
    }
    arrays = {k: v.astype("float32") for k, v in arrays.items()}
    chain = 50
    import keras

    if keras.backend.backend() == "jax":
        times = _bare_matmul_times_jax(arrays, chain, repeats)
    else:
        times = _bare_matmul_times_tf(arrays, chain, repeats)
    per_step = times["sequential"] / chain
    proj, grad_hh, grad_xh = (
        times[k] for k in ("projection", "recurrent_kernel_grad", "kernel_grad")
    )
    # "recurrent_*": the products only a recurrent layer has to do (what the
    # NoRecurrence model of `build_pair` leaves out).
    return {
        "train": 2 * T * per_step + proj + grad_hh + grad_xh,
        "inference": T * per_step + proj,
        "recurrent_train": 2 * T * per_step + grad_hh,
        "recurrent_inference": T * per_step,
    }


def _bare_products(matmul, matmul_t, chain):
    """The products `matmul_limit` times, each a function of the operand dict;
    matmul_t(p, q) is p^T q."""

    def sequential(a):  # `chain` dependent (B,H)x(H,H) products, no loop
        h = a["h"]
        for _ in range(chain):
            h = matmul(h, a["u"])
        return h

    return {
        "sequential": sequential,
        "projection": lambda a: matmul(a["xs"], a["w"]),
        "recurrent_kernel_grad": lambda a: matmul_t(a["z"], a["z"]),  # dW_hh = H^T dZ
        "kernel_grad": lambda a: matmul_t(a["xs"], a["z"]),  # dW_xh = X^T dZ
    }


def _bare_matmul_times_tf(arrays, chain, repeats):
    import tensorflow as tf

    a = {k: tf.constant(v) for k, v in arrays.items()}
    times = {}
    products = _bare_products(tf.matmul, lambda p, q: tf.matmul(p, q, transpose_a=True), chain)
    for name, fn in products.items():
        # Through the TF executor and XLA-compiled: the faster of the two is
        # the limit (XLA has less per-op overhead on small shapes, Eigen's
        # threaded GEMMs win on large ones).
        variants = [tf.function(lambda fn=fn: fn(a), jit_compile=xla) for xla in (False, True)]
        for variant in variants:
            variant()
        times[name] = min(timed(v) for v in variants for _ in range(repeats))
    return times


def _bare_matmul_times_jax(arrays, chain, repeats):
    import jax
    import jax.numpy as jnp

    a = {k: jax.device_put(v) for k, v in arrays.items()}
    times = {}
    for name, fn in _bare_products(jnp.matmul, lambda p, q: p.T @ q, chain).items():
        # The operands are arguments, not closed-over constants, which XLA
        # would fold at compile time.
        jitted = jax.jit(fn)
        jitted(a).block_until_ready()
        times[name] = min(timed(lambda: jitted(a).block_until_ready()) for _ in range(repeats))
    return times


def flops(B, T, D, H):
    forward = 2 * B * T * (D * H + H * H + H)
    backward = 2 * B * T * (2 * H * H + D * H + 2 * H)  # carry, dW_hh, dW_xh, head
    return {"train": forward + backward, "inference": forward}


def run(rounds, warmup, sizes, with_gradient_norms=True):
    results = []
    setups = []
    for B, T, D, H in sizes:
        rng = np.random.default_rng(1)
        x = rng.standard_normal((B, T, D)).astype("float32")
        y = rng.standard_normal((B, T, 1)).astype("float32")
        models = build_pair(B, T, D, H)
        setups.append(((B, T, D, H), models, x, y))

    def calls(models, x, y):
        fns = {}
        for name, model in models.items():
            fns[(name, "train")] = lambda m=model: m.train_on_batch(x, y)
            fns[(name, "inference")] = lambda m=model: m.predict_on_batch(x)
        if with_gradient_norms:
            import keras_vrnn

            fns[("VanillaRNN", "gradient_norms")] = lambda m=models["VanillaRNN"]: (
                keras_vrnn.timestep_gradient_norms(m, x, y)
            )
        return fns

    all_fns = [calls(models, x, y) for _, models, x, y in setups]
    for fns in all_fns:
        for fn in fns.values():
            for _ in range(warmup):
                fn()
    times = [{key: [] for key in fns} for fns in all_fns]
    for _ in range(rounds):
        for fns, record in zip(all_fns, times):
            for key, fn in fns.items():
                record[key].append(timed(fn))

    for (size, _, _, _), record in zip(setups, times):
        limit = matmul_limit(*size)
        fl = flops(*size)
        row = {"size": size}
        for mode in ("train", "inference"):
            v = np.array(record[("VanillaRNN", mode)])
            s = np.array(record[("SimpleRNN", mode)])
            row[mode] = {
                "vanilla_ms": 1e3 * float(np.median(v)),
                "simple_ms": 1e3 * float(np.median(s)),
                "speedup": float(np.median(s / v)),
                "vanilla_gflops": fl[mode] / float(np.median(v)) / 1e9,
                "simple_gflops": fl[mode] / float(np.median(s)) / 1e9,
                "vanilla_limit_fraction": limit[mode] / float(np.median(v)),
                "simple_limit_fraction": limit[mode] / float(np.median(s)),
                "limit_ms": 1e3 * limit[mode],
                "ceiling": float(
                    np.median(
                        s
                        / (np.array(record[("NoRecurrence", mode)]) + limit[f"recurrent_{mode}"])
                    )
                ),
            }
        if with_gradient_norms:
            g = np.array(record[("VanillaRNN", "gradient_norms")])
            v = np.array(record[("VanillaRNN", "train")])
            row["gradient_norms"] = {
                "ms": 1e3 * float(np.median(g)),
                "cost_vs_train_step": float(np.median(g / v)),
            }
        results.append(row)
    return results


def markdown(results):
    lines = [
        "| (B, T, D, H) | mode | VanillaRNN ms | SimpleRNN ms | speedup | "
        "GFLOP/s (V / S) | matmul-limit fraction (V / S) | speedup ceiling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        for mode in ("train", "inference"):
            r = row[mode]
            lines.append(
                f"| {row['size']} | {mode} | {r['vanilla_ms']:.1f} | "
                f"{r['simple_ms']:.1f} | **{r['speedup']:.2f}x** | "
                f"{r['vanilla_gflops']:.1f} / {r['simple_gflops']:.1f} | "
                f"{100 * r['vanilla_limit_fraction']:.0f}% / "
                f"{100 * r['simple_limit_fraction']:.0f}% | {r['ceiling']:.2f}x |"
            )
    if "gradient_norms" in results[0]:
        lines += ["", "| (B, T, D, H) | one gradient-norm measurement, ms | cost vs one train step |", "|---|---|---|"]
        for row in results:
            g = row["gradient_norms"]
            lines.append(f"| {row['size']} | {g['ms']:.1f} | {g['cost_vs_train_step']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per function")
    parser.add_argument("--sizes", default=None, help="e.g. '16,1000,8,64;32,100,32,128'")
    parser.add_argument("--no-gradient-norms", action="store_true")
    parser.add_argument("--json", default=None, help="also write results here")
    args = parser.parse_args(argv)
    sizes = SIZES
    if args.sizes:
        sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes.split(";")]
    import keras

    backend = keras.backend.backend()
    start = time.perf_counter()
    # The gradient-norm diagnostics run on TensorFlow only.
    with_gradient_norms = not args.no_gradient_norms and backend == "tensorflow"
    results = run(args.rounds, args.warmup, sizes, with_gradient_norms)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{_backend_description()}, Keras {keras.__version__}, float32, "
        f"{args.rounds} rounds, {time.perf_counter() - start:.0f} s, "
        f"VanillaRNN fused path: {_fused_path_description()}"
    )
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def _backend_description():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return f"JAX {jax.__version__} on {device.platform.upper()} ({device.device_kind})"
    import tensorflow as tf

    return f"TF {tf.__version__}"


def _fused_path_description():
    import keras

    if keras.backend.backend() == "jax":
        return "lax.scan with a custom VJP (keras_vrnn.fused_jax)"
    from keras_vrnn import native

    if native.library() is not None:
        return f"native kernels ({native.kernels()})"
    return f"XLA loops (native kernels unavailable: {native.unavailable_reason()})"


if __name__ == "__main__":
    main()
