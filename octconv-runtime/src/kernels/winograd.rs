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
//! This file holds the transforms; the forward, input-gradient and weight-gradient drivers that run
//! them are shared with the other variant in [`super::tiling`].

use super::geometry::ConvGeometry;
use super::scratch::output_vec;
use super::tiling::Planes;
use super::Element;
use rayon::prelude::*;

/// Whether the convolution has the shape F(2×2, 3×3) handles here.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && g.groups == 1
}

/// `U[ξ][co][ci] = f(w[co][ci])[ξ]` for `w` `[cout, cin, 3, 3]`: a Winograd kernel transform `f` applied to
/// every 3×3 kernel, output channels in parallel (a serial, scattered transform was a visible share of
/// a small network's inference), then laid out frequency-major for the GEMMs.
pub(super) fn transform_kernels<T: Element, const F: usize>(
    w: &[T],
    cout: usize,
    cin: usize,
    f: impl Fn(&[T]) -> [T; F] + Sync,
) -> Vec<T> {
    if cout * cin == 0 {
        return Vec::new();
    }
    // Every element of both buffers is written below: tmp[co][ξ][ci] for every (co, ξ, ci), then
    // u[ξ][co][ci] row by row.
    let mut tmp = output_vec(F * cout * cin);
    tmp.par_chunks_mut(F * cin)
        .enumerate()
        .for_each(|(co, blk)| {
            for ci in 0..cin {
                let vals = f(&w[(co * cin + ci) * 9..][..9]);
                for (xi, v) in vals.into_iter().enumerate() {
                    blk[xi * cin + ci] = v;
                }
            }
        });
    let mut u = output_vec(F * cout * cin);
    u.par_chunks_mut(cout * cin)
        .enumerate()
        .for_each(|(xi, dst)| {
            for co in 0..cout {
                dst[co * cin..][..cin].copy_from_slice(&tmp[(co * F + xi) * cin..][..cin]);
            }
        });
    u
}

/// `U[ξ][co][ci] = (G g Gᵀ)[ξ]` for `w` `[cout, cin, 3, 3]`.
pub(super) fn transform_weights<T: Element>(w: &[T], cout: usize, cin: usize) -> Vec<T> {
    let h = T::HALF;
    transform_kernels::<T, 16>(w, cout, cin, |g| {
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
    })
}

