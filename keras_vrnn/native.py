"""Native CPU kernels of the fused recurrence, built for this CPU's vector unit.

`native/vanilla_rnn_ops.cc`: two TensorFlow custom ops, the forward loop and
the hand-written BPTT loop of `keras_vrnn.fused_tf`, the batch cut into parts
run on TensorFlow's intra-op threads. Compiled with the system C++ compiler
against the installed TensorFlow (`tf.sysconfig`) for the instruction set the
CPU's features (`/proc/cpuinfo`) allow:

- "avx512": AVX-512 F/CD/BW/DQ/VL (Intel Skylake-SP on, AMD Zen 4 on):
  16-wide float32 step kernels, Eigen on AVX-512 for float64;
- "avx2": AVX2 and FMA (Intel Haswell on, AMD Zen 1-3): 8-wide.

The flags name exactly those features, not `-march=native`, which would also
turn on extensions TensorFlow's bundled Eigen does not compile with
(AVX512-FP16). Other CPUs (no AVX2/FMA, ARM) use the XLA loops: same results,
slower.

The build is cached per (source, TensorFlow version, compiler, flags, CPU),
so a shared cache never loads code built for another CPU, in
$KERAS_VRNN_CACHE, else $XDG_CACHE_HOME/keras_vrnn, else ~/.cache/keras_vrnn.
It runs once, ahead of time in `make run` / `make test` (or on first use);
concurrent processes wait for one build (file lock). A failed build is
recorded and not retried for the same key: later processes warn once and use
the XLA loops, until the key changes or `python -m keras_vrnn.native
--rebuild` runs.

Environment: `KERAS_VRNN_NATIVE=0` turns the kernels off (no build, no
warning); `KERAS_VRNN_ISA=avx2` builds the AVX2 kernels on an AVX-512 CPU;
`KERAS_VRNN_CXX` (else `CXX`, else `c++`) names the compiler.
`python -m keras_vrnn.native [--rebuild]` builds now and says which kernels
each dtype runs.
"""

import argparse
import contextlib
import functools
import hashlib
import os
import platform
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

