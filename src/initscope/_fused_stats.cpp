// One pass over a contiguous float32 CPU tensor for initscope.stats: the numbers the torch-ops
// path in initscope._measure produces, read from memory once.
//
// The tensor is cut into blocks of kBlock values (8 KiB, resident in L1). Each block is read
// from memory once, by one vectorised scan that gives its sum and sum of squares (in double: a
// float32's square is exact in double), min, max, nonzero and saturation counts, the per-unit
// nonzero counts where units tile the block in runs of 16, and the exponent byte of each |x|;
// the exponent bytes are then counted in cache. M2 comes from sum x^2 - (sum x)^2 / n, which
// loses eps * mean^2 / var relative; a block whose mean is large against its spread
// (sum x^2 > kCancel * M2) is summed again from a shift near its mean, so that the relative error
// of M2 stays below ~2^-41 (128 roundings per lane, times kCancel). A block whose sum is not finite holds a NaN or an infinity:
// it is scanned for NaN (which makes min and max NaN, as torch.aminmax does) and for each
// infinity, and M2 is undefined from there on.
//
// The histogram counts exponents, not fine codes: when a block's nonzero exponents span at most
// kSpan octaves (Gaussian-like data span ~15 in a block of 2048; the vector scans keep the range
// in registers) each octave is counted by byte-wise vector compares, several times faster than a
// scatter of one increment per value, or, where the CPU has GFNI (Zen 4, Ice Lake on), all of
// them in one pass by an 8 x 8 bit transpose of one-hot bytes and byte popcounts (count_gfni);
// wider blocks fall back to the scatter (four sub-histograms, which break the store-forwarding
// chains of repeated exponents). The rare classes a format needs finer than an octave are counted
// directly, only in blocks that can hold them: values at or above each format's overflow edge
// (blocks whose |x| reaches the smallest edge) and float32 subnormals below 2^-129 (blocks with
// subnormals).
//
// Every sum has a fixed order: 16 lanes (value k of a block goes to lane k % 16), added lane by
// lane at the end of the block; blocks merge with Chan's formula in double, within a part (one
// thread's contiguous range) and then across parts in a fixed order. The scan is written three
// times, for AVX-512, AVX2 + FMA and plain C++, picked at load time (the cached build runs on any
// x86-64); all three give the same bits (an FMA of x * x + s rounds as the multiply and the add
// do, since x * x is exact), and set_isa() lets the tests check that.
//
// A call allocates nothing: each part's counters (4 x 256 histogram bins, the per-unit counts
// up to kKeepUnits units) are kept by the calling thread between calls, and the merge reads and
// zeroes only the bins the blocks wrote (an octave-counted block writes bin 0 and its lo..hi).
// While a block's exponent bytes are counted (in cache), the part's next block is prefetched.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define INITSCOPE_X86 1
#define INITSCOPE_AVX2 __attribute__((target("avx2,fma,popcnt")))
#define INITSCOPE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,popcnt")))
#define INITSCOPE_GFNI __attribute__((target("avx512f,avx512bw,avx512vbmi,avx512bitalg,gfni,popcnt")))
#else
#define INITSCOPE_X86 0
#endif

namespace {

constexpr int64_t kBlock = 2048;
constexpr int64_t kLanes = 16;  // independent accumulators of the scan; 16 values per step
constexpr int64_t kExp = 256;   // exponent bytes of |x|: 0 holds zeros and subnormals, 255 inf and NaN
constexpr int64_t kSub = 4;
constexpr int64_t kSpan = 24;   // widest octave range counted by vector compares
constexpr int kFormats = 4;
constexpr int64_t kMaxPart = int64_t(1) << 30;  // uint32 counters stay exact
constexpr int64_t kKeepUnits = int64_t(1) << 16; // per-unit counters kept between calls up to this many units
constexpr uint32_t kInfBits = 0x7f800000u;
constexpr uint32_t kTinyBits = 1u << 20;        // |x| < 2^-129: exponent 0, three leading mantissa bits 0
constexpr double kCancel = 16.0;                // sum x^2 above kCancel * M2: sum again from a shift

enum Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"generic", "avx2", "avx512"};

int best_isa() {
#if INITSCOPE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt"))
    return kAvx2;
#endif
  return kGeneric;
}

const int kBestIsa = best_isa();

// Whether the AVX-512 path may count exponents with a bit transpose (GFNI, byte popcounts, byte
// permutes): Zen 4 and Ice Lake onwards.
bool has_gfni() {
#if INITSCOPE_X86
  return kBestIsa == kAvx512 && __builtin_cpu_supports("gfni") && __builtin_cpu_supports("avx512vbmi") &&
         __builtin_cpu_supports("avx512bitalg");
#else
  return false;
#endif
}

const bool kHasGfni = has_gfni();
int g_isa = kBestIsa;  // changed only by set_isa (tests)
int64_t g_max_parts = 0;  // 0: no cap; changed only by set_max_parts (tests, benchmarks)

typedef uint32_t __attribute__((may_alias)) bits_t;

struct Part {
  int64_t n = 0;             // values merged into mean / m2 (all, while every block is finite)
  double mean = 0.0, m2 = 0.0;
  double sum = 0.0;          // plain double sum: gives the NaN / inf mean of nonfinite data
  bool finite = true;
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  int64_t nan = 0, sat = 0, nonzero = 0;
  int64_t tiny = 0, posinf = 0, neginf = 0;
  int64_t over[kFormats] = {};
};

// A part's accumulators and counters, kept by the calling thread from one call to the next (a
// call allocates nothing). hist is all zero between calls: a call zeroes the bins it wrote (bin
// 0 and [lo, hi], all four sub-histograms where a block took the scatter) once it has read them.
struct Counters {
  Part acc;
  std::vector<uint32_t> hist = std::vector<uint32_t>(kSub * kExp, 0);  // kSub sub-histograms of kExp
  std::vector<uint32_t> units;  // nonzero values per unit (a part holds at most kMaxPart values)
  int lo = kExp, hi = -1;       // the bins of sub-histogram 0 written, besides bin 0
  bool scattered = false;       // whether sub-histograms 1..kSub-1 may hold counts
};

// The overflow edges of the formats, as bit patterns of |x| (finite values at or above count).
struct Edges {
  uint32_t bits[kFormats];
  float lowest;  // the smallest edge: a block whose |x| stays below it holds no overflow
};

// How the per-unit nonzero counts of a tensor are taken. Units are the dimension unit_dim; inner
// is the number of values per unit per row (the product of the dimensions after it).
enum UnitMode {
  kNoUnits = 0,
  kRows = 1,      // inner == 1, units % 16 == 0: 16 values of a step are 16 consecutive units
  kRuns = 2,      // inner % 16 == 0: 16 values of a step belong to one unit
  kSeparate = 3,  // any other layout: a second, in-cache pass per block (unit_counts)
};

struct Units {
  int64_t count = 0, inner = 0;
  uint32_t* cnt = nullptr;
  UnitMode mode = kNoUnits;
};

void chan(Part& p, int64_t nb, double mean_b, double m2_b) {
  if (nb == 0) return;
  const int64_t n = p.n + nb;
  const double delta = mean_b - p.mean;
  p.mean += delta * (double(nb) / double(n));
  p.m2 += m2_b + delta * delta * (double(p.n) * double(nb) / double(n));
  p.n = n;
}

// A block's scan: sums, extremes, counts; the exponent bytes go to e.
struct Scan {
  double s = 0.0, q = 0.0;  // sum of x and of x^2
  float lo = std::numeric_limits<float>::infinity(), hi = -std::numeric_limits<float>::infinity();
  int64_t nonzero = 0, sat = 0;
  // the exponent bytes' range, where the vector scans keep it: the smallest nonzero byte minus 1
  // (zeros wrap to 255) and the largest byte
  bool erange = false;
  uint8_t elo1 = 255, ehi = 0;
};

