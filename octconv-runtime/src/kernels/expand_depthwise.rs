//! A 1×1 expansion and the depthwise 3×3 convolution that is its only reader, image by image: the
//! expansion's GEMM and its row map write one image's expanded map into scratch, and the depthwise
//! kernel reads it from there while it is in cache, plane by plane, into the output.
//!
//! Why: MobileNet v2's inverted residual blocks expand 16–160 channels six-fold before a depthwise
//! layer. Layer by layer, the batch's expanded map (144 channels × 56 × 56 × 8 images: 14.5 MB) was
//! written by the expansion and read back by the depthwise layer, which ran memory-bound at 12–18
//! GMAC/s. One image's expanded map is 0.19–1.8 MB (7 × 7 to 56 × 56), and a thread's scratch keeps
//! it between images.

use super::depthwise::plane_post;
use super::epilogue::RowMap;
use super::gemm::{gemm_parallelism, sgemm, Mat};
use super::geometry::ConvGeometry;
use super::pointwise::{PathWeights, PointwiseOctave};
use super::scratch::{output_vec, sized, with_scratch, Scratch};
use super::Element;
use rayon::prelude::*;

/// Output values per column block of the expansion's GEMM (256 KiB of f32), each block mapped by
/// the expansion's row map while it is in cache.
const BLOCK_VALUES: usize = 64 << 10;

/// The fewest columns a block's GEMM gets.
const BLOCK_MIN_COLUMNS: usize = 256;

/// `post_d(depthwise(post_e(W_e · x)))`: `ge` the 1×1, stride-1, one-group expansion (`c_in → e`
/// channels) of `n` images, `gd` the depthwise convolution of its output (`e` channels, one filter
/// each, any kernel, stride and padding the depthwise kernel takes), weights `we` (`e × c_in`) and
/// `wd` (`e × kh·kw`), no biases. NCHW output of `gd`'s size.
///
/// Whole images, not bands of rows: bands of 6 and of 30 rows with the two shared rows carried
/// over (MobileNet v2's 144-channel 56 × 56 block, batch 8, Intel Xeon, 2 threads) ran that block
/// in 2.31–2.58 ms against 2.11–2.45 whole (3 alternating rounds each).
pub fn forward<T: Element>(
    (ge, gd): (&ConvGeometry, &ConvGeometry),
    x: &[T],
    (we, wd): (&[T], &[T]),
    (post_e, post_d): (Option<RowMap<'_, T>>, Option<RowMap<'_, T>>),
) -> Vec<T> {
    let e = ge.c_out;
    assert!(
        ge.is_pointwise()
            && ge.groups == 1
            && (gd.n, gd.c_in, gd.h, gd.w) == (ge.n, e, ge.h, ge.w)
            && gd.c_out == e
            && gd.groups == e,
        "expand_depthwise: a 1×1 expansion and a depthwise layer on its output, not {ge:?}, {gd:?}"
    );
    let kk = gd.kh * gd.kw;
    assert!(
        x.len() >= ge.n * ge.in_image() && we.len() >= e * ge.c_in && wd.len() >= e * kk,
        "expand_depthwise: input or weights too short for {ge:?}"
    );
    let mut out = output_vec(gd.n * gd.out_image());
    if out.is_empty() {
        return out;
    }
    let hw = ge.h * ge.w;
    let ohw = gd.oh() * gd.ow();
    let block = (BLOCK_VALUES / e.max(1)).max(BLOCK_MIN_COLUMNS);
    let par = gemm_parallelism(ge.n);
    let g1 = ConvGeometry { n: 1, ..*gd };
    // One output image per task: every plane is written by the depthwise kernel.
    out.par_chunks_mut(gd.out_image())
        .enumerate()
        .for_each(|(i, y)| {
            let x = &x[i * ge.in_image()..][..ge.in_image()];
            with_scratch(|s: &mut Scratch<T>| {
                // The expanded image lives in `stage`, taken out so that the depthwise kernel can
                // use the rest of the scratch set.
                let mut stage = std::mem::take(&mut s.stage);
                let t = sized(&mut stage, e * hw);
                for c0 in (0..hw).step_by(block) {
                    let bw = block.min(hw - c0);
                    // SAFETY: `we` is `e × c_in` (asserted), `x` this image's `c_in` planes of `hw`
                    // values (columns c0 … c0 + bw read), `t` `e` planes of `hw` (the same columns
                    // written).
                    unsafe {
                        let wm = Mat {
                            ptr: we.as_ptr(),
                            rs: ge.c_in,
                            cs: 1,
                        };
                        let xm = Mat {
                            ptr: x[c0..].as_ptr(),
                            rs: hw,
                            cs: 1,
                        };
                        sgemm(
                            (e, bw, ge.c_in),
                            t[c0..].as_mut_ptr(),
                            hw,
                            false,
                            wm,
                            xm,
                            par,
                        );
                    }
                    if let Some(post) = post_e {
                        for c in 0..e {
                            post(c, &mut t[c * hw + c0..][..bw]);
                        }
                    }
                }
                for (c, o) in y.chunks_mut(ohw).enumerate() {
                    let plane = &t[c * hw..][..hw];
                    plane_post(&g1, plane, &wd[c * kk..][..kk], o, c, post_d, s);
                }
                s.stage = stage;
            });
        });
    out
}

