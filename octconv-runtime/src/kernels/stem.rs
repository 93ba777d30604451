//! The stem convolution (few input channels, odd kernel, stride 1 or 2) as a direct kernel in
//! AVX-512 registers, inference: the ImageNet families' stride-2 stems (7×7 from 3 channels:
//! ResNet, ResNeXt, SE-ResNet, DenseNet; 3×3 from 3: MobileNet v1) and the stride-1 3×3 stems
//! (the CIFAR WRNs, U-Net, MobileNet v2's stem after its input is pooled).
//!
//! Why: by im2col + GEMM the stem unfolds `c_in·k²` (147) rows of the whole output map and runs a
//! GEMM only 147 deep: 12.3–12.8 ms at batch 8 (74–77 GMAC/s) in ResNeXt-50, SE-ResNet-50 and
//! DenseNet-121, the same at every α, 6–9 % of their passes at α = .5–.75 (`octconv bench
//! --profile`, AMD EPYC, AVX-512, 2 threads), against 9.1 ms for ONNX Runtime's NCHWc kernel.
//!
//! How: per image, the zero-padded input rows are split into their even and odd columns, so that
//! the input under tap `kx` of 16 consecutive outputs (columns `2·ox + kx`) is one contiguous load
//! (`even[ox + kx/2]` or `odd[ox + (kx − 1)/2]`); at stride 1 the padded rows are read as they
//! are. Eight output channels by up to three vectors of 16
//! columns are summed in 24 registers over every input channel and tap (each tap one load per
//! vector and one broadcast weight per channel), stored once, and each finished output row gets the
//! epilogue (`post`) while it is in cache. Images run in parallel.

use super::epilogue::RowMap;
use super::geometry::ConvGeometry;
use super::max_pool::{pool3s2_hw, pool3s2_rows};
use super::scratch::{output_vec, with_scratch, Scratch};
use rayon::prelude::*;

/// The most input channels the kernel takes (RGB, or RGB + one).
pub const MAX_CIN: usize = 4;

/// Output channels per register block.
const CB: usize = 8;

/// Whether the kernel serves `g` on this CPU: AVX-512F, one group, at most [`MAX_CIN`] input
/// channels, a square odd kernel of at most 7 with "same" padding (`k / 2`), stride 2, or stride 1
/// with a kernel of at least 3 (a 1×1 layer stays a GEMM), and at least as many images as threads
/// (the kernel shares out whole images; a single image keeps the GEMM path, which splits its
/// GEMMs).
///
/// Stride 1 serves the one-branch stride-1 stems (α = 0: the seed network's and WRN's 3 → 16 / 32,
/// U-Net's first layer, MobileNet v2's 3 → 32 on its pooled input) that the direct 3×3 kernel
/// ([`super::direct::single_into`]) ran before; at α > 0 such a stem is an octave layer and runs
/// elsewhere. Measured (`octconv bench --profile`, Intel Xeon, AVX-512, 2 threads, 3 alternations,
/// ms): U-Net's 3 → 32 at 128 × 128 (batch 4) 1.08–1.23 → 0.99–1.10; MobileNet v2's and the
/// seed's stems the same within the noise (1.21–1.63 / 0.48–0.59 ms either way).
pub fn applies(g: &ConvGeometry) -> bool {
    super::simd::has_avx512f()
        && g.groups == 1
        && (1..=MAX_CIN).contains(&g.c_in)
        && g.kh == g.kw
        && g.kh % 2 == 1
        && g.kh <= 7
        && g.pad == g.kh / 2
        && (g.stride == 2 || (g.stride == 1 && g.kh >= 3))
        && g.c_out > 0
        && g.oh() > 0
        && g.ow() > 0
        && g.n >= rayon::current_num_threads()
}