#if INITSCOPE_X86
// Byte 0 of the minimum and of the maximum over 16 bytes, folded in registers.
INITSCOPE_AVX2 inline void fold_range(__m128i mn, __m128i mx, Scan& r) {
  mn = _mm_min_epu8(mn, _mm_srli_si128(mn, 8)), mx = _mm_max_epu8(mx, _mm_srli_si128(mx, 8));
  mn = _mm_min_epu8(mn, _mm_srli_si128(mn, 4)), mx = _mm_max_epu8(mx, _mm_srli_si128(mx, 4));
  mn = _mm_min_epu8(mn, _mm_srli_si128(mn, 2)), mx = _mm_max_epu8(mx, _mm_srli_si128(mx, 2));
  mn = _mm_min_epu8(mn, _mm_srli_si128(mn, 1)), mx = _mm_max_epu8(mx, _mm_srli_si128(mx, 1));
  r.erange = true;
  r.elo1 = uint8_t(_mm_cvtsi128_si32(mn)), r.ehi = uint8_t(_mm_cvtsi128_si32(mx));
}
#endif

// Where the unit of a block's first value lies: for kRows the position in the row, for kRuns
// the unit and the values left in its run.
struct UnitCursor {
  int64_t u = 0, left = 0;
  UnitCursor(const Units& un, int64_t b0) {
    if (un.mode == kRows) {
      u = b0 % un.count;
    } else if (un.mode == kRuns) {
      const int64_t row = b0 / un.inner;
      u = row % un.count;
      left = un.inner - (b0 - row * un.inner);
    }
  }
};

void unit_counts(const float* p, int64_t b0, int64_t b1, int64_t units, int64_t inner, uint32_t* cnt) {
  int64_t i = b0;
  if (inner == 1) {  // units vary fastest: count along a row of units
    int64_t u = i % units;
    while (i < b1) {
      const int64_t len = std::min(units - u, b1 - i);
      const float* q = p + i;
      uint32_t* c = cnt + u;
      for (int64_t k = 0; k < len; ++k) c[k] += q[k] != 0.0f;
      i += len;
      u = 0;
    }
    return;
  }
  const int64_t row = i / inner;
  int64_t u = row % units, left = inner - (i - row * inner);
  while (i < b1) {
    const int64_t len = std::min(left, b1 - i);
    const float* q = p + i;
    uint32_t c = 0;
    for (int64_t k = 0; k < len; ++k) c += q[k] != 0.0f;
    cnt[u] += c;
    i += len;
    left = inner;
    u = u + 1 == units ? 0 : u + 1;
  }
}

// The values of a block past its last whole step of 16 (the last block of a tensor only), lane
// by lane, and the lanes added in a fixed order.
template <bool kBand>
inline void scan_finish(const float* q, int64_t whole, int64_t nb, float centre, float threshold, uint8_t* e,
                        double* s, double* sq, float* lo, float* hi, int64_t nonzero, int64_t sat, Scan& r) {
  const bits_t* u = reinterpret_cast<const bits_t*>(q);
  for (int64_t j = 0; whole + j < nb; ++j) {
    const float v = q[whole + j];
    const double d = v;
    s[j] += d;
    sq[j] += d * d;
    lo[j] = v < lo[j] ? v : lo[j];  // NaN compares false and is skipped; it is detected later
    hi[j] = v > hi[j] ? v : hi[j];
    nonzero += v != 0.0f;
    if (kBand) sat += std::fabs(v - centre) > threshold;
    e[whole + j] = uint8_t((u[whole + j] << 1) >> 24);
    const uint8_t m = uint8_t(e[whole + j] - 1);
    r.elo1 = m < r.elo1 ? m : r.elo1;
    r.ehi = e[whole + j] > r.ehi ? e[whole + j] : r.ehi;
  }
  for (int j = 0; j < kLanes; ++j) {
    r.s += s[j];
    r.q += sq[j];
    r.lo = std::min(r.lo, lo[j]);
    r.hi = std::max(r.hi, hi[j]);
  }
  r.nonzero = nonzero;
  r.sat = sat;
}

template <bool kBand>
void scan_generic(const float* q, int64_t nb, float centre, float threshold, uint8_t* e, Scan& r) {
  double s[kLanes] = {}, sq[kLanes] = {};
  float lo[kLanes], hi[kLanes];
  std::fill(lo, lo + kLanes, std::numeric_limits<float>::infinity());
  std::fill(hi, hi + kLanes, -std::numeric_limits<float>::infinity());
  int32_t nz[kLanes] = {}, sat[kLanes] = {};  // a block's counts fit in int32
  const bits_t* u = reinterpret_cast<const bits_t*>(q);
  const int64_t whole = nb - nb % kLanes;
  for (int64_t k = 0; k < whole; k += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) {
      const float v = q[k + j];
      const double d = v;
      s[j] += d;
      sq[j] += d * d;
      lo[j] = v < lo[j] ? v : lo[j];
      hi[j] = v > hi[j] ? v : hi[j];
      nz[j] += v != 0.0f;
      if (kBand) sat[j] += std::fabs(v - centre) > threshold;
      e[k + j] = uint8_t((u[k + j] << 1) >> 24);
    }
  int64_t nonzero = 0, saturated = 0;
  for (int j = 0; j < kLanes; ++j) nonzero += nz[j], saturated += sat[j];
  scan_finish<kBand>(q, whole, nb, centre, threshold, e, s, sq, lo, hi, nonzero, saturated, r);
}

#if INITSCOPE_X86
// AVX2: four double accumulators of 4 lanes for the sums, two float vectors of 8 lanes for the
// extremes (lane j takes values j and j + 8 of each step: min and max do not depend on order).
template <bool kBand, int kUnits>
INITSCOPE_AVX2 void scan_avx2(const float* q, int64_t nb, float centre, float threshold, uint8_t* e,
                              const Units& un, UnitCursor cur, Scan& r) {
  uint32_t* const cnt = un.cnt;  // locals: the counter stores could otherwise alias them
  const int64_t units = un.count, inner = un.inner;
  int64_t u = cur.u, left = cur.left;
  __m256d s[4], sq[4];
  for (int j = 0; j < 4; ++j) s[j] = sq[j] = _mm256_setzero_pd();
  __m256 lo = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 hi = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256 zero = _mm256_setzero_ps();
  // byte 0 of each 32-bit lane of bits >> 23 (the exponent byte, the sign above it) to bytes 0-3
  // (a) or 4-7 (b) of each 128-bit half; the order of the exponent bytes does not matter to the counts
  const __m256i pick_a = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i pick_b = _mm256_setr_epi8(-1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i halves = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  int64_t nonzero = 0, sat = 0;
  __m128i emn = _mm_set1_epi8(-1), emx = _mm_setzero_si128();
  const __m128i eone = _mm_set1_epi8(1);
  const int64_t whole = nb - nb % kLanes;
  for (int64_t k = 0; k < whole; k += kLanes) {
    const __m256 a = _mm256_loadu_ps(q + k), b = _mm256_loadu_ps(q + k + 8);
    for (int j = 0; j < 4; ++j) {
      const __m256d d = _mm256_cvtps_pd(_mm_loadu_ps(q + k + 4 * j));
      s[j] = _mm256_add_pd(s[j], d);
      sq[j] = _mm256_fmadd_pd(d, d, sq[j]);
    }
    lo = _mm256_min_ps(_mm256_min_ps(a, b), lo);  // a NaN in a or b never reaches lo (second operand)
    hi = _mm256_max_ps(_mm256_max_ps(a, b), hi);
    const __m256 nza = _mm256_cmp_ps(a, zero, _CMP_NEQ_UQ), nzb = _mm256_cmp_ps(b, zero, _CMP_NEQ_UQ);
    const int64_t nz = __builtin_popcount(_mm256_movemask_ps(nza)) + __builtin_popcount(_mm256_movemask_ps(nzb));
    nonzero += nz;
    if (kBand) {
      const __m256 c = _mm256_set1_ps(centre), t = _mm256_set1_ps(threshold);
      const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
      const __m256 da = _mm256_and_ps(_mm256_sub_ps(a, c), absmask), db = _mm256_and_ps(_mm256_sub_ps(b, c), absmask);
      sat += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(da, t, _CMP_GT_OQ))) +
             __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(db, t, _CMP_GT_OQ)));
    }
    if (kUnits == kRows) {
      __m256i* c = reinterpret_cast<__m256i*>(cnt + u);
      _mm256_storeu_si256(c, _mm256_sub_epi32(_mm256_loadu_si256(c), _mm256_castps_si256(nza)));
      _mm256_storeu_si256(c + 1, _mm256_sub_epi32(_mm256_loadu_si256(c + 1), _mm256_castps_si256(nzb)));
      u = u + kLanes == units ? 0 : u + kLanes;
    } else if (kUnits == kRuns) {
      cnt[u] += uint32_t(nz);
      if (!(left -= kLanes)) left = inner, u = u + 1 == units ? 0 : u + 1;
    }
    const __m256i ea = _mm256_shuffle_epi8(_mm256_srli_epi32(_mm256_castps_si256(a), 23), pick_a);
    const __m256i eb = _mm256_shuffle_epi8(_mm256_srli_epi32(_mm256_castps_si256(b), 23), pick_b);
    const __m256i ex = _mm256_permutevar8x32_epi32(_mm256_or_si256(ea, eb), halves);
    const __m128i e16 = _mm256_castsi256_si128(ex);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(e + k), e16);
    emn = _mm_min_epu8(emn, _mm_sub_epi8(e16, eone)), emx = _mm_max_epu8(emx, e16);
  }
  fold_range(emn, emx, r);
  alignas(32) double sl[kLanes], sql[kLanes];
  alignas(32) float lol[kLanes], hil[kLanes];
  for (int j = 0; j < 4; ++j) _mm256_store_pd(sl + 4 * j, s[j]), _mm256_store_pd(sql + 4 * j, sq[j]);
  _mm256_store_ps(lol, lo), _mm256_store_ps(lol + 8, lo), _mm256_store_ps(hil, hi), _mm256_store_ps(hil + 8, hi);
  scan_finish<kBand>(q, whole, nb, centre, threshold, e, sl, sql, lol, hil, nonzero, sat, r);
}

