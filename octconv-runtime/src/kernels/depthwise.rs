//! Depthwise convolution (one input channel per group: MobileNet's 3×3 convolutions) as a direct
//! kernel, forward, input gradient and weight gradient, any kernel size, stride and padding.
//!
//! Why not im2col + GEMM: with one input channel per group the GEMM of each group is
//! `1 × k²` by `k² × pixels`, a matrix-vector product per channel that the GEMM library runs far
//! below its peak, after an unfold that writes k² copies of the input. Measured with
//! `octconv bench 'mobilenet_v2(width = 1.0)' --batch 8 --profile` (AMD EPYC, AVX-512, 2 threads):
//! the 17 depthwise layers ran at 3–5 GMAC/s and took 40 % of the pass for 7 % of its MACs. Here
//! each output row is `k²` shifted multiply-adds of a zero-padded input row, which the compiler
//! vectorises (stride 1), with every value read once from cache.

use super::direct::{pad_plane, Padded};
use super::epilogue::RowMap;
use super::geometry::ConvGeometry;
use super::resample::pool_plane;
use super::scratch::{output_vec, with_scratch, Scratch};
use super::simd::wide_fn;
use super::Element;
use rayon::prelude::*;

/// Whether the direct kernel handles `g`: one input channel per group (any channel multiplier).
pub fn applies(g: &ConvGeometry) -> bool {
    g.cin_g() == 1
}

/// Outputs per parallel task of [`forward_post`].
const TASK_OUTPUTS: usize = 16 << 10;

/// The input row read by output row `oy` at kernel row `ky`, if it is inside the map.
fn input_row(g: &ConvGeometry, oy: usize, ky: usize) -> Option<usize> {
    (oy * g.stride + ky)
        .checked_sub(g.pad)
        .filter(|&iy| iy < g.h)
}

/// `y = conv2d(x, w)` for a depthwise geometry ([`applies`]).
pub fn forward<T: Element>(g: &ConvGeometry, x: &[T], w: &[T]) -> Vec<T> {
    forward_post(g, x, w, None)
}

/// [`forward`], applying `post(channel, row)` to each output row as soon as it is computed.
pub fn forward_post<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    post: Option<RowMap<'_, T>>,
) -> Vec<T> {
    forward_from(g, x, None, w, post)
}

/// `post(conv2d(pool(x), w))` where `pool` is the 2×2 average pooling ([`super::resample::pool`],
/// odd trailing rows and columns dropped) of `x` `[n, c_in, sh, sw]` and `g` the geometry on the
/// pooled map (`⌊sh/2⌋ × ⌊sw/2⌋`): each input plane is pooled into a buffer of one plane as its
/// output plane is made, so the pooled map is never written out and read back. This is a
/// stride-2 octave layer that pools first (MobileNet v2's stride-2 depthwise layers: the pooling
/// was a pass of its own over the 96-channel 112×112 expansion). Values are those of the pooling
/// followed by [`forward_post`], bit for bit.
pub fn forward_pooled_post<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    (sh, sw): (usize, usize),
    w: &[T],
    post: Option<RowMap<'_, T>>,
) -> Vec<T> {
    assert!(
        (sh / 2, sw / 2) == (g.h, g.w) && x.len() >= g.n * g.c_in * sh * sw,
        "depthwise: pooled input size"
    );
    forward_from(g, x, Some((sh, sw)), w, post)
}

/// [`forward_post`] of `x`, or where `pooled_from` is `Some((sh, sw))` of `x`'s `sh × sw` planes
/// 2×2-pooled to `g`'s map, one plane at a time.
fn forward_from<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    pooled_from: Option<(usize, usize)>,
    w: &[T],
    post: Option<RowMap<'_, T>>,
) -> Vec<T> {
    let (oh, ow, kk) = (g.oh(), g.ow(), g.kh * g.kw);
    let mut out = output_vec(g.n * g.out_image());
    if out.is_empty() {
        return out;
    }
    // Every output plane is written, row by row.
    // Planes in tasks of about `TASK_OUTPUTS` outputs: MobileNet's last layers have thousands of
    // 7×7 planes, where a task (and a scratch set) per plane cost more than the plane's 441 MACs.
    let per_task = (TASK_OUTPUTS / (oh * ow).max(1)).max(1);
    out.par_chunks_mut(per_task * oh * ow)
        .enumerate()
        .for_each(|(t, planes)| {
            // The pooled plane, where the input is pooled as it is read.
            let mut pooled = vec![T::ZERO; if pooled_from.is_some() { g.h * g.w } else { 0 }];
            with_scratch(|s: &mut Scratch<T>| {
                for (k, o) in planes.chunks_mut(oh * ow).enumerate() {
                    let p = t * per_task + k;
                    let (img, co) = (p / g.c_out, p % g.c_out);
                    let ci = img * g.c_in + co / g.cout_g();
                    let plane = match pooled_from {
                        Some((sh, sw)) => {
                            let src = &x[ci * sh * sw..][..sh * sw];
                            pool_plane(src, &mut pooled, (sh, sw), T::from_f64(0.25));
                            &pooled[..]
                        }
                        None => &x[ci * g.h * g.w..][..g.h * g.w],
                    };
                    plane_post(g, plane, &w[co * kk..][..kk], o, co, post, s);
                }
            })
        });
    out
}

