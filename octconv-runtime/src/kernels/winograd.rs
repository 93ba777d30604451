//! Winograd F(2×2, 3×3) for 3×3, stride 1, padding 1, ungrouped convolutions — every convolution of an
//! OctConv layer (stride 2 pools first) and most of a wide ResNet.
//!
//! Each 2×2 output tile costs 16 multiplies per input channel instead of 36: the input tile `d` (4×4)
//! and the kernel `g` (3×3) are transformed to `V = Bᵀ d B` and `U = G g Gᵀ`, the 16 frequencies are
//! multiplied as 16 GEMMs `M[ξ] (cout × tiles) = U[ξ] (cout × cin) · V[ξ] (cin × tiles)`, and the output
//! tile is `Aᵀ M A` (Lavin & Gray 2016). The input gradient of such a convolution is the same convolution
//! of the output gradient with the flipped, transposed kernel, so it runs through here too.
//! In f32 the results differ from direct summation by rounding only (≈ 1e-6 relative; tested).

use super::conv2d::{gemm_parallelism, sgemm, sized, Mat, Scratch};
use super::geometry::ConvGeometry;
use super::Element;
use rayon::prelude::*;

/// Whether the convolution has the shape F(2×2, 3×3) handles here.
pub fn applies(g: &ConvGeometry) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && g.groups == 1
}

/// Tiles that make the 16 GEMMs wide enough.
const TARGET_TILES: usize = 512;

/// `U[ξ][co][ci] = (G g Gᵀ)[ξ]` for `w` `[cout, cin, 3, 3]`.
fn transform_weights<T: Element>(w: &[T], cout: usize, cin: usize) -> Vec<T> {
    let mut u = vec![T::ZERO; 16 * cout * cin];
    let h = T::HALF;
    for co in 0..cout {
        for ci in 0..cin {
            let g = &w[(co * cin + ci) * 9..][..9];
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
            for i in 0..4 {
                let (t0, t1, t2) = (t[i * 3], t[i * 3 + 1], t[i * 3 + 2]);
                let row = [t0, h * (t0 + t1 + t2), h * (t0 - t1 + t2), t2];
                for (j, v) in row.into_iter().enumerate() {
                    u[((i * 4 + j) * cout + co) * cin + ci] = v;
                }
            }
        }
    }
    u
}

/// `[cin, cout, 3, 3]` from `[cout, cin, 3, 3]`, each kernel rotated by 180°: the weight whose
/// convolution of the output gradient is the input gradient.
pub fn flip_transpose<T: Element>(w: &[T], cout: usize, cin: usize) -> Vec<T> {
    let mut f = vec![T::ZERO; w.len()];
    for co in 0..cout {
        for ci in 0..cin {
            let src = &w[(co * cin + ci) * 9..][..9];
            let dst = &mut f[(ci * cout + co) * 9..][..9];
            for (i, v) in src.iter().enumerate() {
                dst[8 - i] = *v;
            }
        }
    }
    f
}