// AVX-512: two double accumulators of 8 lanes (the same lanes as above), one float vector of 16
// for each extreme, comparisons into masks.
template <bool kBand, int kUnits>
INITSCOPE_AVX512 void scan_avx512(const float* q, int64_t nb, float centre, float threshold, uint8_t* e,
                                  const Units& un, UnitCursor cur, Scan& r) {
  uint32_t* const cnt = un.cnt;  // locals: the counter stores could otherwise alias them
  const int64_t units = un.count, inner = un.inner;
  int64_t u = cur.u, left = cur.left;
  __m512d s0 = _mm512_setzero_pd(), s1 = s0, q0 = s0, q1 = s0;
  __m512 lo = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 hi = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512 zero = _mm512_setzero_ps();
  const __m512i one = _mm512_set1_epi32(1);
  int64_t nonzero = 0, sat = 0;
  __m128i emn = _mm_set1_epi8(-1), emx = _mm_setzero_si128();
  const __m128i eone = _mm_set1_epi8(1);
  const int64_t whole = nb - nb % kLanes;
  for (int64_t k = 0; k < whole; k += kLanes) {
    const __m512 a = _mm512_loadu_ps(q + k);
    const __m512d d0 = _mm512_cvtps_pd(_mm256_loadu_ps(q + k)), d1 = _mm512_cvtps_pd(_mm256_loadu_ps(q + k + 8));
    s0 = _mm512_add_pd(s0, d0);
    s1 = _mm512_add_pd(s1, d1);
    q0 = _mm512_fmadd_pd(d0, d0, q0);
    q1 = _mm512_fmadd_pd(d1, d1, q1);
    lo = _mm512_min_ps(a, lo);
    hi = _mm512_max_ps(a, hi);
    const __mmask16 m = _mm512_cmp_ps_mask(a, zero, _CMP_NEQ_UQ);
    const int64_t nz = __builtin_popcount(m);
    nonzero += nz;
    if (kBand) {
      const __m512 dev = _mm512_abs_ps(_mm512_sub_ps(a, _mm512_set1_ps(centre)));
      sat += __builtin_popcount(_mm512_cmp_ps_mask(dev, _mm512_set1_ps(threshold), _CMP_GT_OQ));
    }
    if (kUnits == kRows) {
      uint32_t* c = cnt + u;
      const __m512i v = _mm512_loadu_si512(c);
      _mm512_storeu_si512(c, _mm512_mask_add_epi32(v, m, v, one));
      u = u + kLanes == units ? 0 : u + kLanes;
    } else if (kUnits == kRuns) {
      cnt[u] += uint32_t(nz);
      if (!(left -= kLanes)) left = inner, u = u + 1 == units ? 0 : u + 1;
    }
    // bits >> 23 holds the sign above the exponent byte; the narrowing drops it
    const __m128i e16 = _mm512_cvtepi32_epi8(_mm512_srli_epi32(_mm512_castps_si512(a), 23));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(e + k), e16);
    emn = _mm_min_epu8(emn, _mm_sub_epi8(e16, eone)), emx = _mm_max_epu8(emx, e16);
  }
  fold_range(emn, emx, r);
  alignas(64) double sl[kLanes], sql[kLanes];
  alignas(64) float lol[kLanes], hil[kLanes];
  _mm512_store_pd(sl, s0), _mm512_store_pd(sl + 8, s1), _mm512_store_pd(sql, q0), _mm512_store_pd(sql + 8, q1);
  _mm512_store_ps(lol, lo), _mm512_store_ps(hil, hi);
  scan_finish<kBand>(q, whole, nb, centre, threshold, e, sl, sql, lol, hil, nonzero, sat, r);
}

template <bool kBand, int kUnits>
void scan_x86(const float* q, int64_t nb, float centre, float threshold, uint8_t* e, const Units& un,
              int64_t b0, Scan& r) {
  const UnitCursor cur(un, b0);
  if (g_isa == kAvx512)
    scan_avx512<kBand, kUnits>(q, nb, centre, threshold, e, un, cur, r);
  else
    scan_avx2<kBand, kUnits>(q, nb, centre, threshold, e, un, cur, r);
}
#endif

// Scans q[0, nb) (values b0... of the tensor) and takes its per-unit counts where the layout
// allows; returns whether the unit counts of the values scanned (all but the tail) are done.
bool scan(const float* q, int64_t nb, bool band, float centre, float threshold, uint8_t* e, const Units& un,
          int64_t b0, Scan& r) {
#if INITSCOPE_X86
  if (g_isa != kGeneric) {
    const int mode = un.mode == kSeparate ? kNoUnits : un.mode;
    if (band) {
      if (mode == kRows) scan_x86<true, kRows>(q, nb, centre, threshold, e, un, b0, r);
      else if (mode == kRuns) scan_x86<true, kRuns>(q, nb, centre, threshold, e, un, b0, r);
      else scan_x86<true, kNoUnits>(q, nb, centre, threshold, e, un, b0, r);
    } else {
      if (mode == kRows) scan_x86<false, kRows>(q, nb, centre, threshold, e, un, b0, r);
      else if (mode == kRuns) scan_x86<false, kRuns>(q, nb, centre, threshold, e, un, b0, r);
      else scan_x86<false, kNoUnits>(q, nb, centre, threshold, e, un, b0, r);
    }
    return mode != kNoUnits;
  }
#endif
  if (band) scan_generic<true>(q, nb, centre, threshold, e, r);
  else scan_generic<false>(q, nb, centre, threshold, e, r);
  return false;
}

// Sum and M2 of a block from deviations from ``shift``, for blocks whose mean is large against
// their spread; the same 16 lanes.
void shifted(const float* q, int64_t nb, double shift, double& sum, double& m2) {
  double s[kLanes] = {}, sq[kLanes] = {};
  for (int64_t k = 0; k < nb; ++k) {
    const double d = double(q[k]) - shift;
    s[k % kLanes] += d;
    sq[k % kLanes] += d * d;
  }
  double a = 0.0, b = 0.0;
  for (int64_t j = 0; j < kLanes; ++j) a += s[j], b += sq[j];
  sum = a;
  m2 = std::max(0.0, b - a * a / double(nb));
}

