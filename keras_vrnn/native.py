"""Native CPU kernels of the fused recurrence, built for this machine on first use.

`keras_vrnn/native/vanilla_rnn_ops.cc` holds two TensorFlow custom ops, the
forward loop and the hand-written BPTT loop of `keras_vrnn.fused_tf`, with
the batch cut into parts that run on TensorFlow's intra-op threads. On first
use it is compiled with the system C++ compiler against the installed
TensorFlow (`tf.sysconfig`), with `-O3 -march=native` so that Eigen's
products use the vector and FMA units of this CPU (this TensorFlow wheel's
own kernels are built for a generic x86-64), and cached:

    $KERAS_VRNN_CACHE, else $XDG_CACHE_HOME/keras_vrnn, else ~/.cache/keras_vrnn

one file per (source, TensorFlow version, compiler, CPU) so that a cache
shared between machines never loads code built for another CPU. Building
takes 10-20 s once; concurrent processes wait for one build (file lock).

Where it cannot be built or loaded (no compiler, no TensorFlow headers), the
fused path uses its XLA-compiled loops instead, which give the same results
more slowly, and warns once with the reason. `KERAS_VRNN_NATIVE=0` turns the
native kernels off (no build, no warning); `KERAS_VRNN_CXX` (else `CXX`, else
`c++`) names the compiler.
"""

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("native") / "vanilla_rnn_ops.cc"
# Everything the build reads: the source and the headers it includes.
SOURCES = sorted(SOURCE.parent.glob("*.[ch]*"))

_lock = threading.Lock()
_library = None
_failure = None  # why the kernels are unavailable, once known


def enabled():
    """False when `KERAS_VRNN_NATIVE` is set to 0/false/no/off."""
    return os.environ.get("KERAS_VRNN_NATIVE", "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


def cache_dir():
    """Where built kernels are kept (see the module docstring)."""
    if os.environ.get("KERAS_VRNN_CACHE"):
        return Path(os.environ["KERAS_VRNN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "keras_vrnn"


def _compiler():
    return os.environ.get("KERAS_VRNN_CXX") or os.environ.get("CXX") or "c++"


def _cpu_signature():
    """The CPU's model and feature flags: -march=native code runs only there."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [
                line
                for line in f
                if line.startswith(("flags", "model name", "Features", "CPU part"))
            ]
        return "".join(sorted(set(lines)))
    except OSError:
        import platform

        return platform.machine() + platform.processor()


def _build_command(output):
    import tensorflow as tf

    return [
        _compiler(),
        "-shared",
        "-fPIC",
        "-O3",
        "-march=native",
        "-w",
        *tf.sysconfig.get_compile_flags(),
        str(SOURCE),
        "-o",
        str(output),
        *tf.sysconfig.get_link_flags(),
    ]


def library_path():
    """The cached file for this source, TensorFlow, compiler and CPU."""
    import tensorflow as tf

    key = hashlib.sha256()
    for source in SOURCES:
        key.update(source.name.encode())
        key.update(source.read_bytes())
    key.update(tf.__version__.encode())
    key.update(" ".join(_build_command("out")).encode())
    key.update(_cpu_signature().encode())
    return cache_dir() / f"vanilla_rnn_ops-{key.hexdigest()[:16]}.so"


@contextlib.contextmanager
def _file_lock(path):
    """An exclusive lock between processes (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: builds may race, os.replace keeps them whole
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(path=None):
    """Compiles the kernels into `path` (default `library_path()`) unless there.

    Raises RuntimeError with the compiler's message when the build fails.
    """
    path = Path(path or library_path())
    if path.exists():
        return path
    if shutil.which(_compiler()) is None:
        raise RuntimeError(
            f"no C++ compiler: {_compiler()!r} was not found on PATH. Install "
            "one (e.g. g++) or name it with KERAS_VRNN_CXX=..."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.with_suffix(".lock")):
        if path.exists():  # built by another process while we waited
            return path
        fd, partial = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            done = subprocess.run(
                _build_command(partial), capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"compiling {SOURCE.name} failed (exit {done.returncode}):\n"
                    + done.stderr[-2000:]
                )
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    return path


def library():
    """The loaded kernels (a module with `keras_vrnn_forward/backward`), or None.

    Built and loaded on the first call; None (with one warning giving the
    reason) where that is impossible, or when disabled by KERAS_VRNN_NATIVE=0.
    """
    global _library, _failure
    if not enabled():
        return None
    with _lock:
        if _library is None and _failure is None:
            try:
                import tensorflow as tf

                _library = tf.load_op_library(str(build()))
            except Exception as error:  # any failure means: use the XLA loops
                _failure = f"{type(error).__name__}: {error}"
                warnings.warn(
                    "keras_vrnn: the native CPU kernels are unavailable, the "
                    "fused path uses its XLA loops instead (same results, "
                    f"slower). Reason: {_failure}. Set KERAS_VRNN_NATIVE=0 to "
                    "silence this.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return _library


def kernels():
    """What the loaded build runs (step kernels or Eigen, per dtype), or None."""
    lib = library()
    return None if lib is None else lib.keras_vrnn_kernels().numpy().decode()


def unavailable_reason():
    """Why `library()` gave None (after a call), else None."""
    if not enabled():
        return "disabled by KERAS_VRNN_NATIVE"
    return _failure


if __name__ == "__main__":  # python -m keras_vrnn.native: build now, say where
    print(build())
    print(kernels())
    sys.exit(0)
