//! Winograd F(4×4, 3×3) for 3×3, stride 1, padding 1, ungrouped convolutions: 36 multiplies per
//! input channel for a 4×4 output tile, 2.25 per output pixel (F(2×2, 3×3) needs 4, direct
//! summation 9), and 2.25 transformed values per pixel to move through memory instead of 4.
//!
//! The same structure as [`super::winograd`]: `U = G g Gᵀ` (6×6), `V = Bᵀ d B` for every 6×6 input
//! tile (stride 4), 36 GEMMs `M[ξ] = U[ξ] · V[ξ]`, and `Y = Aᵀ M A` (4×4), with the interpolation
//! points 0, ±1, ±2, ∞ of Lavin & Gray (2016). The weight gradient is `Gᵀ (Σ_tiles (A dY Aᵀ) ⊙ V) G`.
//! In f32 the results differ from direct summation by a few 1e-6 relative (tested against the naive
//! loops at network sizes).
//!
//! This file holds the transforms as element-wise stages (`b_transpose`, `a_transpose`, `a_apply`)
//! and the kernel transforms; the drivers that gather tiles and run the stages, and the forward,
//! input-gradient and weight-gradient drivers, are shared with the other variant in
//! [`super::tiling`].
//!
//! The input, output and output-gradient transforms are vectorised across every tile of a channel
//! (all images of the task): each channel's tiles are first gathered into `D[36][tiles]`, and both
//! halves of `Bᵀ d B` (or `Aᵀ m A`, `A d Aᵀ`) are then element-wise loops over `tiles` contiguous
//! values. The earlier version looped over the `⌈w / 4⌉` tiles of one tile row: eight lanes on a
//! 32×32 map, but two on 8×8 and one on 4×4, the sizes of the low branch and the last stages, and
//! its transforms took 121 % of their α = 0 time at α = .25 in WRN-16-4 inference although they
//! move the same number of values. Against it (`examples/layer_bench`, 160 channels, batch 32, α = 0,
//! AMD EPYC with AVX-512, 2 threads): 16×16 10.1 → 8.4 ms, 8×8 4.9 → 4.0 ms, and 32×32 about 12 %
//! faster as well; at 56×56 and 112×112 (64 channels) no slower.

use super::simd::wide_fn;
use super::tiling::{rows, rows_mut};
use super::Element;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m256;

/// Frequencies per tile.
pub const FREQS: usize = 36;

/// `G` (6×3).
fn g_matrix<T: Element>() -> [[T; 3]; 6] {
    let f = T::from_f64;
    [
        [f(0.25), f(0.0), f(0.0)],
        [f(-1.0 / 6.0), f(-1.0 / 6.0), f(-1.0 / 6.0)],
        [f(-1.0 / 6.0), f(1.0 / 6.0), f(-1.0 / 6.0)],
        [f(1.0 / 24.0), f(1.0 / 12.0), f(1.0 / 6.0)],
        [f(1.0 / 24.0), f(-1.0 / 12.0), f(1.0 / 6.0)],
        [f(0.0), f(0.0), f(1.0)],
    ]
}

/// `U[ξ][co][ci] = (G g Gᵀ)[ξ]` for `w` `[cout, cin, 3, 3]`.
#[cfg(test)]
pub(super) fn transform_weights<T: Element>(w: &[T], cout: usize, cin: usize) -> Vec<T> {
    transform_joined(&[(w, cin)], cout)
}

