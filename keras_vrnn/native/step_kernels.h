// Register-tiled kernels for the float32 vanilla-RNN recurrence, in two
// vector widths: 8 floats (AVX2/FMA) and 16 floats (AVX-512). Included by
// vanilla_rnn_ops.cc, which uses Eigen where these do not apply (float64).
//
// Why: a step multiplies a (rows, units) block by a (units, units) matrix,
// rows and units in the tens. Eigen's general GEMM packs both operands on
// every call and then reads and writes the result once more for the bias,
// the activation and the next step's elementwise work; at these sizes that
// is about half of its time. Here each tile of the result (up to 6 rows x
// 2 vectors with AVX2's 16 registers, 6 rows x 4 vectors with AVX-512's 32)
// stays in registers from its first product to its last use: the forward
// adds x_t W and h_{t-1} U to the bias there; the backward adds dz_t U^T to
// the upstream gradient and multiplies by act'(z) there.
//
// Every kernel is a template on the instruction set `I` (Avx2, Avx512): the
// same loops, only the vector type, its width and the tile shape change, so
// both widths compute the same sums in the same order per lane.
//
// Operands are row-major with arbitrary row strides ("ld"), so one time step
// of a (batch, timesteps, units) tensor is used in place. Any number of
// columns: a last partial vector is loaded and stored under a lane mask, so
// nothing outside a block is read or written.

#ifndef KERAS_VRNN_STEP_KERNELS_H_
#define KERAS_VRNN_STEP_KERNELS_H_

namespace keras_vrnn {
enum class Activation { kTanh, kSigmoid, kRelu, kLinear };
}  // namespace keras_vrnn

#if defined(__AVX2__) && defined(__FMA__)
#define KERAS_VRNN_STEP_KERNELS 1
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__)
#define KERAS_VRNN_STEP_KERNELS_AVX512 1
#endif

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "Eigen/Core"

namespace keras_vrnn {
namespace step_kernels {

using Act = Activation;

// The instruction sets: vector type, lane mask, width, tile shape and the
// handful of operations the kernels use.
struct Avx2 {
  using Vec = __m256;
  using Lanes = __m256i;
  static constexpr int64_t kWidth = 8;
  static constexpr int kTileRows = 6;    // 6 x 2 accumulators + 3 operands = 15 of 16 registers
  static constexpr int kMaxVectors = 2;  // vectors per tile row
  static constexpr const char* kName = "AVX2";

  static Lanes All() { return _mm256_set1_epi32(-1); }
  // The first `width` (1..8) lanes.
  static Lanes First(int64_t width) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(width)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  template <bool P>
  static Vec Load(const float* p, Lanes lanes) {
    if constexpr (P) return _mm256_maskload_ps(p, lanes);
    return _mm256_loadu_ps(p);
  }
  template <bool P>
  static void Store(float* p, Lanes lanes, Vec v) {
    if constexpr (P) {
      _mm256_maskstore_ps(p, lanes, v);
    } else {
      _mm256_storeu_ps(p, v);
    }
  }
  static Vec Zero() { return _mm256_setzero_ps(); }
  static Vec Set(float v) { return _mm256_set1_ps(v); }
  static Vec Broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec Fnma(Vec a, Vec b, Vec c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a b
  static Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  static Vec Sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  static Vec Mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
  static Vec Max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
  // 1 where a > 0, else 0.
  static Vec Positive(Vec a) {
    return _mm256_and_ps(_mm256_cmp_ps(a, Zero(), _CMP_GT_OQ), Set(1.f));
  }
};

#ifdef KERAS_VRNN_STEP_KERNELS_AVX512
struct Avx512 {
  using Vec = __m512;
  using Lanes = __mmask16;
  static constexpr int64_t kWidth = 16;
  static constexpr int kTileRows = 6;    // 6 x 4 accumulators + 5 operands = 29 of 32 registers
  static constexpr int kMaxVectors = 4;
  static constexpr const char* kName = "AVX-512";

