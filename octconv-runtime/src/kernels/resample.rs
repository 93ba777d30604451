//! The octave resampling steps as single memory passes: 2×2 average pooling, and "add the ×2 nearest
//! upsampling of the low branch to the high branch" (the L→H merge) fused into one op.
//!
//! candle 0.11 pools with a scalar loop and upsamples through a strided copy (reshape → broadcast →
//! reshape), then adds in a further pass: together about as long as a low-resolution convolution at
//! α = .25. Each op here reads its inputs once and writes its output once, planes in parallel.

use super::prologue::Prologue;
use super::simd::wide_fn;
use super::Element;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Planes (`n · c`) and spatial size of an NCHW layout, which must be contiguous.
pub(super) fn planes(l: &Layout) -> Result<(usize, usize, usize, usize, usize)> {
    let (n, c, h, w) = l.shape().dims4()?;
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("kernel argument must be contiguous")
    };
    debug_assert_eq!(end - start, n * c * h * w);
    Ok((n * c, h, w, start, end))
}

/// `out[p] = scale · Σ over the 2×2 block of x` (odd trailing rows and columns are dropped).
pub(super) fn pool<T: Element>(x: &[T], np: usize, h: usize, w: usize, scale: T) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    if oh == 0 || ow == 0 {
        return vec![T::ZERO; np * oh * ow];
    }
    // Every output element is written below.
    let mut out = super::scratch::output_vec(np * oh * ow);
    out.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(p, o)| pool_plane(&x[p * h * w..][..h * w], o, (h, w), scale));
    out
}

/// 2×2 average pooling of the mapped input: `out[p] = ¼ · Σ over the 2×2 block of map(x)`, plane `p`
/// mapped by `pro`'s channel `p mod c` (inference: the batch norm and ReLU before a stride-2 octave
/// convolution, which pools its inputs first). Odd trailing rows and columns are dropped, as in
/// [`pool`].
pub fn pool_mapped<T: Element>(
    x: &[T],
    np: usize,
    (h, w): (usize, usize),
    pro: Prologue<'_, T>,
) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    if oh == 0 || ow == 0 {
        return vec![T::ZERO; np * oh * ow];
    }
    let c = pro.scale.len().max(1);
    // Every output element is written below.
    let mut out = super::scratch::output_vec(np * oh * ow);
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(p, o)| {
        let act = pro.channel(p % c);
        let plane = &x[p * h * w..][..h * w];
        pool_plane_map(plane, o, (h, w), T::from_f64(0.25), |v| act.apply(v))
    });
    out
}

/// The input of a stride-2 octave convolution's high output, `[pool(map(X_H)); map(X_L)]`, in one
/// buffer of `n` images of `c_h + c_l` planes at the low branch's size: each high plane mapped by
/// its channel's `pro_h` map and 2×2-average-pooled ([`pool_mapped`]'s sums), each low plane mapped
/// by `pro_l` ([`super::prologue::map_into`]), planes in parallel. The same values as pooling,
/// mapping and concatenating in separate passes, bit for bit, without the three intermediate
/// tensors: those passes took 10–15 % of WRN-16-4's stride-2 octave layers at α = .75 (Intel
/// Xeon, 2 threads, 0.2–0.4 of 2.4–2.6 ms, the low input mapped on one thread).
pub fn pool_mapped_joined<T: Element>(
    (xh, xl): (&[T], &[T]),
    (n, c_h, c_l): (usize, usize, usize),
    (h, w): (usize, usize),
    (pro_h, pro_l): (Prologue<'_, T>, Prologue<'_, T>),
) -> Vec<T> {
    let plane = (h / 2) * (w / 2);
    let c = c_h + c_l;
    assert!(
        xh.len() >= n * c_h * h * w && xl.len() >= n * c_l * plane,
        "pool_mapped_joined: {} high and {} low values for {n} images of {c_h} + {c_l} channels at {h}×{w}",
        xh.len(),
        xl.len()
    );
    // Every plane is written below.
    let mut out = super::scratch::output_vec(n * c * plane);
    if plane == 0 {
        return out;
    }
    let (nh, nl) = (pro_h.scale.len().max(1), pro_l.scale.len().max(1));
    out.par_chunks_mut(plane).enumerate().for_each(|(p, o)| {
        let (img, ch) = (p / c, p % c);
        if ch < c_h {
            let act = pro_h.channel(ch % nh);
            let src = &xh[(img * c_h + ch) * h * w..][..h * w];
            pool_plane_map(src, o, (h, w), T::from_f64(0.25), |v| act.apply(v));
        } else {
            let k = ch - c_h;
            let src = &xl[(img * c_l + k) * plane..][..plane];
            super::prologue::map_into(pro_l.channel(k % nl), src, o);
        }
    });
    out
}

