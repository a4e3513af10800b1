"""VanillaRNN (fused path) vs keras.layers.SimpleRNN and torch.nn.RNN: train
step and inference.

Round-robin in one process after warm-up, so all models see the same machine
state: each round times one call of every (size, model, mode) in turn, and
a speedup is the median of the per-round ratios.

Model: RNN(H, return_sequences=True) -> Dense(1), MSE, SGD,
`train_on_batch` (forward + backward + update) and `predict_on_batch`.

PyTorch baseline (optional: `pip install torch`; without it the column reads
"torch not installed"): the same model in PyTorch, `torch.nn.RNN(D, H,
nonlinearity="tanh", batch_first=True)` -> `torch.nn.Linear(H, 1)`, MSE,
`torch.optim.SGD(lr=1e-3)`, float32, on the CPU, with the SimpleRNN model's
initial weights and the same inputs. A train call is zero_grad + forward +
loss + backward + step, an inference call a forward under
`torch.inference_mode()`; both are timed in the same warm-up and rounds as
the Keras calls, interleaved with them. torch runs as many threads as the
Keras backend (TensorFlow's intra-op setting, by default one per core; on
JAX, one per core), as the header line states. "vs torch.nn.RNN" is the
median per-round ratio of torch's time to VanillaRNN's.

The header line also names the CPU, the date (UTC), the git commit
("+changes" when tracked files differ from it) and the versions.

Also printed per size:
- GFLOP/s achieved (matmul FLOPs of the step / median time);
- the fraction of the "matmul limit": the time the bare matrix products of
  the step take when run alone (T sequential (B,H)x(H,H) products forward,
  T more backward, plus the one-shot GEMMs), measured in this same run;
- the cost of one `keras_vrnn.timestep_gradient_norms` measurement relative
  to one VanillaRNN train step;
- an estimated speedup ceiling: SimpleRNN's time over (the time of the same
  model with the recurrence taken out, `Dense(H, "tanh")` in place of the
  RNN, timed in the same rounds: input projection, activation, head, loss,
  update) + (the bare products only the recurrence needs: T sequential
  (B,H)x(H,H) products forward, T backward and the dW_hh GEMM, with this
  TensorFlow's kernels). An implementation using these kernels beats
  SimpleRNN by more than this only as far as it overlaps the two parts.

Backends: TensorFlow (the default; the native kernels on a CPU), JAX
(`KERAS_BACKEND=jax`: the `lax.scan` fused path, on whatever device JAX
uses, a GPU included) and PyTorch (`KERAS_BACKEND=torch`: torch's own RNN
kernel, keras_vrnn.fused_torch, and SimpleRNN on the same backend, on the
CPU or Keras' CUDA device). torch.nn.RNN runs on torch's CUDA device where
there is one (cuDNN), else on the CPU, under all three.

After the rounds, on a CPU: the float32 FMA peak of the same number of
threads (`fma_peak.cc`: register-only FMA chains at the native kernels'
vector width, built with their flags) and the share of it each size reaches.

Usage: python benchmarks/benchmark.py [--rounds 40] [--json out.json]  (30-45 s on 2 cores)
"""

import argparse
import datetime
import json
import os
import subprocess
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

TORCH = "torch.nn.RNN"
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


