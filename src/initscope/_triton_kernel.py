"""The Triton kernel behind :mod:`initscope._triton_stats` (imported only when that path is
taken, so that ``import initscope`` never imports Triton). One program measures one tile.
Without Triton the module defines nothing (and :func:`initscope._triton_stats.enabled` is False)."""
try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

__all__ = ["stats_kernel"]

if triton is not None:
    @triton.jit
    def count(c):
        return tl.sum(tl.sum(tl.sum(c.to(tl.int64), axis=2), axis=1), axis=0)

    @triton.jit
    def stats_kernel(x_ptr, part_f_ptr, part_i_ptr, hist_ptr, units_ptr, outer, units, inner, centre, threshold,
                     edge0, edge1, edge2, edge3, BAND: tl.constexpr, BF16: tl.constexpr, BO: tl.constexpr,
                     BU: tl.constexpr, BI: tl.constexpr):
        pid = tl.program_id(0)
        n_i = tl.cdiv(inner, BI)
        n_u = tl.cdiv(units, BU)
        ic = pid % n_i
        uc = (pid // n_i) % n_u
        oc = pid // (n_i * n_u)
        o = (oc * BO + tl.arange(0, BO)).to(tl.int64)
        u = (uc * BU + tl.arange(0, BU)).to(tl.int64)
        i = (ic * BI + tl.arange(0, BI)).to(tl.int64)
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
        h = tl.histogram(e, 256, mask=tl.reshape(mask, [BO * BU * BI]))
        tl.atomic_add(hist_ptr + tl.arange(0, 256), h.to(tl.int64))

