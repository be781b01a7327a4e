// Optional CPU kernel of initscope/_philox.py (loaded by it; INITSCOPE_NO_NATIVE=1 skips it).
//
// One pass from element indices to the output tensor: Philox4x32-10 of the counter i div 4 (as the words
// (c mod 2^32, c div 2^32, 0, 0)) gives four 32-bit words, word i mod 4 belongs to element i, and the
// transform writes straight into the float32 / float64 output. Every step is the same IEEE operation, in
// the same order, as the torch-ops path of _philox.py (+, *, /, sqrt are correctly rounded; the build
// passes -ffp-contract=off so that no a * b + c becomes a fused multiply-add; no -ffast-math), so both
// paths give the same bits. log, sin and cos are therefore polynomials here and there, not libm calls:
//   ln u   = k ln 2 + 2 atanh(s), s = (m - 1) / (m + 1), u = m 2^k, m in [sqrt(1/2), sqrt(2)),
//            the atanh series to s^21 (|s| < 0.1716: truncation below 1e-17 relative);
//   angle  = 2 pi (w + 0.5) 2^-32: the top 3 bits pick the octant (exact), the low 29 bits the point in
//            it, reflected in odd octants, then sin and cos on (0, pi/4) by Taylor series to x^15 and
//            x^16 (truncation below 1e-16);
//   sqrt   = Newton steps on 1/sqrt (see root()).
// Normal: (w0, w1) and (w2, w3) are two Box-Muller pairs, r = sqrt(-2 ln u(w0)), r cos, r sin: elements
// 4c .. 4c+3 are r0 cos0, r0 sin0, r1 cos1, r1 sin1. Uniform on [-1, 1): (w + 0.5) 2^-31 - 1 (exact).
// Mode 2 writes u = (w + 0.5) 2^-32 itself (exact; _philox.py applies the inverse CDF to it).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#define INITSCOPE_X86 1
#define INITSCOPE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define INITSCOPE_X86 0
#define INITSCOPE_CLONES
#endif

namespace {

constexpr int kBlock = 64;  // counters per block: 256 values, 2 KB of doubles, L1-resident
constexpr double kLn2 = 0x1.62e42fefa39efp-1;
constexpr double kSqrt2 = 0x1.6a09e667f3bcdp+0;
constexpr double kPi4Step = 0x1.921fb54442d18p-1 * 0x1p-29;  // pi/4 per octant, 2^29 points in one
constexpr double kLog[11] = {2.0, 2.0 / 3, 2.0 / 5, 2.0 / 7, 2.0 / 9, 2.0 / 11, 2.0 / 13, 2.0 / 15, 2.0 / 17,
                             2.0 / 19, 2.0 / 21};
constexpr double kSin[8] = {1.0, -1.0 / 6, 1.0 / 120, -1.0 / 5040, 1.0 / 362880, -1.0 / 39916800,
                            1.0 / 6227020800.0, -1.0 / 1307674368000.0};
constexpr double kCos[9] = {1.0, -1.0 / 2, 1.0 / 24, -1.0 / 720, 1.0 / 40320, -1.0 / 3628800, 1.0 / 479001600.0,
                            -1.0 / 87178291200.0, 1.0 / 20922789888000.0};

inline double as_double(uint64_t b) { double d; std::memcpy(&d, &b, 8); return d; }
inline uint64_t as_bits(double d) { uint64_t b; std::memcpy(&b, &d, 8); return b; }
inline uint64_t pick(uint64_t mask, uint64_t a, uint64_t b) { return (a & mask) | (b & ~mask); }
// The exact double of a 32-bit word, by a signed conversion that vectorises without AVX-512.
inline double word(uint32_t w) { return double(int32_t(w ^ 0x80000000u)) + 2147483648.0; }

// sqrt(x), x > 0, within 1 ulp: torch.sqrt of float64 on the CPU is not correctly rounded (1% of values
// differ from std::sqrt in their last bit), so both paths take the same steps instead: the bit-trick seed
// of 1/sqrt(x), four Newton steps, r = x y and one correction.
inline double root(double x) {
  double y = as_double(0x5FE6EB50C7B537A9ull - (as_bits(x) >> 1));
  const double h = 0.5 * x;
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) y = y * (1.5 - h * y * y);
  const double r = x * y;
  return r + (y * 0.5) * (x - r * r);
}