/// Copies rows `y0, y0 + 1, …` of an `h × wd` plane into the `rows.len() / pw` rows of `rows` (row
/// stride `pw ≥ wd`), zero-filling columns past `wd` and rows past `h`: one tile row of an
/// output-gradient transform.
pub(super) fn load_rows<T: Element>(
    plane: &[T],
    (h, wd): (usize, usize),
    y0: usize,
    rows: &mut [T],
    pw: usize,
) {
    for (r, dst) in rows.chunks_exact_mut(pw).enumerate() {
        let y = y0 + r;
        if y < h {
            dst[..wd].copy_from_slice(&plane[y * wd..][..wd]);
            dst[wd..].fill(T::ZERO);
        } else {
            dst.fill(T::ZERO);
        }
    }
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

/// `V[ci][ξ][tile] = (Bᵀ d B)[ξ]` for every 4×4 input tile `d` of the images in `x` (`cnt` whole
/// images); tile `ty·tw + tx` of image `i` is column `i·tiles + ty·tw + tx` of a matrix with row stride
/// `ld`.
pub(super) fn transform_input<T: Element>(g: &ConvGeometry, x: &[T], v: &mut [T], ld: usize) {
    let (cin, h, wd) = (g.c_in, g.h, g.w);
    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    let tiles = th * tw;
    let cnt = x.len() / g.in_image();
    // The four input rows of a row of tiles, split into even and odd columns of the zero-padded row:
    // e[k] = x[2k − 1], o[k] = x[2k]. Every step below is then an elementwise loop over contiguous
    // slices, which the compiler vectorises; a channel's 16 frequencies are adjacent
    // (V[ci][ξ][tile]), which keeps its writes within a few cache pages.
    let n2 = tw + 1;
    let mut e = vec![T::ZERO; 4 * n2];
    let mut o = vec![T::ZERO; 4 * n2];
    let mut te = vec![T::ZERO; 4 * n2];
    let mut to = vec![T::ZERO; 4 * n2];
    for i in 0..cnt {
        let img = &x[i * g.in_image()..][..g.in_image()];
        for ci in 0..cin {
            let plane = &img[ci * h * wd..][..h * wd];
            for ty in 0..th {
                for r in 0..4 {
                    let er = &mut e[r * n2..][..n2];
                    let or = &mut o[r * n2..][..n2];
                    er.fill(T::ZERO);
                    or.fill(T::ZERO);
                    if let Some(iy) = (2 * ty + r).checked_sub(1).filter(|&y| y < h) {
                        let row = &plane[iy * wd..][..wd];
                        let pairs = row.chunks_exact(2);
                        if let [last] = pairs.remainder() {
                            or[wd / 2] = *last;
                        }
                        for ((p, oo), ee) in pairs.zip(or.iter_mut()).zip(er[1..].iter_mut()) {
                            *oo = p[0];
                            *ee = p[1];
                        }
                    }
                }
                // Bᵀ over rows: t0 = d0 − d2, t1 = d1 + d2, t2 = d2 − d1, t3 = d1 − d3.
                for (src, dst) in [(&e, &mut te), (&o, &mut to)] {
                    let (d0, rest) = src.split_at(n2);
                    let (d1, rest) = rest.split_at(n2);
                    let (d2, d3) = rest.split_at(n2);
                    let (t0, rest) = dst.split_at_mut(n2);
                    let (t1, rest) = rest.split_at_mut(n2);
                    let (t2, t3) = rest.split_at_mut(n2);
                    for k in 0..n2 {
                        t0[k] = d0[k] - d2[k];
                        t1[k] = d1[k] + d2[k];
                        t2[k] = d2[k] - d1[k];
                        t3[k] = d1[k] - d3[k];
                    }
                }
                // … then B over columns: with tile columns 2tx − 1 … 2tx + 2 = e[tx], o[tx],
                // e[tx + 1], o[tx + 1].
                let col0 = i * tiles + ty * tw;
                for r in 0..4 {
                    let (ter, tor) = (&te[r * n2..][..n2], &to[r * n2..][..n2]);
                    let (e0, e1, o0, o1) = (&ter[..tw], &ter[1..], &tor[..tw], &tor[1..]);
                    let base = (ci * 16 + r * 4) * ld + col0;
                    let (v0, rest) = v[base..].split_at_mut(ld);
                    let (v1, rest) = rest.split_at_mut(ld);
                    let (v2, v3) = rest.split_at_mut(ld);
                    for tx in 0..tw {
                        v0[tx] = e0[tx] - e1[tx];
                        v1[tx] = o0[tx] + e1[tx];
                        v2[tx] = e1[tx] - o0[tx];
                        v3[tx] = o0[tx] - o1[tx];
                    }
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` for `cnt` images of `cout` channels, one row of tiles at a time (contiguous reads),
/// clipped at odd edges, into `out` (each of the `h` output rows of `wd` pixels once).
pub(super) fn transform_output<T: Element>(
    m: &[T],
    ld: usize,
    cout: usize,
    (h, wd): (usize, usize),
    cnt: usize,
    mut out: Planes<'_, T>,
) {
    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    let tiles = th * tw;
    let mut t = vec![T::ZERO; 8 * tw];
    let mut yrow = vec![T::ZERO; 2 * 2 * tw];
    for i in 0..cnt {
        for co in 0..cout {
            for ty in 0..th {
                let col0 = i * tiles + ty * tw;
                let mrow = |xi: usize| &m[(co * 16 + xi) * ld + col0..][..tw];
                // Aᵀ over rows: t[r][j] for r = 0, 1 and j = 0…3.
                for j in 0..4 {
                    let (m0, m1, m2, m3) = (mrow(j), mrow(4 + j), mrow(8 + j), mrow(12 + j));
                    for tx in 0..tw {
                        t[j * tw + tx] = m0[tx] + m1[tx] + m2[tx];
                        t[(4 + j) * tw + tx] = m1[tx] - m2[tx] - m3[tx];
                    }
                }
                // A over columns: two output rows of 2·tw pixels.
                for r in 0..2 {
                    let tr = |j: usize| &t[(r * 4 + j) * tw..][..tw];
                    let (t0, t1, t2, t3) = (tr(0), tr(1), tr(2), tr(3));
                    let out_row = &mut yrow[r * 2 * tw..][..2 * tw];
                    for tx in 0..tw {
                        out_row[2 * tx] = t0[tx] + t1[tx] + t2[tx];
                        out_row[2 * tx + 1] = t1[tx] - t2[tx] - t3[tx];
                    }
                }
                for r in 0..2 {
                    let oy = 2 * ty + r;
                    if oy < h {
                        out.put_row(i * cout + co, oy, (h, wd), &yrow[r * 2 * tw..][..wd]);
                    }
                }
            }
        }
    }
}

/// `D[co][ξ][tile] = (A dy Aᵀ)[ξ]` for every 2×2 output-gradient tile of the images in `dy` (`cnt`
/// whole images; values beyond odd edges are zero), laid out like [`transform_input`].
pub(super) fn transform_output_grad<T: Element>(
    g: &ConvGeometry,
    dy: &[T],
    d: &mut [T],
    ld: usize,
) {
    let (cout, h, wd) = (g.c_out, g.h, g.w);
    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    let tiles = th * tw;
    let cnt = dy.len() / g.out_image();
    let pw = 2 * tw;
    let mut rows = vec![T::ZERO; 2 * pw];
    let mut s = vec![T::ZERO; 4 * pw];
    for i in 0..cnt {
        for co in 0..cout {
            let plane = &dy[(i * cout + co) * h * wd..][..h * wd];
            for ty in 0..th {
                load_rows(plane, (h, wd), 2 * ty, &mut rows, pw);
                // A over rows: s0 = r0, s1 = r0 + r1, s2 = r0 − r1, s3 = −r1.
                let (r0, r1) = rows.split_at(pw);
                for c in 0..pw {
                    s[c] = r0[c];
                    s[pw + c] = r0[c] + r1[c];
                    s[2 * pw + c] = r0[c] - r1[c];
                    s[3 * pw + c] = T::ZERO - r1[c];
                }
                // … then over columns, tx-contiguous writes.
                let col0 = i * tiles + ty * tw;
                for r in 0..4 {
                    let sr = &s[r * pw..][..pw];
                    let base = |j: usize| (co * 16 + r * 4 + j) * ld + col0;
                    let (b0, b1, b2, b3) = (base(0), base(1), base(2), base(3));
                    for tx in 0..tw {
                        let (p, q) = (sr[2 * tx], sr[2 * tx + 1]);
                        d[b0 + tx] = p;
                        d[b1 + tx] = p + q;
                        d[b2 + tx] = p - q;
                        d[b3 + tx] = T::ZERO - q;
                    }
                }
            }
        }
    }
}

/// `dw = Gᵀ dU G` for every `(co, ci)` of `dU` `[ξ][cout][ci]` (the weight gradient's last step).
pub(super) fn kernel_grads<T: Element>(du: &[T], cout: usize, cin: usize) -> Vec<T> {
    // dw = Gᵀ dU G per (co, ci).
    let h = T::HALF;
    let mut dw = vec![T::ZERO; cout * cin * 9];
    // Output channels in parallel.
    dw.par_chunks_mut(cin * 9)
        .enumerate()
        .for_each(|(co, dw_co)| {
            for ci in 0..cin {
                let u = |i: usize, j: usize| du[((i * 4 + j) * cout + co) * cin + ci];
                let col = |j: usize| {
                    let (u0, u1, u2, u3) = (u(0, j), u(1, j), u(2, j), u(3, j));
                    [u0 + h * (u1 + u2), h * (u1 - u2), h * (u1 + u2) + u3]
                };
                let cols = [col(0), col(1), col(2), col(3)];
                let t: [[T; 4]; 3] = std::array::from_fn(|a| std::array::from_fn(|j| cols[j][a]));
                let out = &mut dw_co[ci * 9..][..9];
                for (a, row) in t.iter().enumerate() {
                    out[a * 3] = row[0] + h * (row[1] + row[2]);
                    out[a * 3 + 1] = h * (row[1] - row[2]);
                    out[a * 3 + 2] = h * (row[1] + row[2]) + row[3];
                }
            }
        });
    dw
}
