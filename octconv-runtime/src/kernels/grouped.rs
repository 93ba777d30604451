//! Grouped 3×3 convolutions with few channels per group (ResNeXt's 32 groups of 4 … 32 channels) as
//! a direct kernel: forward, input gradient and weight gradient, padding 1, stride 1 or 2.
//!
//! Why not im2col + GEMM: each group's GEMM is `cout_g × 9·cin_g` by `9·cin_g × pixels`, too small
//! for the GEMM library to run near its peak, after an unfold that writes nine copies of the input.
//! Here each input channel of a group is zero-padded once into a flat buffer (for stride 2 split into
//! its four row × column parity phases, so that every tap is again a fixed offset), and output pixel
//! `(oy, ox)` at position `p = oy·pitch + ox` reads tap `t` at `src[p + offset(t)]`: a whole plane
//! is one long vector loop, small maps included, at the price of also computing the `pitch − ow`
//! positions between rows. A block of up to 4 output channels × 16 … 64 positions is summed in
//! registers over every tap of every input channel of the group and stored once.
//!
//! The input gradient is the same gather with the roles swapped: each phase of the padded input
//! gradient sums the taps of its parity over the zero-framed output gradient. The weight gradient is
//! one dot product per tap over the same flat buffers, summed in 8 lanes over the batch.

use super::epilogue::RowMap;
use super::geometry::ConvGeometry;
use super::grouped_channels;
use super::scratch::{output_vec, sized, with_scratch, Scratch};
use super::simd::wide_fn;
use super::Element;
use rayon::prelude::*;

/// The most input channels per group for which [`applies`] picks this kernel.
///
/// Measured on ResNeXt-50 32×4d's grouped layers at batch 8 (AMD EPYC, AVX-512, 2 threads, a
/// temporary benchmark calling [`super::conv2d::forward`] etc. and this module alternately;
/// milliseconds im2col → direct for forward / input gradient / weight gradient): 4 per group at
/// 56×56 6.8 → 2.6 / 5.1 → 3.0 / 3.8 → 3.6; 8 at 28×28 3.0 → 2.2 / 3.5 → 2.8 / 5.4 → 3.2; 16 at
/// 14×14 4.0 → 2.7 / 3.7 → 2.8 / 4.7 → 3.4; 8 at 56×56, stride 2 6.8 → 4.3 / 7.7 → 4.5 /
/// 9.1 → 5.0; 2 per group (α = .5 paths) at 56×56 1.6 → 0.7 / 2.2 → 1.1 / 1.5 → 0.9. At 32 per
/// group the GEMMs are wide enough and im2col wins: 7×7 3.1 → 4.9 / 2.9 → 5.2 / 3.4 → 4.6, and
/// 14×14 stride 2 3.2 → 3.6 / 3.1 → 5.8 / 3.5 → 4.6. (The forward of many channels per group runs
/// along the output channels instead, [`grouped_channels`], where that applies.)
pub const MAX_CIN_G: usize = 16;

/// Output channels summed at once (one register block).
const CB: usize = 4;

/// The most positions [`gather`] sums at once per channel: rows of its output are padded to a
/// multiple of this.
const MAX_LANES: usize = 64;

/// Multiply-accumulates that make a parallel task worth its scheduling.
const TASK_MACS: usize = 1 << 16;

/// Whether the direct kernels handle `g`'s forward pass: [`applies_backward`], or f32 data where
/// [`grouped_channels::applies`] (whose rule needs no data type: other data falls back to the
/// position kernel, correct at any channel count).
pub fn applies(g: &ConvGeometry) -> bool {
    applies_backward(g) || grouped_channels::applies(g)
}

/// Whether the gradients of `g` run here ([`backward_data`], [`backward_filter`]): more than one
/// group, from 2 to [`MAX_CIN_G`] input channels per group (one is [`super::depthwise`]'s; at 32
/// im2col was faster), 3×3, padding 1, stride 1 or 2.
pub fn applies_backward(g: &ConvGeometry) -> bool {
    g.groups > 1
        && (2..=MAX_CIN_G).contains(&g.cin_g())
        && (g.kh, g.kw, g.pad) == (3, 3, 1)
        && matches!(g.stride, 1 | 2)
}

/// The flat layout of one zero-padded input channel: `s²` phase planes (row parity × column parity
/// for stride `s = 2`, the padded plane itself for `s = 1`) of `qh × qw` values; padded pixel
/// `(r, c)` is value `(r / s, c / s)` of phase `(r mod s, c mod s)`. Output pixel `(oy, ox)` has
/// position `oy·qw + ox` and reads tap `(ky, kx)` at that position plus its offset ([`Grid::taps`]).
#[derive(Clone, Copy)]
struct Grid {
    s: usize,
    qh: usize,
    qw: usize,
}

impl Grid {
    fn new(g: &ConvGeometry) -> Self {
        let s = g.stride;
        Grid {
            s,
            qh: (g.h + 2).div_ceil(s),
            qw: (g.w + 2).div_ceil(s),
        }
    }

    fn phase_len(&self) -> usize {
        self.qh * self.qw
    }

    /// Values of one channel (all phases).
    fn channel_len(&self) -> usize {
        self.s * self.s * self.phase_len()
    }

    /// The offsets of the nine taps from an output position within a channel, row-major.
    fn taps(&self) -> [usize; 9] {
        let s = self.s;
        std::array::from_fn(|t| {
            let (ky, kx) = (t / 3, t % 3);
            ((ky % s) * s + kx % s) * self.phase_len() + (ky / s) * self.qw + kx / s
        })
    }

    /// Output positions, the last output pixel's plus one.
    fn positions(&self, g: &ConvGeometry) -> usize {
        (g.oh() - 1) * self.qw + g.ow()
    }