// sqrt(-2 ln u), u = (w + 0.5) 2^-32. Selections are bit masks: branch-free loops vectorise.
inline double radius(uint32_t w) {
  const uint64_t b = as_bits(word(w) + 0.5);
  double e = as_double((b >> 52) | 0x4330000000000000ull) - 0x1p52;  // biased exponent, as a double
  double m = as_double((b & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);  // mantissa in [1, 2)
  const uint64_t big = 0ull - uint64_t(m > kSqrt2);
  m = as_double(pick(big, as_bits(m * 0.5), as_bits(m)));
  e = e + as_double(big & as_bits(1.0));
  const double k = e - 1055.0;  // - 1023 (bias) - 32 (the 2^-32 of u)
  const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
  double p = kLog[10];
#pragma GCC unroll 16
  for (int j = 9; j >= 0; --j) p = p * s2 + kLog[j];
  return root(-2.0 * (k * kLn2 + s * p));
}

// cos and sin of 2 pi (w + 0.5) 2^-32.
inline void turn(uint32_t w, double& c, double& s) {
  const uint32_t oct = w >> 29;
  const uint32_t f = (w & 0x1FFFFFFFu) ^ (0x1FFFFFFFu & (0u - (oct & 1u)));  // odd octants: 2^29 - 1 - f
  const double x = (word(f) + 0.5) * kPi4Step, x2 = x * x;
  double sp = kSin[7], cp = kCos[8];
#pragma GCC unroll 16
  for (int j = 6; j >= 0; --j) sp = sp * x2 + kSin[j];
#pragma GCC unroll 16
  for (int j = 7; j >= 0; --j) cp = cp * x2 + kCos[j];
  const uint64_t sn = as_bits(x * sp), cs = as_bits(cp);
  const uint64_t swap = 0ull - uint64_t(((oct + 1u) >> 1) & 1u);  // octants 1, 2, 5, 6
  c = as_double(pick(swap, sn, cs) ^ (uint64_t(((oct + 2u) >> 2) & 1u) << 63));  // cos < 0 in octants 2-5
  s = as_double(pick(swap, cs, sn) ^ (uint64_t(oct >> 2) << 63));              // sin < 0 in octants 4-7
}

struct Words {
  alignas(64) uint32_t w[4][kBlock];
};

INITSCOPE_CLONES
void philox_generic(uint64_t first, int n, uint32_t key0, uint32_t key1, Words& out) {
  for (int i = 0; i < n; ++i) {
    const uint64_t c = first + uint64_t(i);
    uint32_t c0 = uint32_t(c), c1 = uint32_t(c >> 32), c2 = 0, c3 = 0, k0 = key0, k1 = key1;
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      const uint64_t p0 = uint64_t(0xD2511F53u) * c0, p1 = uint64_t(0xCD9E8D57u) * c2;
      const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
      c1 = uint32_t(p1);
      c3 = uint32_t(p0);
      c0 = n0;
      c2 = n2;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    out.w[0][i] = c0;
    out.w[1][i] = c1;
    out.w[2][i] = c2;
    out.w[3][i] = c3;
  }
}

#if INITSCOPE_X86
// The same rounds on 8 counters at once, one per 64-bit lane holding a 32-bit word, so that each
// 32 x 32 -> 64-bit product is one vpmuludq (GCC's vectorisation of the generic loop emulates a
// 64 x 64-bit product instead, ~1.5x slower). Counters past n fill the block's spare slots.
__attribute__((target("avx512f")))
void philox_avx512(uint64_t first, int n, uint32_t key0, uint32_t key1, Words& out) {
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53), m1 = _mm512_set1_epi64(0xCD9E8D57);
  const __m512i low = _mm512_set1_epi64(0xFFFFFFFF), lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  for (int i = 0; i < n; i += 8) {
    const __m512i c = _mm512_add_epi64(_mm512_set1_epi64(int64_t(first + uint64_t(i))), lanes);
    __m512i c0 = _mm512_and_si512(c, low), c1 = _mm512_srli_epi64(c, 32);
    __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
    uint32_t k0 = key0, k1 = key1;
    for (int r = 0; r < 10; ++r) {
      const __m512i p0 = _mm512_mul_epu32(c0, m0), p1 = _mm512_mul_epu32(c2, m1);
      const __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p1, 32), c1), _mm512_set1_epi64(k0));
      const __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p0, 32), c3), _mm512_set1_epi64(k1));
      c1 = _mm512_and_si512(p1, low);
      c3 = _mm512_and_si512(p0, low);
      c0 = n0;
      c2 = n2;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(out.w[0] + i), _mm512_cvtepi64_epi32(c0));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out.w[1] + i), _mm512_cvtepi64_epi32(c1));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out.w[2] + i), _mm512_cvtepi64_epi32(c2));
    _mm256_store_si256(reinterpret_cast<__m256i*>(out.w[3] + i), _mm512_cvtepi64_epi32(c3));
  }
}

bool has_avx512() { return __builtin_cpu_supports("avx512f"); }
#else
bool has_avx512() { return false; }
#endif

bool use_avx512 = has_avx512();  // set_avx512(false) tests the generic loop on an AVX-512 machine

