// AVX2/FMA kernels for the float32 vanilla-RNN recurrence (included by
// vanilla_rnn_ops.cc, which uses Eigen where these do not apply: float64, or
// a build for a CPU without AVX2/FMA).
//
// Why: a step multiplies a (rows, units) block by a (units, units) matrix,
// rows and units in the tens. Eigen's general GEMM packs both operands on
// every call and then reads and writes the result once more for the bias,
// the activation and the next step's elementwise work; at these sizes that
// is about half of its time. Here each tile of the result (up to 6 rows x 16
// columns) stays in registers from its first product to its last use: the
// forward adds x_t W and h_{t-1} U to the bias there; the backward adds
// dz_t U^T to the upstream gradient and multiplies by act'(z) there.
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

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "Eigen/Core"

namespace keras_vrnn {
namespace step_kernels {

using Act = Activation;

constexpr int64_t kVector = 8;  // floats per AVX register
constexpr int kTileRows = 6;    // 6 x 2 accumulators + 3 operands = 15 of 16 registers

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
struct Columns {
  int64_t j;
  __m256i lanes;
};

template <bool P>
inline __m256 Load(const float* p, __m256i lanes) {
  if constexpr (P) return _mm256_maskload_ps(p, lanes);
  return _mm256_loadu_ps(p);
}

template <bool P>
inline void Store(float* p, __m256i lanes, __m256 v) {
  if constexpr (P) {
    _mm256_maskstore_ps(p, lanes, v);
  } else {
    _mm256_storeu_ps(p, v);
  }
}

// The lane mask of the first `width` (1..8) columns of a vector.
inline __m256i LaneMask(int64_t width) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(width)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// A tile's accumulators, R rows by V vectors, held in registers (passed and
// returned by value: an array passed by reference is kept in memory by GCC).
template <int R, int V>
struct Tile {
  __m256 v[R][V];
};

// acc.v[r][v] += sum_p A(r, p) * B(p, 8v..8v+7) over p < depth, B(p, c) = b[p * ldb + c]:
// per p, V vectors of B times a broadcast of each A(r, p). Two layouts of A,
// with its contiguous direction fixed at compile time (a runtime stride of 1
// costs the compiler registers it needs for the row addresses):
//   A(r, p) = a[r * lda + p]  (RowsOfA: a block of rows, e.g. x_t or h_{t-1})
//   A(r, p) = a[p * lda + r]  (ColumnsOfA: a block's transpose, e.g. h_{t-1}^T)
template <int R, int V, bool P>
__attribute__((always_inline)) inline Tile<R, V> AccumulateRowsOfA(
    Tile<R, V> acc, const float* a, int64_t lda, int64_t depth, const float* b, int64_t ldb,
    __m256i lanes) {
  for (int64_t p = 0; p < depth; ++p, b += ldb) {
    __m256 bv[V];
    for (int v = 0; v < V; ++v) bv[v] = Load<P>(b + kVector * v, lanes);
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * lda + p);
      for (int v = 0; v < V; ++v) acc.v[r][v] = _mm256_fmadd_ps(av, bv[v], acc.v[r][v]);
    }
  }
  return acc;
}

template <int R, int V, bool P>
__attribute__((always_inline)) inline Tile<R, V> AccumulateColumnsOfA(
    Tile<R, V> acc, const float* a, int64_t lda, int64_t depth, const float* b, int64_t ldb,
    __m256i lanes) {
  for (int64_t p = 0; p < depth; ++p, a += lda, b += ldb) {
    __m256 bv[V];
    for (int v = 0; v < V; ++v) bv[v] = Load<P>(b + kVector * v, lanes);
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r);
      for (int v = 0; v < V; ++v) acc.v[r][v] = _mm256_fmadd_ps(av, bv[v], acc.v[r][v]);
    }
  }
  return acc;
}

// Calls tile(Int<R>, Int<V>, Int<P>, i, columns) for tiles covering
// rows x cols: column blocks of 16 (then 8, then a partial vector)
// outermost, so that the B panel of a block stays in L1 while its row
// blocks pass.
template <int V, int P, typename F>
inline void RowBlocks(int64_t rows, const Columns& columns, F& tile) {
  int64_t i = 0;
  for (; i + kTileRows <= rows; i += kTileRows) {
    tile(Int<kTileRows>(), Int<V>(), Int<P>(), i, columns);
  }
  switch (rows - i) {
    case 5: tile(Int<5>(), Int<V>(), Int<P>(), i, columns); break;
    case 4: tile(Int<4>(), Int<V>(), Int<P>(), i, columns); break;
    case 3: tile(Int<3>(), Int<V>(), Int<P>(), i, columns); break;
    case 2: tile(Int<2>(), Int<V>(), Int<P>(), i, columns); break;
    case 1: tile(Int<1>(), Int<V>(), Int<P>(), i, columns); break;
    default: break;
  }
}

