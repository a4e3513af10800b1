// Native CPU kernels of the fused vanilla-RNN recurrence (see keras_vrnn/native.py).
//
//   forward:  hs[:, t] = act(x[:, t] @ W + b + (hs[:, t-1] * m) @ U) + probe[:, t]
//   backward: dh_t = upstream[:, t] + carry, dz_t = dh_t * act'(z_t),
//             carry = (dz_t @ U^T) * m, dU = sum_t (h_{t-1} * m)^T dz_t,
//             dW = sum_t x_t^T dz_t, db = sum_t dz_t
//   (dL/dx = dZ @ W^T is left to TensorFlow, which prunes it when unused.)
//
// Why native code: on a CPU a vanilla RNN step is a tiny (batch, units) x
// (units, units) product, so per-step framework overhead dominates, and this
// TensorFlow wheel's own matmul kernels are built for a generic x86-64 CPU.
// Compiled here for the host CPU's instruction set, AVX2 or AVX-512 (the
// flags are chosen in keras_vrnn/native.py). In float32 the steps run on the
// register-tiled kernels of step_kernels.h, which fuse each step's products
// with its elementwise work, 16 floats wide in an AVX-512 build (8 with
// vector_width=8), 8 in an AVX2 one; float64 runs on Eigen's GEMM. Each call
// cuts the batch into parts that run on TensorFlow's intra-op threads: every
// row of the batch is its own recurrence, so the parts give exactly the
// numbers of the whole batch.
//
// Layout: batch-major, row-major, like the Keras layer: inputs x (B, S, D);
// probe, upstream and hs (B, S, H); h0 and the recurrent-dropout mask m
// (B, H); W (D, H), b (H), U (H, H). An absent bias, mask or probe is an
// empty tensor. The forward keeps nothing but hs: the backward needs only
// hs, x and the weights (memory O(B * S * (H + D))).

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "Eigen/Core"
#include "step_kernels.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace keras_vrnn {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;
using ::tensorflow::shape_inference::InferenceContext;

Activation ParseActivation(const std::string& name) {
  if (name == "tanh") return Activation::kTanh;
  if (name == "sigmoid") return Activation::kSigmoid;
  if (name == "relu") return Activation::kRelu;
  return Activation::kLinear;
}

template <typename T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// A (rows, H) view of one time step of a (B, S, H) tensor: rows S*H apart.
template <typename T>
using StepView = Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using ConstStepView = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>;

// z -> act(z), in place (z a matrix or a strided view of one).
template <typename Z>
void Activate(Activation act, Z& z) {
  using T = typename Z::Scalar;
  switch (act) {
    case Activation::kTanh:
      z.array() = z.array().tanh();
      break;
    case Activation::kSigmoid:
      z.array() = (T(1) + (-z.array()).exp()).inverse();
      break;
    case Activation::kRelu:
      z.array() = z.array().cwiseMax(T(0));
      break;
    case Activation::kLinear:
      break;
  }
}

// dz = dh * act'(z), act' written in terms of a = act(z), stored into dz.
template <typename A, typename Dh, typename Dz>
void StoreDz(Activation act, const A& a, const Dh& dh, Dz& dz) {
  using T = typename Dz::Scalar;
  switch (act) {
    case Activation::kTanh:
      dz = (dh.array() * (T(1) - a.array() * a.array())).matrix();
      break;
    case Activation::kSigmoid:
      dz = (dh.array() * a.array() * (T(1) - a.array())).matrix();
      break;
    case Activation::kRelu:
      dz = (dh.array() * (a.array() > T(0)).template cast<T>()).matrix();
      break;
    case Activation::kLinear:
      dz = dh;
      break;
  }
}

// StoreDz for the step at `offset` of (batch, steps, units) tensors, where
// act(z) = hs - probe (probe may be null) and dz is written in place.
template <typename T, typename Dh>
void StoreStepDz(Activation act, const T* hs, const T* probe, int64_t offset, int64_t rows,
                 int64_t units, const Eigen::OuterStride<>& stride, const Dh& dh, T* dz_data) {
  Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>> dz(dz_data + offset, rows, units, stride);
  Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>> h(hs + offset, rows, units, stride);
  if (probe) {
    StoreDz(act, h - Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>(probe + offset, rows,
                                                                          units, stride),
            dh, dz);
  } else {
    StoreDz(act, h, dh, dz);
  }
}

