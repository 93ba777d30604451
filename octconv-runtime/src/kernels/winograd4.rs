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
//! This file holds the transforms; the forward, input-gradient and weight-gradient drivers that run
//! them are shared with the other variant in [`super::tiling`].

use super::geometry::ConvGeometry;
use super::Element;
use rayon::prelude::*;

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
pub(super) fn transform_weights<T: Element>(w: &[T], cout: usize, cin: usize) -> Vec<T> {
    let gm = g_matrix::<T>();
    super::winograd::transform_kernels::<T, FREQS>(w, cout, cin, |g| {
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
    })
}

/// `V[ci][ξ][tile] = (Bᵀ d B)[ξ]` for every 6×6 input tile `d` (stride 4, padding 1) of the `cnt`
/// whole images in `x`; tile `ty·tw + tx` of image `i` is column `i·tiles + ty·tw + tx` of a matrix
/// with row stride `ld`.
pub(super) fn transform_input<T: Element>(g: &ConvGeometry, x: &[T], v: &mut [T], ld: usize) {
    let (cin, h, wd) = (g.c_in, g.h, g.w);
    let (th, tw) = (h.div_ceil(4), wd.div_ceil(4));
    let tiles = th * tw;
    let cnt = x.len() / g.in_image();
    // Each of a tile row's six input rows split into four column phases: ph[r][k][i] is padded column
    // 4i + k, i.e. x[4i + k − 1]. Every step below is then an elementwise loop over contiguous slices.
    let n4 = tw + 1;
    let mut ph = vec![T::ZERO; 6 * 4 * n4];
    let mut t = vec![T::ZERO; 6 * 4 * n4];
    for i in 0..cnt {
        let img = &x[i * g.in_image()..][..g.in_image()];
        for ci in 0..cin {
            let plane = &img[ci * h * wd..][..h * wd];
            for ty in 0..th {
                ph.fill(T::ZERO);
                for r in 0..6 {
                    let Some(iy) = (4 * ty + r).checked_sub(1).filter(|&y| y < h) else {
                        continue;
                    };
                    let row = &plane[iy * wd..][..wd];
                    for (c, &val) in row.iter().enumerate() {
                        let pc = c + 1;
                        ph[(r * 4 + pc % 4) * n4 + pc / 4] = val;
                    }
                }
                // Bᵀ over the six rows: contiguous loops over each phase's columns.
                let f = T::from_f64;
                let (two, four, five) = (f(2.0), f(4.0), f(5.0));
                let len = 4 * n4;
                {
                    let d: [&[T]; 6] = std::array::from_fn(|r| &ph[r * len..][..len]);
                    let [d0s, d1s, d2s, d3s, d4s, d5s] = d;
                    let (t0, rest) = t.split_at_mut(len);
                    let (t1, rest) = rest.split_at_mut(len);
                    let (t2, rest) = rest.split_at_mut(len);
                    let (t3, rest) = rest.split_at_mut(len);
                    let (t4, t5) = rest.split_at_mut(len);
                    // Equal lengths, stated, so that the loop below has no bounds checks and vectorises.
                    let (d0s, d1s, d2s, d3s, d4s, d5s) = (
                        &d0s[..len],
                        &d1s[..len],
                        &d2s[..len],
                        &d3s[..len],
                        &d4s[..len],
                        &d5s[..len],
                    );
                    let t5 = &mut t5[..len];
                    for q in 0..len {
                        let (d0, d1, d2, d3, d4, d5) =
                            (d0s[q], d1s[q], d2s[q], d3s[q], d4s[q], d5s[q]);
                        t0[q] = four * d0 - five * d2 + d4;
                        t1[q] = d3 + d4 - four * (d1 + d2);
                        t2[q] = four * (d1 - d2) + d4 - d3;
                        t3[q] = two * (d3 - d1) + d4 - d2;
                        t4[q] = two * (d1 - d3) + d4 - d2;
                        t5[q] = four * d1 - five * d3 + d5;
                    }
                }
                // … then B over the columns: tile tx reads padded columns 4tx … 4tx + 5, i.e.
                // phases 0–3 at tx and phases 0–1 at tx + 1.
                let col0 = i * tiles + ty * tw;
                for r in 0..6 {
                    let p = |k: usize| &t[(r * 4 + k) * n4..][..n4];
                    let (p0, p1, p2, p3) = (p(0), p(1), p(2), p(3));
                    let (p0, p1, p2, p3) = (&p0[..tw + 1], &p1[..tw + 1], &p2[..tw], &p3[..tw]);
                    let base = (ci * FREQS + r * 6) * ld + col0;
                    let (v0, rest) = v[base..].split_at_mut(ld);
                    let (v1, rest) = rest.split_at_mut(ld);
                    let (v2, rest) = rest.split_at_mut(ld);
                    let (v3, rest) = rest.split_at_mut(ld);
                    let (v4, rest) = rest.split_at_mut(ld);
                    let v5 = &mut rest[..tw];
                    let (v0, v1, v2, v3, v4) = (
                        &mut v0[..tw],
                        &mut v1[..tw],
                        &mut v2[..tw],
                        &mut v3[..tw],
                        &mut v4[..tw],
                    );
                    for tx in 0..tw {
                        let (d0, d1, d2, d3, d4, d5) =
                            (p0[tx], p1[tx], p2[tx], p3[tx], p0[tx + 1], p1[tx + 1]);
                        v0[tx] = four * d0 - five * d2 + d4;
                        v1[tx] = d3 + d4 - four * (d1 + d2);
                        v2[tx] = four * (d1 - d2) + d4 - d3;
                        v3[tx] = two * (d3 - d1) + d4 - d2;
                        v4[tx] = two * (d1 - d3) + d4 - d2;
                        v5[tx] = four * d1 - five * d3 + d5;
                    }
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` for `cnt` images of `cout` channels; `emit(image, channel, oy, row)` receives each of
/// the `h` output rows of `wd` pixels once (clipped at edges that are not multiples of 4).
pub(super) fn transform_output<T: Element>(
    m: &[T],
    ld: usize,
    cout: usize,
    (h, wd): (usize, usize),
    cnt: usize,
    mut emit: impl FnMut(usize, usize, usize, &[T]),
) {
    let (th, tw) = (h.div_ceil(4), wd.div_ceil(4));
    let tiles = th * tw;
    // t[r][b][tx]: Aᵀ over the rows of frequency column b.
    let mut t = vec![T::ZERO; 4 * 6 * tw];
    let mut rows = vec![T::ZERO; 4 * 4 * tw];
    for i in 0..cnt {
        for co in 0..cout {
            for ty in 0..th {
                let col0 = i * tiles + ty * tw;
                let mrow = |xi: usize| &m[(co * FREQS + xi) * ld + col0..][..tw];
                let f = T::from_f64;
                let (two, four, eight) = (f(2.0), f(4.0), f(8.0));
                for b in 0..6 {
                    let [m0s, m1s, m2s, m3s, m4s, m5s]: [&[T]; 6] =
                        std::array::from_fn(|a| mrow(a * 6 + b));
                    let (t0, rest) = t[b * tw..].split_at_mut(6 * tw);
                    let (t1, rest) = rest.split_at_mut(6 * tw);
                    let (t2, rest) = rest.split_at_mut(6 * tw);
                    let t3 = &mut rest[..tw];
                    let (t0, t1, t2) = (&mut t0[..tw], &mut t1[..tw], &mut t2[..tw]);
                    let (m0s, m1s, m2s, m3s, m4s, m5s) = (
                        &m0s[..tw],
                        &m1s[..tw],
                        &m2s[..tw],
                        &m3s[..tw],
                        &m4s[..tw],
                        &m5s[..tw],
                    );
                    for tx in 0..tw {
                        let (m0, m1, m2, m3, m4, m5) =
                            (m0s[tx], m1s[tx], m2s[tx], m3s[tx], m4s[tx], m5s[tx]);
                        let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
                        t0[tx] = m0 + s12 + s34;
                        t1[tx] = d12 + two * d34;
                        t2[tx] = s12 + four * s34;
                        t3[tx] = d12 + eight * d34 + m5;
                    }
                }
                for r in 0..4 {
                    let [a0, a1, a2, a3, a4, a5]: [&[T]; 6] =
                        std::array::from_fn(|b| &t[(r * 6 + b) * tw..][..tw]);
                    let out = &mut rows[r * 4 * tw..][..4 * tw];
                    let (a0, a1, a2, a3, a4, a5) = (
                        &a0[..tw],
                        &a1[..tw],
                        &a2[..tw],
                        &a3[..tw],
                        &a4[..tw],
                        &a5[..tw],
                    );
                    for (tx, o) in out.chunks_exact_mut(4).enumerate().take(tw) {
                        let (m0, m1, m2, m3, m4, m5) =
                            (a0[tx], a1[tx], a2[tx], a3[tx], a4[tx], a5[tx]);
                        let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
                        o[0] = m0 + s12 + s34;
                        o[1] = d12 + two * d34;
                        o[2] = s12 + four * s34;
                        o[3] = d12 + eight * d34 + m5;
                    }
                }
                for r in 0..4 {
                    let oy = 4 * ty + r;
                    if oy < h {
                        emit(i, co, oy, &rows[r * 4 * tw..][..wd]);
                    }
                }
            }
        }
    }
}

/// `D[co][ξ][tile] = (A dy Aᵀ)[ξ]` for every 4×4 output-gradient tile (zero beyond the edges),
/// laid out like [`transform_input`].
pub(super) fn transform_output_grad<T: Element>(
    g: &ConvGeometry,
    dy: &[T],
    d: &mut [T],
    ld: usize,
) {
    let (cout, h, wd) = (g.c_out, g.h, g.w);
    let (th, tw) = (h.div_ceil(4), wd.div_ceil(4));
    let tiles = th * tw;
    let cnt = dy.len() / g.out_image();
    let f = T::from_f64;
    let (two, four, eight) = (f(2.0), f(4.0), f(8.0));
    // A·v for four values: the six rows of A = (Aᵀ)ᵀ.
    let a = |v: [T; 4]| -> [T; 6] {
        let (s02, s13) = (v[0] + v[2], v[1] + v[3]);
        let (e, o) = (v[0] + four * v[2], two * v[1] + eight * v[3]);
        [v[0], s02 + s13, s02 - s13, e + o, e - o, v[3]]
    };
    let pw = 4 * tw;
    let mut rows = vec![T::ZERO; 4 * pw];
    let mut s = vec![T::ZERO; 6 * pw];
    for i in 0..cnt {
        for co in 0..cout {
            let plane = &dy[(i * cout + co) * h * wd..][..h * wd];
            for ty in 0..th {
                super::winograd::load_rows(plane, (h, wd), 4 * ty, &mut rows, pw);
                // A over rows …
                for c in 0..pw {
                    let col = a(std::array::from_fn(|r| rows[r * pw + c]));
                    for (r, val) in col.into_iter().enumerate() {
                        s[r * pw + c] = val;
                    }
                }
                // … then over columns.
                let col0 = i * tiles + ty * tw;
                for r in 0..6 {
                    let sr = &s[r * pw..][..pw];
                    for tx in 0..tw {
                        let vals = a(std::array::from_fn(|c| sr[4 * tx + c]));
                        for (j, val) in vals.into_iter().enumerate() {
                            d[(co * FREQS + r * 6 + j) * ld + col0 + tx] = val;
                        }
                    }
                }
            }
        }
    }
}

/// `dw = Gᵀ dU G` for every `(co, ci)` of `dU` `[ξ][cout][ci]` (the weight gradient's last step).
pub(super) fn kernel_grads<T: Element>(du: &[T], cout: usize, cin: usize) -> Vec<T> {
    // dw = Gᵀ dU G per (co, ci).
    let gm = g_matrix::<T>();
    let mut dw = vec![T::ZERO; cout * cin * 9];
    // Output channels in parallel: done serially, this was a visible share of a training step.
    dw.par_chunks_mut(cin * 9)
        .enumerate()
        .for_each(|(co, dw_co)| {
            for ci in 0..cin {
                let u = |i: usize, j: usize| du[((i * 6 + j) * cout + co) * cin + ci];
                // s = dU G (6×3)
                let mut s = [[T::ZERO; 3]; 6];
                for (i, srow) in s.iter_mut().enumerate() {
                    for (b, sv) in srow.iter_mut().enumerate() {
                        let mut acc = T::ZERO;
                        for (j, grow) in gm.iter().enumerate() {
                            acc += u(i, j) * grow[b];
                        }
                        *sv = acc;
                    }
                }
                let out = &mut dw_co[ci * 9..][..9];
                for a in 0..3 {
                    for b in 0..3 {
                        let mut acc = T::ZERO;
                        for (i, grow) in gm.iter().enumerate() {
                            acc += grow[a] * s[i][b];
                        }
                        out[a * 3 + b] = acc;
                    }
                }
            }
        });
    dw
}