  static Lanes All() { return static_cast<Lanes>(0xffff); }
  static Lanes First(int64_t width) { return static_cast<Lanes>((1u << width) - 1); }
  template <bool P>
  static Vec Load(const float* p, Lanes lanes) {
    if constexpr (P) return _mm512_maskz_loadu_ps(lanes, p);
    return _mm512_loadu_ps(p);
  }
  template <bool P>
  static void Store(float* p, Lanes lanes, Vec v) {
    if constexpr (P) {
      _mm512_mask_storeu_ps(p, lanes, v);
    } else {
      _mm512_storeu_ps(p, v);
    }
  }
  static Vec Zero() { return _mm512_setzero_ps(); }
  static Vec Set(float v) { return _mm512_set1_ps(v); }
  static Vec Broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec Fnma(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a, b, c); }
  static Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  static Vec Sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
  static Vec Mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  static Vec Max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
  static Vec Positive(Vec a) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, Zero(), _CMP_GT_OQ), Set(1.f));
  }
};
#endif

template <int N>
using Int = std::integral_constant<int, N>;

// A (rows, cols) block: element (r, c) at data[r * ld + c].
struct Block {
  float* data;
  int64_t ld;
};
struct ConstBlock {
  const float* data;
  int64_t ld;
};

// The columns of a tile: V vectors from column j; with P (then V = 1) the
// vector is partial and `lanes` masks the columns that exist.
template <class I>
struct Columns {
  int64_t j;
  typename I::Lanes lanes;
};

// A tile's accumulators, R rows by V vectors, held in registers (passed and
// returned by value: an array passed by reference is kept in memory by GCC).
template <class I, int R, int V>
struct Tile {
  typename I::Vec v[R][V];
};

// acc.v[r][v] += sum_p A(r, p) * B(p, W v..W v+W-1) over p < depth, B(p, c) = b[p * ldb + c]:
// per p, V vectors of B times a broadcast of each A(r, p). Two layouts of A,
// with its contiguous direction fixed at compile time (a runtime stride of 1
// costs the compiler registers it needs for the row addresses):
//   A(r, p) = a[r * lda + p]  (RowsOfA: a block of rows, e.g. x_t or h_{t-1})
//   A(r, p) = a[p * lda + r]  (ColumnsOfA: a block's transpose, e.g. h_{t-1}^T)
template <class I, int R, int V, bool P>
__attribute__((always_inline)) inline Tile<I, R, V> AccumulateRowsOfA(
    Tile<I, R, V> acc, const float* a, int64_t lda, int64_t depth, const float* b, int64_t ldb,
    typename I::Lanes lanes) {
  for (int64_t p = 0; p < depth; ++p, b += ldb) {
    typename I::Vec bv[V];
    for (int v = 0; v < V; ++v) bv[v] = I::template Load<P>(b + I::kWidth * v, lanes);
    for (int r = 0; r < R; ++r) {
      const typename I::Vec av = I::Broadcast(a + r * lda + p);
      for (int v = 0; v < V; ++v) acc.v[r][v] = I::Fma(av, bv[v], acc.v[r][v]);
    }
  }
  return acc;
}

template <class I, int R, int V, bool P>
__attribute__((always_inline)) inline Tile<I, R, V> AccumulateColumnsOfA(
    Tile<I, R, V> acc, const float* a, int64_t lda, int64_t depth, const float* b, int64_t ldb,
    typename I::Lanes lanes) {
  for (int64_t p = 0; p < depth; ++p, a += lda, b += ldb) {
    typename I::Vec bv[V];
    for (int v = 0; v < V; ++v) bv[v] = I::template Load<P>(b + I::kWidth * v, lanes);
    for (int r = 0; r < R; ++r) {
      const typename I::Vec av = I::Broadcast(a + r);
      for (int v = 0; v < V; ++v) acc.v[r][v] = I::Fma(av, bv[v], acc.v[r][v]);
    }
  }
  return acc;
}