// `name` must be a (rows, cols) matrix.
::tensorflow::Status CheckMatrix(const char* name, const Tensor& t, int64_t rows, int64_t cols) {
  if (t.dims() != 2 || t.dim_size(0) != rows || t.dim_size(1) != cols) {
    return InvalidArgument(name, " must be (", rows, ", ", cols, "). Received shape ",
                           t.shape().DebugString());
  }
  return ::tensorflow::OkStatus();
}

// Checks shared by both ops; sets batch, length, features, units.
::tensorflow::Status CheckShapes(const Tensor& inputs, const Tensor& kernel,
                                 const Tensor& bias, const Tensor& h0,
                                 const Tensor& recurrent, const Tensor& mask,
                                 const Tensor& probe, int64_t* batch,
                                 int64_t* length, int64_t* features,
                                 int64_t* units) {
  if (inputs.dims() != 3) {
    return InvalidArgument("inputs must be (batch, timesteps, features). Received shape ",
                           inputs.shape().DebugString());
  }
  *batch = inputs.dim_size(0);
  *length = inputs.dim_size(1);
  *features = inputs.dim_size(2);
  if (h0.dims() != 2 || h0.dim_size(0) != *batch) {
    return InvalidArgument("h0 must be (", *batch, ", units). Received shape ",
                           h0.shape().DebugString());
  }
  *units = h0.dim_size(1);
  TF_RETURN_IF_ERROR(CheckMatrix("kernel", kernel, *features, *units));
  if (bias.NumElements() != 0 && (bias.dims() != 1 || bias.dim_size(0) != *units)) {
    return InvalidArgument("bias must be empty or (", *units, ",). Received shape ",
                           bias.shape().DebugString());
  }
  TF_RETURN_IF_ERROR(CheckMatrix("recurrent_kernel", recurrent, *units, *units));
  if (mask.NumElements() != 0 && mask.shape() != h0.shape()) {
    return InvalidArgument("rec_mask must be empty or shaped like h0 ",
                           h0.shape().DebugString(), ". Received shape ",
                           mask.shape().DebugString());
  }
  const TensorShape steps({*batch, *length, *units});
  if (probe.NumElements() != 0 && probe.shape() != steps) {
    return InvalidArgument("probe must be empty or ", steps.DebugString(),
                           ". Received shape ", probe.shape().DebugString());
  }
  return ::tensorflow::OkStatus();
}

// Whether the step kernels (step_kernels.h) run an op: float32 in a build
// for a CPU with AVX2/FMA. Else Eigen.
template <typename T>
constexpr bool UseStepKernels() {
#ifdef KERAS_VRNN_STEP_KERNELS
  return std::is_same<T, float>::value;
#else
  return false;
#endif
}

// The widest vector of the step kernels in this build, in floats: 16 in a
// build for AVX-512 (which has the 8-wide kernels too), else 8.
#ifdef KERAS_VRNN_STEP_KERNELS_AVX512
constexpr int kWidestVector = 16;
#else
constexpr int kWidestVector = 8;
#endif

#ifdef KERAS_VRNN_STEP_KERNELS
// block * mask (rows, units) into `out`: h_{t-1} as recurrent dropout sees it.
step_kernels::ConstBlock MaskedRows(step_kernels::ConstBlock block,
                                    const Eigen::Map<const Matrix<float>>& mask,
                                    Matrix<float>* out) {
  *out = Eigen::Map<const Matrix<float>, 0, Eigen::OuterStride<>>(
             block.data, mask.rows(), mask.cols(), Eigen::OuterStride<>(block.ld))
             .cwiseProduct(mask);
  return {out->data(), out->cols()};
}
#endif