/// `post(conv2d(x, w))` for a geometry the kernel [`applies`] to: `x` `[n, c_in, h, w]`, `w`
/// `[c_out, c_in, k, k]`, no bias; `post(channel, row)` on every output row.
///
/// # Panics
/// If `g` is not served ([`applies`]) or the slices are shorter than `g` needs.
pub fn forward_post(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    post: Option<RowMap<'_, f32>>,
) -> Vec<f32> {
    let packed = checked_pack(g, x, w);
    let mut out = output_vec(g.n * g.out_image());
    // Every output value is stored by the kernel below.
    out.par_chunks_mut(g.out_image())
        .enumerate()
        .for_each(|(i, o)| {
            let img = &x[i * g.in_image()..][..g.in_image()];
            image(g, img, &packed, o, post);
        });
    out
}

/// Values of convolution output one band of [`forward_post_pooled`] holds: 64 Ki (256 KiB of
/// f32, a quarter of this machine's L2: AMD EPYC, 1 MiB per core), 9 rows of a 64 × 112 stem.
/// Whole images (64 × 112², 3.2 MB of scratch per thread, the second largest of DenseNet-121 at
/// α = .75) went to L3 between the convolution and the pool.
const POOL_BAND_VALUES: usize = 64 << 10;

/// [`forward_post`] followed by a 3×3, stride-2, padding-1 max pool of every output plane (the
/// ImageNet stems' pool), each image's convolution output made and pooled a band of rows at a time
/// in per-thread scratch ([`POOL_BAND_VALUES`]; the last row of a band, which the next band's first
/// window reads too, is carried over, not recomputed), so that neither the batch's unpooled outputs
/// (64 × 112² per image) nor a whole image of them is held. Returns the pooled maps,
/// `[n, c_out, ⌈oh/2⌉, ⌈ow/2⌉]`. The values equal [`forward_post`] then the max pool.
///
/// # Panics
/// As [`forward_post`], and if the output is narrower or lower than 2.
pub fn forward_post_pooled(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    post: Option<RowMap<'_, f32>>,
) -> Vec<f32> {
    forward_post_pooled_in_bands(g, x, w, post, POOL_BAND_VALUES)
}

/// [`forward_post_pooled`] with bands of about `band_values` convolution outputs (at least one
/// pooled row each).
fn forward_post_pooled_in_bands(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    post: Option<RowMap<'_, f32>>,
    band_values: usize,
) -> Vec<f32> {
    let packed = checked_pack(g, x, w);
    let (oh, ow) = (g.oh(), g.ow());
    assert!(oh >= 2 && ow >= 2, "stem pool: a {oh}×{ow} output");
    let (ph, pw) = pool3s2_hw(oh, ow);
    // Pooled rows per band: a band of `b` pooled rows reads `2·b + 1` convolution rows.
    let per_band = ((band_values / (g.c_out * ow)).saturating_sub(1) / 2).clamp(1, ph);
    let held = (2 * per_band + 1).min(oh);
    let mut out = output_vec(g.n * g.c_out * ph * pw);
    // Every pooled value is written by the row pool below.
    out.par_chunks_mut(g.c_out * ph * pw)
        .enumerate()
        .for_each(|(i, o)| {
            with_scratch(|s: &mut Scratch<f32>| {
                let plane = held * ow;
                let [split, conv] = s.many([split_size(g), g.c_out * plane]);
                split_image(g, &x[i * g.in_image()..][..g.in_image()], split);
                // The first convolution row the previous band holds (at its slot 0).
                let mut previous: Option<usize> = None;
                for py0 in (0..ph).step_by(per_band) {
                    let py1 = (py0 + per_band).min(ph);
                    // Convolution rows `first .. end` are read: rows 2·py − 1 to 2·py + 1.
                    let (first, end) = ((2 * py0).saturating_sub(1), (2 * py1).min(oh));
                    let mut from = first;
                    if let Some(last) = previous {
                        // The previous band ended with row `first`, at its last slot.
                        let slot = (first - last) * ow;
                        for c in 0..g.c_out {
                            conv.copy_within(c * plane + slot..c * plane + slot + ow, c * plane);
                        }
                        from += 1;
                    }
                    previous = Some(first);
                    let rows = Rows {
                        oys: from..end,
                        first,
                        plane,
                    };
                    conv_rows(g, split, &packed, conv, rows, post);
                    for c in 0..g.c_out {
                        let src = &conv[c * plane..][..(end - first) * ow];
                        let dst = &mut o[(c * ph + py0) * pw..][..(py1 - py0) * pw];
                        pool3s2_rows((src, first), (oh, ow), dst, py0..py1);
                    }
                }
            })
        });
    out
}