// Calls tile(Int<R>, Int<V>, Int<P>, i, columns) for the row tiles of one
// column block.
template <class I, int V, int P, typename F>
inline void RowBlocks(int64_t rows, const Columns<I>& columns, F& tile) {
  constexpr int kRows = I::kTileRows;
  int64_t i = 0;
  for (; i + kRows <= rows; i += kRows) tile(Int<kRows>(), Int<V>(), Int<P>(), i, columns);
  switch (rows - i) {
    case 5: tile(Int<5>(), Int<V>(), Int<P>(), i, columns); break;
    case 4: tile(Int<4>(), Int<V>(), Int<P>(), i, columns); break;
    case 3: tile(Int<3>(), Int<V>(), Int<P>(), i, columns); break;
    case 2: tile(Int<2>(), Int<V>(), Int<P>(), i, columns); break;
    case 1: tile(Int<1>(), Int<V>(), Int<P>(), i, columns); break;
    default: break;
  }
}

// Tiles covering rows x cols: column blocks of kMaxVectors vectors (then 2,
// then 1, then a partial vector) outermost, so that the B panel of a block
// stays in L1 while its row blocks pass.
template <class I, typename F>
inline void ForEachTile(int64_t rows, int64_t cols, F&& tile) {
  constexpr int64_t W = I::kWidth, kMax = I::kMaxVectors;
  const typename I::Lanes all = I::All();
  int64_t j = 0;
  for (; j + kMax * W <= cols; j += kMax * W) RowBlocks<I, kMax, 0>(rows, {j, all}, tile);
  if constexpr (kMax > 2) {
    if (j + 2 * W <= cols) {
      RowBlocks<I, 2, 0>(rows, {j, all}, tile);
      j += 2 * W;
    }
  }
  if (j + W <= cols) {
    RowBlocks<I, 1, 0>(rows, {j, all}, tile);
    j += W;
  }
  if (j < cols) RowBlocks<I, 1, 1>(rows, {j, I::First(cols - j)}, tile);
}

// Every vector of a (rows, cols) block: f(Int<P>, r, c, lanes).
template <class I, typename F>
inline void ForEachVector(int64_t rows, int64_t cols, F&& f) {
  const typename I::Lanes all = I::All();
  const int64_t whole = cols - cols % I::kWidth;
  const typename I::Lanes last = I::First(cols - whole);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < whole; c += I::kWidth) f(Int<0>(), r, c, all);
    if (whole < cols) f(Int<1>(), r, whole, last);
  }
}

// Asks for the cache lines of a (rows, cols) block ahead of its use: the
// rows of one step of a (batch, timesteps, units) tensor are far apart, so
// the hardware prefetcher does not see them coming.
inline void PrefetchRows(int64_t rows, int64_t cols, ConstBlock block) {
  if (!block.data) return;
  for (int64_t r = 0; r < rows; ++r) {
    const char* row = reinterpret_cast<const char*>(block.data + r * block.ld);
    for (int64_t byte = 0; byte < cols * int64_t(sizeof(float)); byte += 64) {
      _mm_prefetch(row + byte, _MM_HINT_T0);
    }
  }
}

// act(z), by the packet functions Eigen's array().tanh() etc. use (one
// polynomial for every width, so both widths give the same numbers).
template <class I>
inline typename I::Vec Activate(Act act, typename I::Vec z) {
  using Eigen::internal::pdiv;
  using Eigen::internal::pexp;
  switch (act) {
    case Act::kTanh:
      return Eigen::internal::scalar_tanh_op<float>().packetOp(z);
    case Act::kSigmoid: {
      const typename I::Vec one = I::Set(1.f);
      return pdiv(one, I::Add(one, pexp(I::Sub(I::Zero(), z))));
    }
    case Act::kRelu:  // max(0, NaN) is NaN, as in Eigen and tf.nn.relu
      return I::Max(I::Zero(), z);
    case Act::kLinear:
      break;
  }
  return z;
}

// act'(z) written in terms of a = act(z).
template <class I>
inline typename I::Vec Derivative(Act act, typename I::Vec a) {
  const typename I::Vec one = I::Set(1.f);
  switch (act) {
    case Act::kTanh:
      return I::Fnma(a, a, one);  // 1 - a^2
    case Act::kSigmoid:
      return I::Mul(a, I::Sub(one, a));
    case Act::kRelu:
      return I::Positive(a);
    case Act::kLinear:
      break;
  }
  return one;
}