// Counts of e[0, n) equal to b, b + 1, ..., b + P - 1, added to h[b...].
int64_t count_generic(const uint8_t* e, int64_t n, int b, int P, uint32_t* h) {
  int64_t counted = 0;
  for (int j = 0; j < P && b + j < kExp; ++j) {
    int64_t c = 0;
    for (int64_t k = 0; k < n; ++k) c += e[k] == b + j;
    h[b + j] += uint32_t(c);
    counted += c;
  }
  return counted;
}

#if INITSCOPE_X86
// A comparison gives -1 per equal byte, so subtracting it counts; a lane of byte counters sees
// at most kBlock / 32 values, so it cannot wrap; psadbw adds the 32 byte counters up. ahead
// (or null): the next block's values, asked into L1 two lines a step (128 lines over a block's
// exponent bytes), so that memory works while this loop computes.
template <int P>
INITSCOPE_AVX2 int64_t count_avx2(const uint8_t* e, int64_t n, int b, uint32_t* h, const char* ahead) {
  static_assert(kBlock / 32 <= 255, "byte counters of one block must not wrap");
  __m256i acc[P], want[P];
  for (int j = 0; j < P; ++j) acc[j] = _mm256_setzero_si256(), want[j] = _mm256_set1_epi8(char(b + j));
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e + k));
    if (ahead) _mm_prefetch(ahead + 4 * k, _MM_HINT_T0), _mm_prefetch(ahead + 4 * k + 64, _MM_HINT_T0);
    for (int j = 0; j < P; ++j) acc[j] = _mm256_sub_epi8(acc[j], _mm256_cmpeq_epi8(v, want[j]));
  }
  int64_t counted = 0;
  for (int j = 0; j < P && b + j < kExp; ++j) {
    const __m256i s = _mm256_sad_epu8(acc[j], _mm256_setzero_si256());
    int64_t c = _mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) + _mm256_extract_epi64(s, 2) +
                _mm256_extract_epi64(s, 3);
    for (int64_t t = k; t < n; ++t) c += e[t] == b + j;
    h[b + j] += uint32_t(c);
    counted += c;
  }
  return counted;
}

typedef int64_t (*CountFn)(const uint8_t*, int64_t, int, uint32_t*, const char*);
const CountFn kCountAvx2[9] = {nullptr, count_avx2<1>, count_avx2<2>, count_avx2<3>, count_avx2<4>,
                               count_avx2<5>, count_avx2<6>, count_avx2<7>, count_avx2<8>};
#endif

#if INITSCOPE_X86
// The octaves lo..hi (at most kSpan) of e[0, n) in one pass, in windows of 8 octaves: a byte
// becomes one bit of its window's byte (a table lookup; other octaves and zeros give no bit), an
// 8 x 8 bit transpose of each group of 8 such bytes (gf2p8affine with the identity's columns)
// gives one byte per octave holding a bit per value, and its popcount is that octave's count
// among the 8. Byte counters take at most 8 a step and are added up every 16 steps (at most 128,
// no wrap): a byte permute puts each octave's 8 counters in one qword, psadbw sums them.
static_assert(kSpan <= 24, "three windows of 8 octaves");
INITSCOPE_GFNI inline void flush_counters(int windows, __m512i gather, __m512i* acc, __m512i* total) {
  for (int w = 0; w < windows; ++w) {
    const __m512i sums = _mm512_sad_epu8(_mm512_permutexvar_epi8(gather, acc[w]), _mm512_setzero_si512());
    total[w] = _mm512_add_epi64(total[w], sums);
    acc[w] = _mm512_setzero_si512();
  }
}

INITSCOPE_GFNI int64_t count_gfni(const uint8_t* e, int64_t n, int lo, int hi, uint32_t* h, const char* ahead) {
  const int windows = (hi - lo) / 8 + 1;
  const __m512i bit = _mm512_broadcast_i32x4(_mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0));
  const __m512i eight = _mm512_set1_epi8(8), zero = _mm512_setzero_si512();
  const __m512i columns = _mm512_set1_epi64(0x8040201008040201LL);  // byte k: 1 << k
  alignas(64) uint8_t idx[64];
  for (int k = 0; k < 8; ++k)
    for (int j = 0; j < 8; ++j) idx[8 * k + j] = uint8_t(8 * j + k);  // counter k of qword j to qword k
  const __m512i gather = _mm512_load_si512(idx);
  __m512i base[3], acc[3], total[3];
  for (int w = 0; w < 3; ++w)
    base[w] = _mm512_set1_epi8(char(lo + 8 * w)), acc[w] = total[w] = zero;
  int64_t k = 0;
  int steps = 0;
  for (; k + 64 <= n; k += 64) {
    const __m512i v = _mm512_loadu_si512(e + k);
    if (ahead)  // the next block's 64 values of these 64 exponent bytes: four lines
      for (int l = 0; l < 4; ++l) _mm_prefetch(ahead + 4 * k + 64 * l, _MM_HINT_T0);
    for (int w = 0; w < windows; ++w) {
      // offset in the window; below it (zeros included, the base being at most 248) wraps to 8 or
      // more, and min() sends that and anything above the window to 8: no bit
      const __m512i d = _mm512_min_epu8(_mm512_sub_epi8(v, base[w]), eight);
      const __m512i t = _mm512_gf2p8affine_epi64_epi8(columns, _mm512_shuffle_epi8(bit, d), 0);
      acc[w] = _mm512_add_epi8(acc[w], _mm512_popcnt_epi8(t));
    }
    if (++steps == 16) flush_counters(windows, gather, acc, total), steps = 0;
  }
  flush_counters(windows, gather, acc, total);
  int64_t counted = 0;
  for (int w = 0; w < windows; ++w) {
    alignas(64) uint64_t c[8];
    _mm512_store_si512(c, total[w]);
    for (int j = 0; j < 8 && lo + 8 * w + j <= hi; ++j) {
      h[lo + 8 * w + j] += uint32_t(c[j]);
      counted += int64_t(c[j]);
    }
  }
  for (; k < n; ++k)
    if (e[k] >= lo && e[k] <= hi) ++h[e[k]], ++counted;
  return counted;
}
#endif

// The octaves lo..hi of a block's exponent bytes, counted in passes of at most 8 (what the 16
// AVX2 registers hold), or in one pass where the CPU has GFNI; returns the values counted. The
// first pass over a whole block prefetches the kBlock values at next (the next block of the
// part, when it is a whole block; or null).
int64_t count_octaves(const uint8_t* e, int64_t n, int lo, int hi, uint32_t* h, const float* next) {
#if INITSCOPE_X86
  // a window's base above 248 would let zeros (0 - base wraps to below 8) into it: the old path
  if (g_isa == kAvx512 && kHasGfni && lo + 8 * ((hi - lo) / 8) <= 248)
    return count_gfni(e, n, lo, hi, h, n == kBlock ? reinterpret_cast<const char*>(next) : nullptr);
#endif
  int64_t counted = 0;
  for (int b = lo; b <= hi; b += 8) {
    const int P = std::min(8, hi - b + 1);
#if INITSCOPE_X86
    if (g_isa != kGeneric) {
      const bool first = b == lo && n == kBlock;
      counted += kCountAvx2[P](e, n, b, h, first ? reinterpret_cast<const char*>(next) : nullptr);
      continue;
    }
#endif
    counted += count_generic(e, n, b, P, h);
  }
  return counted;
}

// The smallest nonzero exponent byte (256 when there is none) and the largest.
void exponent_range(const uint8_t* e, int64_t nb, int& lo, int& hi) {
  uint8_t lo1 = 255, h = 0;  // lo1: the smallest nonzero exponent minus 1 (0 wraps to 255)
  for (int64_t k = 0; k < nb; ++k) {
    const uint8_t m = uint8_t(e[k] - 1);
    lo1 = m < lo1 ? m : lo1;
    h = e[k] > h ? e[k] : h;
  }
  lo = lo1 == 255 ? 256 : lo1 + 1;
  hi = h;
}

