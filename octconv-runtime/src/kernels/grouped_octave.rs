//! The grouped 3×3 octave convolution (ResNeXt's 32 groups at α > 0) as one inference kernel over
//! raw buffers: the two low-output paths as one grouped convolution over the group-interleaved
//! joint input `[pool(X_H); X_L]`, read from its parts as the grouped kernel lays out each group's
//! padded input (`grouped::Input::Joint`; with one input channel per group, built by pooling
//! straight into a joint buffer for the depthwise kernel); H→H with the image's L→H
//! output added, upsampled, to each plane, then the output map (batch norm, activation) — on the
//! grouped kernel as soon as each plane is final, in cache (with one high input channel per group
//! H→H runs on the depthwise kernel and the planes are mapped after it). At stride 2 (pooling first)
//! both outputs are one grouped convolution each, over `[pool(X_H); X_L]` and
//! `[pool²(X_H); pool(X_L)]`.
//!
//! Why: op by op such a layer ran at 14–17 GMAC/s against 41–47 for ResNeXt-50's plain grouped
//! layers (`octconv bench --profile`, batch 8, Intel Xeon, AVX-512, 2 threads), enough to make
//! α = .25 barely faster than α = 0 (96 %, MACs 75 %): a pooling op, a group-interleaving copy
//! of the pooled and low inputs, a weight concatenation, an upsample-add op writing a new high
//! tensor and an output-map pass over each branch, each a full pass with a fresh tensor.
//!
//! | stride | high output | low output |
//! |---|---|---|
//! | 1 | `W_HH * X_H + up(W_LH * X_L)` | `[W_HL W_LL] * [pool(X_H); X_L]` |
//! | 2 | `[W_HH W_LH] * [pool(X_H); X_L]` | `[W_HL W_LL] * [pool²(X_H); pool(X_L)]` |
//!
//! (`*` a grouped convolution, `[A; B]` joined group by group.) At stride 1 the convolutions are
//! those the per-op layer runs (it, too, joins the low paths) and the L→H addition comes in the same
//! order. At stride 2 the high output sums its two paths inside one convolution where the per-op
//! layer adds two convolutions, which rounds differently (model parity: ≤ 1e-4 relative).

use super::conv2d::{algorithm, dispatch_forward, Algorithm};
use super::epilogue::RowMap;
use super::geometry::ConvGeometry;
use super::grouped::{self, PlaneMap};
use super::octave::{OctaveGeometry, OctaveWeights};
use super::resample::{add_upsampled_planes, pool, pool_plane};
use super::scratch::output_vec;
use super::Element;
use rayon::prelude::*;

/// Sizes of one grouped 3×3 octave convolution (padding 1): the layer's channels and high input
/// map, its groups and stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupedOctave {
    /// Batch, channels per branch and the high input's height and width.
    pub octave: OctaveGeometry,
    /// Groups of every path.
    pub groups: usize,
    /// 1, or 2 (every path pools its input first).
    pub stride: usize,
}

impl GroupedOctave {
    /// Whether the kernel handles these sizes: more than one group, all four paths with every
    /// channel count a positive multiple of the groups, stride 1 or 2, and maps that halve exactly
    /// as often as the paths pool them.
    pub fn applies(&self) -> bool {
        let o = &self.octave;
        let halvings = 2 * self.stride;
        let g = self.groups;
        let counts = [o.in_h, o.in_l, o.out_h, o.out_l];
        g > 1
            && matches!(self.stride, 1 | 2)
            && counts.iter().all(|&c| c > 0 && c.is_multiple_of(g))
            && o.n > 0
            && o.h > 0
            && o.w > 0
            && o.h.is_multiple_of(halvings)
            && o.w.is_multiple_of(halvings)
    }

    /// The high and low outputs' heights and widths.
    pub fn out_hw(&self) -> [(usize, usize); 2] {
        let (h, w) = (self.octave.h / self.stride, self.octave.w / self.stride);
        [(h, w), (h / 2, w / 2)]
    }

