//! Winograd F(2×2, 3×3) for 3×3, stride 1, padding 1, ungrouped convolutions — every convolution of an
//! OctConv layer (stride 2 pools first) and most of a wide ResNet.
//!
//! Each 2×2 output tile costs 16 multiplies per input channel instead of 36: the input tile `d` (4×4)
//! and the kernel `g` (3×3) are transformed to `V = Bᵀ d B` and `U = G g Gᵀ`, the 16 frequencies are
//! multiplied as 16 GEMMs `M[ξ] (cout × tiles) = U[ξ] (cout × cin) · V[ξ] (cin × tiles)`, and the output
//! tile is `Aᵀ M A` (Lavin & Gray 2016). The input gradient of such a convolution is the same convolution
//! of the output gradient with the flipped, transposed kernel, so it runs through here too.
//! In f32 the results differ from direct summation by rounding only (≈ 1e-6 relative; tested).
//!
//! This file holds the transforms as element-wise stages (`b_transpose`, `a_transpose`, `a_apply`)
//! and the kernel transforms; the drivers that gather tiles and run the stages, and the forward,
//! input-gradient and weight-gradient drivers, are shared with the other variant in
//! [`super::tiling`].

use super::geometry::ConvGeometry;
use super::scratch::output_vec;
use super::simd::wide_fn;
use super::tiling::{rows, rows_mut};
use super::Element;
use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m256;

/// Whether the convolution has the shape F(2×2, 3×3) handles here.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && g.groups == 1
}

/// A vector build of a kernel transform for f32: given `count` kernels of one output channel
/// (`count × 9` values) and the row stride of the transformed rows, it writes `U[ξ][ci]` (at
/// `ξ · stride + ci`) for the first kernels it handles and returns how many (a multiple of its
/// vector width); the per-kernel transform does the rest. It must run the per-kernel transform's
/// arithmetic in the same order, so that both give the same values.
///
/// # Safety
/// Callers check the CPU feature the function needs (AVX2) before calling it.
pub(super) type KernelRows = unsafe fn(&[f32], usize, usize, &mut [f32]) -> usize;

/// `U[ξ][co][ci] = f(w[co][ci])[ξ]` for `w` `[cout, cin, 3, 3]` given as parts along the input
/// channels (`(w_part, cin_part)`, each `[cout, cin_part, 3, 3]`; `cin` is their sum): a Winograd
/// kernel transform `f` applied to every 3×3 kernel, output channels in parallel (a serial,
/// scattered transform was a visible share of a small network's inference), then laid out
/// frequency-major for the GEMMs. Where the weights are f32 and the CPU has AVX2, `simd` (if
/// given) transforms eight kernels at a time first. The parts are read where they are: the fused
/// octave kernel's low product `[W_HL | W_LL]` was first copied into one weight, on one thread, on
/// every pass (1.2 % of WRN-16-4's α = .75 inference, `perf`).
pub(super) fn transform_kernels<T: Element, const F: usize>(
    parts: &[(&[T], usize)],
    cout: usize,
    f: impl Fn(&[T]) -> [T; F] + Sync,
    simd: Option<KernelRows>,
) -> Vec<T> {
    let cin: usize = parts.iter().map(|&(_, c)| c).sum();
    for &(w, c) in parts {
        assert!(w.len() >= cout * c * 9, "kernel transform: weight sizes");
    }
    if cout * cin == 0 {
        return Vec::new();
    }
    // Every element of `u` is written below: per output channel, its `F` rows `tmp[ξ][ci]` are
    // made in a small buffer and copied to `u[ξ][co][ci]`. (A whole-layer `[co][ξ][ci]` buffer
    // before the copy doubled the transform's memory: 6.3 MB more at U-Net's decoder, where its
    // inference peaks.)
    let mut u = output_vec(F * cout * cin);
    // Row `co` of every frequency's `[cout][cin]` block, gathered per output channel.
    let mut rows: Vec<Vec<&mut [T]>> = (0..cout).map(|_| Vec::with_capacity(F)).collect();
    for block in u.chunks_mut(cout * cin) {
        for (co, row) in block.chunks_mut(cin).enumerate() {
            rows[co].push(row);
        }
    }
    rows.into_par_iter()
        .enumerate()
        .for_each_init(Vec::new, |tmp: &mut Vec<T>, (co, mut dst)| {
            tmp.resize(F * cin, T::ZERO);
            let blk = &mut tmp[..];
            let mut at = 0;
            for &(w, c) in parts {
                let kernels = &w[co * c * 9..][..c * 9];
                let mut done = 0;
                #[cfg(target_arch = "x86_64")]
                if let (Some(simd), true) = (simd, super::simd::has_avx2_fma()) {
                    if let (Some(k32), Some(b32)) = (T::as_f32(kernels), T::as_f32_mut(blk)) {
                        // SAFETY: the CPU has AVX2 (checked); `k32` holds `c` kernels, and from
                        // `at` on `b32` holds F rows of stride `cin` with `c` values each.
                        done = unsafe { simd(k32, c, cin, &mut b32[at..]) };
                    }
                }
                for ci in done..c {
                    let vals = f(&kernels[ci * 9..][..9]);
                    for (xi, v) in vals.into_iter().enumerate() {
                        blk[xi * cin + at + ci] = v;
                    }
                }
                at += c;
            }
            for (xi, row) in dst.iter_mut().enumerate() {
                row.copy_from_slice(&blk[xi * cin..][..cin]);
            }
        });
    u
}