    /// The buffer of `channels` channels of `x` (planes of `h × w`) in this layout, with the slack
    /// that reads of [`MAX_LANES`]-padded rows of positions run over at the end; zero elsewhere.
    fn fill<'a, T: Element>(
        &self,
        g: &ConvGeometry,
        x: &[T],
        channels: usize,
        buf: &'a mut Vec<T>,
    ) -> &'a [T] {
        self.fill_from(g, Input::Planes(x), (0, 0), channels, buf)
    }

    /// [`Grid::fill`] of group `grp` of image `img` of `x`.
    fn fill_from<'a, T: Element>(
        &self,
        g: &ConvGeometry,
        x: Input<'_, T>,
        (img, grp): (usize, usize),
        channels: usize,
        buf: &'a mut Vec<T>,
    ) -> &'a [T] {
        let len = self.channel_len();
        let max_tap = self.taps().into_iter().max().unwrap_or(0);
        let reads = self.positions(g).next_multiple_of(MAX_LANES) + max_tap;
        let src = sized(
            buf,
            (channels * len).max(channels.saturating_sub(1) * len + reads),
        );
        src.fill(T::ZERO);
        let pl = self.phase_len();
        for (ci, dst) in src.chunks_mut(len).take(channels).enumerate() {
            let plane = match x.plane(g, (img, grp), ci) {
                Plane::Copied(plane) => plane,
                Plane::Pooled(plane) => {
                    // Stride 1 only ([`Input::Joint`]): each row the 2×2 average of two rows of
                    // the plane of twice the size, summed as `pool_plane_map` sums.
                    let q = T::from_f64(0.25);
                    for (iy, pair) in plane.chunks_exact(4 * g.w).take(g.h).enumerate() {
                        let (r0, r1) = pair.split_at(2 * g.w);
                        let row = &mut dst[(iy + 1) * self.qw + 1..][..g.w];
                        let pairs = r0.chunks_exact(2).zip(r1.chunks_exact(2));
                        for (v, (a, b)) in row.iter_mut().zip(pairs) {
                            *v = q * (a[0] + a[1] + b[0] + b[1]);
                        }
                    }
                    continue;
                }
            };
            for (iy, row) in plane.chunks_exact(g.w).enumerate() {
                let r = iy + 1;
                if self.s == 1 {
                    dst[r * self.qw + 1..][..g.w].copy_from_slice(row);
                } else {
                    // Stride 2: padded column c = ix + 1 to phase c mod 2 at c / 2, so even `ix`
                    // to phase 1 at ix / 2 and odd `ix` to phase 0 at (ix + 1) / 2.
                    let base = (r % 2) * 2 * pl + (r / 2) * self.qw;
                    let (even, odd) = dst[base..].split_at_mut(pl);
                    let pairs = row.chunks_exact(2);
                    if let [last] = pairs.remainder() {
                        odd[g.w / 2] = *last;
                    }
                    for ((o, e), pair) in odd.iter_mut().zip(&mut even[1..]).zip(pairs) {
                        *o = pair[0];
                        *e = pair[1];
                    }
                }
            }
        }
        src
    }
}

/// Where a grouped convolution reads its input channels.
#[derive(Clone, Copy)]
pub enum Input<'a, T> {
    /// Planes `[n, c, h, w]`.
    Planes(&'a [T]),
    /// The grouped octave kernel's joint low-output input `[pool(X_H); X_L]`, joined group by
    /// group and read from its parts as each group's padded input is laid out (stride 1 only):
    /// a group's `high` channels 2×2-average-pooled from `xh` (planes of `2h × 2w`), then its `low`
    /// channels from `xl`. No joint buffer of the whole batch is written and read back
    /// ([`super::grouped_octave`]).
    Joint {
        /// The high input, `[n, groups·high, 2h, 2w]`.
        xh: &'a [T],
        /// The low input, `[n, groups·low, h, w]`.
        xl: &'a [T],
        /// High channels per group.
        high: usize,
        /// Low channels per group.
        low: usize,
    },
}

/// One input channel's plane as [`Grid::fill_from`] lays it out.
enum Plane<'a, T> {
    /// Copied as it is (`h × w`).
    Copied(&'a [T]),
    /// 2×2-average-pooled from a plane of `2h × 2w`.
    Pooled(&'a [T]),
}

impl<'a, T: Element> Input<'a, T> {
    /// The same input as f32 data, where `T` is f32.
    fn as_f32(&self) -> Option<Input<'a, f32>> {
        Some(match *self {
            Input::Planes(x) => Input::Planes(T::as_f32(x)?),
            Input::Joint { xh, xl, high, low } => Input::Joint {
                xh: T::as_f32(xh)?,
                xl: T::as_f32(xl)?,
                high,
                low,
            },
        })
    }

    /// Input channel `ci` of group `grp` of image `img`.
    fn plane(&self, g: &ConvGeometry, (img, grp): (usize, usize), ci: usize) -> Plane<'a, T> {
        let hw = g.h * g.w;
        match *self {
            // The whole batch (`forward_planes_from`), or the group's own slice with `img` and
            // `grp` 0 (`Grid::fill`).
            Input::Planes(x) => {
                Plane::Copied(&x[((img * g.groups + grp) * g.cin_g() + ci) * hw..][..hw])
            }
            Input::Joint { xh, high, .. } if ci < high => {
                let c = img * g.groups * high + grp * high + ci;
                Plane::Pooled(&xh[c * 4 * hw..][..4 * hw])
            }
            Input::Joint { xl, high, low, .. } => {
                let c = img * g.groups * low + grp * low + ci - high;
                Plane::Copied(&xl[c * hw..][..hw])
            }
        }
    }
}

/// `y = conv2d(x, w)` for a geometry the kernel [`applies`] to.
pub fn forward<T: Element>(g: &ConvGeometry, x: &[T], w: &[T]) -> Vec<T> {
    forward_post(g, x, w, None)
}

/// What [`forward_planes`] applies to each output plane as soon as it is final:
/// `post(image, channel, plane)`.
pub type PlaneMap<'a, T> = &'a (dyn Fn(usize, usize, &mut [T]) + Sync);

/// [`forward`], applying `post(channel, plane)` to each output plane (one channel of one image, all
/// its pixels) as soon as it is final.
pub fn forward_post<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    post: Option<RowMap<'_, T>>,
) -> Vec<T> {
    match post {
        Some(post) => forward_planes(g, x, w, Some(&|_, co, plane: &mut [T]| post(co, plane))),
        None => forward_planes(g, x, w, None),
    }
}