/// Output plane `o` of channel `co` from its input `plane` and kernel `wk`, then `post` on it: in
/// AVX-512 registers where [`plane3x3_s1_avx512`] serves `g`, else by [`forward_plane`].
pub(super) fn plane_post<T: Element>(
    g: &ConvGeometry,
    plane: &[T],
    wk: &[T],
    o: &mut [T],
    co: usize,
    post: Option<RowMap<'_, T>>,
    s: &mut Scratch<T>,
) {
    if avx512_applies(g) && plane3x3_s1_avx512(g, plane, wk, o) {
        if let Some(post) = post {
            post(co, o);
        }
        return;
    }
    forward_plane(g, plane, wk, o, co, post, s)
}

/// Whether [`plane3x3_s1_avx512`] serves `g`: 3×3, stride 1, padding 1, on a CPU with AVX-512F.
fn avx512_applies(g: &ConvGeometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.pad == 1 && g.stride == 1 && super::simd::has_avx512f()
}

/// A 3×3, stride-1, padding-1 output plane in AVX-512 registers, for f32 (returns `false`, writing
/// nothing, for other element types): each output row in chunks of 16 columns, each chunk the sum
/// of nine fused multiply-adds of the three input rows loaded at column offsets −1, 0 and +1, the
/// zero padding by masked loads (lanes outside the plane are neither read nor summed), stored once.
/// The portable kernel ([`plane3x3_s1`], compiled for AVX2 at best) copied every plane into a padded
/// scratch plane, summed into a second one and copied the rows out: 17 GMAC/s for 144 channels of
/// 56×56 at batch 8 (2 threads), 2 cycles per output on one; here there is no copy at all. Values
/// differ from the portable kernel's by rounding (fused multiply-adds, row by row).
fn plane3x3_s1_avx512<T: Element>(g: &ConvGeometry, plane: &[T], wk: &[T], o: &mut [T]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let (Some(plane), Some(wk), Some(o)) = (T::as_f32(plane), T::as_f32(wk), T::as_f32_mut(o)) {
        assert!(plane.len() >= g.h * g.w && o.len() >= g.h * g.w && wk.len() >= 9);
        // SAFETY: the CPU has AVX-512F (`avx512_applies`); the lengths are asserted above.
        unsafe { avx512::plane3x3_s1(plane, (g.h, g.w), wk, o) };
        return true;
    }
    let _ = (g, plane, wk, o);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The first `n` (at most 16) lanes.
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }

    /// See [`super::plane3x3_s1_avx512`]: `o` (`h × w`) from `plane` (`h × w`) and the kernel `wk`.
    ///
    /// # Safety
    /// AVX-512F; `plane` and `o` hold `h·w` values, `wk` nine.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn plane3x3_s1(
        plane: &[f32],
        (h, w): (usize, usize),
        wk: &[f32],
        o: &mut [f32],
    ) {
        let wv: [__m512; 9] = std::array::from_fn(|i| _mm512_set1_ps(wk[i]));
        let (src, dst) = (plane.as_ptr(), o.as_mut_ptr());
        for y in 0..h {
            for x0 in (0..w).step_by(16) {
                let center = lanes(w - x0);
                // Column x0 − 1 + i (none left of the plane) and x0 + 1 + i (none right of it).
                let left = if x0 == 0 { center & !1 } else { center };
                let right = lanes(w - x0 - 1);
                let mut sums = [_mm512_setzero_ps(); 3];
                for (ky, sum) in sums.iter_mut().enumerate() {
                    let Some(iy) = (y + ky).checked_sub(1).filter(|&iy| iy < h) else {
                        continue;
                    };
                    let p = src.add(iy * w + x0);
                    // Masked-off lanes are not read (no fault), so the address left of the first
                    // column is never dereferenced.
                    let l = _mm512_maskz_loadu_ps(left, p.wrapping_sub(1));
                    let c = _mm512_maskz_loadu_ps(center, p);
                    let r = _mm512_maskz_loadu_ps(right, p.add(1));
                    let s = _mm512_mul_ps(wv[3 * ky], l);
                    let s = _mm512_fmadd_ps(wv[3 * ky + 1], c, s);
                    *sum = _mm512_fmadd_ps(wv[3 * ky + 2], r, s);
                }
                let total = _mm512_add_ps(_mm512_add_ps(sums[0], sums[1]), sums[2]);
                _mm512_mask_storeu_ps(dst.add(y * w + x0), center, total);
            }
        }
    }
}