/// `U[ξ][co][ci] = (G g Gᵀ)[ξ]` of a weight `[cout, cin, 3, 3]` given as parts along the input
/// channels (as [`super::winograd::transform_kernels`] takes them).
pub(super) fn transform_joined<T: Element>(parts: &[(&[T], usize)], cout: usize) -> Vec<T> {
    let gm = g_matrix::<T>();
    let f = |g: &[T]| {
        // t = G g (6×3)
        let mut t = [[T::ZERO; 3]; 6];
        for (i, row) in gm.iter().enumerate() {
            for j in 0..3 {
                t[i][j] = row[0] * g[j] + row[1] * g[3 + j] + row[2] * g[6 + j];
            }
        }
        // U = t Gᵀ (6×6)
        let mut u = [T::ZERO; FREQS];
        for i in 0..6 {
            for (j, row) in gm.iter().enumerate() {
                u[i * 6 + j] = t[i][0] * row[0] + t[i][1] * row[1] + t[i][2] * row[2];
            }
        }
        u
    };
    #[cfg(target_arch = "x86_64")]
    let simd: Option<super::winograd::KernelRows> = Some(kernels_avx2);
    #[cfg(not(target_arch = "x86_64"))]
    let simd = None;
    super::winograd::transform_kernels::<T, FREQS>(parts, cout, f, simd)
}

/// The kernel transform of [`transform_joined`] for eight kernels (input channels) at a time in
/// AVX2 vectors: the same multiplies and adds in the same order as the per-kernel transform (no
/// FMA), so the values are the same bit for bit (tested). The per-kernel transform ran at about
/// one scalar operation per cycle: 2.3 ms for a 256 × 256 layer (AMD EPYC, 2 threads), on every
/// pass, whatever α. Returns the input channels done (a multiple of 8; the caller does the rest).
///
/// # Safety
/// The CPU must have AVX2. `w` holds `cin` kernels of 9 values; `u` holds 36 rows of `stride`
/// values, `cin` of them written each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernels_avx2(w: &[f32], cin: usize, stride: usize, u: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    assert!(
        w.len() >= cin * 9 && cin <= stride && u.len() >= (FREQS - 1) * stride + cin,
        "F(4×4) kernel transform: sizes"
    );
    let gm = g_matrix::<f32>();
    let (mul, add, set) = (_mm256_mul_ps, _mm256_add_ps, _mm256_set1_ps);
    // Tap k of the eight kernels: values k, k + 9, …, k + 63 of their 72.
    let idx = _mm256_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63);
    let lanes = cin / 8 * 8;
    for ci0 in (0..lanes).step_by(8) {
        let base = w.as_ptr().add(ci0 * 9);
        let g: [__m256; 9] = std::array::from_fn(|k| _mm256_i32gather_ps::<4>(base.add(k), idx));
        // t = G g (6×3), as `row[0]·g[j] + row[1]·g[3 + j] + row[2]·g[6 + j]` …
        let t: [[__m256; 3]; 6] = std::array::from_fn(|i| {
            let row = gm[i];
            std::array::from_fn(|j| {
                let a = add(mul(set(row[0]), g[j]), mul(set(row[1]), g[3 + j]));
                add(a, mul(set(row[2]), g[6 + j]))
            })
        });
        // … and U = t Gᵀ (6×6), as `t[i][0]·row[0] + t[i][1]·row[1] + t[i][2]·row[2]`.
        for (i, ti) in t.iter().enumerate() {
            for (j, row) in gm.iter().enumerate() {
                let a = add(mul(ti[0], set(row[0])), mul(ti[1], set(row[1])));
                let v = add(a, mul(ti[2], set(row[2])));
                _mm256_storeu_ps(u.as_mut_ptr().add((i * 6 + j) * stride + ci0), v);
            }
        }
    }
    lanes
}

/// `Bᵀ · d` of one column of six values (`Bᵀ` of F(4×4, 3×3), points 0, ±1, ±2, ∞): the one
/// place of its arithmetic, which the vector build ([`b_col_avx2`]) repeats operation for operation.
#[inline(always)]
pub(super) fn b_six<T: Element>([d0, d1, d2, d3, d4, d5]: [T; 6]) -> [T; 6] {
    let f = T::from_f64;
    let (two, four, five) = (f(2.0), f(4.0), f(5.0));
    [
        four * d0 - five * d2 + d4,
        d3 + d4 - four * (d1 + d2),
        four * (d1 - d2) + d4 - d3,
        two * (d3 - d1) + d4 - d2,
        two * (d1 - d3) + d4 - d2,
        four * d1 - five * d3 + d5,
    ]
}

