// One pass over a contiguous float32 CPU tensor for initscope.stats: the numbers the torch-ops
// path in initscope._measure produces, read from memory once.
//
// The tensor is cut into blocks of kBlock values (8 KiB, resident in L1). Each block is read
// from memory once and then scanned in cache: a vectorised pass for the block's sum and M2
// (deviations from a shift near the mean, in double), min, max, nonzero and saturation counts,
// the histogram of the exponent byte of |x| and the per-unit nonzero counts. A block
// whose sum is not finite holds a NaN or an infinity: it is scanned for NaN (which makes min and
// max NaN, as torch.aminmax does) and for each infinity, and M2 is undefined from there on.
//
// The histogram counts exponents, not fine codes: the block's exponent bytes are collected, and
// when the nonzero ones span at most kSpan octaves (Gaussian-like data span ~15 in a block of
// 2048) each octave is counted by byte-wise vector compares, several times faster than a scatter
// of one increment per value; wider blocks fall back to the scatter (four sub-histograms, which
// break the store-forwarding chains of repeated exponents). The rare classes a format needs
// finer than an octave are counted directly, only in blocks that can hold them: values at or
// above each format's overflow edge (blocks whose |x| reaches the smallest edge) and float32
// subnormals below 2^-129 (blocks with subnormals).
//
// Blocks merge with Chan's formula in double, within a part (one thread's contiguous range) and
// then across parts in a fixed order, so the result does not depend on thread scheduling. The hot
// loops are also built for AVX2 (target_clones), picked at load time, so the cached build runs on
// any x86-64.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#define INITSCOPE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define INITSCOPE_CLONES
#endif

namespace {

constexpr int64_t kBlock = 2048;
constexpr int64_t kExp = 256;   // exponent bytes of |x|: 0 holds zeros and subnormals, 255 inf and NaN
constexpr int64_t kSub = 4;
constexpr int64_t kSpan = 24;   // widest octave range counted by vector compares
constexpr int kFormats = 4;
constexpr int64_t kMaxPart = int64_t(1) << 30;  // uint32 histogram counters stay exact
constexpr uint32_t kInfBits = 0x7f800000u;
constexpr uint32_t kTinyBits = 1u << 20;        // |x| < 2^-129: exponent 0, three leading mantissa bits 0

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
  std::vector<uint32_t> hist;  // kSub sub-histograms of kExp
  std::vector<int64_t> units;
};

// The overflow edges of the formats, as bit patterns of |x| (finite values at or above count).
struct Edges {
  uint32_t bits[kFormats];
  float lowest;  // the smallest edge: a block whose |x| stays below it holds no overflow
};

void chan(Part& p, int64_t nb, double mean_b, double m2_b) {
  if (nb == 0) return;
  const int64_t n = p.n + nb;
  const double delta = mean_b - p.mean;
  p.mean += delta * (double(nb) / double(n));
  p.m2 += m2_b + delta * delta * (double(p.n) * double(nb) / double(n));
  p.n = n;
}

typedef uint8_t u8x32 __attribute__((vector_size(32)));
constexpr int kPass = 8;  // octaves counted per pass over a block's exponent bytes

// Counts of e[0, n) equal to b, b + 1, ..., b + kPass - 1, added to h[b...] (bins past 255 are
// not counted). A comparison gives -1 per equal byte, so subtracting it counts; a lane of
// byte counters sees at most kBlock / 32 values, so it cannot wrap.
INITSCOPE_CLONES
int64_t count_pass(const uint8_t* e, int64_t n, int b, uint32_t* h) {
  static_assert(kBlock / 32 <= 255, "byte counters of one block must not wrap");
  u8x32 acc[kPass] = {};
  u8x32 want[kPass];
  for (int j = 0; j < kPass; ++j)
    for (int l = 0; l < 32; ++l) want[j][l] = uint8_t(b + j);
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    u8x32 v;
    std::memcpy(&v, e + k, sizeof v);
    for (int j = 0; j < kPass; ++j) acc[j] -= (u8x32)(v == want[j]);
  }
  int64_t counted = 0;
  for (int j = 0; j < kPass && b + j < kExp; ++j) {
    int64_t c = 0;
    for (int l = 0; l < 32; ++l) c += acc[j][l];
    for (int64_t t = k; t < n; ++t) c += e[t] == b + j;
    h[b + j] += uint32_t(c);
    counted += c;
  }
  return counted;
}