// act(z) + probe in place over a (rows, units) block (probe may be null).
// Not inlined into the tile loops: the activation's constants would take
// the registers the accumulators need.
template <class I>
__attribute__((noinline)) void ActivateRows(Act act, int64_t rows, int64_t units, Block z,
                                            ConstBlock probe) {
  ForEachVector<I>(rows, units, [&](auto p_tag, int64_t r, int64_t c, typename I::Lanes lanes) {
    constexpr bool P = decltype(p_tag)::value;
    float* at = z.data + r * z.ld + c;
    typename I::Vec a = Activate<I>(act, I::template Load<P>(at, lanes));
    if (probe.data) a = I::Add(a, I::template Load<P>(probe.data + r * probe.ld + c, lanes));
    I::template Store<P>(at, lanes, a);
  });
}

// One forward step, rows x units:
//   h = act(bias + x W + h_prev U) + probe
// x (rows, features), W (features, units), U (units, units) with ld = units;
// bias (units) and probe may be null.
template <class I>
void ForwardStep(Act act, int64_t rows, int64_t features, int64_t units, ConstBlock x,
                 const float* w, const float* bias, ConstBlock h_prev, const float* u,
                 ConstBlock probe, Block h) {
  ForEachTile<I>(rows, units, [&](auto r_tag, auto v_tag, auto p_tag, int64_t i,
                                  const Columns<I>& cols) __attribute__((noinline)) {
    constexpr int R = decltype(r_tag)::value, V = decltype(v_tag)::value;
    constexpr bool P = decltype(p_tag)::value;
    const int64_t j = cols.j;
    Tile<I, R, V> acc;
    for (int v = 0; v < V; ++v) {
      const typename I::Vec init =
          bias ? I::template Load<P>(bias + j + I::kWidth * v, cols.lanes) : I::Zero();
      for (int r = 0; r < R; ++r) acc.v[r][v] = init;
    }
    acc = AccumulateRowsOfA<I, R, V, P>(acc, x.data + i * x.ld, x.ld, features, w + j, units,
                                        cols.lanes);
    acc = AccumulateRowsOfA<I, R, V, P>(acc, h_prev.data + i * h_prev.ld, h_prev.ld, units,
                                        u + j, units, cols.lanes);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v)
        I::template Store<P>(h.data + (i + r) * h.ld + j + I::kWidth * v, cols.lanes,
                             acc.v[r][v]);
  });
  if (act != Act::kLinear || probe.data) ActivateRows<I>(act, rows, units, h, probe);
}

// c (m, n; ld = n) += a^T b over `depth` rows of a (depth, m) and b (depth, n):
// dU += h_{t-1}^T dz_t, dW += x^T dz. Rows are taken in chunks that, for both
// operands, stay in L2 while every tile of c passes over them.
template <class I>
void AccumulateTransposedProduct(int64_t depth, int64_t m, int64_t n, ConstBlock a,
                                 ConstBlock b, float* c) {
  constexpr int64_t kChunk = 128;
  for (int64_t p0 = 0; p0 < depth; p0 += kChunk) {
    const int64_t k = std::min(kChunk, depth - p0);
    const float* a0 = a.data + p0 * a.ld;
    const float* b0 = b.data + p0 * b.ld;
    ForEachTile<I>(m, n, [&](auto r_tag, auto v_tag, auto p_tag, int64_t i,
                             const Columns<I>& cols) __attribute__((noinline)) {
      constexpr int R = decltype(r_tag)::value, V = decltype(v_tag)::value;
      constexpr bool P = decltype(p_tag)::value;
      float* c0 = c + i * n + cols.j;
      Tile<I, R, V> acc;
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v)
          acc.v[r][v] = I::template Load<P>(c0 + r * n + I::kWidth * v, cols.lanes);
      // A(r, p) = a(p, i + r): rows of c are columns of a.
      acc = AccumulateColumnsOfA<I, R, V, P>(acc, a0 + i, a.ld, k, b0 + cols.j, b.ld,
                                             cols.lanes);
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v)
          I::template Store<P>(c0 + r * n + I::kWidth * v, cols.lanes, acc.v[r][v]);
    });
  }
}

