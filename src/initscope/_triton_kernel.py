"""The Triton kernels behind :mod:`initscope._triton_stats` (imported only when that path is
taken, so that ``import initscope`` never imports Triton). Without Triton the module defines
nothing (and :func:`initscope._triton_stats.enabled` is False).

``stats_kernel``: a few programs per streaming multiprocessor, each looping over the tiles of one
chunk of units and keeping per-lane running results in registers (float64 sums of x - K about a
shift K, min, max, counts, and the exponent histogram), so that a tile costs its load, some
elementwise arithmetic and one histogram; the lanes are reduced once, at the end, into the
program's partial row. ``merge_kernel``: one program per tensor, run once for all tensors of a
batch, merges the partial rows (Chan's formula, in float64) into the scalars and counts.
"""
try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

__all__ = ["stats_kernel", "merge_kernel", "PART_F", "PART_I"]

PART_F = 5  # a program's float64 partial row: count, sum, M2 about its mean, min, max
PART_I = 9  # its int64 row: saturated, NaN, +inf, -inf, tiny, past edge 0..3

if triton is not None:
    @triton.jit
    def _total(v):
        return tl.sum(tl.sum(tl.sum(v, axis=2), axis=1), axis=0)

    @triton.jit
    def _low(c):  # the low 15-bit field of a packed per-lane counter, summed over the lanes
        return _total((c & 0x7FFF).to(tl.int64))

    @triton.jit
    def _high(c):
        return _total((c >> 16).to(tl.int64))

    # Sizes, offsets and edges are not specialised (one compile per tile shape and dtype); inner
    # is, since its divisibility by 16 lets loads vectorise.
    @triton.jit(do_not_specialize=["outer", "units", "per_chunk", "pf_off", "pi_off", "h_off", "u_off",
                                   "edge0", "edge1", "edge2", "edge3"])
    def stats_kernel(x_ptr, ws_f, ws_i, pf_off, pi_off, h_off, u_off, outer, units, inner, per_chunk,
                     centre, threshold, edge0, edge1, edge2, edge3, BAND: tl.constexpr, BF16: tl.constexpr,
                     BO: tl.constexpr, BU: tl.constexpr, BI: tl.constexpr):
        pid = tl.program_id(0)
        n_i = tl.cdiv(inner, BI)
        n_u = tl.cdiv(units, BU)
        uc = pid % n_u
        first = pid // n_u
        tiles = tl.cdiv(outer, BO) * n_i
        u = uc.to(tl.int64) * BU + tl.arange(0, BU)
        umask = u[None, :, None] < units
        # the shift K: the tensor's first value where finite (sums of x - K lose little to cancellation)
        if BF16:
            k = (tl.load(x_ptr).to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
        else:
            k = tl.load(x_ptr).to(tl.float32)
        k = tl.where(tl.abs(k) < float("inf"), k, 0.0).to(tl.float64)
        s1 = tl.zeros([BO, BU, BI], tl.float64)
        s2 = tl.zeros([BO, BU, BI], tl.float64)
        lo = tl.full([BO, BU, BI], float("inf"), tl.float32)
        hi = tl.full([BO, BU, BI], -float("inf"), tl.float32)
        n = tl.zeros([BO, BU, BI], tl.int32)
        nz = tl.zeros([BO, BU, BI], tl.int32)
        # per-lane counts, two 15-bit fields each (the host keeps a program under 2^15 tiles)
        c_a = tl.zeros([BO, BU, BI], tl.int32)  # NaN | +inf << 16
        c_b = tl.zeros([BO, BU, BI], tl.int32)  # -inf | tiny << 16
        c_c = tl.zeros([BO, BU, BI], tl.int32)  # saturated | past edge 0 << 16
        c_d = tl.zeros([BO, BU, BI], tl.int32)  # past edge 1 | past edge 2 << 16
        c_e = tl.zeros([BO, BU, BI], tl.int32)  # past edge 3
        hist = tl.zeros([256], tl.int32)
        for t in range(first, tiles, per_chunk):
            oc = t // n_i
            ic = t - oc * n_i
            o = oc.to(tl.int64) * BO + tl.arange(0, BO)  # int64 before the product: no wrap near 2^31
            i = ic.to(tl.int64) * BI + tl.arange(0, BI)
            mask = (o[:, None, None] < outer) & umask & (i[None, None, :] < inner)
            offs = (o[:, None, None] * units + u[None, :, None]) * inner + i[None, None, :]
            if BF16:  # widened through the bits: exact for subnormals too, whatever the float mode
                bits = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.int16, bitcast=True).to(tl.int32) << 16
                x = bits.to(tl.float32, bitcast=True)
            else:  # float16 widens exactly to normal float32 values
                x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                bits = x.to(tl.int32, bitcast=True)
            d = tl.where(mask, x.to(tl.float64) - k, 0.0)
            s1 += d
            s2 += d * d
            ok = mask & (x == x)  # NaN is left out of min and max (the merge makes them NaN)
            lo = tl.minimum(lo, tl.where(ok, x, float("inf")))
            hi = tl.maximum(hi, tl.where(ok, x, -float("inf")))
            n += mask.to(tl.int32)
            a = bits & 0x7FFFFFFF  # counts read the bits, so a flush-to-zero float mode cannot change them
            nz += (a != 0).to(tl.int32)  # masked lanes loaded 0
            fin = a < 0x7F800000
            c_a += (a > 0x7F800000).to(tl.int32) + ((bits == 0x7F800000).to(tl.int32) << 16)
            c_b += (bits == -8388608).to(tl.int32) + (((a != 0) & (a < (1 << 20))).to(tl.int32) << 16)  # -inf
            if BAND:
                c_c += (mask & (tl.abs(x - centre) > threshold)).to(tl.int32)
            c_c += ((fin & (a >= edge0)).to(tl.int32) << 16)
            c_d += (fin & (a >= edge1)).to(tl.int32) + ((fin & (a >= edge2)).to(tl.int32) << 16)
            c_e += (fin & (a >= edge3)).to(tl.int32)
            hist += tl.histogram(tl.reshape(a >> 23, [BO * BU * BI], can_reorder=True), 256)
        cnt = _total(n.to(tl.int64))
        cf = cnt.to(tl.float64)
        t1 = _total(s1)
        row_f = ws_f + pf_off + pid * 5
        tl.store(row_f + 0, cf)
        tl.store(row_f + 1, cf * k + t1)
        tl.store(row_f + 2, _total(s2) - t1 * t1 / tl.maximum(cf, 1.0))
        tl.store(row_f + 3, tl.min(tl.min(tl.min(lo, axis=2), axis=1), axis=0).to(tl.float64))
        tl.store(row_f + 4, tl.max(tl.max(tl.max(hi, axis=2), axis=1), axis=0).to(tl.float64))
        row_i = ws_i + pi_off + pid * 9
        tl.store(row_i + 0, _low(c_c))
        tl.store(row_i + 1, _low(c_a))
        tl.store(row_i + 2, _high(c_a))
        tl.store(row_i + 3, _low(c_b))
        tl.store(row_i + 4, _high(c_b))
        tl.store(row_i + 5, _high(c_c))
        tl.store(row_i + 6, _low(c_d))
        tl.store(row_i + 7, _high(c_d))
        tl.store(row_i + 8, _total(c_e.to(tl.int64)))
        per_unit = tl.sum(tl.sum(nz.to(tl.int64), axis=2), axis=0)
        tl.atomic_add(ws_i + u_off + u, per_unit, mask=(u < units) & (per_unit != 0))
        # masked lanes loaded 0, exponent 0: taken out of bin 0 (histogram's mask needs Triton 3.4)
        laps = tl.maximum(tl.cdiv(tiles - first, per_chunk), 0)
        bins = tl.arange(0, 256)
        h = hist.to(tl.int64) - tl.where(bins == 0, laps.to(tl.int64) * (BO * BU * BI) - cnt, 0)
        tl.atomic_add(ws_i + h_off + bins, h, mask=h != 0)

    @triton.jit
    def merge_kernel(ws_f, ws_i, jobs_ptr, BLOCK: tl.constexpr):
        """One program per tensor: its programs' partial rows merged into [mean, var, min, max,
        saturated] and the counts after the histogram (below 2^-129, past each edge, NaN, +inf, -inf).
        A job (a row of 7 in ``jobs_ptr``, as :func:`initscope._triton_stats._launch` appends it):
        offsets of the partial rows in ``ws_f`` and ``ws_i``, the programs, the values, the offsets
        of the scalars (``ws_f``) and of the counts (``ws_i``), and whether saturation is counted."""
        job = jobs_ptr + tl.program_id(0) * 7
        pf = ws_f + tl.load(job + 0)
        pi = ws_i + tl.load(job + 1)
        parts = tl.load(job + 2)
        n = tl.load(job + 3).to(tl.float64)
        scal = ws_f + tl.load(job + 4)
        counts = ws_i + tl.load(job + 5)
        band = tl.load(job + 6) != 0
        total = tl.zeros([BLOCK], tl.float64)
        ints = tl.zeros([BLOCK, 16], tl.int64)
        lo = tl.full([BLOCK], float("inf"), tl.float64)
        hi = tl.full([BLOCK], -float("inf"), tl.float64)
        cols = tl.arange(0, 16)
        for start in range(0, parts, BLOCK):
            rows = start + tl.arange(0, BLOCK)
            ok = rows < parts
            total += tl.load(pf + rows * 5 + 1, mask=ok, other=0.0)
            lo = tl.minimum(lo, tl.load(pf + rows * 5 + 3, mask=ok, other=float("inf")))
            hi = tl.maximum(hi, tl.load(pf + rows * 5 + 4, mask=ok, other=-float("inf")))
            ints += tl.load(pi + rows[:, None] * 9 + cols[None, :], mask=ok[:, None] & (cols[None, :] < 9), other=0)
        mean = tl.sum(total, axis=0) / n
        m2 = tl.zeros([BLOCK], tl.float64)
        for start in range(0, parts, BLOCK):  # Chan: sum of M2_i + n_i (mean_i - mean)^2
            rows = start + tl.arange(0, BLOCK)
            ok = rows < parts
            cnt = tl.load(pf + rows * 5, mask=ok, other=0.0)
            dev = tl.load(pf + rows * 5 + 1, mask=ok, other=0.0) / tl.maximum(cnt, 1.0) - mean
            m2 += tl.load(pf + rows * 5 + 2, mask=ok, other=0.0) + tl.where(ok, cnt * dev * dev, 0.0)
        sums = tl.sum(ints, axis=0)  # [sat, NaN, +inf, -inf, tiny, past edge 0..3, 0...]
        has_nan = tl.sum(tl.where(cols == 1, sums, 0), axis=0) > 0
        var = tl.sum(m2, axis=0) / n
        nonfinite = has_nan | (tl.sum(tl.where((cols == 2) | (cols == 3), sums, 0), axis=0) > 0)
        nan = float("nan")  # the mean of nonfinite data stays the sum's NaN or infinity
        # rounded to float32 and back, as the float32 paths report them
        tl.store(scal + 0, mean.to(tl.float32).to(tl.float64))
        tl.store(scal + 1, tl.where(nonfinite, nan, var).to(tl.float32).to(tl.float64))
        tl.store(scal + 2, tl.where(has_nan, nan, tl.min(lo, axis=0)))
        tl.store(scal + 3, tl.where(has_nan, nan, tl.max(hi, axis=0)))
        sat = tl.sum(tl.where(cols == 0, sums, 0), axis=0).to(tl.float64)
        tl.store(scal + 4, tl.where(band, sat, nan))
        # counts[256:]: below 2^-129, past each edge (partial columns 4..8), then NaN, +inf, -inf (1..3)
        src = tl.where(cols < 5, cols + 4, cols - 4)
        tail = tl.sum(tl.where(src[:, None] == cols[None, :], sums[None, :], 0), axis=1)
        tl.store(counts + 256 + cols, tail, mask=cols < 8)