/// `o = scale · Σ over each 2×2 block` of one `h × w` plane (`o` is `h/2 × w/2`), summed
/// `((a₀ + a₁) + b₀) + b₁` (row `2y`, then row `2y + 1`). In f32 on a CPU with AVX2, eight outputs
/// at a time ([`pool_rows_avx2`]; the same sums, bit for bit): where the plane is in cache (a band
/// that a kernel has just written, [`super::pointwise_pooled`]) the scalar loop set the time
/// (1.2 % of ResNeXt-50's cycles at α = 0, `perf record`).
pub(super) fn pool_plane<T: Element>(plane: &[T], o: &mut [T], hw: (usize, usize), scale: T) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        let s = T::as_f32(std::slice::from_ref(&scale)).map(|s| s[0]);
        if let (Some(p), Some(q), Some(s)) = (T::as_f32(plane), T::as_f32_mut(o), s) {
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { pool_rows_avx2(p, q, hw, s) };
            return;
        }
    }
    pool_plane_map(plane, o, hw, scale, |v| v)
}

/// [`pool_plane`] in f32 with AVX2: per pair of rows, 16 columns of each deinterleaved into even
/// and odd columns and summed in the scalar loop's order; the columns past the last multiple of
/// 16 by that loop.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool_rows_avx2(plane: &[f32], o: &mut [f32], (h, w): (usize, usize), scale: f32) {
    use std::arch::x86_64::*;
    let (oh, ow) = (h / 2, w / 2);
    assert!(
        plane.len() >= 2 * oh * w && o.len() >= oh * ow,
        "pool: plane too short"
    );
    let vs = _mm256_set1_ps(scale);
    let blocks = ow / 8;
    for oy in 0..oh {
        let (r0, r1) = (&plane[2 * oy * w..][..w], &plane[(2 * oy + 1) * w..][..w]);
        let orow = &mut o[oy * ow..][..ow];
        for b in 0..blocks {
            // SAFETY: columns 16b … 16b + 16 ≤ 2·ow ≤ w of both rows, outputs 8b … 8b + 8 ≤ ow.
            let [a0, a1, b0, b1] = even_odd_avx2(r0, r1, b);
            let sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), b0), b1);
            let v = in_order_avx2(_mm256_mul_ps(vs, sum));
            _mm256_storeu_ps(orow.as_mut_ptr().add(8 * b), v);
        }
        for x in 8 * blocks..ow {
            orow[x] = scale * (r0[2 * x] + r0[2 * x + 1] + r1[2 * x] + r1[2 * x + 1]);
        }
    }
}

/// Columns `16b … 16b + 16` of rows `r0` and `r1` as their even and odd columns, `[r0 even, r0 odd,
/// r1 even, r1 odd]`, eight each, in the lane order `(0 1 | 4 5 | 2 3 | 6 7)` of the outputs they
/// make ([`in_order_avx2`] puts a result in order): the 2×2 / 2 poolings' deinterleave.
///
/// # Safety
/// The CPU must have AVX2, and both rows at least `16b + 16` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn even_odd_avx2(
    r0: &[f32],
    r1: &[f32],
    b: usize,
) -> [std::arch::x86_64::__m256; 4] {
    use std::arch::x86_64::*;
    debug_assert!(r0.len() >= 16 * b + 16 && r1.len() >= 16 * b + 16);
    let (a_lo, a_hi, b_lo, b_hi) = (
        _mm256_loadu_ps(r0.as_ptr().add(16 * b)),
        _mm256_loadu_ps(r0.as_ptr().add(16 * b + 8)),
        _mm256_loadu_ps(r1.as_ptr().add(16 * b)),
        _mm256_loadu_ps(r1.as_ptr().add(16 * b + 8)),
    );
    // Per 128-bit lane: even columns of lo then hi, and odd ones.
    [
        _mm256_shuffle_ps::<0b10_00_10_00>(a_lo, a_hi),
        _mm256_shuffle_ps::<0b11_01_11_01>(a_lo, a_hi),
        _mm256_shuffle_ps::<0b10_00_10_00>(b_lo, b_hi),
        _mm256_shuffle_ps::<0b11_01_11_01>(b_lo, b_hi),
    ]
}