/// The depthwise pair on an octave pair's expansion: `post_d(depthwise(post_e(expand(x))))` per
/// branch, where `expand` is the four-path 1×1 convolution `g` at stride 1 (weights `wt`, outputs
/// `e_h + e_l` channels) and the depthwise layer `(gh, gl)` convolves each branch channel by channel
/// (weights `wh`: `e_h × kh·kw`, `wl`: `e_l × kh·kw`), no biases. Each image's expanded pair is made
/// in scratch ([`super::pointwise::forward_images_then`]) and read from there: the batch's
/// expanded pair is never held (MobileNet v2's stride-1 blocks at α > 0, the pass's peak).
pub fn forward_pair<T: Element>(
    g: &PointwiseOctave,
    x: (&[T], &[T]),
    wt: PathWeights<'_, T>,
    post_e: [Option<RowMap<'_, T>>; 2],
    (gh, gl): (&ConvGeometry, &ConvGeometry),
    (wh, wl): (&[T], &[T]),
    post_d: [Option<RowMap<'_, T>>; 2],
) -> (Vec<T>, Vec<T>) {
    let o = &g.octave;
    let ((oh, ow), (ol, owl)) = (g.out_high_hw(), g.out_low_hw());
    let fits = |d: &ConvGeometry, c: usize, (h, w): (usize, usize)| {
        (d.n, d.c_in, d.c_out, d.groups, d.h, d.w) == (o.n, c, c, c, h, w)
    };
    assert!(
        g.stride == 1 && fits(gh, o.out_h, (oh, ow)) && fits(gl, o.out_l, (ol, owl)),
        "expand_depthwise: a depthwise pair on the expansion's outputs, not {gh:?}, {gl:?} on {g:?}"
    );
    let (kh, kl) = (gh.kh * gh.kw, gl.kh * gl.kw);
    assert!(
        wh.len() >= o.out_h * kh && wl.len() >= o.out_l * kl,
        "expand_depthwise: depthwise weights too short"
    );
    let (g1h, g1l) = (ConvGeometry { n: 1, ..*gh }, ConvGeometry { n: 1, ..*gl });
    let per = (o.out_h * gh.oh() * gh.ow(), o.out_l * gl.oh() * gl.ow());
    super::pointwise::forward_images_then(g, x, wt, post_e, per, |(fh, fl), (yh, yl), s| {
        for (d, f, w, kk, y, post) in [
            (&g1h, fh, wh, kh, yh, post_d[0]),
            (&g1l, fl, wl, kl, yl, post_d[1]),
        ] {
            let (hw, ohw) = (d.h * d.w, d.oh() * d.ow());
            if ohw == 0 {
                continue;
            }
            for (c, o) in y.chunks_mut(ohw).enumerate() {
                plane_post(d, &f[c * hw..][..hw], &w[c * kk..][..kk], o, c, post, s);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct summation in f64 of the expansion, its map, the depthwise 3×3 layer (stride 1, zero
    /// padding of one) and its map, against the kernel in f64 and f32: odd sizes, one column block
    /// and several, one image and several, the smallest maps.
    #[test]
    fn expansion_then_depthwise_matches_direct_summation() {
        let map = |c: usize, v: f64| (v * (1.0 + 0.05 * (c % 7) as f64) - 0.1).clamp(0.0, 6.0);
        let post = |c: usize, row: &mut [f64]| row.iter_mut().for_each(|v| *v = map(c, *v));
        let post32 =
            |c: usize, row: &mut [f32]| row.iter_mut().for_each(|v| *v = map(c, *v as f64) as f32);
        for (n, c_in, e, h, w) in [
            (1, 3, 5, 4, 6),
            (3, 7, 11, 9, 13),
            (2, 4, 300, 30, 28),
            (1, 3, 600, 7, 260),
            (2, 6, 700, 23, 16),
            (2, 2, 3, 1, 1),
            (1, 5, 4, 2, 3),
        ] {
            let ge = ConvGeometry::new((n, c_in, h, w), (e, c_in, 1, 1), 1, 0, 1).unwrap();
            let gd = ConvGeometry::new((n, e, h, w), (e, 1, 3, 3), 1, 1, e).unwrap();
            let x: Vec<f64> = (0..n * c_in * h * w)
                .map(|i| ((i * 37 % 101) as f64 - 50.0) / 30.0)
                .collect();
            let we: Vec<f64> = (0..e * c_in)
                .map(|i| ((i * 53 % 89) as f64 - 44.0) / 50.0)
                .collect();
            let wd: Vec<f64> = (0..e * 9)
                .map(|i| ((i * 29 % 47) as f64 - 23.0) / 20.0)
                .collect();
            let mut want = vec![0.0; n * e * h * w];
            for i in 0..n {
                for c in 0..e {
                    let ex = |yy: isize, xx: isize| -> f64 {
                        if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                            return 0.0;
                        }
                        let q = yy as usize * w + xx as usize;
                        let v = (0..c_in)
                            .map(|ci| we[c * c_in + ci] * x[(i * c_in + ci) * h * w + q])
                            .sum();
                        map(c, v)
                    };
                    for oy in 0..h {
                        for ox in 0..w {
                            let mut acc = 0.0;
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let v = ex(oy as isize + ky - 1, ox as isize + kx - 1);
                                    acc += wd[c * 9 + (ky * 3 + kx) as usize] * v;
                                }
                            }
                            want[((i * e + c) * h + oy) * w + ox] = map(c + 1, acc);
                        }
                    }
                }
            }
            let post_d = |c: usize, row: &mut [f64]| post(c + 1, row);
            let got = forward((&ge, &gd), &x, (&we, &wd), (Some(&post), Some(&post_d)));
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err <= 1e-9, "{:?}: f64 error {err}", (n, c_in, e, h, w));
            let to32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let post_d32 = |c: usize, row: &mut [f32]| post32(c + 1, row);
            let got = forward(
                (&ge, &gd),
                &to32(&x),
                (&to32(&we), &to32(&wd)),
                (Some(&post32), Some(&post_d32)),
            );
            assert_eq!(got.len(), want.len());
            let err = got
                .iter()
                .zip(&want)
                .map(|(&a, b)| (a as f64 - b).abs() / (1.0 + b.abs()))
                .fold(0.0, f64::max);
            assert!(err <= 1e-4, "{:?}: f32 error {err}", (n, c_in, e, h, w));
        }
    }
}