// The exponent histogram of one block from its exponent bytes, and the sub-octave counts the
// formats need. nonzero: the block's nonzero values; absmax: its largest |x| (NaN if it holds a NaN).
void exponents(const float* q, const uint8_t* e, int64_t nb, int64_t nonzero, float absmax, bool finite,
               const Edges& edges, const Scan& r, Part& part, Counters& cn, const float* next) {
  const bits_t* u = reinterpret_cast<const bits_t*>(q);
  int lo, hi;
  if (r.erange) {
    lo = r.elo1 == 255 ? 256 : r.elo1 + 1;
    hi = r.ehi;
  } else {
    exponent_range(e, nb, lo, hi);
  }
  uint32_t* h = cn.hist.data();
  int64_t e0;  // values with exponent 0: zeros and subnormals
  if (finite && (hi < lo || hi - lo < kSpan)) {  // hi < lo: only zeros and subnormals
    if (hi >= lo) cn.lo = std::min(cn.lo, lo), cn.hi = std::max(cn.hi, hi);
    e0 = nb - (hi < lo ? 0 : count_octaves(e, nb, lo, hi, h, next));
    h[0] += uint32_t(e0);
  } else {
    cn.scattered = true;
    int64_t k = 0;
    for (; k + kSub <= nb; k += kSub)
      for (int64_t j = 0; j < kSub; ++j) ++h[j * kExp + e[k + j]];
    for (; k < nb; ++k) ++h[e[k]];
    e0 = 0;
    for (k = 0; k < nb; ++k) e0 += e[k] == 0;
  }
  if (e0 > nb - nonzero) {  // subnormals: count those below 2^-129
    int64_t t = 0;
    for (int64_t k = 0; k < nb; ++k) {
      const uint32_t a = u[k] & 0x7fffffffu;
      t += (a != 0) & (a < kTinyBits);
    }
    part.tiny += t;
  }
  if (!(absmax < edges.lowest)) {  // NaN too: count the finite values at or past each edge
    static_assert(kFormats == 4, "one counter per format below");
    const uint32_t f0 = edges.bits[0], f1 = edges.bits[1], f2 = edges.bits[2], f3 = edges.bits[3];
    int32_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    for (int64_t k = 0; k < nb; ++k) {  // branch-free, so that it vectorises
      const uint32_t a = u[k] & 0x7fffffffu;
      const int32_t fin = a < kInfBits;
      c0 += fin & (a >= f0);
      c1 += fin & (a >= f1);
      c2 += fin & (a >= f2);
      c3 += fin & (a >= f3);
    }
    part.over[0] += c0;
    part.over[1] += c1;
    part.over[2] += c2;
    part.over[3] += c3;
  }
}

// Values b0..b1 of p into part; next: the part's next block where it is a whole one (prefetched), or null.
void block(const float* p, int64_t b0, int64_t b1, const Units& un, bool band, float centre, float threshold,
           const Edges& edges, Part& part, Counters& cn, const float* next) {
  const float* q = p + b0;
  const int64_t nb = b1 - b0;
  uint8_t e[kBlock];
  Scan r;
  const bool units_done = scan(q, nb, band, centre, threshold, e, un, b0, r);
  if (un.mode != kNoUnits)  // the whole block, or the tail the scan left
    unit_counts(p, units_done ? b0 + nb - nb % kLanes : b0, b1, un.count, un.inner, un.cnt);
  part.lo = std::min(part.lo, r.lo);
  part.hi = std::max(part.hi, r.hi);
  part.nonzero += r.nonzero;
  part.sat += r.sat;
  const bool finite = std::isfinite(r.s) && std::isfinite(r.q);
  float absmax = std::max(-r.lo, r.hi);
  if (!finite) {  // a NaN or an infinity in this block: M2 is undefined from here on
    part.finite = false;
    const bits_t* u = reinterpret_cast<const bits_t*>(q);
    int64_t nan = 0;
    double total = 0.0;  // the plain sum gives the NaN or infinite mean of such data
    for (int64_t k = 0; k < nb; ++k) {
      total += double(q[k]);
      nan += q[k] != q[k];
      part.posinf += u[k] == kInfBits;
      part.neginf += u[k] == (kInfBits | 0x80000000u);
    }
    part.sum += total;
    part.nan += nan;
    if (nan) absmax = std::numeric_limits<float>::quiet_NaN();
  } else {
    part.sum += r.s;
    if (part.finite) {
      double mean = r.s / double(nb), m2 = r.q - r.s * mean;
      if (r.q > kCancel * m2) {  // mean^2 > (kCancel - 1) var: sum the deviations from a shift instead
        const double shift = part.n ? part.mean : double(q[0]);
        double s;
        shifted(q, nb, shift, s, m2);
        mean = shift + s / double(nb);
      }
      chan(part, nb, mean, std::max(0.0, m2));
    }
  }
  exponents(q, e, nb, r.nonzero, absmax, finite, edges, r, part, cn, next);
}

// Adds a part's histogram and unit counts to the outputs and zeroes the bins it read.
void merge_counts(Counters& cn, int64_t units, int64_t* h, int64_t* nzc) {
  uint32_t* const hist = cn.hist.data();
  if (cn.scattered) {
    for (int64_t j = 0; j < kSub; ++j)
      for (int64_t b = 0; b < kExp; ++b) h[b] += hist[j * kExp + b], hist[j * kExp + b] = 0;
  } else {
    h[0] += hist[0], hist[0] = 0;
    for (int b = std::max(cn.lo, 1); b <= cn.hi; ++b) h[b] += hist[b], hist[b] = 0;
  }
  cn.lo = kExp, cn.hi = -1, cn.scattered = false;
  for (int64_t u = 0; u < units; ++u) nzc[u] += cn.units[u];
}

}  // namespace

// x: contiguous float32 CPU tensor. units: size of the unit dimension (0: no units), inner:
// number of values per unit per row (product of the dimensions after it). edges: the formats'
// overflow edges as float32 bit patterns of |x|. float32_moments rounds mean and var to float32.
// The results go into the caller's buffers, so that a hook allocates nothing that outlives the
// call (small blocks kept alive between a training step's large activations fragment the heap,
// and the allocator then takes fresh pages for them: ~30k more page faults per step measured):
//   scal[row] (float64, width 5): mean, var, min, max, saturated (NaN when no band);
//   counts[row] (int64, width kCounts): the kExp exponent bins of |x|, then values below 2^-129
//     (nonzero), at or past each edge (finite), NaN, +inf, -inf;
//   nonzero[offset, offset + max(units, 1)) (int64): nonzero counts per unit, or one total.
//   where counts has kMeta more columns (the Recorder's slab): the value count, the offset and
//     width of the nonzero counts, flags (kHasUnits, kHasBand), and a tag the Sink writes (below).
constexpr int64_t kCounts = kExp + 1 + kFormats + 3;
constexpr int64_t kMeta = 5;
constexpr int64_t kTag = kCounts + 4;
constexpr int64_t kHasUnits = 1, kHasBand = 2;

