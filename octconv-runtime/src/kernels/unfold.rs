//! im2col and its adjoint col2im for one image and one channel group.
//!
//! The column matrix has `k = cin_g · kh · kw` rows; row `(c, ki, kj)` holds, for every output pixel,
//! the input value that kernel tap `(ki, kj)` of channel `c` sees (zero in the padding). Several images
//! can share one matrix side by side: `ld` is the row stride and `col0` the first column of this image.
//! Each output row is copied as one contiguous slice when the stride is 1 (the common case), with the
//! padded ends filled separately, so the copy runs at memory speed instead of one bounds-checked,
//! strided element at a time.

use super::geometry::ConvGeometry;
use super::Element;

/// The output columns `[lo, hi)` whose input column `ox·stride + kj − pad` lies inside `[0, w)`.
fn valid_columns(g: &ConvGeometry, kj: usize) -> (usize, usize) {
    let (s, pad, ow) = (g.stride, g.pad, g.ow());
    let lo = pad.saturating_sub(kj).div_ceil(s).min(ow);
    let hi = if g.w + pad > kj {
        (g.w + pad - kj).div_ceil(s).min(ow)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// The input row seen by output row `oy` through kernel row `ki`, if it is not padding.
fn input_row(g: &ConvGeometry, oy: usize, ki: usize) -> Option<usize> {
    (oy * g.stride + ki)
        .checked_sub(g.pad)
        .filter(|&iy| iy < g.h)
}

/// Unfolds channels `[c0, c0 + cin_g)` of one image `x` (`c_in × h × w`) into `col`.
pub fn im2col<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    c0: usize,
    col: &mut [T],
    ld: usize,
    col0: usize,
) {
    im2col_rows(g, x, c0, col, ld, col0, 0..g.oh())
}

/// [`im2col`] of the output rows `rows` only: `rows.len() · ow` columns from `col0` on (a block of
/// the image whose column matrix stays in cache while its GEMM runs).
pub fn im2col_rows<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    c0: usize,
    col: &mut [T],
    ld: usize,
    col0: usize,
    rows: std::ops::Range<usize>,
) {
    let (ow, hw, s) = (g.ow(), g.h * g.w, g.stride);
    let cols = rows.len() * ow;
    for c in 0..g.cin_g() {
        let plane = &x[(c0 + c) * hw..][..hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut col[row * ld + col0..][..cols];
                let (lo, hi) = valid_columns(g, kj);
                for (oy, drow) in rows.clone().zip(dst.chunks_exact_mut(ow)) {
                    let Some(iy) = input_row(g, oy, ki) else {
                        drow.fill(T::ZERO);
                        continue;
                    };
                    drow[..lo].fill(T::ZERO);
                    drow[hi..].fill(T::ZERO);
                    if lo == hi {
                        continue;
                    }
                    let src = &plane[iy * g.w..][..g.w];
                    // ix = ox·s + kj − pad ≥ 0 for ox ≥ lo.
                    let ix0 = lo * s + kj - g.pad;
                    if s == 1 {
                        drow[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                    } else {
                        for (d, ix) in drow[lo..hi].iter_mut().zip((ix0..).step_by(s)) {
                            *d = src[ix];
                        }
                    }
                }
            }
        }
    }
}

/// Adds the column matrix back into channels `[c0, c0 + cin_g)` of one image gradient `dx`: the adjoint
/// of [`im2col`] (overlapping taps accumulate).
pub fn col2im<T: Element>(
    g: &ConvGeometry,
    col: &[T],
    ld: usize,
    col0: usize,
    dx: &mut [T],
    c0: usize,
) {
    let (ow, hw, s) = (g.ow(), g.h * g.w, g.stride);
    let ohw = g.out_pixels();
    for c in 0..g.cin_g() {
        let plane = &mut dx[(c0 + c) * hw..][..hw];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (c * g.kh + ki) * g.kw + kj;
                let src = &col[row * ld + col0..][..ohw];
                let (lo, hi) = valid_columns(g, kj);
                if lo == hi {
                    continue;
                }
                for (oy, srow) in src.chunks_exact(ow).enumerate() {
                    let Some(iy) = input_row(g, oy, ki) else {
                        continue;
                    };
                    let drow = &mut plane[iy * g.w..][..g.w];
                    let ix0 = lo * s + kj - g.pad;
                    if s == 1 {
                        for (d, v) in drow[ix0..ix0 + (hi - lo)].iter_mut().zip(&srow[lo..hi]) {
                            *d += *v;
                        }
                    } else {
                        for (ix, v) in (ix0..).step_by(s).zip(&srow[lo..hi]) {
                            drow[ix] += *v;
                        }
                    }
                }
            }
        }
    }
}