// Rows [begin, end) of the batch in `parts` near-equal parts.
struct Partition {
  int64_t batch, parts;
  int64_t begin(int64_t p) const { return batch * p / parts; }
  int64_t end(int64_t p) const { return batch * (p + 1) / parts; }
};

// Parts to cut a batch into: one per intra-op thread, at least
// `min_part_rows` rows each (smaller products do not pay for a thread).
Partition Partitioned(OpKernelContext* ctx, int64_t batch, int64_t min_part_rows) {
  const int64_t threads =
      ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads();
  int64_t parts = std::min<int64_t>(threads, batch / std::max<int64_t>(min_part_rows, 1));
  return Partition{batch, std::max<int64_t>(parts, 1)};
}

template <typename F>
void RunParts(OpKernelContext* ctx, const Partition& partition, F&& run_part) {
  if (partition.parts == 1) {
    run_part(0);
    return;
  }
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  workers->ParallelFor(partition.parts, tsl::thread::ThreadPool::SchedulingParams::Fixed(1),
                       [&](int64_t first, int64_t last) {
                         for (int64_t p = first; p < last; ++p) run_part(p);
                       });
}

// The operands both ops share, read from `ctx` from input `first` on and
// checked (CheckShapes), and the ops' attributes.
struct Operands {
  const Tensor *inputs, *kernel, *bias, *h0, *recurrent_kernel, *mask, *probe;
  int64_t batch, length, features, units;
};

class RecurrenceOp : public OpKernel {
 public:
  explicit RecurrenceOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string act;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("activation", &act));
    act_ = ParseActivation(act);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("min_part_rows", &min_part_rows_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("vector_width", &vector_width_));
    if (vector_width_ == 0) vector_width_ = kWidestVector;
    OP_REQUIRES(ctx, vector_width_ == 8 || vector_width_ == kWidestVector,
                InvalidArgument("vector_width must be 0 (the widest this build has), 8",
                                kWidestVector == 16 ? " or 16" : "",
                                ". Received: vector_width=", vector_width_));
  }

 protected:
  static ::tensorflow::Status Read(OpKernelContext* ctx, int first, Operands* o) {
    const Tensor** slots[] = {&o->inputs, &o->kernel, &o->bias, &o->h0,
                              &o->recurrent_kernel, &o->mask, &o->probe};
    for (int i = 0; i < 7; ++i) *slots[i] = &ctx->input(first + i);
    return CheckShapes(*o->inputs, *o->kernel, *o->bias, *o->h0, *o->recurrent_kernel,
                       *o->mask, *o->probe, &o->batch, &o->length, &o->features,
                       &o->units);
  }

  // Calls f(isa) with the step kernels' instruction set for this op's
  // vector width: step_kernels::Avx512 (16 floats) or Avx2 (8).
  template <typename F>
  void WithIsa(F&& f) const {
#ifdef KERAS_VRNN_STEP_KERNELS_AVX512
    if (vector_width_ == 16) return f(step_kernels::Avx512());
#endif
#ifdef KERAS_VRNN_STEP_KERNELS
    f(step_kernels::Avx2());
#endif
  }

  Activation act_;
  int64_t min_part_rows_;
  // Floats per vector in the float32 step kernels (see WithIsa).
  int vector_width_;
};

template <typename T>
class ForwardOp : public RecurrenceOp {
 public:
  using RecurrenceOp::RecurrenceOp;