/// Eight outputs made from [`even_odd_avx2`]'s vectors, in order.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn in_order_avx2(v: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
}

/// [`pool_plane`] of the plane's values mapped by `f` (a batch norm's inference map, say).
pub(super) fn pool_plane_map<T: Element>(
    plane: &[T],
    o: &mut [T],
    (h, w): (usize, usize),
    scale: T,
    f: impl Fn(T) -> T,
) {
    let (oh, ow) = (h / 2, w / 2);
    for oy in 0..oh {
        let (r0, r1) = (&plane[2 * oy * w..][..w], &plane[(2 * oy + 1) * w..][..w]);
        let pairs = r0.chunks_exact(2).zip(r1.chunks_exact(2));
        for (v, (a, b)) in o[oy * ow..][..ow].iter_mut().zip(pairs) {
            *v = scale * (f(a[0]) + f(a[1]) + f(b[0]) + f(b[1]));
        }
    }
}

/// `out[y][x] = base[y][x] + scale · low[y / 2][x / 2]` over an `h × w` plane (`base` absent: 0); rows and
/// columns beyond `2·lh`, `2·lw` get no low contribution.
pub(super) fn upsample_add<T: Element>(
    base: Option<&[T]>,
    low: &[T],
    np: usize,
    (h, w): (usize, usize),
    (lh, lw): (usize, usize),
    scale: T,
) -> Vec<T> {
    let mut out = match base {
        Some(b) => b.to_vec(),
        None => vec![T::ZERO; np * h * w],
    };
    if h * w == 0 {
        return out;
    }
    out.par_chunks_mut(h * w).enumerate().for_each(|(p, o)| {
        let lp = &low[p * lh * lw..][..lh * lw];
        for y in 0..h.min(2 * lh) {
            let lrow = &lp[(y / 2) * lw..][..lw];
            let orow = &mut o[y * w..][..w];
            for x in 0..w.min(2 * lw) {
                orow[x] += scale * lrow[x / 2];
            }
        }
    });
    out
}

wide_fn! {
    /// `o[x] = row[x] + up[x / 2]`: one row of a high-resolution product with the nearest ×2
    /// upsampling of a low-resolution row added (the L→H join of the direct octave kernel), one
    /// add per value as the scalar loop, so the values are the same bit for bit. Compiled for AVX2
    /// too ([`wide_fn!`]), in pairs that the compiler vectorises: the loop indexing `up[x / 2]`
    /// stayed scalar and took 8 % of the seed network's α = .5 inference (`perf`, Intel Xeon with
    /// AVX-512, 2 threads).
    pub(super) fn add_upsampled_row(o: &mut [f32], row: &[f32], up: &[f32]) {
        let w = o.len().min(row.len());
        let (o, row) = (&mut o[..w], &row[..w]);
        assert!(up.len() >= w.div_ceil(2), "add_upsampled_row: low row too short");
        for ((o2, r2), &u) in o.chunks_exact_mut(2).zip(row.chunks_exact(2)).zip(up) {
            o2[0] = r2[0] + u;
            o2[1] = r2[1] + u;
        }
        if w % 2 == 1 {
            o[w - 1] = row[w - 1] + up[w / 2];
        }
    }
}