/// `U[ξ][co][ci] = (G g Gᵀ)[ξ]` for `w` `[cout, cin, 3, 3]`.
#[cfg(test)]
pub(super) fn transform_weights<T: Element>(w: &[T], cout: usize, cin: usize) -> Vec<T> {
    transform_joined(&[(w, cin)], cout)
}

/// `U[ξ][co][ci] = (G g Gᵀ)[ξ]` of a weight `[cout, cin, 3, 3]` given as parts along the input
/// channels (as [`transform_kernels`] takes them).
pub(super) fn transform_joined<T: Element>(parts: &[(&[T], usize)], cout: usize) -> Vec<T> {
    #[cfg(target_arch = "x86_64")]
    let simd: Option<KernelRows> = Some(kernels_avx2);
    #[cfg(not(target_arch = "x86_64"))]
    let simd = None;
    transform_kernels::<T, 16>(parts, cout, one_kernel, simd)
}

/// `G g Gᵀ` of one 3×3 kernel `g`: the one place of the transform's arithmetic, which the vector
/// build ([`kernels_avx2`]) repeats operation for operation.
fn one_kernel<T: Element>(g: &[T]) -> [T; 16] {
    let h = T::HALF;
    // t = G g (4×3)
    let mut t = [T::ZERO; 12];
    for j in 0..3 {
        let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
        t[j] = g0;
        t[3 + j] = h * (g0 + g1 + g2);
        t[6 + j] = h * (g0 - g1 + g2);
        t[9 + j] = g2;
    }
    // U = t Gᵀ (4×4)
    let mut u = [T::ZERO; 16];
    for i in 0..4 {
        let (t0, t1, t2) = (t[i * 3], t[i * 3 + 1], t[i * 3 + 2]);
        u[i * 4..i * 4 + 4].copy_from_slice(&[t0, h * (t0 + t1 + t2), h * (t0 - t1 + t2), t2]);
    }
    u
}

/// The kernel transform of [`transform_joined`] for eight kernels (input channels) at a time in
/// AVX2 vectors: the same multiplies and adds in the same order as [`one_kernel`] (no FMA), so the
/// values are the same bit for bit (tested). The per-kernel transform is scalar, with sixteen
/// stores a kernel: on SE-ResNet-50's last stage (512 × 512 at 7 × 7, batch 8, Intel Xeon with
/// AVX-512, 2 threads) it took 15 % of the layer's time on every pass (`perf`). Returns the input
/// channels done (a multiple of 8; the caller does the rest).
///
/// # Safety
/// The CPU must have AVX2. `w` holds `cin` kernels of 9 values; `u` holds 16 rows of `stride`
/// values, `cin` of them written each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernels_avx2(w: &[f32], cin: usize, stride: usize, u: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    assert!(
        w.len() >= cin * 9 && cin <= stride && u.len() >= 15 * stride + cin,
        "F(2×2) kernel transform: sizes"
    );
    let (mul, add, sub) = (_mm256_mul_ps, _mm256_add_ps, _mm256_sub_ps);
    let h = _mm256_set1_ps(0.5);
    // Tap k of the eight kernels: values k, k + 9, …, k + 63 of their 72.
    let idx = _mm256_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63);
    let lanes = cin / 8 * 8;
    for ci0 in (0..lanes).step_by(8) {
        let base = w.as_ptr().add(ci0 * 9);
        let g: [__m256; 9] = std::array::from_fn(|k| _mm256_i32gather_ps::<4>(base.add(k), idx));
        // t = G g (4×3), row by row as in `one_kernel` …
        let t: [[__m256; 3]; 4] = [
            [g[0], g[1], g[2]],
            std::array::from_fn(|j| mul(h, add(add(g[j], g[3 + j]), g[6 + j]))),
            std::array::from_fn(|j| mul(h, add(sub(g[j], g[3 + j]), g[6 + j]))),
            [g[6], g[7], g[8]],
        ];
        // … and U = t Gᵀ (4×4).
        for (i, [t0, t1, t2]) in t.into_iter().enumerate() {
            let row = [
                t0,
                mul(h, add(add(t0, t1), t2)),
                mul(h, add(sub(t0, t1), t2)),
                t2,
            ];
            for (j, v) in row.into_iter().enumerate() {
                _mm256_storeu_ps(u.as_mut_ptr().add((i * 4 + j) * stride + ci0), v);
            }
        }
    }
    lanes
}