wide_fn! {
    /// One output plane `o` (channel `co`) from its input `plane` and kernel `wk`.
    /// Compiled for AVX2 too ([`wide_fn!`]), the build chosen at run time.
    fn forward_plane<T: Element>(
        g: &ConvGeometry,
        plane: &[T],
        wk: &[T],
        o: &mut [T],
        co: usize,
        post: Option<RowMap<'_, T>>,
        scratch: &mut Scratch<T>,
    ) {
        if g.kh == 3 && g.kw == 3 && g.pad == 1 && g.w >= 2 {
            match g.stride {
                1 => return plane3x3_s1(g, plane, wk, o, co, post, scratch),
                2 => return plane3x3_s2(g, plane, wk, o, co, post),
                _ => {}
            }
        }
        let (ph, pw, ow) = (g.h + 2 * g.pad, g.w + 2 * g.pad, g.ow());
        // The zero-padded plane, so that every window reads whole rows.
        let mut padded = vec![T::ZERO; ph * pw];
        for iy in 0..g.h {
            padded[(iy + g.pad) * pw + g.pad..][..g.w].copy_from_slice(&plane[iy * g.w..][..g.w]);
        }
        for (oy, orow) in o.chunks_mut(ow).enumerate() {
            let rows = &padded[oy * g.stride * pw..];
            if g.kh == 3 && g.kw == 3 && g.stride == 1 {
                row3x3(
                    orow,
                    [&rows[..pw], &rows[pw..2 * pw], &rows[2 * pw..3 * pw]],
                    wk,
                );
            } else {
                orow.fill(T::ZERO);
                for ky in 0..g.kh {
                    let row = &rows[ky * pw..][..pw];
                    for kx in 0..g.kw {
                        let wv = wk[ky * g.kw + kx];
                        for (o, &v) in orow.iter_mut().zip(row[kx..].iter().step_by(g.stride)) {
                            *o += wv * v;
                        }
                    }
                }
            }
            if let Some(post) = post {
                post(co, orow);
            }
        }
    }
}

/// A 3×3, stride-1, padding-1 output plane. The plane is copied once into `scratch` with zero borders
/// (`(h + 2)` rows of `w + 2`); output `q = y·(w + 2) + x` then reads the padded plane at
/// `q + ky·(w + 2) + kx`, so the whole plane is one run of [`row3x3`] over `h·(w + 2)` positions
/// (the two padding columns of each row are computed and dropped). Row by row, a 7×7 or 14×14 plane
/// left the vector loop a few lanes wide with scalar edges: MobileNet v2's stride-1 depthwise
/// layers ran at 9 GMAC/s (AMD EPYC, AVX2, 2 threads, batch 8). The sums are those of the row-wise
/// kernel: each output adds the same nine products in the same order.
#[inline(always)]
fn plane3x3_s1<T: Element>(
    g: &ConvGeometry,
    plane: &[T],
    wk: &[T],
    o: &mut [T],
    co: usize,
    post: Option<RowMap<'_, T>>,
    scratch: &mut Scratch<T>,
) {
    let (h, w) = (g.h, g.w);
    let p = Padded { h, w };
    let pw = p.pw();
    let run = h * pw;
    // The padded plane and the two values past it that the run's last outputs read.
    let [padded, lin] = scratch.many([p.plane() + 2, run]);
    pad_plane(plane, padded, p, |v| v);
    padded[p.plane()..].fill(T::ZERO);
    row3x3(lin, [&padded[..], &padded[pw..], &padded[2 * pw..]], wk);
    for (y, orow) in o.chunks_mut(w).enumerate().take(h) {
        orow.copy_from_slice(&lin[y * pw..][..w]);
    }
    // The map is per channel: one call maps the whole plane.
    if let Some(post) = post {
        post(co, &mut o[..h * w]);
    }
}

