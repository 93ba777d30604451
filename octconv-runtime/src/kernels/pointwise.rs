//! The 1×1 octave convolution with all four paths as one inference kernel: per image, four GEMMs on
//! the NCHW planes as they are, the H→L input pooled into scratch as it is needed, the L→H product
//! upsampled into the high output as it is added, and the two low-output paths accumulated into one
//! output.
//!
//! Why: 1×1 convolutions carry 65–85 % of the MACs of ResNeXt, SE-ResNet, MobileNet v2 and DenseNet.
//! Op by op, an octave 1×1 convolution is five ops besides its GEMMs (pool, two concatenations, one
//! of them of the weights, an add of the upsampled L→H output that writes a new high tensor), each a
//! full pass with a fresh allocation, and those costs do not shrink with α: at α = .25 ResNeXt-50 was
//! slower than at α = 0 (`octconv bench --profile`: octave 1×1 layers at 65 GMAC/s against 96 for
//! the plain ones).
//!
//! | stride | high output | low output |
//! |---|---|---|
//! | 1 | `W_HH·X_H + up(W_LH·X_L)` | `W_HL·pool(X_H) + W_LL·X_L` |
//! | 2 | `W_HH·pool(X_H) + W_LH·X_L` | `W_HL·pool²(X_H) + W_LL·pool(X_L)` |

use super::epilogue::RowMap;
use super::gemm::{gemm_parallelism, sgemm, Mat};
use super::octave::OctaveGeometry;
use super::prologue::Prologue;
use super::resample::{add_upsampled_planes, pool_planes};
use super::scratch::{output_vec, sized, with_scratch, Scratch};
use super::Element;
use rayon::prelude::*;

/// Sizes of one 1×1 octave convolution: the layer's channels and high input map, and its stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointwiseOctave {
    /// Batch, channels per branch and the high input's height and width.
    pub octave: OctaveGeometry,
    /// 1, or 2 (every path pools its input first).
    pub stride: usize,
}

impl PointwiseOctave {
    /// Whether the kernel handles these sizes: stride 1 or 2 and maps that halve exactly as often as
    /// the paths pool them (so no path drops a trailing row or column).
    pub fn applies(&self) -> bool {
        let halvings = if self.stride == 2 { 4 } else { 2 };
        matches!(self.stride, 1 | 2)
            && [
                self.octave.in_h,
                self.octave.in_l,
                self.octave.out_h,
                self.octave.out_l,
            ]
            .iter()
            .all(|&c| c > 0)
            && self.octave.h.is_multiple_of(halvings)
            && self.octave.w.is_multiple_of(halvings)
            && self.octave.h > 0
            && self.octave.w > 0
    }

    /// The high output's height and width.
    pub fn out_high_hw(&self) -> (usize, usize) {
        (self.octave.h / self.stride, self.octave.w / self.stride)
    }

    /// The low output's height and width.
    pub fn out_low_hw(&self) -> (usize, usize) {
        (
            self.octave.h / (2 * self.stride),
            self.octave.w / (2 * self.stride),
        )
    }
}

/// The weights of the four paths, each `[c_out, c_in]` row-major (a `[c_out, c_in, 1, 1]` tensor).
#[derive(Clone, Copy, Debug)]
pub struct PathWeights<'a, T> {
    /// H→H.
    pub hh: &'a [T],
    /// H→L.
    pub hl: &'a [T],
    /// L→H.
    pub lh: &'a [T],
    /// L→L.
    pub ll: &'a [T],
}

/// `dst (m × n) = [dst +] w (m × k) · x (k × n)` with contiguous row-major operands.
///
/// # Safety
/// `w` holds `m·k` values, `x` `k·n`, `dst` `m·n`.
unsafe fn gemm_into<T: Element>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    w: &[T],
    x: &[T],
    par: gemm::Parallelism,
) {
    debug_assert!(w.len() >= m * k && x.len() >= k * n && dst.len() >= m * n);
    let lhs = Mat {
        ptr: w.as_ptr(),
        rs: k,
        cs: 1,
    };
    let rhs = Mat {
        ptr: x.as_ptr(),
        rs: n,
        cs: 1,
    };
    sgemm((m, n, k), dst.as_mut_ptr(), n, accumulate, lhs, rhs, par)
}

/// The four-path 1×1 octave convolution of `xh` (`[n, in_h, h, w]`) and `xl` (`[n, in_l, h/2, w/2]`):
/// the high and low outputs, NCHW, without bias. `g` must [apply](PointwiseOctave::applies).
pub fn forward<T: Element>(
    g: &PointwiseOctave,
    xh: &[T],
    xl: &[T],
    wt: PathWeights<'_, T>,
) -> (Vec<T>, Vec<T>) {
    forward_post(g, xh, xl, wt, [None, None])
}

