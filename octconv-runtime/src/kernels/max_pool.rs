//! Max pooling with any square window, stride and padding, one pass per plane, forward and backward.
//!
//! candle 0.11's pooling backward handles only window == stride, so the generic path
//! ([`crate::ops::max_pool`]) builds each window position as a shifted, strided copy of the padded
//! map and takes their element-wise maximum. At the stem of the ImageNet ResNets (3×3 / 2 with
//! padding 1 over 64 × 112 × 112) those copies were the whole network's memory peak: 185 of
//! 199 MiB at batch 8, the same at every α (`octconv bench`, issue #29). Here each output is the
//! maximum of its window, read in place. The backward gives each output's gradient to the first
//! maximum of its window in row-major order, as PyTorch does (on ties candle's `maximum` shares it
//! instead; either is a valid subgradient).

use super::resample::planes;
use super::simd::wide_fn;
use super::Element;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Max pooling: `kernel × kernel` windows, `stride`, `padding` on every side (padding never wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Padding on each side.
    pub padding: usize,
}

impl MaxPool {
    /// Output side for an input side `n` (floor mode), or an error if the window does not fit.
    pub fn out_len(&self, n: usize) -> Result<usize> {
        let padded = n + 2 * self.padding;
        if self.kernel == 0 || self.stride == 0 || padded < self.kernel {
            bail!(
                "max pool: window {} (stride {}, padding {}) does not fit a side of {n}",
                self.kernel,
                self.stride,
                self.padding
            )
        }
        Ok((padded - self.kernel) / self.stride + 1)
    }

    fn forward<T: Element>(
        &self,
        x: &[T],
        np: usize,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
    ) -> Vec<T> {
        let mut out = super::scratch::output_vec(np * oh * ow);
        // Every output element is written: a window with no input in it is −∞.
        // The window's input rows and columns, clipped to the map, for each output row / column.
        let (s, pd, k) = (self.stride, self.padding, self.kernel);
        let clip = |o: usize, n: usize| {
            (o * s).saturating_sub(pd)..(o * s + k).min(n + pd).saturating_sub(pd)
        };
        let cols: Vec<_> = (0..ow).map(|ox| clip(ox, w)).collect();
        if (k, s, pd) == (3, 2, 1) && h >= 2 && w >= 2 {
            out.par_chunks_mut((oh * ow).max(1))
                .enumerate()
                .for_each(|(p, o)| pool3s2_plane(&x[p * h * w..][..h * w], o, (h, w)));
            return out;
        }
        if (k, s, pd) == (2, 2, 0) && oh > 0 && ow > 0 {
            out.par_chunks_mut(oh * ow)
                .enumerate()
                .for_each(|(p, o)| pool2s2_plane(&x[p * h * w..][..h * w], o, (h, w)));
            return out;
        }
        // The first maximum of each window, found with selects instead of branches.
        out.par_chunks_mut((oh * ow).max(1))
            .enumerate()
            .for_each(|(p, o)| {
                let plane = &x[p * h * w..][..h * w];
                for (oy, orow) in o.chunks_mut(ow.max(1)).enumerate() {
                    let rows = clip(oy, h);
                    for (out, cs) in orow.iter_mut().zip(&cols) {
                        if rows.is_empty() || cs.is_empty() {
                            *out = T::from_f64(f64::NEG_INFINITY);
                            continue;
                        }
                        let mut m = plane[rows.start * w + cs.start];
                        for iy in rows.clone() {
                            for &v in &plane[iy * w..][cs.clone()] {
                                m = if v > m { v } else { m };
                            }
                        }
                        *out = m;
                    }
                }
            });
        out
    }

    fn backward<T: Element>(
        &self,
        x: &[T],
        g: &[T],
        np: usize,
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
    ) -> Vec<T> {
        let mut dx = vec![T::ZERO; np * h * w];
        let (s, pd, k) = (self.stride, self.padding, self.kernel);
        let clip = |o: usize, n: usize| {
            (o * s).saturating_sub(pd)..(o * s + k).min(n + pd).saturating_sub(pd)
        };
        let cols: Vec<_> = (0..ow).map(|ox| clip(ox, w)).collect();
        dx.par_chunks_mut((h * w).max(1))
            .enumerate()
            .for_each(|(p, d)| {
                let plane = &x[p * h * w..][..h * w];
                let gp = &g[p * oh * ow..][..oh * ow];
                for (oy, grow) in gp.chunks(ow.max(1)).enumerate() {
                    let rows = clip(oy, h);
                    for (&gv, cs) in grow.iter().zip(&cols) {
                        if rows.is_empty() || cs.is_empty() {
                            continue;
                        }
                        // The first maximum in row-major order, with selects: a
                        // branch per value mispredicted, 32 ms of a ResNeXt-50 step (batch 8).
                        let mut best = rows.start * w + cs.start;
                        let mut m = plane[best];
                        for iy in rows.clone() {
                            for ix in cs.clone() {
                                let i = iy * w + ix;
                                let v = plane[i];
                                let better = v > m;
                                m = if better { v } else { m };
                                best = if better { i } else { best };
                            }
                        }
                        d[best] += gv;
                    }
                }
            });
        dx
    }
}