// sums (n) += column sums of a (depth, n): db.
template <class I>
void AccumulateColumnSums(int64_t depth, int64_t n, ConstBlock a, float* sums) {
  ForEachVector<I>(1, n, [&](auto p_tag, int64_t, int64_t j, typename I::Lanes lanes) {
    constexpr bool P = decltype(p_tag)::value;
    typename I::Vec s0 = I::template Load<P>(sums + j, lanes), s1 = I::Zero();
    int64_t p = 0;
    for (; p + 2 <= depth; p += 2) {  // two chains: the adds' latency
      s0 = I::Add(s0, I::template Load<P>(a.data + p * a.ld + j, lanes));
      s1 = I::Add(s1, I::template Load<P>(a.data + (p + 1) * a.ld + j, lanes));
    }
    if (p < depth) s0 = I::Add(s0, I::template Load<P>(a.data + p * a.ld + j, lanes));
    I::template Store<P>(sums + j, lanes, I::Add(s0, s1));
  });
}

// One backward step, rows x units: grad = upstream + (dz U^T) * mask, the
// gradient reaching h_{t-1} (upstream and mask may be null), then
//   grad_out = grad (if non-null: dL/dh_{t-1}, or dL/dh0 at the first step)
//   dz_out = grad * act'(z_{t-1}), with act(z_{t-1}) = h - probe (if non-null).
// u_t is U^T (units, units, ld = units).
template <class I>
void BackwardStep(Act act, int64_t rows, int64_t units, ConstBlock dz, const float* u_t,
                  ConstBlock upstream, ConstBlock mask, ConstBlock h, ConstBlock probe,
                  Block grad_out, Block dz_out) {
  ForEachTile<I>(rows, units, [&](auto r_tag, auto v_tag, auto p_tag, int64_t i,
                                  const Columns<I>& cols) __attribute__((noinline)) {
    constexpr int R = decltype(r_tag)::value, V = decltype(v_tag)::value;
    constexpr bool P = decltype(p_tag)::value;
    using Vec = typename I::Vec;
    const typename I::Lanes lanes = cols.lanes;
    const auto at = [&](auto* data, int64_t ld, int r, int v) {
      return data + (i + r) * ld + cols.j + I::kWidth * v;
    };
    const auto load = [&](ConstBlock block, int r, int v) {
      return I::template Load<P>(at(block.data, block.ld, r, v), lanes);
    };
    Tile<I, R, V> acc;
    // Without a mask the upstream gradient is the accumulators' start.
    const bool start_upstream = upstream.data && !mask.data;
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc.v[r][v] = start_upstream ? load(upstream, r, v) : I::Zero();
    acc = AccumulateRowsOfA<I, R, V, P>(acc, dz.data + i * dz.ld, dz.ld, units, u_t + cols.j,
                                        units, lanes);
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < V; ++v) {
        Vec g = acc.v[r][v];
        if (mask.data) {
          g = I::Mul(g, load(mask, r, v));
          if (upstream.data) g = I::Add(g, load(upstream, r, v));
        }
        if (grad_out.data) I::template Store<P>(at(grad_out.data, grad_out.ld, r, v), lanes, g);
        if (dz_out.data) {
          Vec a = load(h, r, v);
          if (probe.data) a = I::Sub(a, load(probe, r, v));
          I::template Store<P>(at(dz_out.data, dz_out.ld, r, v), lanes,
                               I::Mul(g, Derivative<I>(act, a)));
        }
      }
    }
  });
}

}  // namespace step_kernels
}  // namespace keras_vrnn

#endif  // defined(__AVX2__) && defined(__FMA__)
#endif  // KERAS_VRNN_STEP_KERNELS_H_