/// [`forward`], applying `post[0]` to every plane of the high output and `post[1]` to every plane of
/// the low one (`post(channel, plane)`) as soon as the image's outputs are complete.
pub fn forward_post<T: Element>(
    g: &PointwiseOctave,
    xh: &[T],
    xl: &[T],
    wt: PathWeights<'_, T>,
    post: [Option<RowMap<'_, T>>; 2],
) -> (Vec<T>, Vec<T>) {
    let (hw, lhw) = (g.octave.h * g.octave.w, g.octave.h * g.octave.w / 4);
    let images = (g.octave.in_h * hw, g.octave.in_l * lhw);
    run(g, (xh, xl), images, wt, None, post)
}

/// [`forward`] of `map(x)` at stride 1, where `map` is `pro` (high, low: the batch norm and ReLU
/// before the convolution), each image's branches mapped into scratch once and read from there by
/// its GEMMs and the H→L pooling; the images of `xh` and `xl` lie `images.0` and `images.1` values
/// apart (each image contiguous: a tensor, or the first channels of a concatenation buffer).
pub fn forward_mapped_pair<T: Element>(
    g: &PointwiseOctave,
    (xh, xl): (&[T], &[T]),
    images: (usize, usize),
    wt: PathWeights<'_, T>,
    pro: [Prologue<'_, T>; 2],
) -> (Vec<T>, Vec<T>) {
    run(g, (xh, xl), images, wt, Some(pro), [None, None])
}

/// The kernel behind [`forward_post`] and [`forward_mapped_pair`] (`pre` at stride 1 only).
fn run<T: Element>(
    g: &PointwiseOctave,
    (xh, xl): (&[T], &[T]),
    (image_h, image_l): (usize, usize),
    wt: PathWeights<'_, T>,
    pre: Option<[Prologue<'_, T>; 2]>,
    post: [Option<RowMap<'_, T>>; 2],
) -> (Vec<T>, Vec<T>) {
    let (hw, lhw) = (g.octave.h * g.octave.w, g.octave.h * g.octave.w / 4);
    let o = &g.octave;
    assert!(
        wt.hh.len() >= o.out_h * o.in_h
            && wt.hl.len() >= o.out_l * o.in_h
            && wt.lh.len() >= o.out_h * o.in_l
            && wt.ll.len() >= o.out_l * o.in_l,
        "pointwise: path weights too short for {o:?}"
    );
    assert!(
        pre.is_none() || g.stride == 1,
        "pointwise: input maps at stride 1 only"
    );
    let (oh, ow) = g.out_high_hw();
    let (ol, owl) = g.out_low_hw();
    let (out_hw, out_lhw) = (oh * ow, ol * owl);
    // Every output element is written by a GEMM without accumulation, then accumulated into.
    let mut yh = output_vec(g.octave.n * g.octave.out_h * out_hw);
    let mut yl = output_vec(g.octave.n * g.octave.out_l * out_lhw);
    if g.octave.n == 0 {
        return (yh, yl);
    }
    let par = gemm_parallelism(g.octave.n);
    yh.par_chunks_mut((g.octave.out_h * out_hw).max(1))
        .zip(yl.par_chunks_mut((g.octave.out_l * out_lhw).max(1)))
        .enumerate()
        .for_each(|(i, (yh, yl))| {
            let xh = &xh[i * image_h..][..g.octave.in_h * hw];
            let xl = &xl[i * image_l..][..g.octave.in_l * lhw];
            with_scratch(|s: &mut Scratch<T>| {
                // SAFETY (every GEMM below): the weights are `c_out × c_in` of the path, the inputs
                // `c_in` planes of the size multiplied, the outputs `c_out` planes of it.
                if g.stride == 1 {
                    let mapped = |c: usize| if pre.is_some() { c } else { 0 };
                    let [t, p, mh, ml] = s.many([
                        g.octave.out_h * lhw,
                        g.octave.in_h * lhw,
                        mapped(g.octave.in_h * hw),
                        mapped(g.octave.in_l * lhw),
                    ]);
                    let (xh, xl) = match pre {
                        Some([ph, pl]) => {
                            map_planes(xh, ph, hw, mh);
                            map_planes(xl, pl, lhw, ml);
                            (&*mh, &*ml)
                        }
                        None => (xh, xl),
                    };
                    unsafe {
                        gemm_into(
                            (g.octave.out_h, hw, g.octave.in_h),
                            yh,
                            false,
                            wt.hh,
                            xh,
                            par,
                        );
                        gemm_into(
                            (g.octave.out_h, lhw, g.octave.in_l),
                            t,
                            false,
                            wt.lh,
                            xl,
                            par,
                        );
                    }
                    add_upsampled_planes(yh, t, g.octave.out_h, (g.octave.h, g.octave.w));
                    pool_planes(xh, g.octave.in_h, (g.octave.h, g.octave.w), p);
                    unsafe {
                        gemm_into(
                            (g.octave.out_l, lhw, g.octave.in_h),
                            yl,
                            false,
                            wt.hl,
                            p,
                            par,
                        );
                        gemm_into(
                            (g.octave.out_l, lhw, g.octave.in_l),
                            yl,
                            true,
                            wt.ll,
                            xl,
                            par,
                        );
                    }
                } else {
                    let [p, p2, pl] = s.many([
                        g.octave.in_h * lhw,
                        g.octave.in_h * lhw / 4,
                        g.octave.in_l * lhw / 4,
                    ]);
                    pool_planes(xh, g.octave.in_h, (g.octave.h, g.octave.w), p);
                    pool_planes(p, g.octave.in_h, (g.octave.h / 2, g.octave.w / 2), p2);
                    pool_planes(xl, g.octave.in_l, (g.octave.h / 2, g.octave.w / 2), pl);
                    unsafe {
                        gemm_into(
                            (g.octave.out_h, out_hw, g.octave.in_h),
                            yh,
                            false,
                            wt.hh,
                            p,
                            par,
                        );
                        gemm_into(
                            (g.octave.out_h, out_hw, g.octave.in_l),
                            yh,
                            true,
                            wt.lh,
                            xl,
                            par,
                        );
                        gemm_into(
                            (g.octave.out_l, out_lhw, g.octave.in_h),
                            yl,
                            false,
                            wt.hl,
                            p2,
                            par,
                        );
                        gemm_into(
                            (g.octave.out_l, out_lhw, g.octave.in_l),
                            yl,
                            true,
                            wt.ll,
                            pl,
                            par,
                        );
                    }
                }
            });
            for (post, y, plane) in [(post[0], yh, out_hw), (post[1], yl, out_lhw)] {
                if let Some(post) = post {
                    for (c, p) in y.chunks_mut(plane.max(1)).enumerate() {
                        post(c, p);
                    }
                }
            }
        });
    (yh, yl)
}

/// `dst = map(src)`, channel by channel (`plane` values each).
fn map_planes<T: Element>(src: &[T], pro: Prologue<'_, T>, plane: usize, dst: &mut [T]) {
    for (c, (d, x)) in dst
        .chunks_exact_mut(plane.max(1))
        .zip(src.chunks_exact(plane.max(1)))
        .enumerate()
    {
        let act = pro.channel(c);
        for (d, &v) in d.iter_mut().zip(x) {
            *d = act.apply(v);
        }
    }
}

/// `y = conv2d(map(x), w)` for a one-group 1×1, stride-1 convolution of `n` images of `cin × hw`
/// values lying `image` values apart in `x` (each image contiguous: a tensor, or the first channels
/// of a concatenation chain's buffer), where `map` is `pro` (inference: the batch norm and ReLU
/// before the convolution). Per image, each column block is mapped into scratch while it is copied
/// (about 256 KiB, so it is still in cache for the GEMM that reads it): the normalised input is never
/// written out and read back, as a separate batch norm pass would (DenseNet's 121 batch norms before
/// its 1×1 convolutions were 8 % of its pass).
pub fn forward_mapped<T: Element>(
    (n, cin, hw, cout): (usize, usize, usize, usize),
    x: &[T],
    image: usize,
    w: &[T],
    pro: Prologue<'_, T>,
) -> Vec<T> {
    assert!(
        w.len() >= cout * cin && (n == 0 || x.len() >= (n - 1) * image + cin * hw),
        "pointwise::forward_mapped: {} weights, {} inputs for {n} images of {cin} × {hw} \
         ({image} apart) into {cout} channels",
        w.len(),
        x.len()
    );
    // Every output value is written by a GEMM without accumulation.
    let mut out = output_vec(n * cout * hw);
    if out.is_empty() {
        return out;
    }
    let block = ((64 << 10) / cin.max(1))
        .next_multiple_of(16)
        .clamp(16, hw.next_multiple_of(16));
    let par = gemm_parallelism(n);
    out.par_chunks_mut(cout * hw)
        .enumerate()
        .for_each(|(i, o)| {
            let xi = &x[i * image..][..cin * hw];
            with_scratch(|s: &mut Scratch<T>| {
                for c0 in (0..hw).step_by(block) {
                    let bw = block.min(hw - c0);
                    let col = sized(&mut s.col, cin * bw);
                    for (ci, dst) in col.chunks_exact_mut(bw).enumerate() {
                        let act = pro.channel(ci);
                        for (d, &v) in dst.iter_mut().zip(&xi[ci * hw + c0..][..bw]) {
                            *d = act.apply(v);
                        }
                    }
                    let lhs = Mat {
                        ptr: w.as_ptr(),
                        rs: cin,
                        cs: 1,
                    };
                    let rhs = Mat {
                        ptr: col.as_ptr(),
                        rs: bw,
                        cs: 1,
                    };
                    // SAFETY: w is cout × cin, col is cin × bw, and the destination is columns
                    // c0 … c0 + bw of this image's cout × hw output (row stride hw).
                    unsafe {
                        sgemm(
                            (cout, bw, cin),
                            o[c0..].as_mut_ptr(),
                            hw,
                            false,
                            lhs,
                            rhs,
                            par,
                        )
                    };
                }
            })
        });
    out
}