/// The output size of a 3×3, stride-2, padding-1 max pool of an `h × w` map (at least 1×1).
pub fn pool3s2_hw(h: usize, w: usize) -> (usize, usize) {
    ((h - 1) / 2 + 1, (w - 1) / 2 + 1)
}

/// The larger of `m` and `v` by a select (`v` only if it is greater: the first of equal values
/// stays, and a NaN never replaces a value).
#[inline(always)]
fn keep_max<T: Element>(m: T, v: T) -> T {
    if v > m {
        v
    } else {
        m
    }
}

/// One plane of a 2×2, stride-2 max pool (U-Net's down-sampling): `o` (`h/2 × w/2`) takes the
/// first maximum of each window in row-major order (`a₀, a₁`, then `b₀, b₁`, each kept only where
/// it is greater), the generic loop's values bit for bit, NaN and signed zeros included. In f32 on
/// a CPU with AVX2, eight outputs at a time ([`pool2s2_rows_avx2`]); the generic loop's strided
/// windows ran U-Net's first pool (4 images, 16 + 16 channels at 128² and 64², α = .5) in 0.62 ms
/// against ONNX Runtime's 0.12 (Intel Xeon, 2 threads).
pub(crate) fn pool2s2_plane<T: Element>(plane: &[T], o: &mut [T], (h, w): (usize, usize)) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        if let (Some(p), Some(q)) = (T::as_f32(plane), T::as_f32_mut(o)) {
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { pool2s2_rows_avx2(p, q, (h, w)) };
            return;
        }
    }
    let (oh, ow) = (h / 2, w / 2);
    for oy in 0..oh {
        pool2s2_tail(&plane[2 * oy * w..][..2 * w], &mut o[oy * ow..][..ow], w, 0);
    }
}

/// Outputs `from …` of one output row of [`pool2s2_plane`], from its two input rows (`rows`, `w`
/// values each).
fn pool2s2_tail<T: Element>(rows: &[T], orow: &mut [T], w: usize, from: usize) {
    let (r0, r1) = rows.split_at(w);
    for (x, v) in orow.iter_mut().enumerate().skip(from) {
        let m = keep_max(r0[2 * x], r0[2 * x + 1]);
        *v = keep_max(keep_max(m, r1[2 * x]), r1[2 * x + 1]);
    }
}

/// [`pool2s2_plane`] in f32 with AVX2: per pair of rows, 16 columns of each deinterleaved into
/// even and odd columns, `m = max(v, m)` in the scalar order (`_mm256_max_ps(v, m)` returns `m`
/// unless `v > m`, as the select does, NaN and equal zeros included); the columns past the last
/// multiple of 16 by the scalar loop.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pool2s2_rows_avx2(plane: &[f32], o: &mut [f32], (h, w): (usize, usize)) {
    use super::resample::{even_odd_avx2, in_order_avx2};
    use std::arch::x86_64::*;
    let (oh, ow) = (h / 2, w / 2);
    assert!(
        plane.len() >= 2 * oh * w && o.len() >= oh * ow,
        "max pool: plane too short"
    );
    let blocks = ow / 8;
    for oy in 0..oh {
        let rows = &plane[2 * oy * w..][..2 * w];
        let (r0, r1) = rows.split_at(w);
        let orow = &mut o[oy * ow..][..ow];
        for b in 0..blocks {
            // SAFETY: columns 16b … 16b + 16 ≤ 2·ow ≤ w of both rows, outputs 8b … 8b + 8 ≤ ow.
            let [a0, a1, b0, b1] = even_odd_avx2(r0, r1, b);
            let m = _mm256_max_ps(b1, _mm256_max_ps(b0, _mm256_max_ps(a1, a0)));
            _mm256_storeu_ps(orow.as_mut_ptr().add(8 * b), in_order_avx2(m));
        }
        pool2s2_tail(rows, orow, w, 8 * blocks);
    }
}