/// [`forward_post`] whose map also learns each plane's image (the grouped octave kernel adds the
/// image's upsampled L→H plane there: [`super::grouped_octave`]).
pub fn forward_planes<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    post: Option<PlaneMap<'_, T>>,
) -> Vec<T> {
    forward_planes_from(g, Input::Planes(x), w, post)
}

/// [`forward_planes`] reading its input from `x` ([`Input::Joint`] at stride 1 only).
pub fn forward_planes_from<T: Element>(
    g: &ConvGeometry,
    x: Input<'_, T>,
    w: &[T],
    post: Option<PlaneMap<'_, T>>,
) -> Vec<T> {
    assert!(
        g.stride == 1 || matches!(x, Input::Planes(_)),
        "grouped convolution: a joint input at stride 1 only"
    );
    let (cin_g, cout_g, ohw) = (g.cin_g(), g.cout_g(), g.out_pixels());
    // Every element is written: each task copies all planes of its (image, group) out of its stage.
    let mut out = output_vec(g.n * g.out_image());
    if out.is_empty() {
        return out;
    }
    let grid = Grid::new(g);
    let taps = grid.taps();
    if let (true, Some(x32), Some(w32)) = (grouped_channels::applies(g), x.as_f32(), T::as_f32(w)) {
        forward_channels(g, grid, (x32, w32), &mut out, post);
        return out;
    }
    let (npos, ow) = (grid.positions(g), g.ow());
    let ld = npos.next_multiple_of(MAX_LANES);
    // Weight (grp·cout_g + co, ci, tap).
    let wp = pack(g.groups, cout_g, cin_g, 9, |grp, co, ci, t| {
        w[((grp * cout_g + co) * cin_g + ci) * 9 + t]
    });
    out.par_chunks_mut(cout_g * ohw)
        .enumerate()
        .with_min_len(TASK_MACS.div_ceil((cout_g * ohw * g.k()).max(1)))
        .for_each(|(t, o)| {
            let (img, grp) = (t / g.groups, t % g.groups);
            with_scratch(|s: &mut Scratch<T>| {
                let src = grid.fill_from(g, x, (img, grp), cin_g, &mut s.col);
                let stage = sized(&mut s.stage, cout_g * ld);
                let wg = &wp[grp * cout_g * cin_g * 9..][..cout_g * cin_g * 9];
                gather_rows(src, grid.channel_len(), &taps, wg, stage, ld, npos);
                for (co, (plane, staged)) in
                    o.chunks_exact_mut(ohw).zip(stage.chunks(ld)).enumerate()
                {
                    for (row, from) in plane.chunks_exact_mut(ow).zip(staged.chunks(grid.qw)) {
                        row.copy_from_slice(&from[..ow]);
                    }
                    if let Some(post) = post {
                        post(img, grp * cout_g + co, plane);
                    }
                }
            })
        });
    out
}