_AVX2_FLAGS = ("-mavx2", "-mfma", "-mf16c")
_AVX512_FLAGS = ("-mavx512f", "-mavx512cd", "-mavx512bw", "-mavx512dq", "-mavx512vl")
# Instruction sets, widest first: the CPU features each needs (as
# /proc/cpuinfo names them) and the compiler flags that turn on exactly those.
ISAS = {
    "avx512": (
        {"avx2", "fma", "f16c", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"},
        _AVX2_FLAGS + _AVX512_FLAGS,
    ),
    "avx2": ({"avx2", "fma", "f16c"}, _AVX2_FLAGS),
}

_lock = threading.Lock()
_library = None
_failure = None  # why the kernels are unavailable, once known


def enabled():
    """False when `KERAS_VRNN_NATIVE` is set to 0/false/no/off."""
    value = os.environ.get("KERAS_VRNN_NATIVE", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def cache_dir():
    """Where built kernels are kept (see the module docstring)."""
    if os.environ.get("KERAS_VRNN_CACHE"):
        return Path(os.environ["KERAS_VRNN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "keras_vrnn"


def _compiler():
    return os.environ.get("KERAS_VRNN_CXX") or os.environ.get("CXX") or "c++"


@functools.lru_cache(maxsize=None)
def _compiler_identity(compiler):
    """The compiler's resolved path and version line (part of the cache key)."""
    path = shutil.which(compiler)
    if path is None:
        return compiler
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        version = done.stdout.splitlines()[0] if done.stdout else ""
    except (OSError, subprocess.SubprocessError):
        version = ""
    return f"{os.path.realpath(path)} {version}"


def _cpuinfo_lines(prefixes):
    try:
        with open("/proc/cpuinfo") as f:
            return sorted({line.strip() for line in f if line.startswith(prefixes)})
    except OSError:
        return []


def cpu_features():
    """The CPU's feature flags, as /proc/cpuinfo names them (empty elsewhere)."""
    return {flag for line in _cpuinfo_lines(("flags",)) for flag in line.split(":")[-1].split()}


def cpu_model():
    """The CPU's model name ("Intel(R) Xeon(R) ...", or the machine type)."""
    for line in _cpuinfo_lines(("model name",)):
        return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_signature():
    """The CPU's model and feature flags: code built for them runs there."""
    lines = _cpuinfo_lines(("flags", "model name", "Features", "CPU part"))
    return "\n".join(lines) or platform.machine() + platform.processor()


def choose_isa(features, machine=None):
    """The widest entry of ISAS that a CPU with `features` runs, or None.

    `KERAS_VRNN_ISA` names a narrower one to use instead. Raises ValueError
    when it names none of ISAS.
    """
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64"):
        return None
    wanted = os.environ.get("KERAS_VRNN_ISA", "").strip().lower()
    if wanted and wanted not in ISAS:
        raise ValueError(
            f"KERAS_VRNN_ISA must be one of {sorted(ISAS)} or unset. "
            f"Received: KERAS_VRNN_ISA={wanted!r}"
        )
    names = list(ISAS)
    for name in names[names.index(wanted) :] if wanted else names:
        if ISAS[name][0] <= set(features):
            return name
    return None


def _unsupported_reason(features):
    machine = platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        return (
            f"this CPU is {machine}; the native kernels are built for x86-64 "
            "CPUs with AVX2 and FMA"
        )
    missing = sorted(ISAS["avx2"][0] - set(features))
    return f"this CPU lacks {', '.join(missing)} (the native kernels need AVX2 and FMA)"


def _isa_or_raise(isa):
    """`isa`, else this CPU's (`choose_isa`); RuntimeError where it has none."""
    isa = isa or choose_isa(cpu_features())
    if isa is None:
        raise RuntimeError(_unsupported_reason(cpu_features()))
    return isa


def build_flags(isa):
    """The compiler flags of one entry of ISAS (besides TensorFlow's own)."""
    return ["-shared", "-fPIC", "-O3", "-w", *ISAS[isa][1]]


def _build_command(output, isa):
    import tensorflow as tf

    return [_compiler(), *build_flags(isa), *tf.sysconfig.get_compile_flags(),
            str(SOURCE), "-o", str(output), *tf.sysconfig.get_link_flags()]


def library_path(isa=None):
    """The cached file for this source, TensorFlow, compiler, flags and CPU."""
    import tensorflow as tf

    isa = _isa_or_raise(isa)
    key = hashlib.sha256()
    for source in SOURCES:
        key.update(source.name.encode())
        key.update(source.read_bytes())
    key.update(tf.__version__.encode())
    key.update(_compiler_identity(_compiler()).encode())
    # The command without its paths: another checkout or venv of the same
    # source and TensorFlow builds the same library.
    command = " ".join(_build_command("out", isa)).replace(str(SOURCE), SOURCE.name)
    key.update(command.replace(tf.sysconfig.get_lib(), "<tensorflow>").encode())
    key.update(_cpu_signature().encode())
    return cache_dir() / f"vanilla_rnn_ops-{isa}-{key.hexdigest()[:16]}.so"


def failure_record(path):
    """Where a failed build of `path` is recorded."""
    return Path(path).with_suffix(".failed")


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


def _check_headers():
    import tensorflow as tf

    header = Path(tf.sysconfig.get_include()) / "tensorflow" / "core" / "framework" / "op.h"
    if not header.exists():
        raise RuntimeError(
            f"TensorFlow's C++ headers are missing ({header} not found); "
            "reinstall tensorflow from a wheel that ships them"
        )


def build(path=None, isa=None, rebuild=False):
    """Compiles the kernels for `isa` into `path` (default `library_path()`).

    Returns at once when the file exists. A failed compilation is recorded
    (`failure_record(path)`) and raises RuntimeError with the compiler's
    message; later calls raise at once, without compiling, until `rebuild`
    (or a change of source, TensorFlow, compiler, flags or CPU).
    """
    isa = _isa_or_raise(isa)
    path = Path(path or library_path(isa))
    record = failure_record(path)
    if rebuild:
        for stale in (path, record):
            stale.unlink(missing_ok=True)
    if path.exists():
        return path
    if record.exists():
        raise RuntimeError(
            f"the build failed before ({record.read_text().splitlines()[0]}); the "
            f"compiler's message is in {record}. Run `python -m keras_vrnn.native "
            "--rebuild` to try again"
        )
    if shutil.which(_compiler()) is None:
        raise RuntimeError(
            f"no C++ compiler: {_compiler()!r} was not found on PATH. Install "
            "one (e.g. g++) or name it with KERAS_VRNN_CXX=..."
        )
    _check_headers()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.with_suffix(".lock")):
        if path.exists() or record.exists():  # built (or failed) while we waited
            return build(path, isa)
        _compile(path, isa, record)
    return path


def _compile(path, isa, record):
    fd, partial = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    command = _build_command(partial, isa)
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            summary = f"compiling {SOURCE.name} failed (exit {done.returncode})"
            record.write_text(f"{summary}\n$ {' '.join(command)}\n{done.stderr}")
            raise RuntimeError(f"{summary}:\n{done.stderr[-2000:]}")
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def library():
    """The loaded kernels (a module with `keras_vrnn_forward/backward`), or None.

    Built (see `build`) and loaded on the first call; None, with one warning
    giving the reason, where that is impossible, or when disabled by
    KERAS_VRNN_NATIVE=0.
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
    """What the loaded build runs per dtype, e.g. "float32: AVX-512 step
    kernels (AVX2 also built); float64: Eigen (AVX-512)", or None."""
    lib = library()
    return None if lib is None else lib.keras_vrnn_kernels().numpy().decode()


def unavailable_reason():
    """Why `library()` gave None (after a call), else None."""
    if not enabled():
        return "disabled by KERAS_VRNN_NATIVE"
    return _failure


def main(argv=None):
    """`python -m keras_vrnn.native [--rebuild]`: build now, say what runs.

    Exit 0 when the kernels are loaded or this CPU has none to build (the
    XLA loops serve it), 1 when a build for this CPU failed.
    """
    parser = argparse.ArgumentParser(
        prog="python -m keras_vrnn.native", description="Builds the native CPU "
        "kernels of keras_vrnn for this CPU and says which kernels each dtype runs.")
    parser.add_argument("--rebuild", action="store_true",
                        help="compile again, even after a recorded failure")
    args = parser.parse_args(argv)
    isa = choose_isa(cpu_features())
    print(f"CPU: {cpu_model()} ({isa or 'no native kernels'})")
    if not enabled():
        print("native kernels: disabled by KERAS_VRNN_NATIVE")
        print("float32, float64: XLA loops")
        return 0
    if isa is not None:
        print("flags: " + " ".join(ISAS[isa][1]))
        try:
            print(f"library: {build(rebuild=args.rebuild)}")
        except RuntimeError:
            pass  # library() below warns with the reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        described = kernels()
    if described is None:
        print(f"native kernels unavailable: {unavailable_reason()}")
        print("float32, float64: XLA loops")
        return 0 if isa is None else 1
    for part in described.split("; "):
        print(part)
    return 0


if __name__ == "__main__":
    sys.exit(main())