  void Compute(OpKernelContext* ctx) override {
    Operands o;
    OP_REQUIRES_OK(ctx, Read(ctx, 0, &o));
    const Tensor &inputs = *o.inputs, &kernel = *o.kernel, &bias = *o.bias, &h0 = *o.h0,
                 &recurrent_kernel = *o.recurrent_kernel, &mask = *o.mask, &probe = *o.probe;
    const int64_t batch = o.batch, length = o.length, features = o.features, units = o.units;
    Tensor* hs = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({batch, length, units}), &hs));
    if (hs->NumElements() == 0) return;

    const T* x_data = inputs.flat<T>().data();
    const T* h0_data = h0.flat<T>().data();
    const T* m_data = mask.NumElements() ? mask.flat<T>().data() : nullptr;
    const T* probe_data = probe.NumElements() ? probe.flat<T>().data() : nullptr;
    T* hs_data = hs->flat<T>().data();
    Eigen::Map<const Matrix<T>> w(kernel.flat<T>().data(), features, units);
    Eigen::Map<const Matrix<T>> recurrent(recurrent_kernel.flat<T>().data(), units, units);
    const int64_t row_stride = length * units;
    const Partition partition = Partitioned(ctx, batch, min_part_rows_);

    RunParts(ctx, partition, [&](int64_t p) {
      const int64_t b0 = partition.begin(p), rows = partition.end(p) - b0;
      if (UseStepKernels<T>()) {
        return StepKernelsPart(b0, rows, length, features, units, x_data, kernel.flat<T>().data(),
                               bias.NumElements() ? bias.flat<T>().data() : nullptr, h0_data,
                               recurrent_kernel.flat<T>().data(), m_data, probe_data, hs_data);
      }
      const Eigen::OuterStride<> stride(row_stride);
      // All steps of this part's rows projected at once, x W + b, into hs,
      // which each step then overwrites with its activation.
      Eigen::Map<Matrix<T>> all_steps(hs_data + b0 * row_stride, rows * length, units);
      all_steps.noalias() =
          Eigen::Map<const Matrix<T>>(x_data + b0 * length * features, rows * length, features) * w;
      if (bias.NumElements()) {
        all_steps.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(
            bias.flat<T>().data(), units);
      }
      Eigen::Map<const Matrix<T>> m(m_data ? m_data + b0 * units : nullptr,
                                     m_data ? rows : 0, units);
      Matrix<T> masked(m_data ? rows : 0, units);
      // h_{t-1}: h0's rows, then the step just written to hs (no copy).
      ConstStepView<T> h_prev(h0_data + b0 * units, rows, units, Eigen::OuterStride<>(units));
      for (int64_t t = 0; t < length; ++t) {
        const int64_t offset = b0 * row_stride + t * units;
        StepView<T> h(hs_data + offset, rows, units, stride);
        // z = projected_t + h_{t-1} U, accumulated in place, then act(z).
        if (m_data) {
          masked = h_prev.cwiseProduct(m);
          h.noalias() += masked * recurrent;
        } else {
          h.noalias() += h_prev * recurrent;
        }
        Activate(act_, h);
        if (probe_data) h += ConstStepView<T>(probe_data + offset, rows, units, stride);
        new (&h_prev) ConstStepView<T>(hs_data + offset, rows, units, stride);
      }
    });
  }

 private:
  // Rows [b0, b0 + rows) by step_kernels::ForwardStep: the projection, bias
  // and activation of a step in the same registers as its recurrent product.
  void StepKernelsPart(int64_t b0, int64_t rows, int64_t length, int64_t features,
                       int64_t units, const T* x, const T* w, const T* bias, const T* h0,
                       const T* recurrent, const T* m, const T* probe, T* hs) const {
#ifdef KERAS_VRNN_STEP_KERNELS
    if constexpr (std::is_same<T, float>::value) {
      namespace sk = step_kernels;
      WithIsa([&](auto isa) {
        using I = decltype(isa);
        const int64_t row_stride = length * units;
        Matrix<float> masked(m ? rows : 0, units);
        Eigen::Map<const Matrix<float>> mask(m ? m + b0 * units : nullptr, m ? rows : 0, units);
        sk::ConstBlock h_prev{h0 + b0 * units, units};
        for (int64_t t = 0; t < length; ++t) {
          const int64_t offset = b0 * row_stride + t * units;
          if (m) h_prev = MaskedRows(h_prev, mask, &masked);
          if (t + 1 < length) {  // the next step's inputs (and probe)
            sk::PrefetchRows(rows, features,
                             {x + (b0 * length + t + 1) * features, length * features});
            if (probe) sk::PrefetchRows(rows, units, {probe + offset + units, row_stride});
          }
          sk::ForwardStep<I>(act_, rows, features, units,
                          {x + (b0 * length + t) * features, length * features}, w, bias, h_prev,
                          recurrent, {probe ? probe + offset : nullptr, row_stride},
                          {hs + offset, row_stride});
          h_prev = sk::ConstBlock{hs + offset, row_stride};
        }
      });
    }
#endif
  }
};