void fused_stats(const at::Tensor& x, int64_t units, int64_t inner, bool band, double centre,
                 double threshold, std::vector<int64_t> edge_bits, bool float32_moments,
                 at::Tensor& scal_out, at::Tensor& counts_out, at::Tensor& nonzero_out, int64_t row,
                 int64_t offset) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "fused_stats needs a contiguous float32 CPU tensor");
  TORCH_CHECK(int64_t(edge_bits.size()) == kFormats, "fused_stats needs one edge per format");
  TORCH_CHECK(units >= 0 && (units == 0 || inner >= 1), "fused_stats: units must be >= 0 and inner >= 1");
  TORCH_CHECK(scal_out.scalar_type() == at::kDouble && scal_out.is_contiguous() && scal_out.dim() == 2 &&
                  scal_out.size(1) == 5 && counts_out.scalar_type() == at::kLong && counts_out.is_contiguous() &&
                  counts_out.dim() == 2 && (counts_out.size(1) == kCounts || counts_out.size(1) == kCounts + kMeta) &&
                  nonzero_out.scalar_type() == at::kLong &&
                  nonzero_out.is_contiguous() && row >= 0 && row < scal_out.size(0) && row < counts_out.size(0) &&
                  offset >= 0 && offset + std::max<int64_t>(units, 1) <= nonzero_out.numel(),
              "fused_stats: output buffers of the wrong type, shape or size");
  Edges edges;
  edges.lowest = std::numeric_limits<float>::infinity();
  for (int f = 0; f < kFormats; ++f) {
    edges.bits[f] = uint32_t(edge_bits[f]);
    float v;
    std::memcpy(&v, &edges.bits[f], sizeof v);
    edges.lowest = std::min(edges.lowest, v);
  }
  const float* p = x.data_ptr<float>();
  const int64_t n = x.numel();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks / 8));
  if (g_max_parts > 0) parts = std::min(parts, g_max_parts);
  parts = std::max(parts, (n + kMaxPart - 1) / kMaxPart);
  const UnitMode mode = !units                          ? kNoUnits
                        : inner == 1 && units % kLanes == 0 ? kRows
                        : inner % kLanes == 0           ? kRuns
                                                        : kSeparate;
  // The counters live in the calling thread (not in the pool's threads and their malloc arenas).
  thread_local std::vector<Counters> mine;
  if (int64_t(mine.size()) < parts) mine.resize(parts);
  Counters* const scratch = mine.data();  // the pool's threads write here (in them, `mine` is theirs)
  for (int64_t i = 0; i < parts; ++i) {
    std::vector<uint32_t>& u = scratch[i].units;
    if (int64_t(u.size()) < units) u.resize(units);
    std::fill(u.begin(), u.begin() + units, 0);
    scratch[i].acc = Part();
  }
  const float c = float(centre), t = float(threshold);  // torch compares in float32 too
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Counters& cn = scratch[i];
      Part& part = cn.acc;
      Units un;
      un.count = units, un.inner = inner, un.cnt = cn.units.data(), un.mode = mode;
      const int64_t first = blocks * i / parts, last = blocks * (i + 1) / parts;
      for (int64_t b = first; b < last; ++b) {
        const float* next = b + 1 < last && (b + 2) * kBlock <= n ? p + (b + 1) * kBlock : nullptr;
        block(p, b * kBlock, std::min(n, (b + 1) * kBlock), un, band, c, t, edges, part, cn, next);
      }
    }
  });
  Part all;
  int64_t* h = counts_out.data_ptr<int64_t>() + row * counts_out.size(1);
  int64_t* nzc = nonzero_out.data_ptr<int64_t>() + offset;
  std::fill(h, h + kCounts, 0);
  std::fill(nzc, nzc + std::max<int64_t>(units, 1), 0);
  for (int64_t i = 0; i < parts; ++i) {
    const Part& part = scratch[i].acc;
    if (all.finite && part.finite) {
      chan(all, part.n, part.mean, part.m2);
    } else {
      all.finite = false;
    }
    all.sum += part.sum;
    all.lo = std::min(all.lo, part.lo);
    all.hi = std::max(all.hi, part.hi);
    all.nan += part.nan;
    all.sat += part.sat;
    all.nonzero += part.nonzero;
    all.tiny += part.tiny;
    all.posinf += part.posinf;
    all.neginf += part.neginf;
    for (int f = 0; f < kFormats; ++f) all.over[f] += part.over[f];
    merge_counts(scratch[i], units, h, nzc);
    if (units > kKeepUnits) std::vector<uint32_t>().swap(scratch[i].units);  // not kept: a large buffer
  }
  h[kExp] = all.tiny;
  for (int f = 0; f < kFormats; ++f) h[kExp + 1 + f] = all.over[f];
  h[kExp + 1 + kFormats] = all.nan;
  h[kExp + 2 + kFormats] = all.posinf;
  h[kExp + 3 + kFormats] = all.neginf;
  if (!units) nzc[0] = all.nonzero;
  if (counts_out.size(1) == kCounts + kMeta) {  // the row's own description, for step_table
    h[kCounts] = n, h[kCounts + 1] = offset, h[kCounts + 2] = std::max<int64_t>(units, 1);
    h[kCounts + 3] = (units ? kHasUnits : 0) | (band ? kHasBand : 0);
    h[kTag] = -1;  // a Sink's hook writes its tag after
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // Nonfinite data: the mean the sum gives (NaN, or the one infinity), and an undefined M2.
  double mean = all.finite ? all.mean : all.sum / double(n);
  double var = all.finite ? all.m2 / double(n) : nan;
  const bool has_nan = all.nan > 0;
  if (float32_moments) {  // round as a float32 reduction's result is rounded (see _native.py)
    // Through memory: GCC 12 at -O2 drops a plain double(float(v)) round trip here.
    volatile float mean32 = float(mean), var32 = float(var);
    mean = mean32;
    var = var32;
  }
  double* sc = scal_out.data_ptr<double>() + row * 5;
  sc[0] = mean;
  sc[1] = var;
  sc[2] = has_nan ? nan : double(all.lo);
  sc[3] = has_nan ? nan : double(all.hi);
  sc[4] = band ? double(all.sat) : nan;
}

// StatsAccumulator.add's usual case in one call: x a float32 CPU tensor with values whose
// memory has no gaps (any order of the dimensions, read in memory order as _native._layout
// does), measured into the slab's next row and nonzero slots (cursor: int64 [rows in use, slots
// in use], advanced here), with its units found here (unit_dim, counted from the end when
// negative, ignored below 2 dimensions: the size of that dimension, and the run of values a unit
// has in memory). Measured in a training step, each Python operation of a hook meets caches
// the step has made cold (an add cost ~10-17 us of Python there against ~1.6 us hot), so the
// checks, the layout and the slab's bookkeeping are made here rather than by a dozen tensor
// attribute reads. Returns (values, nonzero slots used, units or -1 for none, row, offset); slots
// 0: not such a tensor, nothing done (the caller takes its general path); slots < 0: the buffers
// need room for a row of that many slots (the caller grows them and calls again).
std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t> measure_row(
    const at::Tensor& x, c10::optional<int64_t> unit_dim, bool band, double centre, double threshold,
    const std::vector<int64_t>& edge_bits, at::Tensor& scal_out, at::Tensor& counts_out, at::Tensor& nonzero_out,
    at::Tensor& cursor) {
  TORCH_CHECK(cursor.scalar_type() == at::kLong && cursor.is_contiguous() && cursor.numel() == 2,
              "measure_row: the cursor is int64 [rows, slots]");
  const int64_t n = x.numel();
  // a tensor subclass that dispatches to Python (a DTensor) or has no storage: not read here
  if (x.layout() != c10::kStrided || !x.device().is_cpu() || x.scalar_type() != at::kFloat || !n ||
      !x.has_storage() || x.key_set().has(c10::DispatchKey::Python))
    return {n, 0, -1, 0, 0};
  // memory order: the dimensions by decreasing stride (a stable sort, as initscope._native._layout)
  const int64_t dims = x.dim();
  at::Tensor flat = x;
  if (!x.is_contiguous()) {
    std::vector<int64_t> order(dims);
    for (int64_t k = 0; k < dims; ++k) order[k] = k;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x.stride(a) > x.stride(b); });
    at::NoGradGuard no_grad;  // a view for reading, not for autograd
    flat = x.permute(order);
    if (!flat.is_contiguous()) return {n, 0, -1, 0, 0};  // memory with gaps: the caller copies it
  }
  int64_t units = 0, inner = 0;
  if (unit_dim.has_value() && dims >= 2) {
    const int64_t d = ((*unit_dim % dims) + dims) % dims;  // Python's modulo
    units = x.size(d), inner = 1;
    if (x.is_contiguous()) {
      for (int64_t k = d + 1; k < dims; ++k) inner *= x.size(k);
    } else {
      inner = units > 1 ? x.stride(d) : 1;  // in memory order, a unit's values come in runs of its stride
    }
  }
  const int64_t width = std::max<int64_t>(units, 1);
  int64_t* cur = cursor.data_ptr<int64_t>();
  const int64_t row = cur[0], offset = cur[1];
  if (row >= scal_out.size(0) || row >= counts_out.size(0) || offset + width > nonzero_out.numel())
    return {n, -width, -1, 0, 0};
  fused_stats(flat, units, inner, band, centre, threshold, edge_bits, true, scal_out, counts_out, nonzero_out, row,
              offset);
  cur[0] = row + 1, cur[1] = offset + width;
  return {n, width, unit_dim.has_value() && dims >= 2 ? units : -1, row, offset};
}