class TorchModel:
    """The SimpleRNN model of `build_pair` in PyTorch, with Keras' batch API.

    torch.nn.RNN computes h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    and Keras' SimpleRNN h_t = tanh(x_t W + h_{t-1} U + b): the weights map as
    W_ih = W^T, W_hh = U^T, b_ih = b, b_hh = 0. Both biases train, as in any
    torch.nn.RNN: each gets the gradient of b, so an SGD step moves their sum
    twice as far as SimpleRNN moves b; every other weight takes the same step.
    """

    def __init__(self, keras_model):
        import torch

        kernel, recurrent_kernel, bias, head_kernel, head_bias = keras_model.get_weights()
        features, units = kernel.shape
        self.rnn = torch.nn.RNN(features, units, nonlinearity="tanh", batch_first=True)
        self.head = torch.nn.Linear(units, 1)
        mapping = [
            (self.rnn.weight_ih_l0, kernel.T),
            (self.rnn.weight_hh_l0, recurrent_kernel.T),
            (self.rnn.bias_ih_l0, bias),
            (self.rnn.bias_hh_l0, np.zeros_like(bias)),
            (self.head.weight, head_kernel.T),
            (self.head.bias, head_bias),
        ]
        with torch.no_grad():
            for param, value in mapping:
                param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype="float32")))
        # cuDNN where torch has a GPU; inputs and outputs cross to and from
        # the host as NumPy arrays, as they do for the Keras models.
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.rnn, self.head = self.rnn.to(self.device), self.head.to(self.device)
        params = [*self.rnn.parameters(), *self.head.parameters()]
        self.optimizer = torch.optim.SGD(params, lr=1e-3)
        self.loss = torch.nn.MSELoss()

    def __call__(self, x):
        hidden, _ = self.rnn(x)
        return self.head(hidden)

    def train_on_batch(self, x, y):
        """One SGD step on NumPy arrays; returns the loss before the step."""
        import torch

        x, y = torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)
        self.optimizer.zero_grad()
        loss = self.loss(self(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def predict_on_batch(self, x):
        import torch

        with torch.inference_mode():
            return self(torch.from_numpy(x).to(self.device)).cpu().numpy()


def import_torch():
    """The torch module, or None where it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def keras_threads():
    """The CPU threads the Keras backend's ops run on: TensorFlow's intra-op
    setting (0: one per core), torch's; JAX's CPU backend uses one per core."""
    import keras

    if keras.backend.backend() == "torch":
        return import_torch().get_num_threads()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        threads = tf.config.threading.get_intra_op_parallelism_threads()
        if threads:
            return threads
    return os.cpu_count()


def fma_peak(threads, repeats=3):
    """The float32 FMA peak of `threads` cores in GFLOP/s and its vector width
    (benchmarks/fma_peak.cc, built with the native kernels' flags), or None
    where it cannot be built (no compiler, not x86-64 with AVX2/FMA)."""
    import shutil
    import tempfile

    from keras_vrnn import native

    isa = native.choose_isa(native.cpu_features())
    compiler = native._compiler()
    if isa is None or shutil.which(compiler) is None:
        return None
    source = Path(__file__).with_name("fma_peak.cc")
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "fma_peak"
        flags = [*native.ISAS[isa][1], "-O2", "-pthread"]
        build = subprocess.run([compiler, *flags, str(source), "-o", str(binary)],
                               capture_output=True, text=True)
        if build.returncode != 0:
            return None
        runs = [
            subprocess.run([str(binary), str(threads), "30000000"], capture_output=True,
                           text=True, check=True).stdout.split()
            for _ in range(repeats)
        ]
    return {"gflops": max(float(r[0]) for r in runs), "vector_width": int(runs[0][1]),
            "threads": threads}


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_limit(B, T, D, H, repeats=20):
    """Seconds of the bare matmuls of one train step and of one inference.

    Measured with the running backend's own kernels: TensorFlow (through its
    executor and XLA-compiled, the faster of the two), JAX (jitted) or torch
    (eager).
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
    elif keras.backend.backend() == "torch":
        times = _bare_matmul_times_torch(arrays, chain, repeats)
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


def _bare_matmul_times_torch(arrays, chain, repeats):
    import keras

    a = {k: keras.ops.convert_to_tensor(v) for k, v in arrays.items()}
    sync = _torch_sync()
    times = {}
    for name, fn in _bare_products(lambda p, q: p @ q, lambda p, q: p.T @ q, chain).items():
        fn(a)
        times[name] = min(timed(lambda: (fn(a), sync())) for _ in range(repeats))
    return times


def _torch_sync():
    """Waits for Keras' torch device (CUDA runs asynchronously)."""
    torch = import_torch()
    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)


def flops(B, T, D, H):
    forward = 2 * B * T * (D * H + H * H + H)
    backward = 2 * B * T * (2 * H * H + D * H + 2 * H)  # carry, dW_hh, dW_xh, head
    return {"train": forward + backward, "inference": forward}


def run(rounds, warmup, sizes, with_gradient_norms=True):
    results = []
    setups = []
    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(keras_threads())
    for B, T, D, H in sizes:
        rng = np.random.default_rng(1)
        x = rng.standard_normal((B, T, D)).astype("float32")
        y = rng.standard_normal((B, T, 1)).astype("float32")
        models = build_pair(B, T, D, H)
        if torch is not None:
            models[TORCH] = TorchModel(models["SimpleRNN"])
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
                **_torch_comparison(record.get((TORCH, mode)), v),
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


def _torch_comparison(torch_times, vanilla_times):
    """torch.nn.RNN's median ms and median torch / VanillaRNN time ratio
    (both None without torch)."""
    if torch_times is None:
        return {"torch_ms": None, "vs_torch": None}
    t = np.array(torch_times)
    return {
        "torch_ms": 1e3 * float(np.median(t)),
        "vs_torch": float(np.median(t / vanilla_times)),
    }


def _torch_cells(r):
    if r["torch_ms"] is None:
        return "-", "torch not installed"
    return f"{r['torch_ms']:.1f}", f"**{r['vs_torch']:.2f}x**"


def markdown(results):
    lines = [
        f"| (B, T, D, H) | mode | VanillaRNN ms | SimpleRNN ms | {TORCH} ms | speedup | "
        f"vs {TORCH} | GFLOP/s (V / S) | matmul-limit fraction (V / S) | speedup ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        for mode in ("train", "inference"):
            r = row[mode]
            torch_ms, vs_torch = _torch_cells(r)
            lines.append(
                f"| {row['size']} | {mode} | {r['vanilla_ms']:.1f} | "
                f"{r['simple_ms']:.1f} | {torch_ms} | **{r['speedup']:.2f}x** | {vs_torch} | "
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
    from keras_vrnn import native

    sizes = SIZES
    if args.sizes:
        sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes.split(";")]
    import keras

    start = time.perf_counter()
    with_gradient_norms = not args.no_gradient_norms
    results = run(args.rounds, args.warmup, sizes, with_gradient_norms)
    print(
        f"# {native.cpu_model()}, {os.cpu_count()} cores, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}, commit {_git_commit()}, "
        f"{_backend_description()}, Keras {keras.__version__}, {_torch_description()}, "
        f"float32, {args.rounds} rounds, {time.perf_counter() - start:.0f} s, "
        f"VanillaRNN fused path: {_fused_path_description()}"
    )
    print(markdown(results))
    # The CPU's peak, for runs on the CPU (a GPU's is another matter).
    peak = fma_peak(keras_threads()) if _on_cpu() else None
    if peak is not None:
        print(f"\n{_peak_summary(results, peak)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "fma_peak": peak}, f, indent=2)


def _peak_summary(results, peak):
    """How much of the FMA peak (measured now, after the rounds) each size reaches."""
    parts = [
        f"{row['size']} train {100 * row['train']['vanilla_gflops'] / peak['gflops']:.0f}%, "
        f"inference {100 * row['inference']['vanilla_gflops'] / peak['gflops']:.0f}%"
        for row in results
    ]
    return (
        f"FMA peak ({peak['threads']} threads, {peak['vector_width']}-wide float32 FMAs on "
        f"registers, benchmarks/fma_peak.cc): {peak['gflops']:.0f} GFLOP/s. VanillaRNN "
        "reaches: " + "; ".join(parts) + "."
    )


def _on_cpu():
    import keras

    if keras.backend.backend() == "torch":  # Keras takes CUDA where there is one
        return not import_torch().cuda.is_available()
    if keras.backend.backend() == "jax":
        import jax

        return jax.devices()[0].platform == "cpu"
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")


def _git_commit():
    """The repository's short HEAD commit, "+changes" appended when tracked
    files are modified; "unknown" without git or outside a repository."""
    repo = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+changes" if changed else "")


def _torch_description():
    torch = import_torch()
    if torch is None:
        return "torch not installed"
    if torch.cuda.is_available():
        return f"torch {torch.__version__} ({torch.cuda.get_device_name()}, cuDNN)"
    return f"torch {torch.__version__} (CPU, {torch.get_num_threads()} threads)"


def _backend_description():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return f"JAX {jax.__version__} on {device.platform.upper()} ({device.device_kind})"
    if keras.backend.backend() == "torch":
        return f"PyTorch backend on {'CPU' if _on_cpu() else 'CUDA'}"
    import tensorflow as tf

    return f"TF {tf.__version__}"


def _fused_path_description():
    import keras

    if keras.backend.backend() == "jax":
        return "lax.scan with a custom VJP (keras_vrnn.fused_jax)"
    if keras.backend.backend() == "torch":
        return "torch's RNN kernel, torch._VF.rnn_tanh (keras_vrnn.fused_torch)"
    from keras_vrnn import native

    if native.library() is not None:
        return f"native kernels ({native.kernels()})"
    return f"XLA loops (native kernels unavailable: {native.unavailable_reason()})"


if __name__ == "__main__":
    main()