template <typename F>
inline void ForEachTile(int64_t rows, int64_t cols, F&& tile) {
  const __m256i all = _mm256_set1_epi32(-1);
  int64_t j = 0;
  for (; j + 2 * kVector <= cols; j += 2 * kVector) RowBlocks<2, 0>(rows, {j, all}, tile);
  if (j + kVector <= cols) {
    RowBlocks<1, 0>(rows, {j, all}, tile);
    j += kVector;
  }
  if (j < cols) RowBlocks<1, 1>(rows, {j, LaneMask(cols - j)}, tile);
}

// Every vector of a (rows, cols) block: f(Int<P>, r, c, lanes).
template <typename F>
inline void ForEachVector(int64_t rows, int64_t cols, F&& f) {
  const __m256i all = _mm256_set1_epi32(-1);
  const int64_t whole = cols - cols % kVector;
  const __m256i last = LaneMask(cols - whole);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < whole; c += kVector) f(Int<0>(), r, c, all);
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

// act(z), the same packet functions Eigen's array().tanh() etc. use.
inline __m256 Activate(Act act, __m256 z) {
  using Eigen::internal::pdiv;
  using Eigen::internal::pexp;
  switch (act) {
    case Act::kTanh:
      return Eigen::internal::scalar_tanh_op<float>().packetOp(z);
    case Act::kSigmoid: {
      const __m256 one = _mm256_set1_ps(1.f);
      return pdiv(one, _mm256_add_ps(one, pexp(_mm256_sub_ps(_mm256_setzero_ps(), z))));
    }
    case Act::kRelu:  // max(0, NaN) is NaN, as in Eigen and tf.nn.relu
      return _mm256_max_ps(_mm256_setzero_ps(), z);
    case Act::kLinear:
      break;
  }
  return z;
}

// act'(z) written in terms of a = act(z).
inline __m256 Derivative(Act act, __m256 a) {
  const __m256 one = _mm256_set1_ps(1.f);
  switch (act) {
    case Act::kTanh:
      return _mm256_fnmadd_ps(a, a, one);  // 1 - a^2
    case Act::kSigmoid:
      return _mm256_mul_ps(a, _mm256_sub_ps(one, a));
    case Act::kRelu:
      return _mm256_and_ps(_mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_GT_OQ), one);
    case Act::kLinear:
      break;
  }
  return one;
}

// act(z) + probe in place over a (rows, units) block (probe may be null).
// Not inlined into the tile loops: the activation's constants would take
// the registers the accumulators need.
__attribute__((noinline)) inline void ActivateRows(Act act, int64_t rows, int64_t units,
                                                   Block z, ConstBlock probe) {
  ForEachVector(rows, units, [&](auto p_tag, int64_t r, int64_t c, __m256i lanes) {
    constexpr bool P = decltype(p_tag)::value;
    float* at = z.data + r * z.ld + c;
    __m256 a = Activate(act, Load<P>(at, lanes));
    if (probe.data) a = _mm256_add_ps(a, Load<P>(probe.data + r * probe.ld + c, lanes));
    Store<P>(at, lanes, a);
  });
}

// One forward step, rows x units:
//   h = act(bias + x W + h_prev U) + probe
// x (rows, features), W (features, units), U (units, units) with ld = units;
// bias (units) and probe may be null.
inline void ForwardStep(Act act, int64_t rows, int64_t features, int64_t units,
                        ConstBlock x, const float* w, const float* bias, ConstBlock h_prev,
                        const float* u, ConstBlock probe, Block h) {
  ForEachTile(rows, units, [&](auto r_tag, auto v_tag, auto p_tag, int64_t i,
                               const Columns& cols) __attribute__((noinline)) {
    constexpr int R = decltype(r_tag)::value, V = decltype(v_tag)::value;
    constexpr bool P = decltype(p_tag)::value;
    const int64_t j = cols.j;
    Tile<R, V> acc;
    for (int v = 0; v < V; ++v) {
      const __m256 init = bias ? Load<P>(bias + j + kVector * v, cols.lanes) : _mm256_setzero_ps();
      for (int r = 0; r < R; ++r) acc.v[r][v] = init;
    }
    acc = AccumulateRowsOfA<R, V, P>(acc, x.data + i * x.ld, x.ld, features, w + j, units,
                                     cols.lanes);
    acc = AccumulateRowsOfA<R, V, P>(acc, h_prev.data + i * h_prev.ld, h_prev.ld, units, u + j,
                                     units, cols.lanes);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v)
        Store<P>(h.data + (i + r) * h.ld + j + kVector * v, cols.lanes, acc.v[r][v]);
  });
  if (act != Act::kLinear || probe.data) ActivateRows(act, rows, units, h, probe);
}