/// A 3×3, stride-2, padding-1 output plane: each input row a window reads is split into its even
/// columns and its odd columns (behind one zero, the padding), so that the three taps of a row are
/// three contiguous slices and the row vectorises (a strided read per tap did not).
#[inline(always)]
fn plane3x3_s2<T: Element>(
    g: &ConvGeometry,
    plane: &[T],
    wk: &[T],
    o: &mut [T],
    co: usize,
    post: Option<RowMap<'_, T>>,
) {
    let (h, w, ow) = (g.h, g.w, g.ow());
    // Per kernel row: even columns (ow values), then the odd ones after a zero (ow + 1 values).
    let span = 2 * ow + 1;
    let mut split = vec![T::ZERO; 3 * span];
    let wv: [T; 9] = std::array::from_fn(|i| wk[i]);
    for (oy, orow) in o.chunks_mut(ow).enumerate().take(g.oh()) {
        for (ky, part) in split.chunks_mut(span).enumerate() {
            let (even, odd) = part.split_at_mut(ow);
            match (2 * oy + ky).checked_sub(1).filter(|&iy| iy < h) {
                Some(iy) => {
                    let row = &plane[iy * w..][..w];
                    for (e, &v) in even.iter_mut().zip(row.iter().step_by(2)) {
                        *e = v;
                    }
                    odd.fill(T::ZERO);
                    for (d, &v) in odd[1..].iter_mut().zip(row[1..].iter().step_by(2)) {
                        *d = v;
                    }
                }
                None => part.fill(T::ZERO),
            }
        }
        let tap = |ky: usize| {
            let part = &split[ky * span..][..span];
            let (even, odd) = part.split_at(ow);
            (&odd[..ow], &even[..ow], &odd[1..=ow])
        };
        let (l0, m0, r0) = tap(0);
        let (l1, m1, r1) = tap(1);
        let (l2, m2, r2) = tap(2);
        for (ox, out) in orow.iter_mut().enumerate() {
            let (l, m) = ([l0[ox], l1[ox], l2[ox]], [m0[ox], m1[ox], m2[ox]]);
            *out = taps3(&wv, l, m, [r0[ox], r1[ox], r2[ox]]);
        }
        if let Some(post) = post {
            post(co, orow);
        }
    }
}

/// One output of a 3×3 depthwise kernel `wv` from the values under its left, middle and right
/// column taps in each of the three rows, summed row by row as [`row3x3`] sums them.
#[inline(always)]
fn taps3<T: Element>(wv: &[T; 9], l: [T; 3], m: [T; 3], r: [T; 3]) -> T {
    let a = wv[0] * l[0] + wv[1] * m[0] + wv[2] * r[0];
    let b = wv[3] * l[1] + wv[4] * m[1] + wv[5] * r[1];
    let c = wv[6] * l[2] + wv[7] * m[2] + wv[8] * r[2];
    a + b + c
}

/// One output row of a 3×3, stride-1 depthwise convolution from its three padded input rows: all
/// nine products of an output summed in registers and stored once (the compiler vectorises the
/// loop across the row).
#[inline(always)]
fn row3x3<T: Element>(orow: &mut [T], rows: [&[T]; 3], wk: &[T]) {
    let ow = orow.len();
    let [r0, r1, r2] = rows;
    let (r0, r1, r2) = (&r0[..ow + 2], &r1[..ow + 2], &r2[..ow + 2]);
    let w: [T; 9] = std::array::from_fn(|i| wk[i]);
    for (ox, o) in orow.iter_mut().enumerate() {
        let a = w[0] * r0[ox] + w[1] * r0[ox + 1] + w[2] * r0[ox + 2];
        let b = w[3] * r1[ox] + w[4] * r1[ox + 1] + w[5] * r1[ox + 2];
        let c = w[6] * r2[ox] + w[7] * r2[ox + 1] + w[8] * r2[ox + 2];
        *o = a + b + c;
    }
}

/// `dx` of `y = conv2d(x, w)` given `dy`, for a depthwise geometry.
pub fn backward_data<T: Element>(g: &ConvGeometry, dy: &[T], w: &[T]) -> Vec<T> {
    // Every plane is written in full (its rows copied from the accumulated padded rows).
    let mut dx = output_vec(g.n * g.in_image());
    if dx.is_empty() {
        return dx;
    }
    dx.par_chunks_mut(g.h * g.w)
        .enumerate()
        .for_each(|(p, d)| data_plane(g, dy, w, p, d));
    dx
}