/// One plane of a 3×3, stride-2, padding-1 max pool (the ImageNet stems'), separably: the
/// three-column maximum of each input row the window rows read, then the maximum of three such rows,
/// in contiguous loops the compiler vectorises (the AVX2 build where the CPU has it). For inputs
/// without NaN each output is the first maximum of its window in row-major order, as in the generic
/// loop: within a row the first of equal values stays, and between rows the upper. The generic loop
/// took 4.1 ms for ResNeXt-50's stem pool at batch 8 (64 × 112²; AMD EPYC, 2 threads), 1.6–2.7 %
/// of the ImageNet families' passes at every α.
pub(crate) fn pool3s2_plane<T: Element>(plane: &[T], o: &mut [T], hw: (usize, usize)) {
    let oh = pool3s2_hw(hw.0, hw.1).0;
    pool3s2_rows((plane, 0), hw, o, 0..oh)
}

wide_fn! {
    /// Output rows `oys` of [`pool3s2_plane`] of an `h × w` plane into `o` (those rows only), from
    /// `src`, which holds the plane's rows from `first` on (at least every row the windows of
    /// `oys` read: `2·oy − 1` to `2·oy + 1`, those inside the map). The stem pools its output band
    /// by band with it ([`super::stem::forward_post_pooled`]).
    pub(crate) fn pool3s2_rows<T: Element>(
        src: (&[T], usize),
        hw: (usize, usize),
        o: &mut [T],
        oys: std::ops::Range<usize>,
    ) {
        let ((src, first), (h, w)) = (src, hw);
        let ow = pool3s2_hw(h, w).1;
        // The three-column maxima of one input row (rows 2·oy − 1, 2·oy, 2·oy + 1 in turn, those
        // inside the map), folded into the output row one after the other.
        let mut hm = vec![T::ZERO; ow];
        for (oy, orow) in oys.zip(o.chunks_exact_mut(ow)) {
            let mut first_row = true;
            for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                let r = &src[(iy - first) * w..][..w];
                hm[0] = keep_max(r[0], r[1]);
                // Columns 2·ox − 1, 2·ox, 2·ox + 1 for ox ≥ 1 (the last may lack its right one).
                let full = (w - 2) / 2;
                let done = match (T::as_f32(r), T::as_f32_mut(&mut hm)) {
                    (Some(r), Some(hm)) => max3_stride2_wide(r, hm, full),
                    _ => 1,
                };
                for (ox, m) in hm.iter_mut().enumerate().take(full + 1).skip(done) {
                    *m = keep_max(keep_max(r[2 * ox - 1], r[2 * ox]), r[2 * ox + 1]);
                }
                if full + 1 < ow {
                    hm[ow - 1] = keep_max(r[2 * ow - 3], r[2 * ow - 2]);
                }
                if first_row {
                    orow.copy_from_slice(&hm);
                    first_row = false;
                } else {
                    for (d, &m) in orow.iter_mut().zip(hm.iter()) {
                        *d = keep_max(*d, m);
                    }
                }
            }
        }
    }
}

