// The float32 FMA peak of this CPU: `threads` threads, each running
// independent chains of vector FMAs on registers only, for `iterations`
// rounds; prints GFLOP/s (2 FLOPs per lane per FMA). Built by
// benchmarks/benchmark.py with the native kernels' flags, so the vector
// width is theirs: 16 floats with AVX-512, else 8 (AVX2/FMA).
//
// More chains than the FMA latency times the ports (4 cycles x 2 = 8 in
// flight) needs, so the ports, not the latency, set the pace.

#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#ifdef __AVX512F__
using Vec = __m512;
constexpr int kWidth = 16, kChains = 16;
inline Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec Set(float v) { return _mm512_set1_ps(v); }
inline float First(Vec v) { return _mm512_cvtss_f32(v); }
#else
using Vec = __m256;
constexpr int kWidth = 8, kChains = 12;
inline Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec Set(float v) { return _mm256_set1_ps(v); }
inline float First(Vec v) { return _mm256_cvtss_f32(v); }
#endif

// Twelve chains (enough for AVX2's two FMA ports; AVX-512 gets sixteen):
// each round, one FMA per chain, then an empty asm that takes every chain
// as a register operand, so the compiler keeps them all in registers and
// cannot merge, reorder across rounds or shorten them.
#define KERAS_VRNN_CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define KERAS_VRNN_DECLARE(i) Vec c##i = Set(1.f + i * 1e-3f);
#define KERAS_VRNN_FMA(i) c##i = Fma(c##i, m, a);
#define KERAS_VRNN_SUM(i) sum += First(c##i);

float Chains(long iterations) {
  const Vec m = Set(0.999999f), a = Set(1e-7f);
  KERAS_VRNN_CHAINS(KERAS_VRNN_DECLARE)
#ifdef __AVX512F__
  Vec c12 = Set(1.2f), c13 = Set(1.3f), c14 = Set(1.4f), c15 = Set(1.5f);
#endif
  for (long it = 0; it < iterations; ++it) {
    KERAS_VRNN_CHAINS(KERAS_VRNN_FMA)
    asm volatile("" : "+v"(c0), "+v"(c1), "+v"(c2), "+v"(c3), "+v"(c4), "+v"(c5));
    asm volatile("" : "+v"(c6), "+v"(c7), "+v"(c8), "+v"(c9), "+v"(c10), "+v"(c11));
#ifdef __AVX512F__
    c12 = Fma(c12, m, a);
    c13 = Fma(c13, m, a);
    c14 = Fma(c14, m, a);
    c15 = Fma(c15, m, a);
    asm volatile("" : "+v"(c12), "+v"(c13), "+v"(c14), "+v"(c15));
#endif
  }
  float sum = 0;
  KERAS_VRNN_CHAINS(KERAS_VRNN_SUM)
#ifdef __AVX512F__
  sum += First(c12) + First(c13) + First(c14) + First(c15);
#endif
  return sum;
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const long iterations = argc > 2 ? std::atol(argv[2]) : 50000000;
  std::vector<float> sums(threads);
  std::vector<std::thread> pool;
  const auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { sums[t] = Chains(iterations); });
  for (auto& thread : pool) thread.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double flops = 2.0 * kWidth * kChains * iterations * threads;
  std::printf("%.1f %d %g\n", flops / seconds / 1e9, kWidth, sums[0]);
  return 0;
}