wide_fn! {
    /// Input-gradient plane `p` (image · channels + channel) into `d`.
    /// Compiled for AVX2 too ([`wide_fn!`]), the build chosen at run time.
    fn data_plane<T: Element>(g: &ConvGeometry, dy: &[T], w: &[T], p: usize, d: &mut [T]) {
        let (oh, ow, kk, m) = (g.oh(), g.ow(), g.kh * g.kw, g.cout_g());
        let padded_w = g.w + 2 * g.pad + g.stride * ow;
        let (img, ci) = (p / g.c_in, p % g.c_in);
        // A padded row of dx per input row, accumulated from every output row that reads it.
        let mut rows = vec![T::ZERO; g.h * padded_w];
        for co in ci * m..(ci + 1) * m {
            let gp = &dy[(img * g.c_out + co) * oh * ow..][..oh * ow];
            let wk = &w[co * kk..][..kk];
            for (oy, grow) in gp.chunks(ow).enumerate() {
                for ky in 0..g.kh {
                    let Some(iy) = input_row(g, oy, ky) else {
                        continue;
                    };
                    let row = &mut rows[iy * padded_w..][..padded_w];
                    for kx in 0..g.kw {
                        let wv = wk[ky * g.kw + kx];
                        if g.stride == 1 {
                            for (r, &gv) in row[kx..kx + ow].iter_mut().zip(grow) {
                                *r += wv * gv;
                            }
                        } else {
                            for (ox, &gv) in grow.iter().enumerate() {
                                row[ox * g.stride + kx] += wv * gv;
                            }
                        }
                    }
                }
            }
        }
        for (iy, drow) in d.chunks_mut(g.w).enumerate() {
            drow.copy_from_slice(&rows[iy * padded_w + g.pad..][..g.w]);
        }
    }
}

/// `dw` of `y = conv2d(x, w)` given `dy`, for a depthwise geometry: per output channel, summed over
/// the batch in a fixed order (deterministic).
pub fn backward_filter<T: Element>(g: &ConvGeometry, x: &[T], dy: &[T]) -> Vec<T> {
    let kk = g.kh * g.kw;
    let mut dw = vec![T::ZERO; g.c_out * kk];
    dw.par_chunks_mut(kk.max(1))
        .enumerate()
        .for_each(|(co, dwk)| filter_channel(g, x, dy, co, dwk));
    dw
}

wide_fn! {
    /// The weight gradient `dwk` of output channel `co`: for every tap, the dot product of the output
    /// gradient with the input it read, over the batch. The input plane is zero-padded once per image
    /// (not one row per output row and tap), and each dot product runs in 8 lanes ([`dot`]): one chain of
    /// dependent additions per tap took 12 % of a MobileNet v2 training step.
    /// Compiled for AVX2 too ([`wide_fn!`]), the build chosen at run time.
    fn filter_channel<T: Element>(g: &ConvGeometry, x: &[T], dy: &[T], co: usize, dwk: &mut [T]) {
        let (oh, ow, m) = (g.oh(), g.ow(), g.cout_g());
        let pw = g.w + 2 * g.pad + g.stride * ow;
        let ph = g.h + 2 * g.pad;
        // Zero borders; the interior is overwritten for every image.
        let mut padded = vec![T::ZERO; ph * pw];
        for img in 0..g.n {
            let plane = &x[(img * g.c_in + co / m) * g.h * g.w..][..g.h * g.w];
            for (iy, row) in plane.chunks_exact(g.w.max(1)).enumerate().take(g.h) {
                padded[(iy + g.pad) * pw + g.pad..][..g.w].copy_from_slice(row);
            }
            let gp = &dy[(img * g.c_out + co) * oh * ow..][..oh * ow];
            for (oy, grow) in gp.chunks(ow.max(1)).enumerate() {
                for ky in 0..g.kh {
                    // Padded row `oy·stride + ky` (< ph: the output size fits the padded input).
                    let prow = &padded[(oy * g.stride + ky) * pw..][..pw];
                    for kx in 0..g.kw {
                        let acc = if g.stride == 1 {
                            dot(&prow[kx..kx + ow], grow)
                        } else {
                            let mut acc = T::ZERO;
                            for (v, &gv) in prow[kx..].iter().step_by(g.stride).zip(grow) {
                                acc += *v * gv;
                            }
                            acc
                        };
                        dwk[ky * g.kw + kx] += acc;
                    }
                }
            }
        }
    }
}