/// `[cin, cout, 3, 3]` from `[cout, cin, 3, 3]`, each kernel rotated by 180°: the weight whose
/// convolution of the output gradient is the input gradient.
pub fn flip_transpose<T: Element>(w: &[T], cout: usize, cin: usize) -> Vec<T> {
    let mut f = vec![T::ZERO; w.len()];
    if cout == 0 {
        return f;
    }
    f.par_chunks_mut(cout * 9)
        .enumerate()
        .for_each(|(ci, f_ci)| {
            for co in 0..cout {
                let src = &w[(co * cin + ci) * 9..][..9];
                let dst = &mut f_ci[co * 9..][..9];
                for (i, v) in src.iter().enumerate() {
                    dst[8 - i] = *v;
                }
            }
        });
    f
}

/// `Bᵀ · d` of one window column of F(2×2, 3×3): the first four of eight values in and out (the
/// rest zero). The one place of its arithmetic, which [`b_col_avx2`] repeats.
#[inline(always)]
pub(super) fn b_col<T: Element>(d: [T; 8]) -> [T; 8] {
    let [d0, d1, d2, d3, ..] = d;
    let z = T::ZERO;
    [d0 - d2, d1 + d2, d2 - d1, d1 - d3, z, z, z, z]
}

/// [`b_col`] on AVX2 vectors: the same operations.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn b_col_avx2(d: [__m256; 8]) -> [__m256; 8] {
    use std::arch::x86_64::{_mm256_add_ps as add, _mm256_sub_ps as sub};
    let [d0, d1, d2, d3, ..] = d;
    [
        sub(d0, d2),
        add(d1, d2),
        sub(d2, d1),
        sub(d1, d3),
        d0,
        d0,
        d0,
        d0,
    ]
}

/// `out = Bᵀ · d` element-wise over four rows ([`b_col`] per column).
#[inline(always)]
pub(super) fn b_transpose<T: Element>(d: [&[T]; 4], out: [&mut [T]; 4]) {
    let n = out[0].len();
    let [d0s, d1s, d2s, d3s] = d.map(|r| &r[..n]);
    let [t0, t1, t2, t3] = out.map(|r| &mut r[..n]);
    let z = T::ZERO;
    for q in 0..n {
        let [v0, v1, v2, v3, ..] = b_col([d0s[q], d1s[q], d2s[q], d3s[q], z, z, z, z]);
        (t0[q], t1[q], t2[q], t3[q]) = (v0, v1, v2, v3);
    }
}

/// `Aᵀ · m` of one frequency column of F(2×2, 3×3): the first four of eight values in, two results
/// (the rest zero). The one place of its arithmetic, which [`a_col_avx2`] repeats.
#[inline(always)]
pub(super) fn a_col<T: Element>(m: [T; 8]) -> [T; 8] {
    let [m0, m1, m2, m3, ..] = m;
    let z = T::ZERO;
    [m0 + m1 + m2, m1 - m2 - m3, z, z, z, z, z, z]
}

/// [`a_col`] on AVX2 vectors: the same operations in the same order.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn a_col_avx2(m: [__m256; 8]) -> [__m256; 8] {
    use std::arch::x86_64::{_mm256_add_ps as add, _mm256_sub_ps as sub};
    let [m0, m1, m2, m3, ..] = m;
    let t = [add(add(m0, m1), m2), sub(sub(m1, m2), m3)];
    [t[0], t[1], m0, m0, m0, m0, m0, m0]
}