/// 2×2 average pooling of `c` planes of `h × w` into `out` (`c` planes of `h/2 × w/2`).
pub(super) fn pool_planes<T: Element>(x: &[T], c: usize, (h, w): (usize, usize), out: &mut [T]) {
    let quarter = (h / 2) * (w / 2);
    for (p, o) in out[..c * quarter].chunks_mut(quarter.max(1)).enumerate() {
        pool_plane(&x[p * h * w..][..h * w], o, (h, w), T::from_f64(0.25));
    }
}

/// `y[c][y][x] += t[c][y / 2][x / 2]` for `c` planes of `y`, each `h × w` (even sides), in place (the
/// L→H join of the fused 1×1 and transposed kernels).
pub(super) fn add_upsampled_planes<T: Element>(
    y: &mut [T],
    t: &[T],
    c: usize,
    (h, w): (usize, usize),
) {
    let (lh, lw) = (h / 2, w / 2);
    for (p, plane) in y[..c * h * w].chunks_mut(h * w).enumerate() {
        let low = &t[p * lh * lw..][..lh * lw];
        for (yy, row) in plane.chunks_mut(w).enumerate() {
            let lrow = &low[(yy / 2) * lw..][..lw];
            for (pair, &v) in row.chunks_exact_mut(2).zip(lrow) {
                pair[0] += v;
                pair[1] += v;
            }
        }
    }
}

/// A one-input plane kernel, generic over the element type.
trait PlaneKernel {
    fn run<T: Element>(&self, x: &[T], np: usize, h: usize, w: usize) -> Vec<T>;
}

/// Runs `k` on the contiguous f32 or f64 data of a custom op's argument.
fn map_planes(k: &impl PlaneKernel, s: &CpuStorage, l: &Layout) -> Result<CpuStorage> {
    let (np, h, w, start, end) = planes(l)?;
    match s {
        CpuStorage::F32(v) => Ok(CpuStorage::F32(k.run(&v[start..end], np, h, w))),
        CpuStorage::F64(v) => Ok(CpuStorage::F64(k.run(&v[start..end], np, h, w))),
        _ => bail!("resample kernel: only f32 and f64 are supported"),
    }
}

/// `scale ·` the sum over each 2×2 block, stride 2: `scale = 0.25` is average pooling (the octave
/// down-sampling), `scale = 1` the adjoint of nearest ×2 upsampling. Backward spreads `scale ·` each
/// gradient over its block.
#[derive(Clone, Copy, Debug)]
pub struct Pool2x2 {
    /// Factor applied to each block's sum.
    pub scale: f64,
}

impl Pool2x2 {
    /// 2×2 average pooling.
    pub const AVG: Pool2x2 = Pool2x2 { scale: 0.25 };
    /// 2×2 sum pooling.
    pub const SUM: Pool2x2 = Pool2x2 { scale: 1.0 };
}

impl PlaneKernel for Pool2x2 {
    fn run<T: Element>(&self, x: &[T], np: usize, h: usize, w: usize) -> Vec<T> {
        pool(x, np, h, w, T::from_f64(self.scale))
    }
}

impl CustomOp1 for Pool2x2 {
    fn name(&self) -> &'static str {
        "octconv-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::span("pool2x2");
        let (n, c, h, w) = l.shape().dims4()?;
        Ok((map_planes(self, s, l)?, Shape::from((n, c, h / 2, w / 2))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        grad.contiguous()?
            .apply_op1_no_bwd(&Upsample2x {
                scale: self.scale,
                out_hw: (h, w),
            })
            .map(Some)
    }
}

/// `scale ·` nearest ×2 upsampling into an `out_hw` plane (rows or columns past `2·h` are zero).
#[derive(Clone, Copy, Debug)]
pub struct Upsample2x {
    /// Factor applied to every value.
    pub scale: f64,
    /// Output height and width.
    pub out_hw: (usize, usize),
}

impl PlaneKernel for Upsample2x {
    fn run<T: Element>(&self, x: &[T], np: usize, h: usize, w: usize) -> Vec<T> {
        upsample_add(None, x, np, self.out_hw, (h, w), T::from_f64(self.scale))
    }
}

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "octconv-upsample-2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::span("upsample2x");
        let (n, c, _, _) = l.shape().dims4()?;
        let (oh, ow) = self.out_hw;
        Ok((map_planes(self, s, l)?, Shape::from((n, c, oh, ow))))
    }
}

