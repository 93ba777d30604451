//! The kernel-2, stride-2 transposed convolution (U-Net's upsampling) for inference: per image one
//! GEMM `Wᵀ (4·c_out × c_in) · X (c_in × h·w)` straight from the weight's `[c_in, c_out, 2, 2]`
//! layout, then each product row written to its 2×2 phase of the output (a pixel shuffle). The octave
//! version sums H→L and L→L in one GEMM pair before the shuffle and adds the upsampled L→H product
//! to the high output in the same pass that writes it.
//!
//! Why: op by op (`layers::transpose`), each path is a permuted copy of the input, a GEMM and a
//! six-dimensional permuted copy of the output, plus the octave joins; the U-Net of issue #23 spent
//! 18–22 % of an inference pass in its four transposed layers for 4 % of the MACs, more at α = .25
//! than at α = 0 (`octconv bench --profile`).

use super::gemm::{gemm_parallelism, sgemm, Mat};
use super::resample::{add_upsampled_planes, pool_planes};
use super::scratch::{output_vec, with_scratch, Scratch};
use super::Element;
use rayon::prelude::*;

/// `dst (4·co × hw) = [dst +] Wᵀ · x` for `w` `[ci, co, 2, 2]` and `x` `ci × hw`.
///
/// # Safety
/// `w` holds `ci·co·4` values, `x` `ci·hw`, `dst` `4·co·hw`.
unsafe fn products<T: Element>(
    (ci, co, hw): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    w: &[T],
    x: &[T],
    par: gemm::Parallelism,
) {
    debug_assert!(w.len() >= ci * co * 4 && x.len() >= ci * hw && dst.len() >= 4 * co * hw);
    let lhs = Mat {
        ptr: w.as_ptr(),
        rs: 1,
        cs: 4 * co,
    };
    let rhs = Mat {
        ptr: x.as_ptr(),
        rs: hw,
        cs: 1,
    };
    sgemm(
        (4 * co, hw, ci),
        dst.as_mut_ptr(),
        hw,
        accumulate,
        lhs,
        rhs,
        par,
    )
}

/// Writes the products `p` (`4·co` rows of `h × w`) to `y` (`co` planes of `2h × 2w`): row
/// `4·c + 2·a + b` goes to the pixels `(2i + a, 2j + b)` of plane `c`.
fn shuffle<T: Element>(p: &[T], y: &mut [T], co: usize, (h, w): (usize, usize)) {
    let hw = h * w;
    for (c, plane) in y[..co * 4 * hw].chunks_mut(4 * hw).enumerate() {
        for (yy, row) in plane.chunks_mut(2 * w).enumerate() {
            let (i, a) = (yy / 2, yy % 2);
            let r0 = &p[(4 * c + 2 * a) * hw + i * w..][..w];
            let r1 = &p[(4 * c + 2 * a + 1) * hw + i * w..][..w];
            for ((pair, &v0), &v1) in row.chunks_exact_mut(2).zip(r0).zip(r1) {
                pair[0] = v0;
                pair[1] = v1;
            }
        }
    }
}

/// One path: `x` `[n, ci, h, w]`, `w` `[ci, co, 2, 2]` → `[n, co, 2h, 2w]`.
pub fn forward<T: Element>(
    x: &[T],
    w: &[T],
    (n, ci, h, wd): (usize, usize, usize, usize),
    co: usize,
) -> Vec<T> {
    let (hw, out) = (h * wd, co * 4 * h * wd);
    // Every element is written by the shuffle.
    let mut y = output_vec(n * out);
    if y.is_empty() {
        return y;
    }
    let par = gemm_parallelism(n);
    y.par_chunks_mut(out).enumerate().for_each(|(i, y)| {
        with_scratch(|s: &mut Scratch<T>| {
            let [p] = s.many([4 * co * hw]);
            // SAFETY: the sizes are those of `products`.
            unsafe { products((ci, co, hw), p, false, w, &x[i * ci * hw..][..ci * hw], par) };
            shuffle(p, y, co, (h, wd));
        })
    });
    y
}

/// Channels and sizes of a four-path transposed octave convolution: `xh` `[n, in_h, h, w]`, `xl`
/// `[n, in_l, h/2, w/2]` → `yh` `[n, out_h, 2h, 2w]`, `yl` `[n, out_l, h, w]`.
pub type OctaveTranspose = super::octave::OctaveGeometry;

/// The four paths' weights, each `[c_in, c_out, 2, 2]`: H→H, H→L, L→H, L→L.
pub type TransposeWeights<'a, T> = [&'a [T]; 4];

/// The four-path transposed octave convolution, kernel 2 (see the module docs): `(yh, yl)` without
/// bias. H→L reads the high input pooled 2×2, L→H is upsampled ×2 after its convolution.
pub fn forward_octave<T: Element>(
    g: &OctaveTranspose,
    xh: &[T],
    xl: &[T],
    [w_hh, w_hl, w_lh, w_ll]: TransposeWeights<'_, T>,
) -> (Vec<T>, Vec<T>) {
    let (hw, lhw) = (g.h * g.w, g.h * g.w / 4);
    let (lh, lw) = (g.h / 2, g.w / 2);
    let (out_h, out_l) = (g.out_h * 4 * hw, g.out_l * 4 * lhw);
    // Every element is written: the high output by its shuffle, the low one by its shuffle.
    let mut yh = output_vec(g.n * out_h);
    let mut yl = output_vec(g.n * out_l);
    if g.n == 0 || out_h == 0 || out_l == 0 {
        return (yh, yl);
    }
    let par = gemm_parallelism(g.n);
    yh.par_chunks_mut(out_h)
        .zip(yl.par_chunks_mut(out_l))
        .enumerate()
        .for_each(|(i, (yh, yl))| {
            let xh = &xh[i * g.in_h * hw..][..g.in_h * hw];
            let xl = &xl[i * g.in_l * lhw..][..g.in_l * lhw];
            with_scratch(|s: &mut Scratch<T>| {
                let [p, q, pooled, lh_up] = s.many([
                    4 * g.out_h * hw,
                    4 * g.out_h.max(g.out_l) * lhw,
                    g.in_h * lhw,
                    g.out_h * hw,
                ]);
                // SAFETY (every product): the sizes are those of `products`.
                unsafe { products((g.in_h, g.out_h, hw), p, false, w_hh, xh, par) };
                shuffle(p, yh, g.out_h, (g.h, g.w));
                // L→H at the high input's resolution, then added upsampled ×2.
                unsafe { products((g.in_l, g.out_h, lhw), q, false, w_lh, xl, par) };
                shuffle(q, lh_up, g.out_h, (lh, lw));
                add_upsampled_planes(yh, lh_up, g.out_h, (2 * g.h, 2 * g.w));
                // H→L from the pooled high input and L→L: one sum of two products.
                pool_planes(xh, g.in_h, (g.h, g.w), pooled);
                unsafe {
                    products((g.in_h, g.out_l, lhw), q, false, w_hl, pooled, par);
                    products((g.in_l, g.out_l, lhw), q, true, w_ll, xl, par);
                }
                shuffle(q, yl, g.out_l, (lh, lw));
            })
        });
    (yh, yl)
}