/// `out = Aᵀ · m` element-wise over four rows (two results; [`a_col`] per column).
#[inline(always)]
pub(super) fn a_transpose<T: Element>(m: [&[T]; 4], out: [&mut [T]; 2]) {
    let n = out[0].len();
    let [m0s, m1s, m2s, m3s] = m.map(|r| &r[..n]);
    let [t0, t1] = out.map(|r| &mut r[..n]);
    let z = T::ZERO;
    for q in 0..n {
        let [v0, v1, ..] = a_col([m0s[q], m1s[q], m2s[q], m3s[q], z, z, z, z]);
        (t0[q], t1[q]) = (v0, v1);
    }
}

wide_fn! {
    /// `dst[k·4 + j] = Σ_r Bᵀ[k][r] · src[r·4 + j]` over `n` columns (row strides given): the
    /// input transform's vertical half, compiled for AVX2 too.
    pub(super) fn b_rows<T: Element>(src: (&[T], usize), dst: (&mut [T], usize), n: usize) {
        let ((src, ss), (dst, ds)) = (src, dst);
        for j in 0..4 {
            b_transpose(rows(src, j * ss, 4 * ss, n), rows_mut(dst, j * ds, 4 * ds, n));
        }
    }
}

wide_fn! {
    /// `dst[r·4 + b] = Σ_k Aᵀ[r][k] · src[k·4 + b]` over `n` columns (row strides given): the
    /// output transform's vertical half, compiled for AVX2 too.
    pub(super) fn a_rows<T: Element>(src: (&[T], usize), dst: (&mut [T], usize), n: usize) {
        let ((src, ss), (dst, ds)) = (src, dst);
        for b in 0..4 {
            a_transpose(rows(src, b * ss, 4 * ss, n), rows_mut(dst, b * ds, 4 * ds, n));
        }
    }
}

/// `out = A · v` element-wise over two rows (four results): the output-gradient transform.
pub(super) fn a_apply<T: Element>(v: [&[T]; 2], out: [&mut [T]; 4]) {
    let n = out[0].len();
    let [v0s, v1s] = v.map(|r| &r[..n]);
    let [t0, t1, t2, t3] = out.map(|r| &mut r[..n]);
    for q in 0..n {
        let (v0, v1) = (v0s[q], v1s[q]);
        t0[q] = v0;
        t1[q] = v0 + v1;
        t2[q] = v0 - v1;
        t3[q] = T::ZERO - v1;
    }
}

/// `dw = Gᵀ dU G` for every `(co, ci)` of `dU` `[ξ][cout][ci]` (the weight gradient's last step).
pub(super) fn kernel_grads<T: Element>(du: &[T], cout: usize, cin: usize) -> Vec<T> {
    let (o, h) = (T::ONE, T::HALF);
    let gm = [
        [o, T::ZERO, T::ZERO],
        [h, h, h],
        [h, T::ZERO - h, h],
        [T::ZERO, T::ZERO, o],
    ];
    kernel_grads_by(du, cout, cin, &gm)
}

/// `dw = Gᵀ dU G` for every `(co, ci)` of `dU` `[ξ][cout][ci]` with `ξ = i·N + j` and `G` `N × 3`:
/// the weight gradient's last step in both variants.
///
/// Output channels run in parallel, and within one the transform runs on whole rows of `ci` (each
/// `dU[ξ][co]` row is contiguous), skipping `G`'s zeros. Per kernel, as a 6×6 · 6×3 and a 3×6 · 6×3
/// scalar product over values `cout · cin` apart, it took 20 ms of a 370 ms WRN-16-4 training step
/// (F(4×4)); this way 4 ms.
pub(super) fn kernel_grads_by<T: Element, const N: usize>(
    du: &[T],
    cout: usize,
    cin: usize,
    gm: &[[T; 3]; N],
) -> Vec<T> {
    let mut dw = vec![T::ZERO; cout * cin * 9];
    if cin == 0 {
        return dw;
    }
    dw.par_chunks_mut(cin * 9)
        .enumerate()
        .for_each(|(co, dw_co)| {
            // s[i][b] = Σ_j dU[i][j] · G[j][b], one row of `cin` values each.
            let mut s = vec![T::ZERO; 3 * N * cin];
            for i in 0..N {
                for (j, grow) in gm.iter().enumerate() {
                    let u = &du[((i * N + j) * cout + co) * cin..][..cin];
                    for (b, &gv) in grow.iter().enumerate() {
                        if gv != T::ZERO {
                            axpy(&mut s[(i * 3 + b) * cin..][..cin], gv, u);
                        }
                    }
                }
            }
            // o[a][b] = Σ_i G[i][a] · s[i][b].
            let mut o = vec![T::ZERO; 9 * cin];
            for a in 0..3 {
                for b in 0..3 {
                    let dst = &mut o[(a * 3 + b) * cin..][..cin];
                    for (i, grow) in gm.iter().enumerate() {
                        if grow[a] != T::ZERO {
                            axpy(dst, grow[a], &s[(i * 3 + b) * cin..][..cin]);
                        }
                    }
                }
            }
            for (ci, out) in dw_co.chunks_exact_mut(9).enumerate() {
                for (k, v) in out.iter_mut().enumerate() {
                    *v = o[k * cin + ci];
                }
            }
        });
    dw
}