// c (m, n; ld = n) += a^T b over `depth` rows of a (depth, m) and b (depth, n):
// dU += h_{t-1}^T dz_t, dW += x^T dz. Rows are taken in chunks that, for both
// operands, stay in L2 while every tile of c passes over them.
inline void AccumulateTransposedProduct(int64_t depth, int64_t m, int64_t n, ConstBlock a,
                                        ConstBlock b, float* c) {
  constexpr int64_t kChunk = 128;
  for (int64_t p0 = 0; p0 < depth; p0 += kChunk) {
    const int64_t k = std::min(kChunk, depth - p0);
    const float* a0 = a.data + p0 * a.ld;
    const float* b0 = b.data + p0 * b.ld;
    ForEachTile(m, n, [&](auto r_tag, auto v_tag, auto p_tag, int64_t i,
                          const Columns& cols) __attribute__((noinline)) {
      constexpr int R = decltype(r_tag)::value, V = decltype(v_tag)::value;
      constexpr bool P = decltype(p_tag)::value;
      float* c0 = c + i * n + cols.j;
      Tile<R, V> acc;
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v) acc.v[r][v] = Load<P>(c0 + r * n + kVector * v, cols.lanes);
      // A(r, p) = a(p, i + r): rows of c are columns of a.
      acc = AccumulateColumnsOfA<R, V, P>(acc, a0 + i, a.ld, k, b0 + cols.j, b.ld, cols.lanes);
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < V; ++v) Store<P>(c0 + r * n + kVector * v, cols.lanes, acc.v[r][v]);
    });
  }
}

// sums (n) += column sums of a (depth, n): db.
inline void AccumulateColumnSums(int64_t depth, int64_t n, ConstBlock a, float* sums) {
  ForEachVector(1, n, [&](auto p_tag, int64_t, int64_t j, __m256i lanes) {
    constexpr bool P = decltype(p_tag)::value;
    __m256 s0 = Load<P>(sums + j, lanes), s1 = _mm256_setzero_ps();
    int64_t p = 0;
    for (; p + 2 <= depth; p += 2) {  // two chains: the adds' latency
      s0 = _mm256_add_ps(s0, Load<P>(a.data + p * a.ld + j, lanes));
      s1 = _mm256_add_ps(s1, Load<P>(a.data + (p + 1) * a.ld + j, lanes));
    }
    if (p < depth) s0 = _mm256_add_ps(s0, Load<P>(a.data + p * a.ld + j, lanes));
    Store<P>(sums + j, lanes, _mm256_add_ps(s0, s1));
  });
}

// One backward step, rows x units: grad = upstream + (dz U^T) * mask, the
// gradient reaching h_{t-1} (upstream and mask may be null), then
//   grad_out = grad (if non-null: dL/dh_{t-1}, or dL/dh0 at the first step)
//   dz_out = grad * act'(z_{t-1}), with act(z_{t-1}) = h - probe (if non-null).
// u_t is U^T (units, units, ld = units).
inline void BackwardStep(Act act, int64_t rows, int64_t units, ConstBlock dz, const float* u_t,
                         ConstBlock upstream, ConstBlock mask, ConstBlock h, ConstBlock probe,
                         Block grad_out, Block dz_out) {
  ForEachTile(rows, units, [&](auto r_tag, auto v_tag, auto p_tag, int64_t i,
                               const Columns& cols) __attribute__((noinline)) {
    constexpr int R = decltype(r_tag)::value, V = decltype(v_tag)::value;
    constexpr bool P = decltype(p_tag)::value;
    const __m256i lanes = cols.lanes;
    const auto at = [&](auto* data, int64_t ld, int r, int v) {
      return data + (i + r) * ld + cols.j + kVector * v;
    };
    Tile<R, V> acc;
    // Without a mask the upstream gradient is the accumulators' start.
    const bool start_upstream = upstream.data && !mask.data;
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v)
        acc.v[r][v] = start_upstream ? Load<P>(at(upstream.data, upstream.ld, r, v), lanes)
                                     : _mm256_setzero_ps();
    acc = AccumulateRowsOfA<R, V, P>(acc, dz.data + i * dz.ld, dz.ld, units, u_t + cols.j,
                                     units, lanes);
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < V; ++v) {
        __m256 g = acc.v[r][v];
        if (mask.data) {
          g = _mm256_mul_ps(g, Load<P>(at(mask.data, mask.ld, r, v), lanes));
          if (upstream.data) {
            g = _mm256_add_ps(g, Load<P>(at(upstream.data, upstream.ld, r, v), lanes));
          }
        }
        if (grad_out.data) Store<P>(at(grad_out.data, grad_out.ld, r, v), lanes, g);
        if (dz_out.data) {
          __m256 a = Load<P>(at(h.data, h.ld, r, v), lanes);
          if (probe.data) a = _mm256_sub_ps(a, Load<P>(at(probe.data, probe.ld, r, v), lanes));
          Store<P>(at(dz_out.data, dz_out.ld, r, v), lanes, _mm256_mul_ps(g, Derivative(act, a)));
        }
      }
    }
  });
}

}  // namespace step_kernels
}  // namespace keras_vrnn

#endif  // defined(__AVX2__) && defined(__FMA__)
#endif  // KERAS_VRNN_STEP_KERNELS_H_