// The exponent histogram of one block, and the sub-octave counts the formats need.
// nonzero: the block's nonzero values; absmax: its largest |x| (NaN if it holds a NaN).
INITSCOPE_CLONES
void exponents(const float* q, int64_t nb, int64_t nonzero, float absmax, bool finite, const Edges& edges,
               Part& part) {
  const bits_t* u = reinterpret_cast<const bits_t*>(q);
  uint8_t e[kBlock];
  for (int64_t k = 0; k < nb; ++k) e[k] = uint8_t((u[k] << 1) >> 24);
  uint8_t lo1 = 255, hi = 0;  // lo1: the smallest nonzero exponent minus 1 (0 wraps to 255)
  for (int64_t k = 0; k < nb; ++k) {
    const uint8_t m = uint8_t(e[k] - 1);
    lo1 = m < lo1 ? m : lo1;
    hi = e[k] > hi ? e[k] : hi;
  }
  const int lo = lo1 == 255 ? 256 : lo1 + 1;  // 256: no nonzero exponent
  uint32_t* h = part.hist.data();
  int64_t e0;  // values with exponent 0: zeros and subnormals
  if (finite && (hi < lo || hi - lo < kSpan)) {  // hi < lo: only zeros and subnormals
    int64_t counted = 0;
    for (int b = lo; b <= hi; b += kPass) counted += count_pass(e, nb, b, h);
    e0 = nb - counted;
    h[0] += uint32_t(e0);
  } else {
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

INITSCOPE_CLONES
void unit_counts(const float* p, int64_t b0, int64_t b1, int64_t units, int64_t inner, int64_t* cnt) {
  int64_t i = b0;
  if (inner == 1) {  // units vary fastest: count along a row of units
    int64_t u = i % units;
    while (i < b1) {
      const int64_t len = std::min(units - u, b1 - i);
      const float* q = p + i;
      int64_t* c = cnt + u;
#pragma omp simd
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
    int64_t c = 0;
#pragma omp simd reduction(+ : c)
    for (int64_t k = 0; k < len; ++k) c += q[k] != 0.0f;
    cnt[u] += c;
    i += len;
    left = inner;
    u = u + 1 == units ? 0 : u + 1;
  }
}

// Vector lanes of the in-cache passes: independent accumulators, so double additions overlap.
constexpr int64_t kLanes = 16;

INITSCOPE_CLONES
void block(const float* p, int64_t b0, int64_t b1, int64_t units, int64_t inner, bool band,
           float centre, float threshold, const Edges& edges, Part& part) {
  const float* q = p + b0;
  const int64_t nb = b1 - b0, whole = nb - nb % kLanes;
  // Deviations from a shift near the data's mean (the part's mean so far, or the block's first
  // value) give the block's sum and M2 in one pass: M2 = sum d^2 - (sum d)^2 / nb loses only
  // eps * (mean - shift)^2 / var, tiny for a shift that close.
  const double shift = part.n ? part.mean : double(q[0]);
  double sum[kLanes] = {}, sq[kLanes] = {};
  float lo[kLanes], hi[kLanes];
  int32_t nz[kLanes] = {}, sat[kLanes] = {};  // a block's counts fit in int32
  std::fill(lo, lo + kLanes, std::numeric_limits<float>::infinity());
  std::fill(hi, hi + kLanes, -std::numeric_limits<float>::infinity());
  auto scan = [&](int64_t k, int64_t j) {
    const float v = q[k + j];
    const double d = double(v) - shift;
    sum[j] += d;
    sq[j] += d * d;
    lo[j] = v < lo[j] ? v : lo[j];  // NaN compares false and is skipped; it is detected below
    hi[j] = v > hi[j] ? v : hi[j];
    nz[j] += v != 0.0f;
    if (band) sat[j] += std::fabs(v - centre) > threshold;
  };
  for (int64_t k = 0; k < whole; k += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) scan(k, j);
  for (int64_t j = 0; whole + j < nb; ++j) scan(whole, j);
  double s = 0.0, s2 = 0.0;
  float blo = std::numeric_limits<float>::infinity(), bhi = -blo;
  int64_t bnz = 0;
  for (int64_t j = 0; j < kLanes; ++j) {
    s += sum[j];
    s2 += sq[j];
    blo = std::min(blo, lo[j]);
    bhi = std::max(bhi, hi[j]);
    bnz += nz[j];
    part.sat += sat[j];
  }
  part.lo = std::min(part.lo, blo);
  part.hi = std::max(part.hi, bhi);
  part.nonzero += bnz;
  const bool finite = std::isfinite(s) && std::isfinite(s2);
  float absmax = std::max(-blo, bhi);
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
    part.sum += shift * double(nb) + s;
    if (part.finite) chan(part, nb, shift + s / double(nb), std::max(0.0, s2 - s * s / double(nb)));
  }
  exponents(q, nb, bnz, absmax, finite, edges, part);
  if (units) unit_counts(p, b0, b1, units, inner, part.units.data());
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
constexpr int64_t kCounts = kExp + 1 + kFormats + 3;

void fused_stats(const at::Tensor& x, int64_t units, int64_t inner, bool band, double centre,
                 double threshold, std::vector<int64_t> edge_bits, bool float32_moments,
                 at::Tensor& scal_out, at::Tensor& counts_out, at::Tensor& nonzero_out, int64_t row,
                 int64_t offset) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "fused_stats needs a contiguous float32 CPU tensor");
  TORCH_CHECK(int64_t(edge_bits.size()) == kFormats, "fused_stats needs one edge per format");
  TORCH_CHECK(scal_out.scalar_type() == at::kDouble && scal_out.is_contiguous() && scal_out.dim() == 2 &&
                  scal_out.size(1) == 5 && counts_out.scalar_type() == at::kLong && counts_out.is_contiguous() &&
                  counts_out.dim() == 2 && counts_out.size(1) == kCounts && nonzero_out.scalar_type() == at::kLong &&
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
  parts = std::max(parts, (n + kMaxPart - 1) / kMaxPart);
  std::vector<Part> out(parts);
  for (Part& part : out) {  // allocated here, not in the pool's threads (and their malloc arenas)
    part.hist.assign(kSub * kExp, 0);
    if (units) part.units.assign(units, 0);
  }
  const float c = float(centre), t = float(threshold);  // torch compares in float32 too
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Part& part = out[i];
      const int64_t first = blocks * i / parts, last = blocks * (i + 1) / parts;
      for (int64_t b = first; b < last; ++b)
        block(p, b * kBlock, std::min(n, (b + 1) * kBlock), units, inner, band, c, t, edges, part);
    }
  });
  Part all;
  int64_t* h = counts_out.data_ptr<int64_t>() + row * kCounts;
  int64_t* nzc = nonzero_out.data_ptr<int64_t>() + offset;
  std::fill(h, h + kCounts, 0);
  std::fill(nzc, nzc + std::max<int64_t>(units, 1), 0);
  for (const Part& part : out) {
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
    for (int64_t j = 0; j < kSub; ++j)
      for (int64_t b = 0; b < kExp; ++b) h[b] += part.hist[j * kExp + b];
    for (int64_t u = 0; u < units; ++u) nzc[u] += part.units[u];
  }
  h[kExp] = all.tiny;
  for (int f = 0; f < kFormats; ++f) h[kExp + 1 + f] = all.over[f];
  h[kExp + 1 + kFormats] = all.nan;
  h[kExp + 2 + kFormats] = all.posinf;
  h[kExp + 3 + kFormats] = all.neginf;
  if (!units) nzc[0] = all.nonzero;
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_stats", &fused_stats, "initscope: one-pass tensor statistics (float32, CPU), into buffers");
}
