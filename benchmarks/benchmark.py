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
    """Seconds of the bare matmuls of one train step and of one inference."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    h = tf.constant(rng.standard_normal((B, H)), tf.float32)
    u = tf.constant(rng.standard_normal((H, H)) / np.sqrt(H), tf.float32)
    xs = tf.constant(rng.standard_normal((B * T, D)), tf.float32)
    w = tf.constant(rng.standard_normal((D, H)), tf.float32)
    z = tf.constant(rng.standard_normal((B * T, H)), tf.float32)
    chain = 50

    @tf.function
    def sequential():  # `chain` dependent (B,H)x(H,H) products, no loop
        a = h
        for _ in range(chain):
            a = tf.matmul(a, u)
        return a

    @tf.function
    def projection():
        return tf.matmul(xs, w)

    @tf.function
    def recurrent_kernel_grad():  # dW_hh = H^T dZ
        return tf.matmul(z, z, transpose_a=True)

    @tf.function
    def kernel_grad():  # dW_xh = X^T dZ
        return tf.matmul(xs, z, transpose_a=True)

    def best(fn):
        # The bare products run both through the TF executor and XLA-compiled;
        # the faster of the two is the limit (XLA has less per-op overhead on
        # small shapes, Eigen's threaded GEMMs win on large ones).
        variants = (fn, tf.function(fn.python_function, jit_compile=True))
        for variant in variants:
            variant()
        return min(timed(v) for v in variants for _ in range(repeats))

    per_step = best(sequential) / chain
    proj = best(projection)
    grad_hh = best(recurrent_kernel_grad)
    grad_xh = best(kernel_grad)
    # "recurrent_*": the products only a recurrent layer has to do (what the
    # NoRecurrence model of `build_pair` leaves out).
    return {
        "train": 2 * T * per_step + proj + grad_hh + grad_xh,
        "inference": T * per_step + proj,
        "recurrent_train": 2 * T * per_step + grad_hh,
        "recurrent_inference": T * per_step,
    }


def flops(B, T, D, H):
    forward = 2 * B * T * (D * H + H * H + H)
    backward = 2 * B * T * (2 * H * H + D * H + 2 * H)  # carry, dW_hh, dW_xh, head
    return {"train": forward + backward, "inference": forward}


def run(rounds, warmup, sizes, with_gradient_norms=True):
    import tensorflow as tf

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
    import tensorflow as tf

    start = time.perf_counter()
    results = run(args.rounds, args.warmup, sizes, not args.no_gradient_norms)
    from keras_vrnn import native

    kernels = (
        f"native kernels ({native.kernels()})" if native.library() is not None
        else f"XLA loops (native kernels unavailable: {native.unavailable_reason()})"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"TF {tf.__version__}, Keras {keras.__version__}, float32, "
        f"{args.rounds} rounds, {time.perf_counter() - start:.0f} s, "
        f"VanillaRNN fused path: {kernels}"
    )
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