template <typename T>
class BackwardOp : public RecurrenceOp {
 public:
  explicit BackwardOp(OpKernelConstruction* ctx) : RecurrenceOp(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("weight_gradients", &weight_gradients_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& upstream = ctx->input(0);
    const Tensor& hs = ctx->input(1);
    Operands o;
    OP_REQUIRES_OK(ctx, Read(ctx, 2, &o));
    const Tensor &inputs = *o.inputs, &kernel = *o.kernel, &bias = *o.bias, &h0 = *o.h0,
                 &recurrent_kernel = *o.recurrent_kernel, &mask = *o.mask, &probe = *o.probe;
    const int64_t batch = o.batch, length = o.length, features = o.features, units = o.units;
    const TensorShape steps({batch, length, units});
    OP_REQUIRES(ctx, hs.shape() == steps && upstream.shape() == steps,
                InvalidArgument("hs and upstream must be ", steps.DebugString(),
                                ". Received shapes ", hs.shape().DebugString(), " and ",
                                upstream.shape().DebugString()));
    const bool with_probe = probe.NumElements() != 0;
    Tensor *dz = nullptr, *dh = nullptr, *dh0 = nullptr;
    Tensor *d_kernel = nullptr, *d_bias = nullptr, *d_recurrent_kernel = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, steps, &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, with_probe ? steps : TensorShape({0}), &dh));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, h0.shape(), &dh0));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, kernel.shape(), &d_kernel));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({units}), &d_bias));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(5, recurrent_kernel.shape(), &d_recurrent_kernel));
    Eigen::Map<Matrix<T>> d_w(d_kernel->flat<T>().data(), features, units);
    Eigen::Map<Matrix<T>> d_b(d_bias->flat<T>().data(), 1, units);
    Eigen::Map<Matrix<T>> d_recurrent(d_recurrent_kernel->flat<T>().data(), units, units);
    d_w.setZero();
    d_b.setZero();
    d_recurrent.setZero();
    if (upstream.NumElements() == 0) {
      dh0->flat<T>().setZero();
      return;
    }

    const T* g_data = upstream.flat<T>().data();
    const T* hs_data = hs.flat<T>().data();
    const T* x_data = inputs.flat<T>().data();
    const T* h0_data = h0.flat<T>().data();
    const T* m_data = mask.NumElements() ? mask.flat<T>().data() : nullptr;
    const T* probe_data = with_probe ? probe.flat<T>().data() : nullptr;
    T* dz_data = dz->flat<T>().data();
    T* dh_data = with_probe ? dh->flat<T>().data() : nullptr;
    T* dh0_data = dh0->flat<T>().data();
    Eigen::Map<const Matrix<T>> recurrent(recurrent_kernel.flat<T>().data(), units, units);
    const int64_t row_stride = length * units;
    const Partition partition = Partitioned(ctx, batch, min_part_rows_);
    // Each part's weight gradients, summed after the parts are done.
    std::vector<Matrix<T>> d_w_parts(partition.parts), d_recurrent_parts(partition.parts);
    std::vector<Matrix<T>> d_b_parts(partition.parts);

    // U^T, row-major: the B operand of the backward step kernel.
    const bool step_kernels = UseStepKernels<T>();
    Matrix<T> recurrent_t;
    if (step_kernels) recurrent_t = recurrent.transpose();

    RunParts(ctx, partition, [&](int64_t p) {
      const int64_t b0 = partition.begin(p), rows = partition.end(p) - b0;
      d_recurrent_parts[p] = Matrix<T>::Zero(units, units);
      d_w_parts[p] = Matrix<T>::Zero(features, units);
      d_b_parts[p] = Matrix<T>::Zero(1, units);
      if (step_kernels) {
        StepKernelsLoop(b0, rows, length, features, units, g_data, hs_data, x_data, h0_data,
                        m_data, probe_data, recurrent_t.data(), dz_data, dh_data, dh0_data,
                        d_recurrent_parts[p].data(), d_w_parts[p].data(), d_b_parts[p].data());
        return;
      }
      EigenLoop(b0, rows, length, units, g_data, hs_data, h0_data, m_data, probe_data,
                recurrent, dz_data, dh_data, dh0_data, d_recurrent_parts[p]);
      if (!weight_gradients_) return;
      // dW = X^T dZ and db = column sums of dZ, single GEMMs over this
      // part's rows * steps.
      Eigen::Map<const Matrix<T>> dz_part(dz_data + b0 * row_stride, rows * length, units);
      d_w_parts[p].noalias() =
          Eigen::Map<const Matrix<T>>(x_data + b0 * length * features, rows * length, features)
              .transpose() *
          dz_part;
      d_b_parts[p] = dz_part.colwise().sum();
    });
    for (int64_t p = 0; p < partition.parts; ++p) {
      d_w += d_w_parts[p];
      d_b += d_b_parts[p];
      d_recurrent += d_recurrent_parts[p];
    }
  }

 private:
  // The BPTT loop over rows [b0, b0 + rows): fills dz (and dh with a probe)
  // for every step, dh0, and accumulates d_recurrent, by Eigen.
  void EigenLoop(int64_t b0, int64_t rows, int64_t length, int64_t units, const T* g_data,
                 const T* hs_data, const T* h0_data, const T* m_data, const T* probe_data,
                 const Eigen::Map<const Matrix<T>>& recurrent, T* dz_data, T* dh_data,
                 T* dh0_data, Matrix<T>& d_recurrent) const {
    const int64_t row_stride = length * units;
    Eigen::Map<const Matrix<T>> m(m_data ? m_data + b0 * units : nullptr,
                                   m_data ? rows : 0, units);
    const Eigen::OuterStride<> stride(row_stride);
    // grad = dL/dh_t: the upstream gradient of step t, into which the
    // product carried back from step t+1 is accumulated.
    Matrix<T> grad(rows, units), carry(m_data ? rows : 0, units);
    Matrix<T> masked_prev(m_data ? rows : 0, units);
    for (int64_t t = length - 1; t >= 0; --t) {
      const int64_t offset = b0 * row_stride + t * units;
      if (t == length - 1) {
        grad = ConstStepView<T>(g_data + offset, rows, units, stride);
      }
      if (dh_data) StepView<T>(dh_data + offset, rows, units, stride) = grad;
      StoreStepDz(act_, hs_data, probe_data, offset, rows, units, stride, grad, dz_data);
      ConstStepView<T> dz(dz_data + offset, rows, units, stride);
      // dU += (h_{t-1} * m)^T dz_t, while both are in cache.
      ConstStepView<T> prev =
          t > 0 ? ConstStepView<T>(hs_data + offset - units, rows, units, stride)
                : ConstStepView<T>(h0_data + b0 * units, rows, units,
                                   Eigen::OuterStride<>(units));
      if (weight_gradients_ && m_data) {
        masked_prev = prev.cwiseProduct(m);
        d_recurrent.noalias() += masked_prev.transpose() * dz;
      } else if (weight_gradients_) {
        d_recurrent.noalias() += prev.transpose() * dz;
      }
      // Next: dL/dh_{t-1} = upstream_{t-1} + (dz_t U^T) * m (dL/dh0 at t = 0).
      if (t > 0) {
        grad = ConstStepView<T>(g_data + offset - units, rows, units, stride);
      } else {
        grad.setZero();
      }
      if (m_data) {
        carry.noalias() = dz * recurrent.transpose();
        grad.array() += carry.array() * m.array();
      } else {
        grad.noalias() += dz * recurrent.transpose();
      }
    }
    Eigen::Map<Matrix<T>>(dh0_data + b0 * units, rows, units) = grad;
  }

  // EigenLoop by the step kernels, plus dW and db: per step one kernel takes
  // dz_t U^T to dL/dh_{t-1} and dz_{t-1} in registers; dU (per step only with
  // a mask), dW and db are accumulated after the loop.
  void StepKernelsLoop(int64_t b0, int64_t rows, int64_t length, int64_t features,
                       int64_t units, const T* g, const T* hs, const T* x, const T* h0,
                       const T* m, const T* probe, const T* recurrent_t, T* dz, T* dh, T* dh0,
                       T* d_recurrent, T* d_w, T* d_b) const {
#ifdef KERAS_VRNN_STEP_KERNELS
    if constexpr (std::is_same<T, float>::value) {
      namespace sk = step_kernels;
      WithIsa([&](auto isa) {
        using I = decltype(isa);
        const int64_t row_stride = length * units;
        const Eigen::OuterStride<> stride(row_stride);
        const sk::Act act = act_;
        // The last step: dL/dh = its upstream gradient alone.
        const int64_t last = b0 * row_stride + (length - 1) * units;
        ConstStepView<float> g_last(g + last, rows, units, stride);
        if (dh) StepView<float>(dh + last, rows, units, stride) = g_last;
        StoreStepDz(act_, hs, probe, last, rows, units, stride, g_last, dz);
        Eigen::Map<const Matrix<float>> mask(m ? m + b0 * units : nullptr, m ? rows : 0, units);
        Matrix<float> masked_prev(m ? rows : 0, units);
        for (int64_t t = length - 1; t >= 0; --t) {
          const int64_t offset = b0 * row_stride + t * units;
          const sk::ConstBlock dz_t{dz + offset, row_stride};
          const sk::ConstBlock prev = t > 0 ? sk::ConstBlock{hs + offset - units, row_stride}
                                            : sk::ConstBlock{h0 + b0 * units, units};
          if (m && weight_gradients_) {  // dU += (h_{t-1} * m)^T dz_t (else after the loop)
            sk::AccumulateTransposedProduct<I>(rows, units, units,
                                            MaskedRows(prev, mask, &masked_prev), dz_t,
                                            d_recurrent);
          }
          const auto at = [&](auto* data) {  // step t-1 of a (batch, steps, units) tensor
            return sk::ConstBlock{t > 0 && data ? data + offset - units : nullptr, row_stride};
          };
          sk::Block grad_out{nullptr, row_stride}, dz_out{nullptr, row_stride};
          if (t > 0) {
            if (dh) grad_out.data = dh + offset - units;
            dz_out.data = dz + offset - units;
          } else {
            grad_out = sk::Block{dh0 + b0 * units, units};
          }
          if (t > 1) {  // what the next step's BackwardStep reads beside dz
            for (const float* data : {g, hs, probe}) {
              if (data) sk::PrefetchRows(rows, units, {data + offset - 2 * units, row_stride});
            }
          }
          sk::BackwardStep<I>(act, rows, units, dz_t, recurrent_t, at(g),
                           sk::ConstBlock{m ? m + b0 * units : nullptr, units}, at(hs), at(probe),
                           grad_out, dz_out);
        }
        if (!weight_gradients_) return;
        // The weight gradients, one batch row at a time: there x_t, h_{t-1} and
        // dz_t are contiguous blocks, and the row's dz block is read from L1 by
        // all three (one pass over dz instead of one per gradient).
        //   dW = sum_t x_t^T dz_t, db = sum_t dz_t, and without a mask
        //   dU = sum_t h_{t-1}^T dz_t (with one, per step in the loop above).
        for (int64_t b = b0; b < b0 + rows; ++b) {
          const float* dz_b = dz + b * row_stride;
          if (!m) {  // steps 1.. here, step 0 (h_{-1} = h0) below
            sk::AccumulateTransposedProduct<I>(length - 1, units, units, {hs + b * row_stride, units},
                                            {dz_b + units, units}, d_recurrent);
          }
          sk::AccumulateTransposedProduct<I>(length, features, units,
                                          {x + b * length * features, features}, {dz_b, units}, d_w);
          sk::AccumulateColumnSums<I>(length, units, {dz_b, units}, d_b);
        }
        if (!m) {
          sk::AccumulateTransposedProduct<I>(rows, units, units, {h0 + b0 * units, units},
                                          {dz + b0 * row_stride, row_stride}, d_recurrent);
        }
      });
    }
#endif
  }
  // False: dz, dh and dh0 only; d_kernel, d_bias and d_recurrent_kernel are
  // left at zero (a gradient-norm measurement needs dL/dh alone).
  bool weight_gradients_ = true;
};

