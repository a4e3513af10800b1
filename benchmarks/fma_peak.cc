// The float32 FMA peak of this CPU: `threads` threads, each running
// independent chains of vector FMAs on registers only, for `iterations`
// rounds; prints GFLOP/s (2 FLOPs per lane per FMA). Built by
// benchmarks/benchmark.py with the native kernels' flags, so the vector
// width is theirs: 16 floats with AVX-512, else 8 (AVX2/FMA).
//
// Enough chains to cover the FMA latency on two ports (4 cycles x 2 = 8 in
// flight); the empty asm after each round makes every chain a register the
// compiler must keep, so it cannot merge or shorten them.

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

float Chains(long iterations) {
  Vec acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = Set(1.f + i * 1e-3f);
  const Vec m = Set(0.999999f), a = Set(1e-7f);
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < kChains; ++i) acc[i] = Fma(acc[i], m, a);
#pragma GCC unroll 32
    for (int i = 0; i < kChains; ++i) asm volatile("" : "+v"(acc[i]));
  }
  float sum = 0;
  for (int i = 0; i < kChains; ++i) sum += First(acc[i]);
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