/// [`forward_post`] by [`grouped_channels`] (f32 data, `T` is f32): one task per (image, group),
/// its input in the padded layout of [`Grid`], its sums staged pixel-major and copied into the
/// output planes, each mapped by `post`.
fn forward_channels<T: Element>(
    g: &ConvGeometry,
    grid: Grid,
    (x, w): (Input<'_, f32>, &[f32]),
    out: &mut [T],
    post: Option<PlaneMap<'_, T>>,
) {
    let (cin_g, cout_g, ohw) = (g.cin_g(), g.cout_g(), g.out_pixels());
    let taps = grid.taps();
    let wp = grouped_channels::pack(g, w);
    out.par_chunks_mut(cout_g * ohw)
        .enumerate()
        .with_min_len(TASK_MACS.div_ceil((cout_g * ohw * g.k()).max(1)))
        .for_each(|(t, o)| {
            let (img, grp) = (t / g.groups, t % g.groups);
            with_scratch(|s: &mut Scratch<f32>| {
                let src = grid.fill_from(g, x, (img, grp), cin_g, &mut s.col);
                let stage = sized(&mut s.stage, ohw * cout_g);
                let wg = &wp[grp * cout_g * cin_g * 9..][..cout_g * cin_g * 9];
                let sizes = (g.oh(), g.ow(), grid.qw);
                grouped_channels::channels(src, grid.channel_len(), &taps, sizes, cin_g, wg, stage);
                // `T` is f32 (the caller's data is).
                if let Some(o32) = T::as_f32_mut(o) {
                    for (co, plane) in o32.chunks_exact_mut(ohw).enumerate() {
                        for (v, px) in plane.iter_mut().zip(stage.chunks_exact(cout_g)) {
                            *v = px[co];
                        }
                    }
                }
            });
            if let Some(post) = post {
                for (co, plane) in o.chunks_exact_mut(ohw).enumerate() {
                    post(img, grp * cout_g + co, plane);
                }
            }
        });
}

/// `dx` of `y = conv2d(x, w)` given `dy`, for a geometry the kernel [`applies`] to.
pub fn backward_data<T: Element>(g: &ConvGeometry, dy: &[T], w: &[T]) -> Vec<T> {
    let (cin_g, cout_g, hw) = (g.cin_g(), g.cout_g(), g.h * g.w);
    // Every element is written: each phase of each task writes the input pixels of its parity.
    let mut dx = output_vec(g.n * g.in_image());
    if dx.is_empty() {
        return dx;
    }
    let grid = Grid::new(g);
    let (s, qw, ohw) = (grid.s, grid.qw, g.out_pixels());
    // dy framed: `front` zeros, then rows of pitch qw (zero past ow), then zeros, so that every tap
    // reads at a non-negative offset `front − shift`.
    let front = (2 / s) * qw + 2 / s;
    let len = front + grid.phase_len() + MAX_LANES;
    // Each phase (a, b): the taps of its parity, their offsets into the framed dy, the packed
    // weights (rows ci, sources co), the range of its grid rows and columns inside the input.
    let phases: Vec<_> = (0..s * s)
        .filter_map(|ph| {
            let (a, b) = (ph / s, ph % s);
            let rows = (1 - a).div_ceil(s)..=(g.h - a) / s;
            let cols = (1 - b).div_ceil(s)..=(g.w - b) / s;
            if rows.is_empty() || cols.is_empty() {
                return None;
            }
            let tl: Vec<usize> = (0..9)
                .filter(|t| t / 3 % s == a && t % 3 % s == b)
                .collect();
            let offs: Vec<usize> = tl
                .iter()
                .map(|t| front - (t / 3 / s) * qw - t % 3 / s)
                .collect();
            let wp = pack(g.groups, cin_g, cout_g, tl.len(), |grp, ci, co, j| {
                w[((grp * cout_g + co) * cin_g + ci) * 9 + tl[j]]
            });
            Some(((a, b), offs, wp, rows, cols))
        })
        .collect();
    dx.par_chunks_mut(cin_g * hw)
        .enumerate()
        .with_min_len(TASK_MACS.div_ceil((cin_g * ohw * 9 * cout_g).max(1)))
        .for_each(|(t, d)| {
            let (img, grp) = (t / g.groups, t % g.groups);
            with_scratch(|sc: &mut Scratch<T>| {
                let src = sized(&mut sc.col, cout_g * len);
                src.fill(T::ZERO);
                let dyg = &dy[(img * g.groups + grp) * cout_g * ohw..][..cout_g * ohw];
                for (plane, dst) in dyg.chunks_exact(ohw).zip(src.chunks_exact_mut(len)) {
                    for (oy, row) in plane.chunks_exact(g.ow()).enumerate() {
                        dst[front + oy * qw..][..g.ow()].copy_from_slice(row);
                    }
                }
                for ((a, b), offs, wp, rows, cols) in &phases {
                    let q0 = rows.start() * qw + cols.start();
                    let npos = rows.end() * qw + cols.end() + 1 - q0;
                    let ld = npos.next_multiple_of(MAX_LANES);
                    let stage = sized(&mut sc.stage, cin_g * ld);
                    let wg =
                        &wp[grp * cin_g * cout_g * offs.len()..][..cin_g * cout_g * offs.len()];
                    gather_rows(&src[q0..], len, offs, wg, stage, ld, npos);
                    // Grid columns c0 … c1 of row r are input pixels (r·s + a − 1, c·s + b − 1).
                    let (c0, c1) = (*cols.start(), *cols.end());
                    for (plane, staged) in d.chunks_exact_mut(hw).zip(stage.chunks(ld)) {
                        for r in rows.clone() {
                            let drow = &mut plane[(r * s + a - 1) * g.w..][..g.w];
                            let from = &staged[r * qw + c0 - q0..][..c1 + 1 - c0];
                            for (dst, &v) in drow[c0 * s + b - 1..].iter_mut().step_by(s).zip(from)
                            {
                                *dst = v;
                            }
                        }
                    }
                }
            })
        });
    dx
}

/// `dw` of `y = conv2d(x, w)` given `dy`, for a geometry the kernel [`applies`] to: one task per
/// group, which sums over the batch in order (deterministic).
pub fn backward_filter<T: Element>(g: &ConvGeometry, x: &[T], dy: &[T]) -> Vec<T> {
    let (cin_g, cout_g, ohw, k) = (g.cin_g(), g.cout_g(), g.out_pixels(), g.k());
    let mut dw = vec![T::ZERO; g.c_out * k];
    if g.n == 0 || dw.is_empty() {
        return dw;
    }
    let grid = Grid::new(g);
    let taps = grid.taps();
    let ow = g.ow();
    let n = grid.positions(g).next_multiple_of(DOT_LANES);
    dw.par_chunks_mut(cout_g * k)
        .enumerate()
        .for_each(|(grp, dwg)| {
            with_scratch(|sc: &mut Scratch<T>| {
                let Scratch { col, stage, extra } = sc;
                if extra.is_empty() {
                    extra.push(Vec::new());
                }
                // The sums in lanes, `[ci][ky][co][kx][lane]`, over the whole batch.
                let lanes = sized(&mut extra[0], cin_g * 9 * cout_g * DOT_LANES);
                lanes.fill(T::ZERO);
                for img in 0..g.n {
                    let xg = &x[(img * g.groups + grp) * cin_g * g.h * g.w..];
                    let src = grid.fill(g, xg, cin_g, col);
                    // dy on the output positions, zero between rows and past the last.
                    let dyp = sized(stage, cout_g * n);
                    dyp.fill(T::ZERO);
                    let dyg = &dy[(img * g.groups + grp) * cout_g * ohw..][..cout_g * ohw];
                    for (plane, dst) in dyg.chunks_exact(ohw).zip(dyp.chunks_exact_mut(n)) {
                        for (oy, row) in plane.chunks_exact(ow).enumerate() {
                            dst[oy * grid.qw..][..ow].copy_from_slice(row);
                        }
                    }
                    correlate_rows(src, grid.channel_len(), &taps, dyp, n, lanes, cin_g);
                }
                for (ci, per_ci) in lanes.chunks_exact(9 * cout_g * DOT_LANES).enumerate() {
                    for (ky, per_ky) in per_ci.chunks_exact(3 * cout_g * DOT_LANES).enumerate() {
                        for (i, lane) in per_ky.chunks_exact(DOT_LANES).enumerate() {
                            let (co, kx) = (i / 3, i % 3);
                            let mut sum = T::ZERO;
                            for &v in lane {
                                sum += v;
                            }
                            dwg[(co * cin_g + ci) * 9 + 3 * ky + kx] = sum;
                        }
                    }
                }
            })
        });
    dw
}

/// The weights of `groups` groups of `rows` rows in the order [`gather`] reads them: per group,
/// blocks of up to [`CB`] rows, each `[source][tap][row]`; `weight(group, row, source, tap)`.
fn pack<T: Element>(
    groups: usize,
    rows: usize,
    sources: usize,
    taps: usize,
    weight: impl Fn(usize, usize, usize, usize) -> T,
) -> Vec<T> {
    let mut wp = Vec::with_capacity(groups * rows * sources * taps);
    for grp in 0..groups {
        for r0 in (0..rows).step_by(CB) {
            for j in 0..sources {
                for t in 0..taps {
                    for r in r0..(r0 + CB).min(rows) {
                        wp.push(weight(grp, r, j, t));
                    }
                }
            }
        }
    }
    wp
}

/// All rows of one group ([`gather_rows_256`]): in 64-lane blocks built for AVX-512 where the CPU
/// runs 512-bit FMAs at full width ([`super::simd::full_width_avx512`]: Intel), else in AVX2 (or
/// the portable build). Every sum is the same, in the same order, at either width.
///
/// Why: the grouped octave layers of ResNeXt-50 at α = .25 and .5 have 2–12 channels per group,
/// where this kernel runs their H→H and joint low-output convolutions. Their H→H convolutions at batch 8 (Intel Xeon, AVX-512,
/// 2 threads, best of 15, two runs): 3 channels per group at 56×56 2.02–2.05 → 1.52–1.55 ms, at
/// 28×28 (6) 1.80–1.83 → 1.25, at 14×14 (12) 1.85–1.87 → 1.27–1.54; 2 per group at 56×56
/// 1.06–1.27 → 0.79–0.80, 4 at 28×28 0.85–0.92 → 0.62–0.64. On AMD's Zen 4, whose 512-bit
/// operations are two 256-bit halves, this was not measured: the AVX2 build stays.
fn gather_rows<T: Element>(
    src: &[T],
    len: usize,
    offs: &[usize],
    wp: &[T],
    out: &mut [T],
    ld: usize,
    npos: usize,
) {
    #[cfg(target_arch = "x86_64")]
    // f32 only: f64 sums in 64 lanes would need 32 registers for four rows (not measured).
    if super::simd::full_width_avx512() && super::simd::has_avx2_fma() && T::as_f32(wp).is_some() {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked at run time).
        return unsafe { gather_rows_512(src, len, offs, wp, out, ld, npos) };
    }
    gather_rows_256(src, len, offs, wp, out, ld, npos)
}

