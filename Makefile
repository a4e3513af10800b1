# Two entry points (see README): `make run` (set up, then the main job: the recurrent
# gain study on Shakespeare) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench native clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[experiments,test]"
	touch $(STAMP)

# The native CPU kernels, built (or found in the cache) before anything runs,
# so no training step pays for a compile. A CPU without them, or a failed
# build, is reported here and the XLA loops serve instead (hence the "-").
native: $(STAMP)
	-$(PY) -m keras_vrnn.native

run: native
	$(PY) -m experiments.gains

# The backend-neutral test files, run again on JAX and on PyTorch after the
# full run on TensorFlow (tests marked tensorflow_only skip there).
BACKEND_TESTS := tests/test_layer.py tests/test_cell.py tests/test_fused.py \
	tests/test_serialization.py tests/test_interop.py tests/test_torch_backend.py \
	tests/test_diagnostics.py tests/test_lyapunov.py tests/test_callback.py

test: native
	$(PY) -m pytest -n 2 -q
	KERAS_BACKEND=jax $(PY) -m pytest -n 2 -q $(BACKEND_TESTS)
	KERAS_BACKEND=torch $(PY) -m pytest -n 2 -q $(BACKEND_TESTS)

bench: native
	$(PY) benchmarks/benchmark.py

clean:
	rm -rf $(VENV)
