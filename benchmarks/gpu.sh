#!/usr/bin/env bash
# The GPU check of the fast path, one script for a machine with an NVIDIA GPU,
# JAX and PyTorch (TensorFlow is not needed): VanillaRNN on the JAX and the
# PyTorch backends against Keras' SimpleRNN and torch.nn.RNN (cuDNN) run in the
# same process, train step and inference, at the benchmark's four sizes and
# two larger ones, with the cost of one gradient-norm measurement per size.
#
#   bash benchmarks/gpu.sh     # tables on stdout, JSON and tables in $OUT (default gpu_results/)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_results}"
mkdir -p "$out"
sizes="32,100,32,128;64,200,64,256;128,50,16,64;16,1000,8,64;256,200,128,512;64,1000,64,1024"
for backend in torch jax; do
  KERAS_BACKEND="$backend" "${PYTHON:-python}" benchmarks/benchmark.py --rounds "${ROUNDS:-20}" \
    --sizes "$sizes" --json "$out/$backend.json" | tee "$out/$backend.md"
done
