//! A one-branch 1×1 convolution at stride 1 whose mapped output its reader takes 2×2-average-pooled:
//! `pool(post(W · x))`, band of rows by band of rows, so that a band's full-resolution output stays
//! in cache between its GEMM, its row map and its pooling, and only the pooled map is written out.
//!
//! Why: a stride-2 octave convolution pools its input first. Where that input is the mapped output
//! of a 1×1 convolution that nothing else reads (the plan's `OutputMap::pool_for`: MobileNet v2's
//! expansions before its stride-2 depthwise layers), the full-resolution map was written by the
//! expansion and read back by the depthwise layer only to be pooled: at batch 8 the first one is
//! 96 channels × 112 × 112, 38.5 MB each way.

use super::epilogue::RowMap;
use super::gemm::{gemm_parallelism, sgemm, Mat};
use super::geometry::ConvGeometry;
use super::resample::pool_plane;
use super::scratch::{output_vec, with_scratch, Scratch};
use super::Element;
use rayon::prelude::*;

/// Full-resolution output values per band: 256 KiB of f32, about what the one-branch 1×1 kernel maps
/// per column block while it is in cache ([`super::conv2d::forward_post`]).
const BAND_VALUES: usize = 64 << 10;

/// The fewest columns a band's GEMM gets: narrower GEMMs run below the crate's peak (ResNeXt-50's
/// 1024-channel expansion at 14 × 14 in bands of 4 rows, 56 columns: 11.2 → 12.6 ms a batch).
const BAND_MIN_COLUMNS: usize = 256;

/// Rows per band for `c_out` output channels of width `w`: about [`BAND_VALUES`] outputs but at
/// least [`BAND_MIN_COLUMNS`] columns, an even count (each pooled row reads two).
fn band_rows(c_out: usize, w: usize) -> usize {
    let w = w.max(1);
    let rows = BAND_VALUES / (c_out * w).max(1);
    (rows.max(BAND_MIN_COLUMNS.div_ceil(w)) + 1) & !1
}