/// `high + upsample_nearest2x(low)` in one pass; `high` must be exactly twice `low`'s size.
#[derive(Clone, Copy, Debug)]
pub struct AddUpsampled;

impl CustomOp2 for AddUpsampled {
    fn name(&self) -> &'static str {
        "octconv-add-upsampled"
    }

    fn cpu_fwd(
        &self,
        hs: &CpuStorage,
        hl: &Layout,
        ls: &CpuStorage,
        ll: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::span("add upsampled");
        let (n, c, h, w) = hl.shape().dims4()?;
        let (n2, c2, lh, lw) = ll.shape().dims4()?;
        if (n, c, h, w) != (n2, c2, 2 * lh, 2 * lw) {
            bail!("add_upsampled: high [{n}, {c}, {h}, {w}] is not twice low [{n2}, {c2}, {lh}, {lw}]")
        }
        let (np, _, _, hs0, hs1) = planes(hl)?;
        let (_, _, _, ls0, ls1) = planes(ll)?;
        let out = match (hs, ls) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(upsample_add(
                Some(&a[hs0..hs1]),
                &b[ls0..ls1],
                np,
                (h, w),
                (lh, lw),
                1.0,
            )),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(upsample_add(
                Some(&a[hs0..hs1]),
                &b[ls0..ls1],
                np,
                (h, w),
                (lh, lw),
                1.0,
            )),
            _ => bail!("add_upsampled: both branches must be f32 or both f64"),
        };
        Ok((out, Shape::from((n, c, h, w))))
    }

    fn bwd(
        &self,
        _high: &Tensor,
        _low: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let dlow = g.apply_op1_no_bwd(&Pool2x2::SUM)?;
        Ok((Some(g), Some(dlow)))
    }
}

/// `merge()` of an octave pair on raw NCHW buffers: `[high; up(low)]` along the channels, where
/// `high` is `[n, ch, h, w]`, `low` `[n, cl, h/2, w/2]` and `up` the ×2 nearest upsampling: each
/// output plane written once, copied from `high` or upsampled from `low`, planes in parallel.
/// Through candle it was an upsampling by a broadcast copy into a fresh tensor and a concatenation
/// copying both again: 3.2 ms (6 %) of U-Net's inference pass at α = .75, batch 4, for a
/// `[4, 32, 128, 128]` output (`octconv bench --profile`, AMD EPYC, AVX-512, 2 threads).
pub fn merge_planes<T: Element>(
    high: &[T],
    low: &[T],
    (n, ch, cl): (usize, usize, usize),
    (h, w): (usize, usize),
) -> Vec<T> {
    let (lh, lw, hw) = (h / 2, w / 2, h * w);
    assert!(
        h.is_multiple_of(2) && w.is_multiple_of(2),
        "merge: an odd high map {h}×{w} has no low half"
    );
    assert!(
        high.len() >= n * ch * hw && low.len() >= n * cl * lh * lw,
        "merge: {} high and {} low values for {n} images of {ch} + {cl} channels at {h}×{w}",
        high.len(),
        low.len()
    );
    // Every plane is written below.
    let mut out = super::scratch::output_vec(n * (ch + cl) * hw);
    if hw == 0 {
        return out;
    }
    out.par_chunks_mut(hw).enumerate().for_each(|(p, o)| {
        let (img, c) = (p / (ch + cl), p % (ch + cl));
        if c < ch {
            o.copy_from_slice(&high[(img * ch + c) * hw..][..hw]);
        } else {
            let plane = &low[(img * cl + c - ch) * lh * lw..][..lh * lw];
            upsample_plane(plane, o, lw);
        }
    });
    out
}