    /// A 3×3 grouped "same" convolution of `c_in → c_out` at `(h, w)`.
    fn conv(&self, c_in: usize, c_out: usize, hw: (usize, usize)) -> ConvGeometry {
        ConvGeometry::same3x3(self.octave.n, (c_in, c_out), hw, self.groups)
    }

    /// The grouped convolutions into the two outputs: `[high, low]`, where the high one is H→H
    /// alone at stride 1.
    fn convs(&self) -> [ConvGeometry; 2] {
        let o = &self.octave;
        let [high, low] = self.out_hw();
        let c_high = match self.stride {
            1 => o.in_h,
            _ => o.in_h + o.in_l,
        };
        [
            self.conv(c_high, o.out_h, high),
            self.conv(o.in_h + o.in_l, o.out_l, low),
        ]
    }

    /// L→H at stride 1: the low input convolved at its own size (the depthwise kernel where a
    /// group has one low channel, [`dispatch_forward`]'s choice otherwise).
    fn lh(&self) -> ConvGeometry {
        let o = &self.octave;
        self.conv(o.in_l, o.out_h, self.out_hw()[1])
    }
}

/// The grouped octave convolution of `xh` `[n, in_h, h, w]` and `xl` `[n, in_l, h/2, w/2]`:
/// `(high [n, out_h, …], low [n, out_l, …])`, each output plane mapped by `posts[branch]` (channel,
/// plane) as soon as it is final. `g` must [apply](GroupedOctave::applies).
pub fn forward<T: Element>(
    g: &GroupedOctave,
    xh: &[T],
    xl: &[T],
    w: OctaveWeights<'_, T>,
    posts: [Option<RowMap<'_, T>>; 2],
) -> (Vec<T>, Vec<T>) {
    let o = &g.octave;
    let kernel = |c_out: usize, c_in: usize| c_out * (c_in / g.groups) * 9;
    assert!(
        g.applies()
            && xh.len() == o.n * o.in_h * o.h * o.w
            && xl.len() == o.n * o.in_l * (o.h / 2) * (o.w / 2)
            && w.hh.len() == kernel(o.out_h, o.in_h)
            && w.hl.len() == kernel(o.out_l, o.in_h)
            && w.lh.len() == kernel(o.out_h, o.in_l)
            && w.ll.len() == kernel(o.out_l, o.in_l),
        "grouped octave convolution: sizes"
    );
    let [c_high, c_low] = g.convs();
    let w_low = join_weights(g.groups, o.out_l, [(w.hl, o.in_h), (w.ll, o.in_l)]);
    let low_post = posts[1].map(|p| move |_: usize, co: usize, plane: &mut [T]| p(co, plane));
    let low_post = low_post.as_ref().map(|p| p as _);
    match g.stride {
        1 => {
            // The low output's input [pool(X_H); X_L] joined group by group: read from its parts
            // as the grouped kernel lays out each group's input, or joined first for the
            // depthwise kernel (one input channel per group).
            let low = match algorithm(&c_low) {
                Algorithm::Grouped => {
                    let joint = grouped::Input::Joint {
                        xh,
                        xl,
                        high: o.in_h / g.groups,
                        low: o.in_l / g.groups,
                    };
                    grouped::forward_planes_from(&c_low, joint, &w_low, low_post)
                }
                _ => conv_planes(&c_low, &join_pooled(g, xh, xl), &w_low, low_post),
            };
            // H→H with up(L→H) added to each plane, then the map.
            let t = dispatch_forward(&g.lh(), xl, w.lh);
            let (oh, ow) = g.out_hw()[0];
            let quarter = (oh / 2) * (ow / 2);
            let post = |img: usize, co: usize, plane: &mut [T]| {
                let lo = &t[(img * o.out_h + co) * quarter..][..quarter];
                add_upsampled_planes(plane, lo, 1, (oh, ow));
                if let Some(post) = posts[0] {
                    post(co, plane);
                }
            };
            (conv_planes(&c_high, xh, w.hh, Some(&post)), low)
        }
        _ => {
            // [pool(X_H); X_L] joined group by group is the high output's input, and pooled the
            // low output's, [pool²(X_H); pool(X_L)].
            let joint = join_pooled(g, xh, xl);
            let planes = o.n * (o.in_h + o.in_l);
            let pooled = pool(&joint, planes, o.h / 2, o.w / 2, T::from_f64(0.25));
            let low = conv_planes(&c_low, &pooled, &w_low, low_post);
            drop(pooled);
            let w_high = join_weights(g.groups, o.out_h, [(w.hh, o.in_h), (w.lh, o.in_l)]);
            let post = posts[0].map(|p| move |_: usize, co: usize, plane: &mut [T]| p(co, plane));
            let high = conv_planes(&c_high, &joint, &w_high, post.as_ref().map(|p| p as _));
            (high, low)
        }
    }
}

/// One grouped convolution, each output plane mapped by `post(image, channel, plane)`: by the
/// grouped kernel as each plane is made where [`algorithm`] picks it (2–16 input channels per
/// group, or many with a multiple of 8 outputs per group; `OCTCONV_CONV` can override it as for
/// any convolution), else by [`dispatch_forward`]'s choice (one input channel per group: the
/// depthwise kernel) and then plane by plane.
fn conv_planes<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    post: Option<PlaneMap<'_, T>>,
) -> Vec<T> {
    if algorithm(g) == Algorithm::Grouped {
        return grouped::forward_planes(g, x, w, post);
    }
    let mut y = dispatch_forward(g, x, w);
    if let Some(post) = post {
        let plane = g.out_pixels().max(1);
        y.par_chunks_mut(plane).enumerate().for_each(|(p, o)| {
            post(p / g.c_out, p % g.c_out, o);
        });
    }
    y
}