/// `pool(post(conv2d(x, w)))` for the 1×1, stride-1, one-group convolution `g` (no bias), where
/// `post(channel, row)` maps the output and `pool` is the 2×2 average pooling (`0.25 · (a + b + c +
/// d)`, odd last rows and columns dropped): `n × c_out × ⌊h/2⌋ × ⌊w/2⌋`, NCHW.
pub fn forward<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    post: Option<RowMap<'_, T>>,
) -> Vec<T> {
    assert!(
        g.is_pointwise() && g.groups == 1,
        "pointwise_pooled: a 1×1, stride-1, one-group convolution, not {g:?}"
    );
    assert!(
        x.len() >= g.n * g.in_image() && w.len() >= g.c_out * g.c_in,
        "pointwise_pooled: input or weights too short for {g:?}"
    );
    let (ph, pw) = (g.h / 2, g.w / 2);
    let out_image = g.c_out * ph * pw;
    // Every pooled value is written by `pool_plane` below (the bands cover rows 0 … 2·ph).
    let mut out = output_vec(g.n * out_image);
    if out.is_empty() {
        return out;
    }
    let par = gemm_parallelism(g.n);
    let rows = band_rows(g.c_out, g.w);
    let hw = g.h * g.w;
    out.par_chunks_mut(out_image)
        .enumerate()
        .for_each(|(i, y)| {
            let x = &x[i * g.in_image()..][..g.in_image()];
            with_scratch(|s: &mut Scratch<T>| {
                let [t] = s.many([g.c_out * rows * g.w]);
                for r0 in (0..2 * ph).step_by(rows) {
                    let r1 = (r0 + rows).min(2 * ph);
                    let bw = (r1 - r0) * g.w;
                    let t = &mut t[..g.c_out * bw];
                    // SAFETY: the weights are `c_out × c_in` (asserted above); the input is this
                    // image's `c_in` planes of `hw` values, of which columns `r0·w … r1·w` are read
                    // (r1 ≤ h); `t` holds `c_out` rows of `bw` values.
                    unsafe {
                        let wm = Mat {
                            ptr: w.as_ptr(),
                            rs: g.c_in,
                            cs: 1,
                        };
                        let xm = Mat {
                            ptr: x[r0 * g.w..].as_ptr(),
                            rs: hw,
                            cs: 1,
                        };
                        sgemm(
                            (g.c_out, bw, g.c_in),
                            t.as_mut_ptr(),
                            bw,
                            false,
                            wm,
                            xm,
                            par,
                        );
                    }
                    for (c, band) in t.chunks_exact_mut(bw).enumerate() {
                        if let Some(post) = post {
                            post(c, band);
                        }
                        let o = &mut y[c * ph * pw + (r0 / 2) * pw..][..(r1 - r0) / 2 * pw];
                        pool_plane(band, o, (r1 - r0, g.w), T::from_f64(0.25));
                    }
                }
            });
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct summation in f64 of `pool(post(W · x))` against the kernel on odd and even sizes,
    /// one and several bands, several images, f64 and f32.
    #[test]
    fn pooled_1x1_output_matches_direct_summation_then_pooling() {
        let post = |c: usize, row: &mut [f64]| {
            for v in row {
                *v = (*v * (1.0 + 0.1 * c as f64) - 0.05).clamp(0.0, 6.0);
            }
        };
        let post32 = |c: usize, row: &mut [f32]| {
            for v in row {
                *v = (*v * (1.0 + 0.1 * c as f32) - 0.05).clamp(0.0, 6.0);
            }
        };
        // (n, c_in, c_out, h, w): one band, odd sides, bands of two rows (c_out·w large), a short
        // last band, one pooled row.
        for (n, c_in, c_out, h, w) in [
            (1, 3, 5, 4, 6),
            (2, 7, 3, 9, 11),
            (3, 4, 2048, 14, 40),
            (2, 5, 600, 37, 30),
            (2, 5, 64, 23, 100),
            (1, 2, 3, 2, 3),
        ] {
            let g = ConvGeometry::new((n, c_in, h, w), (c_out, c_in, 1, 1), 1, 0, 1).unwrap();
            let x: Vec<f64> = (0..n * c_in * h * w)
                .map(|i| ((i * 37 % 101) as f64 - 50.0) / 40.0)
                .collect();
            let wt: Vec<f64> = (0..c_out * c_in)
                .map(|i| ((i * 53 % 89) as f64 - 44.0) / 60.0)
                .collect();
            let (ph, pw) = (h / 2, w / 2);
            let mut want = vec![0.0; n * c_out * ph * pw];
            for i in 0..n {
                for co in 0..c_out {
                    let mut plane: Vec<f64> = (0..h * w)
                        .map(|q| {
                            (0..c_in)
                                .map(|ci| wt[co * c_in + ci] * x[(i * c_in + ci) * h * w + q])
                                .sum()
                        })
                        .collect();
                    post(co, &mut plane);
                    for oy in 0..ph {
                        for ox in 0..pw {
                            let at = |y: usize, x: usize| plane[y * w + x];
                            want[((i * c_out + co) * ph + oy) * pw + ox] = 0.25
                                * (at(2 * oy, 2 * ox)
                                    + at(2 * oy, 2 * ox + 1)
                                    + at(2 * oy + 1, 2 * ox)
                                    + at(2 * oy + 1, 2 * ox + 1));
                        }
                    }
                }
            }
            let got = forward(&g, &x, &wt, Some(&post));
            assert_eq!(got.len(), want.len());
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err <= 1e-9, "{:?}: f64 error {err}", (n, c_in, c_out, h, w));
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let w32: Vec<f32> = wt.iter().map(|&v| v as f32).collect();
            let got = forward(&g, &x32, &w32, Some(&post32));
            let err = got
                .iter()
                .zip(&want)
                .map(|(&a, b)| (a as f64 - b).abs() / (1.0 + b.abs()))
                .fold(0.0, f64::max);
            assert!(err <= 1e-5, "{:?}: f32 error {err}", (n, c_in, c_out, h, w));
        }
    }
}