/// `Σ a_i · b_i` in 8 lanes (value `i` in lane `i mod 8`, lanes added in order, then the rest).
#[inline(always)]
fn dot<T: Element>(a: &[T], b: &[T]) -> T {
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    let mut lanes = [T::ZERO; 8];
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut sum = T::ZERO;
    for v in lanes {
        sum += v;
    }
    for (&x, &y) in ar.iter().zip(br) {
        sum += x * y;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values;

    /// 3×3, stride 1, padding 1 by direct summation in f64 (channel multiplier `m`).
    fn naive(
        x: &[f32],
        w: &[f32],
        (n, c, m, h, wd): (usize, usize, usize, usize, usize),
    ) -> Vec<f64> {
        let mut y = vec![0.0; n * c * m * h * wd];
        for img in 0..n {
            for co in 0..c * m {
                let plane = &x[(img * c + co / m) * h * wd..][..h * wd];
                for oy in 0..h {
                    for ox in 0..wd {
                        let mut s = 0.0;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = ((oy + ky) as isize - 1, (ox + kx) as isize - 1);
                                if (0..h as isize).contains(&iy) && (0..wd as isize).contains(&ix) {
                                    let v = plane[iy as usize * wd + ix as usize] as f64;
                                    s += w[co * 9 + ky * 3 + kx] as f64 * v;
                                }
                            }
                        }
                        y[((img * c * m + co) * h + oy) * wd + ox] = s;
                    }
                }
            }
        }
        y
    }

    /// The f32 stride-1 kernel (AVX-512 where the CPU has it, the portable one elsewhere) against
    /// direct summation, on widths on both sides of one and two 16-lane chunks, down to 1×1.
    #[test]
    fn f32_stride_one_planes_match_direct_summation_around_every_chunk_border() {
        for (h, wd) in [
            (1, 1),
            (1, 2),
            (2, 1),
            (3, 15),
            (4, 16),
            (5, 17),
            (2, 31),
            (3, 32),
            (7, 33),
            (6, 56),
            (7, 7),
        ] {
            for (c, m) in [(1, 1), (3, 1), (2, 2)] {
                let n = 2;
                let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
                let x = f32s(test_values(n * c * h * wd, 5));
                let w = f32s(test_values(c * m * 9, 6));
                let g = ConvGeometry::new((n, c, h, wd), (c * m, 1, 3, 3), 1, 1, c).unwrap();
                let got = forward(&g, &x, &w);
                let want = naive(&x, &w, (n, c, m, h, wd));
                assert_eq!(got.len(), want.len());
                for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{h}×{wd}, {c} channels × {m}: output {i} {a} vs {b}"
                    );
                }
            }
        }
    }
    /// A stride-2 layer that pools first, pooled plane by plane inside the depthwise kernel, gives
    /// the values of the pooling pass followed by the kernel, bit for bit, with the output map
    /// applied to each row: even and odd sides (odd trailing rows and columns dropped), a channel
    /// multiplier, maps down to 2×2 → 1×1, and one that spans several tasks of planes.
    #[test]
    fn pooled_as_read_equals_pooling_then_the_kernel_bit_for_bit() {
        let post = |c: usize, row: &mut [f32]| {
            for v in row.iter_mut() {
                *v = (*v * (1.0 + c as f32 / 8.0)).max(0.0);
            }
        };
        for (n, c, m, sh, sw) in [
            (2, 3, 1, 8, 8),
            (1, 2, 2, 9, 11),
            (2, 1, 1, 2, 2),
            (3, 5, 1, 3, 7),
            (1, 96, 1, 32, 30),
        ] {
            let x: Vec<f32> = test_values(n * c * sh * sw, 9)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            let w: Vec<f32> = test_values(c * m * 9, 10)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            let (h, wd) = (sh / 2, sw / 2);
            let g = ConvGeometry::new((n, c, h, wd), (c * m, 1, 3, 3), 1, 1, c).unwrap();
            let pooled = super::super::resample::pool(&x, n * c, sh, sw, 0.25);
            let want = forward_post(&g, &pooled, &w, Some(&post));
            let got = forward_pooled_post(&g, &x, (sh, sw), &w, Some(&post));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{n}×{c}×{m} at {sh}×{sw}");
        }
    }
}