/// [`b_six`] of the first six of eight values (the rest zero), the form the shared row drivers
/// ([`super::winograd_input`]) take.
#[inline(always)]
pub(super) fn b_col<T: Element>(d: [T; 8]) -> [T; 8] {
    let t = b_six([d[0], d[1], d[2], d[3], d[4], d[5]]);
    std::array::from_fn(|k| if k < 6 { t[k] } else { T::ZERO })
}

/// [`b_col`] on AVX2 vectors: the same operations in the same order.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn b_col_avx2(d: [__m256; 8]) -> [__m256; 8] {
    use std::arch::x86_64::_mm256_sub_ps as sub;
    use std::arch::x86_64::{_mm256_add_ps as add, _mm256_mul_ps as mul, _mm256_set1_ps as set};
    let (two, four, five) = (set(2.0), set(4.0), set(5.0));
    let [d0, d1, d2, d3, d4, d5, _, _] = d;
    [
        add(sub(mul(four, d0), mul(five, d2)), d4),
        sub(add(d3, d4), mul(four, add(d1, d2))),
        sub(add(mul(four, sub(d1, d2)), d4), d3),
        sub(add(mul(two, sub(d3, d1)), d4), d2),
        sub(add(mul(two, sub(d1, d3)), d4), d2),
        add(sub(mul(four, d1), mul(five, d3)), d5),
        d0,
        d0,
    ]
}

wide_fn! {
    /// `dst[k·6 + j] = Σ_r Bᵀ[k][r] · src[r·6 + j]` over `n` columns (row strides given): the
    /// input transform's vertical half, compiled for AVX2 too.
    pub(super) fn b_rows<T: Element>(src: (&[T], usize), dst: (&mut [T], usize), n: usize) {
        let ((src, ss), (dst, ds)) = (src, dst);
        for j in 0..6 {
            b_transpose(rows(src, j * ss, 6 * ss, n), rows_mut(dst, j * ds, 6 * ds, n));
        }
    }
}

/// `out = Bᵀ · d` element-wise over six rows ([`b_six`] per column).
#[inline(always)]
pub(super) fn b_transpose<T: Element>(d: [&[T]; 6], out: [&mut [T]; 6]) {
    let n = out[0].len();
    let [d0s, d1s, d2s, d3s, d4s, d5s] = d.map(|r| &r[..n]);
    let [t0, t1, t2, t3, t4, t5] = out.map(|r| &mut r[..n]);
    for q in 0..n {
        let [v0, v1, v2, v3, v4, v5] = b_six([d0s[q], d1s[q], d2s[q], d3s[q], d4s[q], d5s[q]]);
        (t0[q], t1[q], t2[q], t3[q], t4[q], t5[q]) = (v0, v1, v2, v3, v4, v5);
    }
}

/// `Aᵀ · m` of one column: the first six of eight values in, four results (the rest zero). The
/// one place of its arithmetic, which [`a_col_avx2`] repeats operation for operation.
#[inline(always)]
pub(super) fn a_col<T: Element>(m: [T; 8]) -> [T; 8] {
    let f = T::from_f64;
    let (two, four, eight) = (f(2.0), f(4.0), f(8.0));
    let [m0, m1, m2, m3, m4, m5, _, _] = m;
    let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    let z = T::ZERO;
    [
        m0 + s12 + s34,
        d12 + two * d34,
        s12 + four * s34,
        d12 + eight * d34 + m5,
        z,
        z,
        z,
        z,
    ]
}

/// [`a_col`] on AVX2 vectors: the same operations in the same order.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn a_col_avx2(m: [__m256; 8]) -> [__m256; 8] {
    use std::arch::x86_64::_mm256_sub_ps as sub;
    use std::arch::x86_64::{_mm256_add_ps as add, _mm256_mul_ps as mul, _mm256_set1_ps as set};
    let (two, four, eight) = (set(2.0), set(4.0), set(8.0));
    let [m0, m1, m2, m3, m4, m5, _, _] = m;
    let (s12, d12, s34, d34) = (add(m1, m2), sub(m1, m2), add(m3, m4), sub(m3, m4));
    [
        add(add(m0, s12), s34),
        add(d12, mul(two, d34)),
        add(s12, mul(four, s34)),
        add(add(d12, mul(eight, d34)), m5),
        m0,
        m0,
        m0,
        m0,
    ]
}