/// [`pack`] after checking that the kernel serves `g` and the slices are long enough (the panics
/// of [`forward_post`]).
fn checked_pack(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    assert!(applies(g), "stem: geometry {g:?} is not served");
    assert!(
        x.len() >= g.n * g.in_image() && w.len() >= g.c_out * g.c_in * g.kh * g.kw,
        "stem: {} inputs and {} weights for {g:?}",
        x.len(),
        w.len()
    );
    pack(g, w)
}

/// The weights as blocks of [`CB`] output channels, each `[c_in][ky][kx][CB]` (zero past `c_out`).
fn pack(g: &ConvGeometry, w: &[f32]) -> Vec<f32> {
    let (k, cin) = (g.kh, g.c_in);
    let blocks = g.c_out.div_ceil(CB);
    let mut p = vec![0.0; blocks * cin * k * k * CB];
    for co in 0..g.c_out {
        for t in 0..cin * k * k {
            p[((co / CB) * cin * k * k + t) * CB + co % CB] = w[co * cin * k * k + t];
        }
    }
    p
}

/// Length of one split row (one phase of a padded row's columns) with room for the last vector's
/// reads: tap `kx` of the vector at output column `x0` reads from `kx / stride + x0`.
fn split_len(g: &ConvGeometry) -> usize {
    g.ow().next_multiple_of(16) + (g.kw - 1) / g.stride + 1
}

/// Values of one image's split rows ([`split_image`]).
fn split_size(g: &ConvGeometry) -> usize {
    g.c_in * (g.h + 2 * g.pad) * g.stride * split_len(g)
}

/// One image: split its padded rows, then every output row.
fn image(
    g: &ConvGeometry,
    x: &[f32],
    packed: &[f32],
    o: &mut [f32],
    post: Option<RowMap<'_, f32>>,
) {
    with_scratch(|s: &mut Scratch<f32>| {
        let [split] = s.many([split_size(g)]);
        split_image(g, x, split);
        let rows = Rows {
            oys: 0..g.oh(),
            first: 0,
            plane: g.oh() * g.ow(),
        };
        conv_rows(g, split, packed, o, rows, post);
    })
}

/// Writes the image's zero-padded input rows, split by column phase (even and odd columns at
/// stride 2; the row itself at stride 1), into `split` ([`split_size`] values):
/// `split[(ci · ph + padded row) · stride + phase][j]` = padded input (row, `stride · j + phase`),
/// rows of [`split_len`] values. Only the padding is zeroed; each input value is written once (the
/// scalar loop of one index division per value and a freshly zeroed allocation per image took 10 %
/// of the 7×7 stem's time).
fn split_image(g: &ConvGeometry, x: &[f32], split: &mut [f32]) {
    let (pad, len, st) = (g.pad, split_len(g), g.stride);
    let ph = g.h + 2 * pad;
    // Zero rows above and below the image, and each row's columns outside it.
    for ci in 0..g.c_in {
        let plane = &mut split[ci * ph * st * len..][..ph * st * len];
        plane[..pad * st * len].fill(0.0);
        plane[(pad + g.h) * st * len..].fill(0.0);
    }
    for ci in 0..g.c_in {
        for iy in 0..g.h {
            let row = &x[(ci * g.h + iy) * g.w..][..g.w];
            let base = (ci * ph + iy + pad) * st * len;
            for p in 0..st {
                let dst = &mut split[base + p * len..][..len];
                // Padded column `st·j + p` is input column `st·j + p − pad`: inside for
                // j0 ≤ j < j1.
                let j0 = (pad.saturating_sub(p)).div_ceil(st);
                let j1 = (pad + g.w).saturating_sub(p).div_ceil(st).min(len);
                dst[..j0].fill(0.0);
                dst[j1..].fill(0.0);
                let first = st * j0 + p - pad;
                for (d, &v) in dst[j0..j1].iter_mut().zip(row[first..].iter().step_by(st)) {
                    *d = v;
                }
            }
        }
    }
}