REGISTER_OP("KerasVrnnForward")
    .Input("inputs: T")
    .Input("kernel: T")
    .Input("bias: T")
    .Input("h0: T")
    .Input("recurrent_kernel: T")
    .Input("rec_mask: T")
    .Input("probe: T")
    .Output("hs: T")
    .Attr("T: {float, double}")
    .Attr("activation: {'tanh', 'sigmoid', 'relu', 'linear'}")
    .Attr("min_part_rows: int = 16")
    .Attr("vector_width: int = 0")
    .SetShapeFn([](InferenceContext* c) {
      // (batch, timesteps) of the inputs, units of h0.
      c->set_output(0, c->MakeShape({c->Dim(c->input(0), 0), c->Dim(c->input(0), 1),
                                     c->Dim(c->input(3), 1)}));
      return ::tensorflow::OkStatus();
    });

REGISTER_OP("KerasVrnnBackward")
    .Input("upstream: T")
    .Input("hs: T")
    .Input("inputs: T")
    .Input("kernel: T")
    .Input("bias: T")
    .Input("h0: T")
    .Input("recurrent_kernel: T")
    .Input("rec_mask: T")
    .Input("probe: T")
    .Output("d_projected: T")
    .Output("d_hs: T")
    .Output("d_h0: T")
    .Output("d_kernel: T")
    .Output("d_bias: T")
    .Output("d_recurrent_kernel: T")
    .Attr("T: {float, double}")
    .Attr("activation: {'tanh', 'sigmoid', 'relu', 'linear'}")
    .Attr("min_part_rows: int = 16")
    .Attr("vector_width: int = 0")
    .Attr("weight_gradients: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->UnknownShape());
      c->set_output(2, c->input(5));
      c->set_output(3, c->input(3));
      c->set_output(4, c->Vector(c->Dim(c->input(5), 1)));
      c->set_output(5, c->input(6));
      return ::tensorflow::OkStatus();
    });