/// [`blocks`] with 64 positions per register block for every row count (4 rows: 16 sums in
/// AVX-512's 32 registers), compiled for AVX-512.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn gather_rows_512<T: Element>(
    src: &[T],
    len: usize,
    offs: &[usize],
    wp: &[T],
    out: &mut [T],
    ld: usize,
    npos: usize,
) {
    blocks::<T, 64, 64, 64, 64>(src, len, offs, wp, out, ld, npos)
}

wide_fn! {
    /// All rows of one group: `out` (rows of pitch `ld`) from `src` (channels of `len`) and the
    /// group's packed weights `wp` ([`pack`]), [`CB`] rows at a time ([`gather`]), positions
    /// `0 … npos` (and on to the next multiple of the block's lanes).
    /// Compiled for AVX2 too ([`wide_fn!`]), the build chosen at run time.
    fn gather_rows_256<T: Element>(
        src: &[T],
        len: usize,
        offs: &[usize],
        wp: &[T],
        out: &mut [T],
        ld: usize,
        npos: usize,
    ) {
        // Three rows take 32 lanes (12 sums in AVX2's 16 registers): with 16 they kept 6 sums,
        // too few to hide the FMA latency (ResNeXt-50's 3-channel groups at α = .25, 56×56,
        // batch 8: 2.78 → 2.21 ms, best of 15, Intel Xeon).
        blocks::<T, 64, 32, 32, 16>(src, len, offs, wp, out, ld, npos)
    }
}

/// The rows of `out` [`CB`] at a time ([`gather`]), a block of `c` rows summing `L{c}` positions at
/// once (each a divisor of [`MAX_LANES`], the rows' padding).
#[inline(always)]
fn blocks<T: Element, const L1: usize, const L2: usize, const L3: usize, const L4: usize>(
    src: &[T],
    len: usize,
    offs: &[usize],
    wp: &[T],
    out: &mut [T],
    ld: usize,
    npos: usize,
) {
    let rows = out.len() / ld;
    let per_row = wp.len() / rows.max(1);
    for r0 in (0..rows).step_by(CB) {
        let cb = CB.min(rows - r0);
        let w = &wp[r0 * per_row..][..cb * per_row];
        let o = &mut out[r0 * ld..][..cb * ld];
        match cb {
            1 => gather::<T, 1, L1>(src, len, offs, w, o, npos),
            2 => gather::<T, 2, L2>(src, len, offs, w, o, npos),
            3 => gather::<T, 3, L3>(src, len, offs, w, o, npos),
            _ => gather::<T, CB, L4>(src, len, offs, w, o, npos),
        }
    }
}

/// `out[c][p] = Σ_j Σ_t wp[j][t][c] · src[j·len + offs[t] + p]` for the `C` rows of `out` and
/// positions `p < npos` rounded up to `L`: `C × L` sums in registers over sources `j`, then taps in
/// order, each stored once.
#[inline(always)]
fn gather<T: Element, const C: usize, const L: usize>(
    src: &[T],
    len: usize,
    offs: &[usize],
    wp: &[T],
    out: &mut [T],
    npos: usize,
) {
    // Rows are padded to a multiple of MAX_LANES, so blocks of L positions never run past them.
    const { assert!(MAX_LANES.is_multiple_of(L)) };
    let ld = out.len() / C;
    for p in (0..npos).step_by(L) {
        let mut acc = [[T::ZERO; L]; C];
        for (j, wj) in wp.chunks_exact(C * offs.len()).enumerate() {
            let s = &src[j * len + p..];
            for (wv, &off) in wj.chunks_exact(C).zip(offs) {
                // Both conversions succeed: the lengths are C and L.
                let (Ok(wv), Ok(v)) = (
                    <&[T; C]>::try_from(wv),
                    <&[T; L]>::try_from(&s[off..off + L]),
                ) else {
                    continue;
                };
                for c in 0..C {
                    for l in 0..L {
                        acc[c][l] += wv[c] * v[l];
                    }
                }
            }
        }
        for (row, a) in out.chunks_exact_mut(ld).zip(&acc) {
            row[p..p + L].copy_from_slice(a);
        }
    }
}

/// Lanes of [`correlate`]'s sums.
const DOT_LANES: usize = 8;

