// One pass over a contiguous float32 CPU tensor for initscope.stats: the same numbers the
// torch-ops path in stats._measure produces, read from memory once.
//
// The tensor is cut into blocks of kBlock values (8 KiB, resident in L1). Each block is read
// from memory once and then scanned in cache: a vectorised pass for the double sum, min, max,
// nonzero and saturation counts, a pass for the block's M2 about its own mean (two-pass in
// double), the 12-bit code histogram (sub-histograms break the store-forwarding chains of
// repeated codes), and the per-unit nonzero counts. A block whose sum is not finite holds a NaN
// or an infinity: it is scanned for NaN (which makes min and max NaN, as torch.aminmax does)
// and M2 is undefined from there on. Blocks merge with Chan's formula in double, within a part
// (one thread's contiguous range) and then across parts in a fixed order, so the result does
// not depend on thread scheduling. The hot loops are also built for AVX2 (target_clones), picked
// at load time, so the cached build runs on any x86-64.
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
constexpr int64_t kCodes = 4096;
constexpr int64_t kSub = 4;
constexpr int64_t kMaxPart = int64_t(1) << 30;  // uint32 histogram counters stay exact

struct Part {
  int64_t n = 0;             // values merged into mean / m2 (all, while every block is finite)
  double mean = 0.0, m2 = 0.0;
  double sum = 0.0;          // plain double sum: gives the NaN / inf mean of nonfinite data
  bool finite = true;
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  int64_t nan = 0, sat = 0, nonzero = 0;
  std::vector<uint32_t> hist;
  std::vector<int64_t> units;
};

void chan(Part& p, int64_t nb, double mean_b, double m2_b) {
  if (nb == 0) return;
  const int64_t n = p.n + nb;
  const double delta = mean_b - p.mean;
  p.mean += delta * (double(nb) / double(n));
  p.m2 += m2_b + delta * delta * (double(p.n) * double(nb) / double(n));
  p.n = n;
}

inline uint32_t code(float v) {  // sign flipped so negatives come first, as in stats._histogram
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return (b >> 20) ^ 0x800u;
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
           float centre, float threshold, Part& part) {
  const float* q = p + b0;
  const int64_t nb = b1 - b0, whole = nb - nb % kLanes;
  double sum[kLanes] = {};
  float lo[kLanes], hi[kLanes];
  int32_t nz[kLanes] = {}, sat[kLanes] = {};  // a block's counts fit in int32
  std::fill(lo, lo + kLanes, part.lo);
  std::fill(hi, hi + kLanes, part.hi);
  auto scan = [&](int64_t k, int64_t j) {
    const float v = q[k + j];
    sum[j] += double(v);
    lo[j] = v < lo[j] ? v : lo[j];  // NaN compares false and is skipped; it is detected below
    hi[j] = v > hi[j] ? v : hi[j];
    nz[j] += v != 0.0f;
    if (band) sat[j] += std::fabs(v - centre) > threshold;
  };
  for (int64_t k = 0; k < whole; k += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) scan(k, j);
  for (int64_t j = 0; whole + j < nb; ++j) scan(whole, j);
  double s = 0.0;
  for (int64_t j = 0; j < kLanes; ++j) {
    s += sum[j];
    part.lo = std::min(part.lo, lo[j]);
    part.hi = std::max(part.hi, hi[j]);
    part.nonzero += nz[j];
    part.sat += sat[j];
  }
  part.sum += s;
  if (!std::isfinite(s)) {  // a NaN or an infinity in this block: M2 is undefined from here on
    part.finite = false;
    for (int64_t k = 0; k < nb; ++k) part.nan += q[k] != q[k];
  } else if (part.finite) {
    const double mb = s / double(nb);
    double acc[kLanes] = {};
    auto dev = [&](int64_t k, int64_t j) {
      const double d = double(q[k + j]) - mb;
      acc[j] += d * d;
    };
    for (int64_t k = 0; k < whole; k += kLanes)
      for (int64_t j = 0; j < kLanes; ++j) dev(k, j);
    for (int64_t j = 0; whole + j < nb; ++j) dev(whole, j);
    double m2 = 0.0;
    for (int64_t j = 0; j < kLanes; ++j) m2 += acc[j];
    chan(part, nb, mb, m2);
  }
  uint32_t* h = part.hist.data();
  int64_t k = 0;
  for (; k + kSub <= nb; k += kSub) {
    for (int64_t j = 0; j < kSub; ++j) ++h[j * kCodes + code(q[k + j])];
  }
  for (; k < nb; ++k) ++h[code(q[k])];
  if (units) unit_counts(p, b0, b1, units, inner, part.units.data());
}

}  // namespace

// x: contiguous float32 CPU tensor. units: size of the unit dimension (0: no units), inner:
// number of values per unit per row (product of the dimensions after it).
// float32_moments rounds mean and var to float32 before they are returned.
// Returns [mean, var, min, max(, saturated)] as float64, the 4096-code histogram and the
// nonzero counts (per unit, or one total) as int64.
std::vector<at::Tensor> fused_stats(const at::Tensor& x, int64_t units, int64_t inner, bool band,
                                    double centre, double threshold, bool float32_moments) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "fused_stats needs a contiguous float32 CPU tensor");
  const float* p = x.data_ptr<float>();
  const int64_t n = x.numel();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks / 8));
  parts = std::max(parts, (n + kMaxPart - 1) / kMaxPart);
  std::vector<Part> out(parts);
  const float c = float(centre), t = float(threshold);  // torch compares in float32 too
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Part& part = out[i];
      part.hist.assign(kSub * kCodes, 0);
      if (units) part.units.assign(units, 0);
      const int64_t first = blocks * i / parts, last = blocks * (i + 1) / parts;
      for (int64_t b = first; b < last; ++b)
        block(p, b * kBlock, std::min(n, (b + 1) * kBlock), units, inner, band, c, t, part);
    }
  });
  Part all;
  auto hist = at::zeros({kCodes}, at::kLong);
  auto nonzero = at::zeros({units ? units : 1}, at::kLong);
  int64_t* h = hist.data_ptr<int64_t>();
  int64_t* nzc = nonzero.data_ptr<int64_t>();
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
    for (int64_t j = 0; j < kSub * kCodes; ++j) h[j % kCodes] += part.hist[j];
    for (int64_t u = 0; u < units; ++u) nzc[u] += part.units[u];
  }
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
  std::vector<double> scal = {mean, var, has_nan ? nan : double(all.lo), has_nan ? nan : double(all.hi)};
  if (band) scal.push_back(double(all.sat));
  auto s = at::empty({int64_t(scal.size())}, at::kDouble);
  std::copy(scal.begin(), scal.end(), s.data_ptr<double>());
  return {s, hist, nonzero};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_stats", &fused_stats, "initscope: one-pass tensor statistics (float32, CPU)");
}