inline void philox_block(uint64_t first, int n, uint32_t key0, uint32_t key1, Words& out) {
#if INITSCOPE_X86
  if (use_avx512) return philox_avx512(first, n, key0, key1, out);
#endif
  philox_generic(first, n, key0, key1, out);
}

INITSCOPE_CLONES
void transform(const Words& in, int n, int mode, double* __restrict v) {
  const uint32_t* __restrict w0 = in.w[0];
  const uint32_t* __restrict w1 = in.w[1];
  const uint32_t* __restrict w2 = in.w[2];
  const uint32_t* __restrict w3 = in.w[3];
  if (mode == 0) {
    for (int i = 0; i < n; ++i) {
      double c0, s0, c1, s1;
      const double r0 = radius(w0[i]), r1 = radius(w2[i]);
      turn(w1[i], c0, s0);
      turn(w3[i], c1, s1);
      v[4 * i] = r0 * c0;
      v[4 * i + 1] = r0 * s0;
      v[4 * i + 2] = r1 * c1;
      v[4 * i + 3] = r1 * s1;
    }
    return;
  }
  const double step = mode == 1 ? 0x1p-31 : 0x1p-32, shift = mode == 1 ? 1.0 : 0.0;
  for (int i = 0; i < n; ++i) {
    v[4 * i] = (word(w0[i]) + 0.5) * step - shift;
    v[4 * i + 1] = (word(w1[i]) + 0.5) * step - shift;
    v[4 * i + 2] = (word(w2[i]) + 0.5) * step - shift;
    v[4 * i + 3] = (word(w3[i]) + 0.5) * step - shift;
  }
}

// Elements [g0, g0 + len) of the tensor's flat global order into out[0, len).
template <typename T>
void fill_run(T* out, uint64_t g0, int64_t len, uint32_t k0, uint32_t k1, int mode, double scale) {
  Words w;
  alignas(64) double v[4 * kBlock];
  const uint64_t end = g0 + uint64_t(len);
  for (uint64_t g = g0; g < end;) {
    const uint64_t first = g >> 2;
    const int n = int(std::min<uint64_t>(kBlock, ((end - 1) >> 2) - first + 1));
    philox_block(first, n, k0, k1, w);
    transform(w, n, mode, v);
    const uint64_t base = first << 2, stop = std::min(end, base + 4 * uint64_t(n));
    T* o = out + (g - g0);
    const double* src = v + (g - base);
    const int64_t count = int64_t(stop - g);
    for (int64_t j = 0; j < count; ++j) o[j] = T(src[j] * scale);
    g = stop;
  }
}

template <typename T>
void fill_runs(T* out, const int64_t* starts, int64_t runs, int64_t run, int64_t k0, int64_t k1, int mode,
               double scale) {
  at::parallel_for(0, runs * run, 1 << 15, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi;) {
      const int64_t r = j / run, at = j - r * run, len = std::min(hi - j, run - at);
      fill_run(out + j, uint64_t(starts[r] + at), len, uint32_t(k0), uint32_t(k1), mode, scale);
      j += len;
    }
  });
}

}  // namespace

// out (contiguous float32 or float64, starts.numel() * run elements): run r holds the elements
// starts[r] .. starts[r] + run - 1 of the whole tensor's flat order. mode 0: normal, 1: uniform on
// [-1, 1), both times scale; 2: the unit uniform u (float64 out, scale 1).
void philox_fill(torch::Tensor& out, const torch::Tensor& starts, int64_t run, int64_t key0, int64_t key1,
                 int64_t mode, double scale) {
  TORCH_CHECK(starts.scalar_type() == torch::kInt64 && starts.is_contiguous(), "starts: contiguous int64");
  TORCH_CHECK(out.is_contiguous() && out.numel() == starts.numel() * run, "out: contiguous, runs * run elements");
  TORCH_CHECK(mode >= 0 && mode <= 2, "mode: 0, 1 or 2");
  const int64_t* s = starts.data_ptr<int64_t>();
  if (out.scalar_type() == torch::kFloat32) {
    fill_runs(out.data_ptr<float>(), s, starts.numel(), run, key0, key1, int(mode), scale);
  } else {
    TORCH_CHECK(out.scalar_type() == torch::kFloat64, "out: float32 or float64");
    fill_runs(out.data_ptr<double>(), s, starts.numel(), run, key0, key1, int(mode), scale);
  }
}

// Whether Philox runs on AVX-512 where the CPU has it (default) or in the generic loop; returns the old state.
bool set_avx512(bool on) {
  const bool old = use_avx512;
  use_avx512 = on && has_avx512();
  return old;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("philox_fill", &philox_fill, "initscope: Philox4x32-10 values of runs of element indices (CPU)");
  m.def("set_avx512", &set_avx512, "initscope: Philox on AVX-512 (if the CPU has it) or the generic loop");
}