/// `o` (`2·lh × 2·lw`) = the ×2 nearest upsampling of `plane` (`lh × lw`).
fn upsample_plane<T: Element>(plane: &[T], o: &mut [T], lw: usize) {
    for (row, pair) in plane.chunks_exact(lw).zip(o.chunks_exact_mut(4 * lw)) {
        let (top, bottom) = pair.split_at_mut(2 * lw);
        for (d, &v) in top.chunks_exact_mut(2).zip(row) {
            d[0] = v;
            d[1] = v;
        }
        bottom.copy_from_slice(top);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row join in pairs writes what `o[x] = row[x] + up[x / 2]` does, bit for bit, on even
    /// and odd widths, the one-value row and rows long enough for the vector loop and its tail.
    #[test]
    fn add_upsampled_row_equals_the_indexed_loop_bit_for_bit() {
        for w in [1usize, 2, 3, 8, 15, 16, 17, 32, 33, 64] {
            let row: Vec<f32> = (0..w)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let up: Vec<f32> = (0..w.div_ceil(2))
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 3.0)
                .collect();
            let want: Vec<f32> = (0..w).map(|x| row[x] + up[x / 2]).collect();
            let mut got = vec![f32::NAN; w];
            add_upsampled_row(&mut got, &row, &up);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "width {w}");
        }
    }

    /// The stride-2 octave layer's joint input equals pooling the mapped high input
    /// ([`pool_mapped`]), mapping the low input ([`Prologue::apply`]) and concatenating them per
    /// image, bit for bit: two images, odd channel counts, per-channel maps with and without the
    /// ReLU, values the ReLU cuts, and the smallest maps (2 × 2 high, 1 × 1 low).
    #[test]
    fn pool_mapped_joined_equals_pooling_mapping_and_concatenating_bit_for_bit() {
        for ((h, w), (c_h, c_l), relu) in [((2, 2), (1, 3), true), ((6, 10), (3, 5), false)]
            .into_iter()
            .chain([((16, 16), (5, 2), true), ((8, 34), (2, 7), true)])
        {
            let n = 2;
            let (plane, lplane) = (h * w, (h / 2) * (w / 2));
            let xh: Vec<f32> = (0..n * c_h * plane)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 37.0)
                .collect();
            let xl: Vec<f32> = (0..n * c_l * lplane)
                .map(|i| ((i * 104_729 % 997) as f32 - 498.0) / 41.0)
                .collect();
            let scale = |c: usize| (0..c).map(|k| 0.5 + 0.37 * k as f32).collect::<Vec<_>>();
            let shift = |c: usize| (0..c).map(|k| 0.11 * k as f32 - 0.3).collect::<Vec<_>>();
            let (sh, th, sl, tl) = (scale(c_h), shift(c_h), scale(c_l), shift(c_l));
            let pro_h = Prologue {
                scale: &sh,
                shift: &th,
                relu,
            };
            let pro_l = Prologue {
                scale: &sl,
                shift: &tl,
                relu,
            };
            let got = pool_mapped_joined((&xh, &xl), (n, c_h, c_l), (h, w), (pro_h, pro_l));
            let half = pool_mapped(&xh, n * c_h, (h, w), pro_h);
            let low = pro_l.apply(&xl, lplane);
            let mut want = Vec::new();
            for img in 0..n {
                want.extend_from_slice(&half[img * c_h * lplane..][..c_h * lplane]);
                want.extend_from_slice(&low[img * c_l * lplane..][..c_l * lplane]);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{h} × {w}, {c_h} + {c_l} channels");
        }
    }

    /// The f32 pooling (AVX2 where the CPU has it) equals the portable loop bit for bit on widths
    /// below, at and past a block of 16 columns, odd sizes included, and an odd scale.
    #[test]
    fn pool_plane_equals_the_portable_loop_bit_for_bit() {
        for (h, w) in [
            (2, 2),
            (3, 5),
            (2, 16),
            (4, 17),
            (7, 33),
            (6, 48),
            (5, 70),
            (1, 9),
        ] {
            let plane: Vec<f32> = (0..h * w)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 37.0)
                .collect();
            let n = (h / 2) * (w / 2);
            let (mut got, mut want) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            pool_plane(&plane, &mut got, (h, w), 0.3);
            pool_plane_map(&plane, &mut want, (h, w), 0.3, |v| v);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{h} × {w}");
        }
    }
}