// A recorded step's slab rows as the Recorder stores them: the fields
// initscope._decode.columns decodes from kernel rows and the history's table that
// initscope._steptable.table_of computes from them, in one call instead of ~80 numpy operations
// (~0.8 ms a transformer step, most of it in cold caches after the backward pass). Each value is
// computed by the same operations in the same order as there, so the bits are the same (the
// tests compare the two); nothing here is contracted into an FMA (no FMA target).
//   rows: the slab rows wanted, in order (their counts rows carry the kMeta columns);
//   norm[f], sub[f]: octave bins 1..k of the exponent histogram hold the nonzero values below
//     format f's smallest normal (k = norm[f]) and subnormal (k = sub[f]; sub[f] < 0: the row's
//     count of values below 2^-129 instead).
// Returns m4 [m, 4] (mean, M2, min, max), ints [m, 5] (zeros, NaN, +inf, -inf, saturated or 0),
// hist [m, 258] and fmt [m, F, 3] (below normal, flushed, overflowing) as int64, and the table
// [m, 12] in initscope._steptable.STATS order.
std::vector<at::Tensor> step_table(const at::Tensor& scal, const at::Tensor& counts, const at::Tensor& nonzero,
                                   std::vector<int64_t> rows, std::vector<int64_t> norm, std::vector<int64_t> sub) {
  TORCH_CHECK(scal.scalar_type() == at::kDouble && scal.is_contiguous() && scal.dim() == 2 && scal.size(1) == 5 &&
                  counts.scalar_type() == at::kLong && counts.is_contiguous() && counts.dim() == 2 &&
                  counts.size(1) == kCounts + kMeta && nonzero.scalar_type() == at::kLong && nonzero.is_contiguous() &&
                  int64_t(norm.size()) == kFormats && int64_t(sub.size()) == kFormats,
              "step_table: slab buffers of the wrong type or shape");
  const int64_t m = int64_t(rows.size()), width = counts.size(1), nz_size = nonzero.numel();
  constexpr int64_t kBins = kExp + 2;  // zeros, subnormal, 254 octaves, >= 2^128, nonfinite
  constexpr int kStats = 12;
  auto f64 = at::TensorOptions().dtype(at::kDouble), i64 = at::TensorOptions().dtype(at::kLong);
  at::Tensor m4 = at::empty({m, 4}, f64), ints = at::empty({m, 5}, i64), hist = at::empty({m, kBins}, i64);
  at::Tensor fmt = at::empty({m, kFormats, 3}, i64), table = at::empty({m, kStats}, f64);
  const double* sc_all = scal.data_ptr<double>();
  const int64_t* cnt_all = counts.data_ptr<int64_t>();
  const int64_t* nz_all = nonzero.data_ptr<int64_t>();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int64_t i = 0; i < m; ++i) {
    const int64_t r = rows[i];
    TORCH_CHECK(r >= 0 && r < scal.size(0) && r < counts.size(0), "step_table: row ", r, " out of range");
    const double* sc = sc_all + r * 5;
    const int64_t* c = cnt_all + r * width;
    const int64_t n = c[kCounts], offset = c[kCounts + 1], units = c[kCounts + 2], flags = c[kCounts + 3];
    TORCH_CHECK(offset >= 0 && units >= 1 && offset + units <= nz_size, "step_table: row ", r, " has no nonzero slots");
    const int64_t* nz = nz_all + offset;
    int64_t nonzero_n = 0, dead = 0;
    for (int64_t u = 0; u < units; ++u) nonzero_n += nz[u], dead += nz[u] == 0;
    const int64_t zeros = n - nonzero_n, subnormal = c[0] - zeros;
    const int64_t nan_n = c[kExp + 1 + kFormats], posinf = c[kExp + 2 + kFormats], neginf = c[kExp + 3 + kFormats];
    const bool has_band = flags & kHasBand;
    const int64_t sat = has_band ? int64_t(std::nearbyint(sc[4])) : 0;
    double* mo = m4.data_ptr<double>() + i * 4;
    mo[0] = sc[0], mo[1] = sc[1] * double(n), mo[2] = sc[2], mo[3] = sc[3];
    int64_t* in = ints.data_ptr<int64_t>() + i * 5;
    in[0] = zeros, in[1] = nan_n, in[2] = posinf, in[3] = neginf, in[4] = sat;
    int64_t* h = hist.data_ptr<int64_t>() + i * kBins;
    h[0] = zeros, h[1] = subnormal;
    std::copy(c + 1, c + kExp - 1, h + 2);
    h[kExp] = 0, h[kExp + 1] = nan_n + posinf + neginf;
    int64_t* fm = fmt.data_ptr<int64_t>() + i * kFormats * 3;
    for (int f = 0; f < kFormats; ++f) {
      int64_t below = subnormal, flushed = subnormal;
      for (int64_t b = 1; b <= std::max(norm[f], sub[f]); ++b) {
        if (b <= norm[f]) below += c[b];
        if (b <= sub[f]) flushed += c[b];
      }
      fm[f * 3] = below, fm[f * 3 + 1] = sub[f] >= 0 ? flushed : c[kExp], fm[f * 3 + 2] = c[kExp + 1 + f];
    }
    // the table, as table_of: fractions of the count (NaN without values), std from M2 / count
    const double cn = double(n);
    auto frac = [&](double v) { return n > 0 ? v / cn : nan; };
    const double var = frac(mo[1]);
    double* t = table.data_ptr<double>() + i * kStats;
    t[0] = mo[0], t[1] = var >= 0 ? std::sqrt(var) : nan, t[2] = mo[2], t[3] = mo[3];
    t[4] = frac(double(zeros)), t[5] = double(nan_n + posinf + neginf);
    t[6] = flags & kHasUnits ? double(dead) / double(units) : nan;
    t[7] = has_band && n > 0 ? double(sat) / double(n) : nan;
    t[8] = frac(double(fm[0])), t[9] = frac(double(fm[3])), t[10] = frac(double(fm[2])), t[11] = frac(double(fm[5]));
  }
  return {m4, ints, hist, fmt, table};
}

// The vector code path in use ("avx512", "avx2" or "generic"). level >= 0 asks for that path
// (0 generic, 1 AVX2, 2 AVX-512), capped at what the CPU has: for tests, which check that every
// path gives the same bits.
std::string set_isa(int64_t level) {
  if (level >= 0) g_isa = int(std::min<int64_t>(level, kBestIsa));
  return kIsaNames[g_isa];
}

// The most parts (threads) a call uses; n > 0 sets that cap, 0 removes it, n < 0 only reads it.
int64_t set_max_parts(int64_t n) {
  if (n >= 0) g_max_parts = n;
  return g_max_parts;
}

// A StatsAccumulator's slab, owned here so that gradient hooks registered here can write into
// it. Autograd calls such a hook in C++, with no Python between it and the kernel: through
// Tensor.register_hook, Tap._grad and StatsAccumulator.add a gradient cost ~10-25 us of Python
// in a training step (cold caches), ~80 of them a step for a small transformer. Each row carries
// a tag (column kTag) naming its key, whoever wrote it, so that Python reads the step's keys and
// rows from the slab in the order of its cursor, with no object per row. The buffers grow
// here when full (doubling), so a hook never needs Python; Python reads them back through
// buffers(). A hook registered on a non-leaf tensor holds the Sink and the generation it was
// registered in; clear() starts a new generation and leaves the older hooks inert (Python's
// equivalent removes its handles). Hooks on leaf tensors are not registered here: a C++ hook
// on a leaf replaces the Python hooks already there (torch's create_cpp_hook clears them), so
// parameters get a Python-callable writer (writer()) registered as an ordinary Python hook.
struct Sink {
  at::Tensor scal, counts, nonzero, cursor;
  std::vector<int64_t> edges;
  int64_t generation = 0;
  int64_t hook_ns = 0;  // time spent in write() by the hooks, in total
  std::mutex mu;

  Sink(at::Tensor s, at::Tensor c, at::Tensor z, at::Tensor cur, std::vector<int64_t> e)
      : scal(std::move(s)), counts(std::move(c)), nonzero(std::move(z)), cursor(std::move(cur)), edges(std::move(e)) {
    TORCH_CHECK(counts.dim() == 2 && counts.size(1) == kCounts + kMeta && cursor.numel() == 2,
                "Sink: a slab with the tag column and a cursor of [rows, slots]");
  }

