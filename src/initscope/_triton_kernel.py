"""The Triton kernel behind :mod:`initscope._triton_stats` (imported only when that path is
taken, so that ``import initscope`` never imports Triton). One program measures one tile.
Without Triton the module defines nothing (and :func:`initscope._triton_stats.enabled` is False)."""
try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

__all__ = ["stats_kernel", "merge_kernel"]

if triton is not None:
    @triton.jit
    def count(c):
        return tl.sum(tl.sum(tl.sum(c.to(tl.int64), axis=2), axis=1), axis=0)

    # Sizes and edges are not specialised (one compile for every tensor of a tile shape); inner
    # is, since its divisibility by 16 lets loads vectorise.
    @triton.jit(do_not_specialize=["outer", "units", "edge0", "edge1", "edge2", "edge3"])
    def stats_kernel(x_ptr, part_f_ptr, part_i_ptr, hist_ptr, units_ptr, outer, units, inner, centre, threshold,
                     edge0, edge1, edge2, edge3, BAND: tl.constexpr, BF16: tl.constexpr, BO: tl.constexpr,
                     BU: tl.constexpr, BI: tl.constexpr):
        pid = tl.program_id(0)
        n_i = tl.cdiv(inner, BI)
        n_u = tl.cdiv(units, BU)
        ic = pid % n_i
        uc = (pid // n_i) % n_u
        oc = pid // (n_i * n_u)
        o = oc.to(tl.int64) * BO + tl.arange(0, BO)  # int64 before the product: no wrap near 2^31
        u = uc.to(tl.int64) * BU + tl.arange(0, BU)
        i = ic.to(tl.int64) * BI + tl.arange(0, BI)
        mask = (o[:, None, None] < outer) & (u[None, :, None] < units) & (i[None, None, :] < inner)
        offs = (o[:, None, None] * units + u[None, :, None]) * inner + i[None, None, :]
        if BF16:  # widened through the bits: exact for subnormals too, whatever the float mode
            bits = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.int16, bitcast=True).to(tl.int32) << 16
            x = bits.to(tl.float32, bitcast=True)
        else:  # float16 widens exactly to normal float32 values
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            bits = x.to(tl.int32, bitcast=True)
        xd = x.to(tl.float64)
        cnt = count(mask)
        total = tl.sum(tl.sum(tl.sum(tl.where(mask, xd, 0.0), axis=2), axis=1), axis=0)
        mean = total / tl.maximum(cnt, 1).to(tl.float64)
        dev = tl.where(mask, xd - mean, 0.0)
        m2 = tl.sum(tl.sum(tl.sum(dev * dev, axis=2), axis=1), axis=0)
        ok = mask & (x == x)  # NaN is left out of min and max (the merge makes them NaN)
        big = tl.full([BO, BU, BI], float("inf"), tl.float32)
        lo = tl.min(tl.min(tl.min(tl.where(ok, x, big), axis=2), axis=1), axis=0)
        hi = tl.max(tl.max(tl.max(tl.where(ok, x, -big), axis=2), axis=1), axis=0)
        a = bits & 0x7FFFFFFF  # counts read the bits, so a flush-to-zero float mode cannot change them
        nz = (mask & (a != 0)).to(tl.int64)
        tl.atomic_add(units_ptr + u, tl.sum(tl.sum(nz, axis=2), axis=0), mask=u < units)
        fin = mask & (a < 0x7F800000)
        row_i = part_i_ptr + pid * 9
        if BAND:
            tl.store(row_i + 0, count(mask & (tl.abs(x - centre) > threshold)))
        else:
            tl.store(row_i + 0, cnt.to(tl.int64) * 0)
        tl.store(row_i + 1, count(mask & (a > 0x7F800000)))
        tl.store(row_i + 2, count(mask & (bits == 0x7F800000)))
        tl.store(row_i + 3, count(mask & (bits == -8388608)))  # 0xff800000: -inf
        tl.store(row_i + 4, count(mask & (a != 0) & (a < (1 << 20))))
        tl.store(row_i + 5, count(fin & (a >= edge0)))
        tl.store(row_i + 6, count(fin & (a >= edge1)))
        tl.store(row_i + 7, count(fin & (a >= edge2)))
        tl.store(row_i + 8, count(fin & (a >= edge3)))
        row_f = part_f_ptr + pid * 5
        tl.store(row_f + 0, cnt.to(tl.float64))
        tl.store(row_f + 1, total)
        tl.store(row_f + 2, m2)
        tl.store(row_f + 3, lo.to(tl.float64))
        tl.store(row_f + 4, hi.to(tl.float64))
        e = tl.reshape(a >> 23, [BO * BU * BI])
        # masked lanes loaded 0, exponent 0: taken out of bin 0 (histogram's mask needs Triton 3.4)
        bins = tl.arange(0, 256)
        h = tl.histogram(e, 256).to(tl.int64) - tl.where(bins == 0, BO * BU * BI - cnt, 0)
        tl.atomic_add(hist_ptr + bins, h, mask=h != 0)


    @triton.jit(do_not_specialize=["parts", "n"])
    def merge_kernel(part_f_ptr, part_i_ptr, parts, n, scal_ptr, counts_ptr, BAND: tl.constexpr,
                     BLOCK: tl.constexpr):
        """One program: the tiles' partials merged into [mean, var, min, max, saturated] and the
        counts after the histogram (below 2^-129, past each edge, NaN, +inf, -inf)."""
        total = tl.zeros([BLOCK], tl.float64)
        ints = tl.zeros([BLOCK, 16], tl.int64)
        lo = tl.full([BLOCK], float("inf"), tl.float64)
        hi = tl.full([BLOCK], -float("inf"), tl.float64)
        cols = tl.arange(0, 16)
        for start in range(0, parts, BLOCK):
            rows = start + tl.arange(0, BLOCK)
            ok = rows < parts
            total += tl.load(part_f_ptr + rows * 5 + 1, mask=ok, other=0.0)
            lo = tl.minimum(lo, tl.load(part_f_ptr + rows * 5 + 3, mask=ok, other=float("inf")))
            hi = tl.maximum(hi, tl.load(part_f_ptr + rows * 5 + 4, mask=ok, other=-float("inf")))
            ints += tl.load(part_i_ptr + rows[:, None] * 9 + cols[None, :], mask=ok[:, None] & (cols[None, :] < 9),
                            other=0)
        mean = tl.sum(total, axis=0) / n
        m2 = tl.zeros([BLOCK], tl.float64)
        for start in range(0, parts, BLOCK):  # Chan: sum of M2_i + n_i (mean_i - mean)^2
            rows = start + tl.arange(0, BLOCK)
            ok = rows < parts
            cnt = tl.load(part_f_ptr + rows * 5, mask=ok, other=0.0)
            dev = tl.load(part_f_ptr + rows * 5 + 1, mask=ok, other=0.0) / tl.maximum(cnt, 1.0) - mean
            m2 += tl.load(part_f_ptr + rows * 5 + 2, mask=ok, other=0.0) + tl.where(ok, cnt * dev * dev, 0.0)
        sums = tl.sum(ints, axis=0)  # [sat, NaN, +inf, -inf, tiny, past edge 0..3, 0...]
        has_nan = tl.sum(tl.where(cols == 1, sums, 0), axis=0) > 0
        var = tl.sum(m2, axis=0) / n
        nonfinite = has_nan | (tl.sum(tl.where((cols == 2) | (cols == 3), sums, 0), axis=0) > 0)
        nan = float("nan")  # the mean of nonfinite data stays the sum's NaN or infinity
        # rounded to float32 and back, as the float32 paths report them
        tl.store(scal_ptr + 0, mean.to(tl.float32).to(tl.float64))
        tl.store(scal_ptr + 1, tl.where(nonfinite, nan, var).to(tl.float32).to(tl.float64))
        tl.store(scal_ptr + 2, tl.where(has_nan, nan, tl.min(lo, axis=0)))
        tl.store(scal_ptr + 3, tl.where(has_nan, nan, tl.max(hi, axis=0)))
        sat = tl.sum(tl.where(cols == 0, sums, 0), axis=0).to(tl.float64)
        tl.store(scal_ptr + 4, sat if BAND else nan)
        # counts[256:]: below 2^-129, past each edge (partial columns 4..8), then NaN, +inf, -inf (1..3)
        src = tl.where(cols < 5, cols + 4, cols - 4)
        tail = tl.sum(tl.where(src[:, None] == cols[None, :], sums[None, :], 0), axis=1)
        tl.store(counts_ptr + 256 + cols, tail, mask=cols < 8)