/// `[pool(X_H); X_L]` joined group by group at the low branch's size: for each image and group, the
/// group's high channels 2×2-average pooled ([`pool_plane`], as [`super::resample::pool`] does),
/// then its low channels copied.
fn join_pooled<T: Element>(g: &GroupedOctave, xh: &[T], xl: &[T]) -> Vec<T> {
    let o = &g.octave;
    let (h, w) = (o.h, o.w);
    let plane = (h / 2) * (w / 2);
    let c = o.in_h + o.in_l;
    let (high_g, low_g) = (o.in_h / g.groups, o.in_l / g.groups);
    // Every plane of every image is written below.
    let mut out = output_vec(o.n * c * plane);
    out.par_chunks_mut(plane).enumerate().for_each(|(p, dst)| {
        let (img, ch) = (p / c, p % c);
        let (grp, k) = (ch / (high_g + low_g), ch % (high_g + low_g));
        if k < high_g {
            let src = &xh[(img * o.in_h + grp * high_g + k) * h * w..][..h * w];
            pool_plane(src, dst, (h, w), T::from_f64(0.25));
        } else {
            let src = &xl[(img * o.in_l + grp * low_g + k - high_g) * plane..][..plane];
            dst.copy_from_slice(src);
        }
    });
    out
}

/// The weights of two paths into one output joined along their input channels group by group
/// (`[c_out, a_g + b_g, 3, 3]` from `[c_out, a_g, 3, 3]` and `[c_out, b_g, 3, 3]`): each output
/// channel lies in one group, so its row is its row of the first then of the second.
fn join_weights<T: Element>(groups: usize, c_out: usize, parts: [(&[T], usize); 2]) -> Vec<T> {
    let (a, b) = (parts[0].1 / groups * 9, parts[1].1 / groups * 9);
    let mut out = Vec::with_capacity(c_out * (a + b));
    for co in 0..c_out {
        out.extend_from_slice(&parts[0].0[co * a..][..a]);
        out.extend_from_slice(&parts[1].0[co * b..][..b]);
    }
    out
}