/// Adds the weight gradient of one image to the lane sums `lanes` (`[ci][ky][co][kx][lane]`):
/// `Σ_p dyp[co][p] · src[ci·len + offs[3·ky + kx] + p]` over the positions `p < n` of each `dyp`
/// row, [`CB`] rows and three taps at a time ([`correlate`]).
fn correlate_rows<T: Element>(
    src: &[T],
    len: usize,
    offs: &[usize; 9],
    dyp: &[T],
    n: usize,
    lanes: &mut [T],
    sources: usize,
) {
    let rows = dyp.len() / n;
    let per_ky = rows * 3 * DOT_LANES;
    for (ci, per_ci) in lanes.chunks_exact_mut(3 * per_ky).take(sources).enumerate() {
        let s = &src[ci * len..];
        for (ky, sums) in per_ci.chunks_exact_mut(per_ky).enumerate() {
            let x = [0, 1, 2].map(|kx| &s[offs[3 * ky + kx]..][..n]);
            for r0 in (0..rows).step_by(CB) {
                let cb = CB.min(rows - r0);
                let d = &dyp[r0 * n..][..cb * n];
                let acc = &mut sums[r0 * 3 * DOT_LANES..][..cb * 3 * DOT_LANES];
                match cb {
                    1 => correlate::<T, 1>(x, d, acc),
                    2 => correlate::<T, 2>(x, d, acc),
                    3 => correlate::<T, 3>(x, d, acc),
                    _ => correlate::<T, CB>(x, d, acc),
                }
            }
        }
    }
}

/// `sums[c][kx][l] += Σ_p d[c][p] · x[kx][p]` over the positions `p ≡ l (mod DOT_LANES)` of the
/// `C` rows of `d`, each as long as every `x[kx]` (a multiple of [`DOT_LANES`]): `3·C` sums of
/// [`DOT_LANES`] lanes. f32 runs [`correlate_avx2`] where the CPU has AVX2 and FMA.
#[inline(always)]
fn correlate<T: Element, const C: usize>(x: [&[T]; 3], d: &[T], sums: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        if let ([Some(x0), Some(x1), Some(x2)], Some(d)) = (x.map(T::as_f32), T::as_f32(d)) {
            if let Some(sums) = T::as_f32_mut(sums) {
                // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                return unsafe { correlate_avx2::<C>([x0, x1, x2], d, sums) };
            }
        }
    }
    let n = d.len() / C;
    // Row 3·c + kx: channel c, tap kx (rows from 3·C on unused).
    let mut acc = [[T::ZERO; DOT_LANES]; 3 * CB];
    for p in (0..n).step_by(DOT_LANES) {
        for c in 0..C {
            for (kx, xs) in x.iter().enumerate() {
                for l in 0..DOT_LANES {
                    acc[3 * c + kx][l] += d[c * n + p + l] * xs[p + l];
                }
            }
        }
    }
    for (to, a) in sums.chunks_exact_mut(DOT_LANES).zip(&acc) {
        for l in 0..DOT_LANES {
            to[l] += a[l];
        }
    }
}