/// Which output rows [`conv_rows`] computes and where it stores them: rows `oys`, row `oy` of
/// channel `c` at `o[c · plane + (oy − first) · ow]`.
struct Rows {
    oys: std::ops::Range<usize>,
    first: usize,
    plane: usize,
}

/// Output rows `at.oys` of every channel from the image's split rows ([`split_image`]), each
/// finished row mapped by `post`.
fn conv_rows(
    g: &ConvGeometry,
    split: &[f32],
    packed: &[f32],
    o: &mut [f32],
    at: Rows,
    post: Option<RowMap<'_, f32>>,
) {
    let (k, ow) = (g.kh, g.ow());
    let (ph, len) = (g.h + 2 * g.pad, split_len(g));
    let plane = at.plane;
    for oy in at.oys {
        let row_at = (oy - at.first) * ow;
        for cb in 0..g.c_out.div_ceil(CB) {
            let wp = &packed[cb * g.c_in * k * k * CB..][..g.c_in * k * k * CB];
            let rows = (g.c_out - cb * CB).min(CB);
            let dst = &mut o[cb * CB * plane + row_at..];
            let mut x0 = 0;
            while x0 < ow {
                let vecs = (ow - x0).div_ceil(16).min(3);
                let args = Args {
                    split,
                    len,
                    ph,
                    k,
                    cin: g.c_in,
                    row0: g.stride * oy,
                    stride: g.stride,
                    x0,
                    cols: (ow - x0).min(16 * vecs),
                };
                // SAFETY: `applies` checked AVX-512F; the split rows hold `len` values, enough for
                // every vector read (`split_len`), and `dst` holds `rows` rows of `plane` values.
                unsafe {
                    match vecs {
                        1 => avx512::block::<1>(&args, wp, dst, (rows, plane)),
                        2 => avx512::block::<2>(&args, wp, dst, (rows, plane)),
                        _ => avx512::block::<3>(&args, wp, dst, (rows, plane)),
                    }
                }
                x0 += 16 * vecs;
            }
        }
        if let Some(post) = post {
            for co in 0..g.c_out {
                post(co, &mut o[co * plane + row_at..][..ow]);
            }
        }
    }
}