/// `dst += a · x`.
fn axpy<T: Element>(dst: &mut [T], a: T, x: &[T]) {
    for (d, &v) in dst.iter_mut().zip(x) {
        *d += a * v;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Asserts that `transform` (a whole layer's, with its vector build for eight kernels at a
    /// time) gives `one(kernel)` for every kernel, bit for bit, for input counts below, at and
    /// around the vector width. Shared by both variants' tests.
    pub(in crate::kernels) fn assert_transform_is_per_kernel<const F: usize>(
        transform: fn(&[f32], usize, usize) -> Vec<f32>,
        one: fn(&[f32]) -> [f32; F],
    ) {
        for (cout, cin) in [(1, 1), (2, 3), (3, 8), (2, 9), (4, 13), (1, 17), (2, 32)] {
            let w: Vec<f32> = (0..cout * cin * 9)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let u = transform(&w, cout, cin);
            for co in 0..cout {
                for ci in 0..cin {
                    let want = one(&w[(co * cin + ci) * 9..][..9]);
                    for (xi, &v) in want.iter().enumerate() {
                        let got = u[(xi * cout + co) * cin + ci];
                        assert_eq!(
                            got.to_bits(),
                            v.to_bits(),
                            "{cout}×{cin}: ({co}, {ci}, {xi})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kernel_transform_equals_the_one_kernel_transform_bit_for_bit_for_any_input_count() {
        assert_transform_is_per_kernel(transform_weights::<f32>, one_kernel::<f32>);
    }

    #[test]
    fn transforms_of_a_weight_in_parts_equal_those_of_the_joined_weight_bit_for_bit() {
        // Parts of odd sizes around the vector width, and an empty part.
        for (cout, cins) in [
            (3, vec![5, 13]),
            (2, vec![8, 9]),
            (1, vec![0, 17]),
            (2, vec![16, 3, 8]),
        ] {
            let parts: Vec<Vec<f32>> = cins
                .iter()
                .enumerate()
                .map(|(p, &c)| {
                    (0..cout * c * 9)
                        .map(|i| (((i + 7 * p) * 37 % 101) as f32 - 50.0) / 7.0)
                        .collect()
                })
                .collect();
            let cin: usize = cins.iter().sum();
            let mut joined = Vec::new();
            for co in 0..cout {
                for (w, &c) in parts.iter().zip(&cins) {
                    joined.extend_from_slice(&w[co * c * 9..][..c * 9]);
                }
            }
            let refs: Vec<(&[f32], usize)> = parts
                .iter()
                .map(|w| &w[..])
                .zip(cins.iter().copied())
                .collect();
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(
                bits(transform_joined(&refs, cout)),
                bits(transform_weights(&joined, cout, cin)),
                "F(2×2), {cins:?}"
            );
            assert_eq!(
                bits(super::super::winograd4::transform_joined(&refs, cout)),
                bits(super::super::winograd4::transform_weights(
                    &joined, cout, cin
                )),
                "F(4×4), {cins:?}"
            );
        }
    }

    #[test]
    fn kernel_transform_matches_g_g_gt_computed_by_hand() {
        // G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]; for g = 1..9 row-major,
        // G g Gᵀ computed with exact arithmetic.
        let g: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let gm = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let u = transform_weights(&g, 1, 1);
        for i in 0..4 {
            for j in 0..4 {
                let mut want = 0.0f64;
                for a in 0..3 {
                    for b in 0..3 {
                        want += gm[i][a] * g[a * 3 + b] as f64 * gm[j][b];
                    }
                }
                assert_eq!(u[i * 4 + j] as f64, want, "U[{i}][{j}]");
            }
        }
    }
}