/// [`correlate`] for f32 in AVX2 registers with FMA: every value loaded once per position block,
/// the `3·C` sums kept in registers. (The autovectorised loop kept them in memory or shuffled them
/// lane by lane for some `C`: 1–2 GMAC/s for two rows.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn correlate_avx2<const C: usize>(x: [&[f32]; 3], d: &[f32], sums: &mut [f32]) {
    use std::arch::x86_64::{
        _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let n = d.len() / C;
    let [x0, x1, x2] = [&x[0][..n], &x[1][..n], &x[2][..n]];
    let mut acc = [[_mm256_setzero_ps(); 3]; C];
    for p in (0..n.saturating_sub(DOT_LANES - 1)).step_by(DOT_LANES) {
        // SAFETY: p + 8 ≤ n, the length of x0, x1, x2 and of each of the C rows of d.
        unsafe {
            let v0 = _mm256_loadu_ps(x0.as_ptr().add(p));
            let v1 = _mm256_loadu_ps(x1.as_ptr().add(p));
            let v2 = _mm256_loadu_ps(x2.as_ptr().add(p));
            for (c, a) in acc.iter_mut().enumerate() {
                let dv = _mm256_loadu_ps(d.as_ptr().add(c * n + p));
                a[0] = _mm256_fmadd_ps(dv, v0, a[0]);
                a[1] = _mm256_fmadd_ps(dv, v1, a[1]);
                a[2] = _mm256_fmadd_ps(dv, v2, a[2]);
            }
        }
    }
    for (to, a) in sums.chunks_exact_mut(DOT_LANES).zip(acc.iter().flatten()) {
        let mut lanes = [0.0f32; DOT_LANES];
        // SAFETY: `lanes` holds the 8 values stored.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
        for (t, v) in to.iter_mut().zip(lanes) {
            *t += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv2d::{self, Algorithm, ConvParams};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `(n, groups, cin_g, cout_g, h, w, stride)`: one and several channels per group (odd counts,
    /// partial blocks of four), 2 to 32 groups, odd and even sizes, the smallest maps, batch 1 and 3.
    const CASES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
        (3, 2, 1, 2, 5, 5, 1),
        (1, 5, 2, 1, 4, 6, 2),
        (3, 2, 2, 2, 5, 7, 1),
        (1, 4, 3, 3, 9, 6, 1),
        (3, 3, 3, 5, 7, 7, 2),
        (1, 32, 4, 4, 8, 8, 1),
        (3, 8, 8, 8, 6, 5, 2),
        (1, 2, 4, 6, 9, 8, 2),
        (3, 2, 5, 7, 11, 10, 2),
        (1, 16, 16, 16, 14, 14, 1),
        (1, 2, 32, 32, 4, 4, 1),
        (1, 2, 32, 32, 7, 7, 2),
        (2, 2, 4, 4, 56, 56, 1),
        (3, 3, 2, 2, 1, 1, 1),
        (3, 3, 2, 2, 1, 1, 2),
        (1, 2, 4, 4, 2, 2, 1),
        (1, 2, 4, 4, 2, 2, 2),
        (3, 4, 3, 3, 3, 3, 1),
        (3, 4, 3, 3, 3, 3, 2),
        (1, 2, 2, 2, 1, 3, 2),
        (1, 2, 2, 2, 3, 1, 1),
        // Many channels per group (the channel kernel where the CPU has AVX2): two and one 8-lane
        // blocks of output channels, odd input channels, rows of 1 … 13 pixels, stride 2; with
        // AVX-512 (16-lane blocks where the group has a multiple of 16 output channels) two and one
        // vectors, 48 channels as two then one, rows of 7 and of 7 + 6 pixels.
        (2, 2, 17, 24, 9, 11, 1),
        (1, 2, 16, 32, 13, 13, 1),
        (3, 2, 9, 16, 5, 13, 2),
        (1, 3, 16, 8, 1, 1, 2),
        (2, 2, 32, 16, 2, 3, 1),
        (2, 2, 32, 32, 7, 7, 1),
        (1, 2, 16, 48, 7, 9, 1),
    ];

    fn geometry(
        &(n, groups, cin_g, cout_g, h, w, stride): &(
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
        ),
    ) -> ConvGeometry {
        ConvGeometry::new(
            (n, groups * cin_g, h, w),
            (groups * cout_g, cin_g, 3, 3),
            stride,
            1,
            groups,
        )
        .expect("a valid geometry")
    }

    fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// `(y, dx, dw)` of `y = conv2d(x, w)` and output gradient `dy` by direct summation in f64.
    fn reference(g: &ConvGeometry, x: &[f64], w: &[f64], dy: &[f64]) -> [Vec<f64>; 3] {
        let (oh, ow, cin_g, cout_g) = (g.oh(), g.ow(), g.cin_g(), g.cout_g());
        let (mut y, mut dx, mut dw) = (
            vec![0.0; g.n * g.out_image()],
            vec![0.0; x.len()],
            vec![0.0; w.len()],
        );
        for n in 0..g.n {
            for co in 0..g.c_out {
                for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                    let yi = ((n * g.c_out + co) * oh + oy) * ow + ox;
                    for (ci, ky, kx) in
                        (0..cin_g).flat_map(|ci| (0..9).map(move |t| (ci, t / 3, t % 3)))
                    {
                        let (iy, ix) = (oy * g.stride + ky, ox * g.stride + kx);
                        if iy < 1 || ix < 1 || iy > g.h || ix > g.w {
                            continue;
                        }
                        let c = co / cout_g * cin_g + ci;
                        let xi = ((n * g.c_in + c) * g.h + iy - 1) * g.w + ix - 1;
                        let wi = ((co * cin_g + ci) * 3 + ky) * 3 + kx;
                        y[yi] += w[wi] * x[xi];
                        dx[xi] += w[wi] * dy[yi];
                        dw[wi] += x[xi] * dy[yi];
                    }
                }
            }
        }
        [y, dx, dw]
    }

    /// Largest difference relative to the largest reference value.
    fn rel_err<T: Element + Into<f64>>(got: &[T], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
        got.iter()
            .zip(want)
            .map(|(&a, b)| (a.into() - b).abs())
            .fold(0.0, f64::max)
            / scale
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&v| v as f32).collect()
    }

    /// Every pass, in f32 and f64 (the AVX2 or AVX-512 builds where the CPU has them), against
    /// direct summation in f64, over every case.
    #[test]
    fn forward_and_gradients_match_f64_direct_summation() {
        for (i, case) in CASES.iter().enumerate() {
            let g = geometry(case);
            let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
            let (x, w, dy) = (
                random(&mut rng, g.n * g.in_image()),
                random(&mut rng, g.c_out * g.k()),
                random(&mut rng, g.n * g.out_image()),
            );
            let [y, dx, dw] = reference(&g, &x, &w, &dy);
            let (x32, w32, dy32) = (f32s(&x), f32s(&w), f32s(&dy));
            for (pass, e32, e64) in [
                (
                    "y",
                    rel_err(&forward(&g, &x32, &w32), &y),
                    rel_err(&forward(&g, &x, &w), &y),
                ),
                (
                    "dx",
                    rel_err(&backward_data(&g, &dy32, &w32), &dx),
                    rel_err(&backward_data(&g, &dy, &w), &dx),
                ),
                (
                    "dw",
                    rel_err(&backward_filter(&g, &x32, &dy32), &dw),
                    rel_err(&backward_filter(&g, &x, &dy), &dw),
                ),
            ] {
                assert!(e32 <= 1e-5, "{pass} f32 {case:?}: relative error {e32:e}");
                assert!(e64 <= 1e-12, "{pass} f64 {case:?}: relative error {e64:e}");
            }
        }
    }

    /// The 64-lane AVX-512 build of the row kernel sums exactly what the AVX2 build does: every row
    /// count of a block (1–4, and 5–9 rows as a full block plus the rest), positions that end
    /// inside a block, bit for bit. (Skipped on CPUs without AVX-512.)
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn gather_rows_in_64_lane_avx512_blocks_equal_the_avx2_build_bit_for_bit() {
        use crate::kernels::simd::{has_avx2_fma, has_avx512f};
        // Any AVX-512 CPU runs the build here (the kernel picks it only on full-width ones).
        if !(has_avx512f() && has_avx2_fma()) {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (cin, len, npos, ld) = (3, 300, 150, 192);
        let offs = [0, 1, 2, 20, 21, 22, 40, 41, 42];
        for rows in 1..=9 {
            let src = f32s(&random(&mut rng, cin * len));
            let wp = f32s(&random(&mut rng, rows * cin * offs.len()));
            let (mut a, mut b) = (vec![0f32; rows * ld], vec![0f32; rows * ld]);
            gather_rows_256(&src, len, &offs, &wp, &mut a, ld, npos);
            // SAFETY: checked above.
            unsafe { gather_rows_512(&src, len, &offs, &wp, &mut b, ld, npos) };
            for (ra, rb) in a.chunks(ld).zip(b.chunks(ld)) {
                let bits = |r: &[f32]| r[..npos].iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(ra), bits(rb), "{rows} rows");
            }
        }
    }

    /// `post` sees every output plane once, after it is final: the mapped output equals the map of
    /// the plain output, channel by channel.
    #[test]
    fn forward_post_maps_each_output_plane_once_after_it_is_final() {
        for (i, case) in CASES.iter().enumerate() {
            let g = geometry(case);
            let mut rng = ChaCha8Rng::seed_from_u64(100 + i as u64);
            let x = f32s(&random(&mut rng, g.n * g.in_image()));
            let w = f32s(&random(&mut rng, g.c_out * g.k()));
            let map = |c: usize, row: &mut [f32]| {
                for v in row.iter_mut() {
                    *v = (*v * 0.5 + c as f32 * 0.125 - 0.5).max(0.0);
                }
            };
            let mapped = forward_post(&g, &x, &w, Some(&map));
            let mut want = forward(&g, &x, &w);
            for (p, plane) in want.chunks_mut(g.out_pixels()).enumerate() {
                map(p % g.c_out, plane);
            }
            assert_eq!(mapped, want, "{case:?}");
        }
    }

    /// The kernel takes 3×3, padding 1, stride 1 or 2 with 2 to MAX_CIN_G input channels per group;
    /// depthwise (one per group), one group and every other shape stay with the other algorithms.
    #[test]
    fn applies_only_to_grouped_3x3_with_few_channels_per_group() {
        let g = |cin_g: usize, groups: usize, k: usize, stride: usize, pad: usize| {
            ConvGeometry::new(
                (1, cin_g * groups, 8, 8),
                (4 * groups, cin_g, k, k),
                stride,
                pad,
                groups,
            )
            .expect("valid")
        };
        assert!(applies(&g(2, 32, 3, 1, 1)));
        assert!(applies(&g(MAX_CIN_G, 2, 3, 2, 1)));
        assert!(!applies(&g(MAX_CIN_G + 1, 2, 3, 1, 1)));
        assert!(!applies(&g(1, 32, 3, 1, 1)), "depthwise");
        assert!(!applies(&g(4, 1, 3, 1, 1)), "one group");
        assert!(!applies(&g(4, 8, 1, 1, 0)), "1×1");
        assert!(!applies(&g(4, 8, 5, 1, 2)), "5×5");
        assert!(!applies(&g(4, 8, 3, 1, 0)), "padding 0");
        assert!(!applies(&g(4, 8, 3, 3, 1)), "stride 3");
        // Many channels per group: the forward pass runs along the output channels where the CPU
        // has AVX2, the gradients by im2col.
        let many = ConvGeometry::new((8, 1024, 7, 7), (1024, 32, 3, 3), 1, 1, 32).expect("valid");
        assert!(!applies_backward(&many));
        assert_eq!(applies(&many), grouped_channels::applies(&many));
        if grouped_channels::applies(&many) {
            assert_eq!(conv2d::algorithm(&many), Algorithm::Grouped);
            assert_eq!(conv2d::backward_algorithm(&many), Algorithm::Im2col);
        }
        // ResNeXt-50 32×4d's grouped 3×3 layers up to 16 channels per group.
        for (c, size, stride) in [(128, 56, 1), (256, 28, 1), (256, 56, 2), (512, 14, 1)] {
            let g = ConvGeometry::new((8, c, size, size), (c, c / 32, 3, 3), stride, 1, 32)
                .expect("valid");
            assert_eq!(
                conv2d::algorithm(&g),
                Algorithm::Grouped,
                "{c} channels at {size}"
            );
        }
    }

    /// Through the candle op: `conv2d` dispatches the forward and both gradients of a grouped 3×3
    /// layer to this kernel, f32 and f64, and they match the direct sums.
    #[test]
    fn conv2d_op_forward_and_backward_run_the_grouped_kernel() -> candle_core::Result<()> {
        use candle_core::{Device, Tensor, Var};
        for (dtype, tol) in [
            (candle_core::DType::F32, 1e-5),
            (candle_core::DType::F64, 1e-12),
        ] {
            for case in [(3, 4, 3, 5, 7, 6, 1), (2, 8, 4, 4, 9, 9, 2)] {
                let g = geometry(&case);
                assert_eq!(conv2d::algorithm(&g), Algorithm::Grouped);
                let mut rng = ChaCha8Rng::seed_from_u64(7);
                let (x, w, dy) = (
                    random(&mut rng, g.n * g.in_image()),
                    random(&mut rng, g.c_out * g.k()),
                    random(&mut rng, g.n * g.out_image()),
                );
                let [y, dx, dw] = reference(&g, &x, &w, &dy);
                let dev = Device::Cpu;
                let xv = Var::from_tensor(
                    &Tensor::from_vec(x, (g.n, g.c_in, g.h, g.w), &dev)?.to_dtype(dtype)?,
                )?;
                let wv = Var::from_tensor(
                    &Tensor::from_vec(w, (g.c_out, g.cin_g(), 3, 3), &dev)?.to_dtype(dtype)?,
                )?;
                let r =
                    Tensor::from_vec(dy, (g.n, g.c_out, g.oh(), g.ow()), &dev)?.to_dtype(dtype)?;
                let p = ConvParams {
                    stride: g.stride,
                    pad: 1,
                    groups: g.groups,
                };
                let out = crate::kernels::conv2d(xv.as_tensor(), wv.as_tensor(), p)?;
                let grads = (&out * &r)?.sum_all()?.backward()?;
                let flat = |t: &Tensor| {
                    t.flatten_all()?
                        .to_dtype(candle_core::DType::F64)?
                        .to_vec1::<f64>()
                };
                let (Some(gx), Some(gw)) = (grads.get(&xv), grads.get(&wv)) else {
                    candle_core::bail!("no gradient")
                };
                for (pass, got, want) in [
                    ("y", flat(&out)?, y),
                    ("dx", flat(gx)?, dx),
                    ("dw", flat(gw)?, dw),
                ] {
                    let e = rel_err(&got, &want);
                    assert!(e <= tol, "{pass} {dtype:?} {case:?}: relative error {e:e}");
                }
            }
        }
        Ok(())
    }
}
