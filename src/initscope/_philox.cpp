// Optional CPU kernel of initscope/_philox.py (loaded by it; INITSCOPE_NO_NATIVE=1 skips it).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>

// Philox4x32-10 (Salmon et al. 2011) of the counters (i mod 2^32, i div 2^32, 0, 0), i = index[j], and
// from its four words two uniforms in (0, 1) with 53 bits each, exactly as initscope/_philox.py
// computes them with torch ops: ((w0 >> 5) * 2^26 + (w1 >> 6) + 0.5) * 2^-53, and the same of w2, w3.
// Only the integer part lives here; the transcendentals stay torch ops on both paths.
static inline double uniform53(uint32_t hi, uint32_t lo) {
  const uint64_t bits = (uint64_t(hi >> 5) << 26) | uint64_t(lo >> 6);
  return (double(bits) + 0.5) * 0x1p-53;
}

void philox_uniforms(const torch::Tensor& index, int64_t key0, int64_t key1, torch::Tensor& u1, torch::Tensor& u2) {
  TORCH_CHECK(index.scalar_type() == torch::kInt64 && index.is_contiguous(), "index: contiguous int64");
  const int64_t n = index.numel();
  const int64_t* idx = index.data_ptr<int64_t>();
  double* a = u1.data_ptr<double>();
  double* b = u2.numel() ? u2.data_ptr<double>() : nullptr;
  at::parallel_for(0, n, 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      const uint64_t x = uint64_t(idx[j]);
      uint32_t c0 = uint32_t(x), c1 = uint32_t(x >> 32), c2 = 0, c3 = 0;
      uint32_t k0 = uint32_t(key0), k1 = uint32_t(key1);
      for (int r = 0; r < 10; ++r) {
        if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        const uint64_t p0 = uint64_t(0xD2511F53u) * c0, p1 = uint64_t(0xCD9E8D57u) * c2;
        const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
        c1 = uint32_t(p1);
        c3 = uint32_t(p0);
        c0 = n0;
        c2 = n2;
      }
      a[j] = uniform53(c0, c1);
      if (b) b[j] = uniform53(c2, c3);
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("philox_uniforms", &philox_uniforms, "initscope: Philox4x32-10 uniforms of int64 indices (CPU)");
}