wide_fn! {
    /// `dst[r·6 + b] = Σ_k Aᵀ[r][k] · src[k·6 + b]` over `n` columns (row strides given): the
    /// output transform's vertical half, compiled for AVX2 too.
    pub(super) fn a_rows<T: Element>(src: (&[T], usize), dst: (&mut [T], usize), n: usize) {
        let ((src, ss), (dst, ds)) = (src, dst);
        for b in 0..6 {
            a_transpose(rows(src, b * ss, 6 * ss, n), rows_mut(dst, b * ds, 6 * ds, n));
        }
    }
}

/// `out = Aᵀ · m` element-wise over six rows ([`a_four`] per column).
#[inline(always)]
pub(super) fn a_transpose<T: Element>(m: [&[T]; 6], out: [&mut [T]; 4]) {
    let n = out[0].len();
    let [m0s, m1s, m2s, m3s, m4s, m5s] = m.map(|r| &r[..n]);
    let [t0, t1, t2, t3] = out.map(|r| &mut r[..n]);
    let q0 = T::ZERO;
    for q in 0..n {
        let [v0, v1, v2, v3, ..] = a_col([m0s[q], m1s[q], m2s[q], m3s[q], m4s[q], m5s[q], q0, q0]);
        (t0[q], t1[q], t2[q], t3[q]) = (v0, v1, v2, v3);
    }
}

/// `out = A · v` element-wise over four rows (six results): the output-gradient transform.
pub(super) fn a_apply<T: Element>(v: [&[T]; 4], out: [&mut [T]; 6]) {
    let f = T::from_f64;
    let (two, four, eight) = (f(2.0), f(4.0), f(8.0));
    let n = out[0].len();
    let [v0s, v1s, v2s, v3s] = v.map(|r| &r[..n]);
    let [t0, t1, t2, t3, t4, t5] = out.map(|r| &mut r[..n]);
    for q in 0..n {
        let (v0, v1, v2, v3) = (v0s[q], v1s[q], v2s[q], v3s[q]);
        let (s02, s13) = (v0 + v2, v1 + v3);
        let (e, o) = (v0 + four * v2, two * v1 + eight * v3);
        t0[q] = v0;
        t1[q] = s02 + s13;
        t2[q] = s02 - s13;
        t3[q] = e + o;
        t4[q] = e - o;
        t5[q] = v3;
    }
}

/// `dw = Gᵀ dU G` for every `(co, ci)` of `dU` `[ξ][cout][ci]` (the weight gradient's last step).
pub(super) fn kernel_grads<T: Element>(du: &[T], cout: usize, cin: usize) -> Vec<T> {
    super::winograd::kernel_grads_by(du, cout, cin, &g_matrix::<T>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `G g Gᵀ` one kernel at a time, in f32: the per-kernel transform alone.
    fn one_kernel(g: &[f32]) -> [f32; FREQS] {
        let gm = g_matrix::<f32>();
        let mut t = [[0.0f32; 3]; 6];
        for (i, row) in gm.iter().enumerate() {
            for j in 0..3 {
                t[i][j] = row[0] * g[j] + row[1] * g[3 + j] + row[2] * g[6 + j];
            }
        }
        std::array::from_fn(|x| {
            let (i, row) = (x / 6, gm[x % 6]);
            t[i][0] * row[0] + t[i][1] * row[1] + t[i][2] * row[2]
        })
    }

    #[test]
    fn kernel_transform_equals_the_one_kernel_transform_bit_for_bit_for_any_input_count() {
        super::super::winograd::tests::assert_transform_is_per_kernel(
            transform_weights::<f32>,
            one_kernel,
        );
    }
}