#define REGISTER_KERNELS(T)                                                   \
  REGISTER_KERNEL_BUILDER(                                                    \
      Name("KerasVrnnForward").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      ForwardOp<T>);                                                          \
  REGISTER_KERNEL_BUILDER(                                                    \
      Name("KerasVrnnBackward").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      BackwardOp<T>);

REGISTER_KERNELS(float);
REGISTER_KERNELS(double);

// Which code this build runs, for tests and benchmarks to check and print.
class KernelsOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<::tensorflow::tstring>()() = Description();
  }

 private:
  // E.g. "float32: AVX-512 step kernels (AVX2 also built); float64: Eigen
  // (AVX-512)": the float32 kernels by default (vector_width=0), and the
  // instruction set Eigen's products were compiled for.
  static std::string Description() {
#if defined(EIGEN_VECTORIZE_AVX512)
    const std::string eigen = "Eigen (AVX-512)";
#elif defined(EIGEN_VECTORIZE_AVX2)
    const std::string eigen = "Eigen (AVX2)";
#else
    const std::string eigen = "Eigen";
#endif
    if (!UseStepKernels<float>()) return "float32, float64: " + eigen;
    const std::string widest =
        kWidestVector == 16 ? "AVX-512 step kernels (AVX2 also built)" : "AVX2 step kernels";
    return "float32: " + widest + "; float64: " + eigen;
  }
};

REGISTER_OP("KerasVrnnKernels")
    .Output("description: string")
    .SetShapeFn(::tensorflow::shape_inference::ScalarShape);
REGISTER_KERNEL_BUILDER(Name("KerasVrnnKernels").Device(::tensorflow::DEVICE_CPU), KernelsOp);

}  // namespace keras_vrnn