/// `hm[ox] = max(r[2·ox − 1], r[2·ox], r[2·ox + 1])` (first maximum kept, as [`keep_max`]) for
/// `ox` from 1 in whole vectors of 16 while `ox ≤ full`, by AVX-512 where the CPU has it; returns
/// the first `ox` left to the caller (1 without AVX-512).
///
/// Why: the compiler does not vectorise the stride-2 reads of the generic loop; the stem's pool
/// (64 × 112² per image, batch 8) took 3.3 ms alone and 2.8 ms of the 10.1 ms of the stem
/// convolution with its pool fused (Intel Xeon, AVX-512, 2 threads), against ONNX Runtime's
/// 1.2–1.4 ms max pool.
fn max3_stride2_wide(r: &[f32], hm: &mut [f32], full: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx512f() && r.len() > 2 * full + 1 && hm.len() > full {
        // SAFETY: AVX-512F checked; the reads end at `r[2·full + 1]` and the writes at `hm[full]`,
        // both checked in bounds above.
        return unsafe { avx512::max3_stride2(r, hm, full) };
    }
    let _ = (r, hm, full);
    1
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::max3_stride2_wide`] on AVX-512: per 16 outputs from `ox0`, the left columns
    /// `2·ox − 1` are the even lanes of `r[2·ox0 − 1 ..][..32]`, the middle and right columns
    /// `2·ox`, `2·ox + 1` the even and odd lanes of `r[2·ox0 ..][..32]`.
    ///
    /// # Safety
    /// AVX-512F; `r` holds at least `2·full + 2` values and `hm` at least `full + 1`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max3_stride2(r: &[f32], hm: &mut [f32], full: usize) -> usize {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let (p, d) = (r.as_ptr(), hm.as_mut_ptr());
        let mut ox = 1;
        // The last vector reads up to `r[2·(ox + 15) + 1]`, inside `r` while `ox + 15 ≤ full`.
        while ox + 15 <= full {
            let (a, b) = (
                _mm512_loadu_ps(p.add(2 * ox - 1)),
                _mm512_loadu_ps(p.add(2 * ox + 15)),
            );
            let (c, e) = (
                _mm512_loadu_ps(p.add(2 * ox)),
                _mm512_loadu_ps(p.add(2 * ox + 16)),
            );
            let left = _mm512_permutex2var_ps(a, even, b);
            let mid = _mm512_permutex2var_ps(c, even, e);
            let right = _mm512_permutex2var_ps(c, odd, e);
            // `_mm512_max_ps(v, m)` is `m` unless `v > m`: `keep_max(m, v)`.
            let m = _mm512_max_ps(right, _mm512_max_ps(mid, left));
            _mm512_storeu_ps(d.add(ox), m);
            ox += 16;
        }
        ox
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "octconv-max-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::span("max pool forward");
        let (n, c, _, _) = l.shape().dims4()?;
        let (np, h, w, a, b) = planes(l)?;
        let hw = (h, w);
        let ohw = (self.out_len(h)?, self.out_len(w)?);
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.forward(&v[a..b], np, hw, ohw)),
            CpuStorage::F64(v) => CpuStorage::F64(self.forward(&v[a..b], np, hw, ohw)),
            _ => bail!("max pool: only f32 and f64 are supported"),
        };
        Ok((out, Shape::from((n, c, ohw.0, ohw.1))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        arg.contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolGrad(*self))
            .map(Some)
    }
}

/// The input gradient of [`MaxPool`]: arguments `x` and the output gradient.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MaxPoolGrad(pub(crate) MaxPool);

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "octconv-max-pool-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _t = super::timing::span("max pool backward");
        let (np, h, w, a, b) = planes(xl)?;
        let (gnp, oh, ow, ga, gb) = planes(gl)?;
        let (hw, ohw) = ((h, w), (oh, ow));
        if gnp != np || ohw != (self.0.out_len(hw.0)?, self.0.out_len(hw.1)?) {
            bail!(
                "max pool backward: gradient {:?} does not match input {:?}",
                gl.shape(),
                xl.shape()
            )
        }
        let dx = match (xs, gs) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                CpuStorage::F32(self.0.backward(&x[a..b], &g[ga..gb], np, hw, ohw))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                CpuStorage::F64(self.0.backward(&x[a..b], &g[ga..gb], np, hw, ohw))
            }
            _ => bail!("max pool backward: input and gradient must both be f32 or f64"),
        };
        Ok((dx, xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 2×2 / 2 pool (AVX2 where the CPU has it) gives the generic loop's values bit for bit
    /// on odd and even sides, rows shorter and longer than a vector, with NaN, infinities and
    /// signed zeros in the windows.
    #[test]
    fn pool_2x2_equals_the_generic_loop_bit_for_bit() {
        let special = [f32::NAN, -0.0, 0.0, f32::INFINITY, -f32::INFINITY, 1.0, 1.0];
        for (h, w) in [(2, 2), (3, 5), (4, 16), (5, 17), (6, 33), (9, 40)] {
            let plane: Vec<f32> = crate::kernels::test_values(h * w, h as u64 * 31 + w as u64)
                .into_iter()
                .enumerate()
                .map(|(i, v)| match i % 11 {
                    k if k < special.len() && i % 3 == 0 => special[k],
                    _ => (v * 4.0).round() as f32 / 4.0,
                })
                .collect();
            let pool = MaxPool {
                kernel: 2,
                stride: 2,
                padding: 0,
            };
            let (oh, ow) = (h / 2, w / 2);
            let got = pool.forward(&plane, 1, (h, w), (oh, ow));
            let mut want = vec![0.0f32; oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = plane[2 * oy * w + 2 * ox];
                    for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                        let v = plane[(2 * oy + dy) * w + 2 * ox + dx];
                        m = if v > m { v } else { m };
                    }
                    want[oy * ow + ox] = m;
                }
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{h} × {w}");
        }
    }
}
