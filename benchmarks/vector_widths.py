"""A/B of the native kernels' vector widths: 8-wide (AVX2) vs 16-wide
(AVX-512) float32 step kernels, in one process, on this CPU.

Both widths are in an AVX-512 build (the ops' `vector_width` attribute picks
one) and give bit-identical results, so the faster one can be the default.
Times the forward op and the backward op (weight gradients included) at the
benchmark sizes, round-robin after warm-up; prints median times and the
8-wide / 16-wide ratio.

Usage: python benchmarks/vector_widths.py [--rounds 40]   (about 30 s on 2 cores)
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

SIZES = [(32, 100, 32, 128), (64, 200, 64, 256), (128, 50, 16, 64), (16, 1000, 8, 64)]


def op_calls(lib, size, vector_width, rng):
    """The forward and backward op calls at one size and width."""
    import tensorflow as tf

    B, T, D, H = size

    def normal(*shape):
        return tf.constant(0.3 * rng.standard_normal(shape).astype("float32"))

    empty = tf.zeros([0])
    args = [normal(B, T, D), normal(D, H), normal(H), normal(B, H), normal(H, H), empty, empty]
    upstream = normal(B, T, H)
    options = dict(activation="tanh", vector_width=vector_width)
    hs = lib.keras_vrnn_forward(*args, **options)
    return {
        "forward": lambda: lib.keras_vrnn_forward(*args, **options).numpy(),
        "backward": lambda: lib.keras_vrnn_backward(upstream, hs, *args, **options)[0].numpy(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds (median)")
    args = parser.parse_args(argv)
    from keras_vrnn import native

    lib = native.library()
    if lib is None or "AVX-512" not in native.kernels():
        raise SystemExit(f"error: no AVX-512 build on this CPU ({native.cpu_model()}): "
                         f"{native.kernels() or native.unavailable_reason()}")
    rng = np.random.default_rng(0)
    calls = {
        (size, width, op): fn
        for size in SIZES
        for width in (8, 16)
        for op, fn in op_calls(lib, size, width, rng).items()
    }
    for fn in calls.values():
        fn()
    times = {key: [] for key in calls}
    for _ in range(args.rounds):
        for key, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    print(f"# {native.cpu_model()}, {os.cpu_count()} cores, {args.rounds} rounds, "
          f"{native.kernels()}")
    print("| (B, T, D, H) | op | 8-wide ms | 16-wide ms | 8-wide / 16-wide |")
    print("|---|---|---|---|---|")
    for size in SIZES:
        for op in ("forward", "backward"):
            narrow, wide = (1e3 * np.median(times[(size, w, op)]) for w in (8, 16))
            print(f"| {size} | {op} | {narrow:.2f} | {wide:.2f} | **{narrow / wide:.2f}x** |")


if __name__ == "__main__":
    main()