  // room for `rows` more rows and `width` more nonzero slots past the cursor (the caller holds mu)
  void grow_locked(int64_t rows, int64_t width) {
    const int64_t* cur = cursor.data_ptr<int64_t>();
    int64_t cap = scal.size(0);
    while (cur[0] + rows > cap) cap *= 2;
    if (cap != scal.size(0)) {
      at::Tensor s = at::empty({cap, scal.size(1)}, scal.options()), c = at::empty({cap, counts.size(1)}, counts.options());
      s.narrow(0, 0, scal.size(0)).copy_(scal);
      c.narrow(0, 0, counts.size(0)).copy_(counts);
      scal = s, counts = c;
    }
    if (cur[1] + width > nonzero.numel()) {
      at::Tensor z = at::empty({std::max(2 * nonzero.numel(), cur[1] + width)}, nonzero.options());
      z.narrow(0, 0, cur[1]).copy_(nonzero.narrow(0, 0, cur[1]));
      nonzero = z;
    }
  }

  // measure_row into the slab, growing it when full; the row tagged. (values, slots, units or -1,
  // row, offset); slots 0: declined (nothing done).
  std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t> measure_locked(const at::Tensor& x,
                                                                         c10::optional<int64_t> unit_dim, bool band,
                                                                         double centre, double threshold, int64_t tag) {
    auto got = measure_row(x, unit_dim, band, centre, threshold, edges, scal, counts, nonzero, cursor);
    if (std::get<1>(got) < 0) {
      grow_locked(1, -std::get<1>(got));
      got = measure_row(x, unit_dim, band, centre, threshold, edges, scal, counts, nonzero, cursor);
    }
    if (std::get<1>(got) > 0) counts.data_ptr<int64_t>()[std::get<3>(got) * counts.size(1) + kTag] = tag;
    return got;
  }

  // measure of xs[start:] (no units, no band) under tags[start:], in order, until the first
  // tensor measure_row declines: its index (xs.size() when none), for the caller to measure
  // another way before it calls again from the next.
  int64_t measure_many(const std::vector<at::Tensor>& xs, const std::vector<int64_t>& tags, int64_t start) {
    TORCH_CHECK(tags.size() == xs.size() && start >= 0, "Sink.measure_many: one tag per tensor");
    std::lock_guard<std::mutex> lock(mu);
    const int64_t n = int64_t(xs.size());
    for (int64_t i = start; i < n; ++i)
      if (std::get<1>(measure_locked(xs[i], c10::nullopt, false, 0.0, 0.0, tags[i])) == 0) return i;
    return n;
  }

  // A gradient, as a hook gets it: measured into a row tagged `tag` unless `gen` (>= 0) is an
  // older generation. Memory with gaps (an expanded gradient) is copied first, as
  // StatsAccumulator.add does; a sparse one made dense.
  void write(const at::Tensor& g, int64_t tag, c10::optional<int64_t> unit_dim, int64_t gen) {
    std::lock_guard<std::mutex> lock(mu);
    if (gen >= 0 && gen != generation) return;
    const auto start = std::chrono::steady_clock::now();
    struct Clock {  // the time in hooks, for the benchmarks (benchmarks/recorder_hooks.py)
      std::chrono::steady_clock::time_point start;
      int64_t& total;
      ~Clock() { total += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count(); }
    } clock{start, hook_ns};
    at::Tensor x = g.layout() == c10::kStrided ? g : g.to_dense();
    auto got = measure_locked(x, unit_dim, false, 0.0, 0.0, tag);
    if (std::get<1>(got) == 0 && std::get<0>(got) > 0 && x.device().is_cpu() && x.scalar_type() == at::kFloat)
      got = measure_locked(x.contiguous(), unit_dim, false, 0.0, 0.0, tag);
    TORCH_CHECK(std::get<1>(got) > 0, "initscope: a gradient hook of the statistics kernel got a gradient it cannot "
                "measure (", x.scalar_type(), " on ", x.device(), ", ", x.numel(), " values); please report this");
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mu);
    int64_t* cur = cursor.data_ptr<int64_t>();
    cur[0] = cur[1] = 0;
    ++generation;
  }

  void retire() {  // the hooks registered so far go inert; the rows stay
    std::lock_guard<std::mutex> lock(mu);
    ++generation;
  }
};

// A hook on the non-leaf tensor t that measures its gradient into the sink under `tag`, with
// units along unit_dim, in the sink's current generation (the caller holds its mutex); false
// (nothing done) where t is not a float32 CPU tensor with values and a grad_fn (the caller
// registers a Python hook instead).
bool hook_locked(const std::shared_ptr<Sink>& sink, const at::Tensor& t, int64_t tag, c10::optional<int64_t> unit_dim) {
  if (!t.requires_grad() || !t.grad_fn() || !t.device().is_cpu() || t.scalar_type() != at::kFloat ||
      t.layout() != c10::kStrided || !t.numel() || !t.has_storage() || t.key_set().has(c10::DispatchKey::Python))
    return false;
  std::shared_ptr<Sink> s = sink;
  const int64_t gen = sink->generation;
  t.register_hook([s, tag, unit_dim, gen](const at::Tensor& g) { s->write(g, tag, unit_dim, gen); });
  return true;
}

bool sink_hook(const std::shared_ptr<Sink>& sink, const at::Tensor& t, int64_t tag, c10::optional<int64_t> unit_dim) {
  std::lock_guard<std::mutex> lock(sink->mu);
  return hook_locked(sink, t, tag, unit_dim);
}

// StatsAccumulator.add's one call (grad_tag -1), and a forward hook's two calls in one: x measured
// into a row tagged `tag` and, where grad_tag >= 0, its gradient hooked under grad_tag. 0: x
// declined (nothing done); 1: measured; 2: measured and its gradient hooked.
int64_t sink_measure_watch(const std::shared_ptr<Sink>& sink, const at::Tensor& x, c10::optional<int64_t> unit_dim,
                           bool band, double centre, double threshold, int64_t tag, int64_t grad_tag) {
  std::lock_guard<std::mutex> lock(sink->mu);
  if (std::get<1>(sink->measure_locked(x, unit_dim, band, centre, threshold, tag)) == 0) return 0;
  return grad_tag >= 0 && hook_locked(sink, x, grad_tag, unit_dim) ? 2 : 1;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_stats", &fused_stats, "initscope: one-pass tensor statistics (float32, CPU), into buffers");
  m.def("measure_row", &measure_row, "initscope: one tensor into a slab row, its layout found here");
  m.def("step_table", &step_table, "initscope: a recorded step's slab rows decoded, with their history table");
  m.def("set_max_parts", &set_max_parts, "initscope: cap on the parts (threads) of a call; 0 none (tests)");
  py::class_<Sink, std::shared_ptr<Sink>>(m, "Sink", "initscope: a slab that gradient hooks registered here write into")
      .def(py::init<at::Tensor, at::Tensor, at::Tensor, at::Tensor, std::vector<int64_t>>())
      .def("buffers", [](Sink& s) {
        std::lock_guard<std::mutex> lock(s.mu);
        return std::make_tuple(s.scal, s.counts, s.nonzero);
      })
      .def("grow", [](Sink& s, int64_t rows, int64_t width) {
        std::lock_guard<std::mutex> lock(s.mu);
        s.grow_locked(rows, width);
      })
      .def("measure_many", &Sink::measure_many)
      .def("clear", &Sink::clear)
      .def("retire", &Sink::retire)
      .def_property_readonly("hook_ns", [](Sink& s) { return s.hook_ns; })
      .def("hook", &sink_hook)
      .def("measure_watch", &sink_measure_watch)
      .def("writer", [](const std::shared_ptr<Sink>& s, int64_t tag) {
        return py::cpp_function([s, tag](const at::Tensor& g) { s->write(g, tag, c10::nullopt, -1); });
      });
  m.def("set_isa", &set_isa, "initscope: the vector code path in use; level >= 0 picks one (tests)");
}