/// `y = conv2d(x, w)` for a geometry where [`applies`] holds.
pub fn forward<T: Element>(g: &ConvGeometry, x: &[T], w: &[T]) -> Vec<T> {
    debug_assert!(applies(g));
    let (cin, cout, h, wd) = (g.c_in, g.c_out, g.h, g.w);
    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    let tiles = th * tw;
    let mut out = vec![T::ZERO; g.n * g.out_image()];
    if out.is_empty() || cin == 0 {
        return out;
    }
    let u = transform_weights(w, cout, cin);
    let threads = rayon::current_num_threads().max(1);
    let nb = TARGET_TILES
        .div_ceil(tiles)
        .clamp(1, g.n.div_ceil(threads).max(1));
    let par = gemm_parallelism(g.n.div_ceil(nb));
    out.par_chunks_mut(nb * g.out_image())
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (t, out_chunk)| {
            let i0 = t * nb;
            let cnt = out_chunk.len() / g.out_image();
            let ld = cnt * tiles;
            // V[ξ][ci][tile], one row of tiles at a time so every write is a contiguous run.
            let v = sized(&mut scratch.col, 16 * cin * ld);
            let pw = 2 * tw + 2;
            let mut prow = vec![T::ZERO; 4 * pw];
            let mut trow = vec![T::ZERO; 4 * pw];
            for i in 0..cnt {
                let img = &x[(i0 + i) * g.in_image()..][..g.in_image()];
                for ci in 0..cin {
                    let plane = &img[ci * h * wd..][..h * wd];
                    for ty in 0..th {
                        // The four padded input rows 2ty − 1 … 2ty + 2.
                        for r in 0..4 {
                            let dst = &mut prow[r * pw..][..pw];
                            match (2 * ty + r).checked_sub(1).filter(|&y| y < h) {
                                Some(iy) => {
                                    dst[0] = T::ZERO;
                                    dst[1..1 + wd].copy_from_slice(&plane[iy * wd..][..wd]);
                                    dst[1 + wd..].fill(T::ZERO);
                                }
                                None => dst.fill(T::ZERO),
                            }
                        }
                        // Bᵀ d over rows, for the whole row of tiles.
                        let (p0, rest) = prow.split_at(pw);
                        let (p1, rest) = rest.split_at(pw);
                        let (p2, p3) = rest.split_at(pw);
                        for c in 0..pw {
                            trow[c] = p0[c] - p2[c];
                            trow[pw + c] = p1[c] + p2[c];
                            trow[2 * pw + c] = p2[c] - p1[c];
                            trow[3 * pw + c] = p1[c] - p3[c];
                        }
                        // … then B over columns, writing tx-contiguous runs.
                        let col0 = i * tiles + ty * tw;
                        for r in 0..4 {
                            let t = &trow[r * pw..][..pw];
                            let base = |j: usize| ((r * 4 + j) * cin + ci) * ld + col0;
                            let (b0, b1, b2, b3) = (base(0), base(1), base(2), base(3));
                            for tx in 0..tw {
                                let c = 2 * tx;
                                v[b0 + tx] = t[c] - t[c + 2];
                                v[b1 + tx] = t[c + 1] + t[c + 2];
                                v[b2 + tx] = t[c + 2] - t[c + 1];
                                v[b3 + tx] = t[c + 1] - t[c + 3];
                            }
                        }
                    }
                }
            }
            // M[ξ] = U[ξ] · V[ξ]
            let m = sized(&mut scratch.stage, 16 * cout * ld);
            for xi in 0..16 {
                let lhs = Mat {
                    ptr: u[xi * cout * cin..].as_ptr(),
                    rs: cin,
                    cs: 1,
                };
                let rhs = Mat {
                    ptr: v[xi * cin * ld..].as_ptr(),
                    rs: ld,
                    cs: 1,
                };
                let dst = m[xi * cout * ld..].as_mut_ptr();
                // SAFETY: lhs is cout × cin inside u, rhs is cin × ld inside v, dst is cout × ld
                // inside m.
                unsafe { sgemm((cout, ld, cin), dst, ld, false, lhs, rhs, par) };
            }
            // Y = Aᵀ M A, one row of tiles at a time (contiguous reads), clipped at odd edges.
            let plane_len = h * wd;
            let mut t = vec![T::ZERO; 8 * tw];
            let mut yrow = vec![T::ZERO; 2 * 2 * tw];
            for i in 0..cnt {
                for co in 0..cout {
                    let y = &mut out_chunk[(i * cout + co) * plane_len..][..plane_len];
                    for ty in 0..th {
                        let col0 = i * tiles + ty * tw;
                        let mrow = |xi: usize| &m[(xi * cout + co) * ld + col0..][..tw];
                        // Aᵀ over rows: t[r][j] for r = 0, 1 and j = 0…3.
                        for j in 0..4 {
                            let (m0, m1, m2, m3) =
                                (mrow(j), mrow(4 + j), mrow(8 + j), mrow(12 + j));
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
                                y[oy * wd..][..wd].copy_from_slice(&yrow[r * 2 * tw..][..wd]);
                            }
                        }
                    }
                }
            }
        });
    out
}

/// `dx` of `y = conv2d(x, w)` given `dy`, for a geometry where [`applies`] holds.
pub fn backward_data<T: Element>(g: &ConvGeometry, dy: &[T], w: &[T]) -> Vec<T> {
    let flipped = flip_transpose(w, g.c_out, g.c_in);
    let gt = ConvGeometry {
        c_in: g.c_out,
        c_out: g.c_in,
        ..*g
    };
    forward(&gt, dy, &flipped)
}