/// Where one register block reads: the split rows, the kernel size, the first padded row of the
/// window (`stride·oy`), the stride, the first output column and how many columns (at most
/// `16 · V`) it stores.
struct Args<'a> {
    split: &'a [f32],
    len: usize,
    ph: usize,
    k: usize,
    cin: usize,
    row0: usize,
    stride: usize,
    x0: usize,
    cols: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Args, CB};
    use std::arch::x86_64::*;

    /// [`CB`] output channels × `V` vectors of 16 columns, summed over every input channel and tap
    /// (fused multiply-adds in the order channel, row, column), then stored: only `rows` channels
    /// (planes `plane` values apart in `dst`) and `a.cols` columns.
    ///
    /// # Safety
    /// AVX-512F; as [`super::image`] sets up.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block<const V: usize>(
        a: &Args<'_>,
        wp: &[f32],
        dst: &mut [f32],
        (rows, plane): (usize, usize),
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; CB];
        let (s, w) = (a.split.as_ptr(), wp.as_ptr());
        for ci in 0..a.cin {
            for ky in 0..a.k {
                let row = s.add((ci * a.ph + a.row0 + ky) * a.stride * a.len);
                for kx in 0..a.k {
                    let src = row.add((kx % a.stride) * a.len + kx / a.stride + a.x0);
                    let v: [__m512; V] = std::array::from_fn(|n| _mm512_loadu_ps(src.add(16 * n)));
                    let wt = w.add(((ci * a.k + ky) * a.k + kx) * CB);
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(*wt.add(r));
                        for n in 0..V {
                            acc_r[n] = _mm512_fmadd_ps(b, v[n], acc_r[n]);
                        }
                    }
                }
            }
        }
        let d = dst.as_mut_ptr();
        for (r, acc_r) in acc.iter().enumerate().take(rows) {
            for (n, &sum) in acc_r.iter().enumerate() {
                let left = a.cols.saturating_sub(16 * n).min(16);
                let mask: __mmask16 = if left >= 16 {
                    0xffff
                } else {
                    (1u16 << left) - 1
                };
                if mask != 0 {
                    _mm512_mask_storeu_ps(d.add(r * plane + a.x0 + 16 * n), mask, sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values;

    /// Fills every thread's idle scratch buffers with NaN, so that a value the kernel reads before
    /// writing it shows in the output (scratch is not zeroed between uses).
    fn poison_scratch() {
        rayon::broadcast(|_| {
            with_scratch(|s: &mut Scratch<f32>| {
                for b in s.many([1 << 20, 1 << 20, 1 << 20]) {
                    b.fill(f32::NAN);
                }
            })
        });
    }

    /// Direct summation in f64 with zero padding.
    fn naive(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f64> {
        let (k, (oh, ow)) = (g.kh, (g.oh(), g.ow()));
        let mut y = vec![0.0; g.n * g.c_out * oh * ow];
        for i in 0..g.n {
            for co in 0..g.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0.0;
                        for ci in 0..g.c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if (0..g.h as isize).contains(&iy)
                                        && (0..g.w as isize).contains(&ix)
                                    {
                                        let xv = x[((i * g.c_in + ci) * g.h + iy as usize) * g.w
                                            + ix as usize];
                                        let wv = w[((co * g.c_in + ci) * k + ky) * k + kx];
                                        s += xv as f64 * wv as f64;
                                    }
                                }
                            }
                        }
                        y[((i * g.c_out + co) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        y
    }

    /// Against direct summation: strides 1 and 2, kernels 1, 3, 5, 7, 1–4 input channels, output
    /// channels off the register block, odd and even maps whose output rows end inside the first,
    /// second and third vector, down to 1×1; `post` sees every row once.
    #[test]
    fn stem_kernel_matches_direct_summation_for_every_stride_kernel_size_channel_count_and_map_edge(
    ) {
        if !crate::kernels::simd::has_avx512f() {
            return; // the kernel needs AVX-512F; `applies` keeps it off elsewhere
        }
        let threads = rayon::current_num_threads();
        let mut case = 0;
        let layers = [(1, 3), (1, 5), (1, 7), (2, 1), (2, 3), (2, 5), (2, 7)];
        for (stride, k) in layers {
            for (c_in, c_out) in [(3, 8), (1, 5), (4, 13), (2, 17)] {
                for (h, w) in [(1, 1), (2, 3), (7, 9), (12, 34), (9, 64), (5, 97), (4, 48)] {
                    case += 1;
                    let n = threads.max(2);
                    let (x_dims, w_dims) = ((n, c_in, h, w), (c_out, c_in, k, k));
                    let g = ConvGeometry::new(x_dims, w_dims, stride, k / 2, 1).unwrap();
                    assert!(applies(&g), "{g:?}");
                    poison_scratch();
                    let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
                    let x = f32s(test_values(n * c_in * h * w, 20 + case));
                    let wt = f32s(test_values(c_out * c_in * k * k, 40 + case));
                    let seen = std::sync::atomic::AtomicUsize::new(0);
                    let post = |_c: usize, row: &mut [f32]| {
                        assert_eq!(row.len(), g.ow());
                        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    };
                    let got = forward_post(&g, &x, &wt, Some(&post));
                    assert_eq!(seen.into_inner(), n * c_out * g.oh(), "{g:?}: rows mapped");
                    let want = naive(&g, &x, &wt);
                    assert_eq!(got.len(), want.len());
                    for (j, (&a, &b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "stride {stride}, k {k}, {c_in} → {c_out}, {h}×{w}: [{j}] {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    /// The pooled variant equals the stem then a 3×3 / 2 max pool with padding 1 (by direct
    /// window maxima), exactly, at strides 1 and 2, with an epilogue applied before pooling, once
    /// per row; odd and even map sizes; bands of one to three pooled rows, the default band and the whole image.
    #[test]
    fn pooled_stem_equals_the_stem_then_the_max_pool_exactly() {
        if !crate::kernels::simd::has_avx512f() {
            return;
        }
        let n = rayon::current_num_threads().max(2);
        let cases = [
            (7, (20, 18)),
            (7, (9, 13)),
            (3, (8, 8)),
            (3, (11, 6)),
            (3, (4, 5)),
            // Pooled rows of 18 and 34 values: one and two vectors of the AVX-512 row pass, then
            // the scalar tail.
            (7, (10, 70)),
            (3, (6, 136)),
        ];
        for (stride, (k, (h, w))) in [1, 2].into_iter().flat_map(|s| cases.map(|c| (s, c))) {
            let (c_in, c_out) = (3, 10);
            let g =
                ConvGeometry::new((n, c_in, h, w), (c_out, c_in, k, k), stride, k / 2, 1).unwrap();
            poison_scratch();
            let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
            let x = f32s(test_values(n * c_in * h * w, 70 + k as u64));
            let wt = f32s(test_values(c_out * c_in * k * k, 80 + h as u64));
            // A ReLU-like epilogue that differs per channel, so its place (before the pool) matters.
            let post = |c: usize, row: &mut [f32]| {
                row.iter_mut()
                    .for_each(|v| *v = (*v * (c as f32 + 1.0) - 0.1).max(0.0))
            };
            let conv = forward_post(&g, &x, &wt, Some(&post));
            let (oh, ow) = (g.oh(), g.ow());
            let (ph, pw) = pool3s2_hw(oh, ow);
            // Bands of 1, 2 and 3 pooled rows (the carried row at every band border), the default,
            // and one band for the whole image.
            let row = c_out * ow;
            for budget in [0, 5 * row, 7 * row, POOL_BAND_VALUES, usize::MAX] {
                let seen = std::sync::atomic::AtomicUsize::new(0);
                let counted = |c: usize, r: &mut [f32]| {
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    post(c, r)
                };
                let got = forward_post_pooled_in_bands(&g, &x, &wt, Some(&counted), budget);
                let what = format!("stride {stride}, k {k}, {h}×{w}, band budget {budget}");
                assert_eq!(
                    seen.into_inner(),
                    n * c_out * oh,
                    "{what}: rows mapped once each"
                );
                assert_eq!(got.len(), n * c_out * ph * pw);
                for p in 0..n * c_out {
                    let plane = &conv[p * oh * ow..][..oh * ow];
                    for py in 0..ph {
                        for px in 0..pw {
                            let mut m = f32::NEG_INFINITY;
                            for y in (2 * py).saturating_sub(1)..(2 * py + 2).min(oh) {
                                for x in (2 * px).saturating_sub(1)..(2 * px + 2).min(ow) {
                                    m = m.max(plane[y * ow + x]);
                                }
                            }
                            assert_eq!(got[(p * ph + py) * pw + px], m, "{what}, plane {p}");
                        }
                    }
                }
            }
        }
    }
}
